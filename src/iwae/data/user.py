"""Your own data: a .npy array, a .npz archive, or a folder of PNG/JPEG images.

Arrays are [N, H, W] (images) or [N, D] (flat; shown as a square image when D is a
square number, else as one row of D pixels). uint8 is divided by 255, bool becomes 0/1,
other numbers are used as given: in [0, 1] for a Bernoulli likelihood, any finite value
for a Gaussian one. Without a test split, the last 10% of the examples (at least 1) are
held out as test.
"""
import math
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataError, to_float32

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)   # ITU-R BT.601 weights of R, G, B


def read_user_data(path: Path, *, bernoulli: bool) \
        -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """({"train": [N, D], "test": [M, D], maybe "valid": [V, D]} float32, (H, W)) from path."""
    if path.is_dir():
        splits = {"train": _read_image_folder(path)}
    elif path.suffix == ".npy":
        splits = {"train": _load_npy(path)}
    elif path.suffix == ".npz":
        splits = _load_npz(path)
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} "
                        "(use .npy, .npz or a folder of PNG/JPEG images)")
    shapes = {name: _image_shape(array, f"{path} {name!r}") for name, array in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{path}: splits have different image shapes {shapes}")
    flat = {name: to_float32(array.reshape(len(array), -1), f"{path} {name!r}",
                             unit_interval=bernoulli)
            for name, array in splits.items()}                            # name -> [N, D]
    if "test" not in flat:
        train = flat["train"]
        if len(train) < 2:
            raise DataError(f"{path}: {len(train)} example(s); need at least 2 to hold out a test split")
        n_test = max(1, len(train) // 10)
        flat["train"], flat["test"] = train[:-n_test], train[-n_test:]
    return flat, shapes["train"]


def _image_shape(array: np.ndarray, source: str) -> tuple[int, int]:
    """(H, W) of an [N, H, W] or [N, D] array; DataError for any other shape or N = 0."""
    if array.ndim == 3:
        shape = array.shape[1:]
    elif array.ndim == 2:
        side = math.isqrt(array.shape[1])
        shape = (side, side) if side * side == array.shape[1] else (1, array.shape[1])
    else:
        raise DataError(f"{source}: expected an array [N, D] or [N, H, W], got shape {array.shape}")
    if len(array) == 0 or 0 in shape:
        raise DataError(f"{source}: no data (shape {array.shape})")
    return tuple(int(n) for n in shape)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy file ({e})") from e


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Keys train and optional test/valid, or a single array of any name (= train)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:   # BadZipFile: truncated
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    if len(arrays) == 1:
        return {"train": next(iter(arrays.values()))}
    if "train" not in arrays or set(arrays) - {"train", "test", "valid"}:
        raise DataError(f"{path}: expected keys train and optional test/valid, or a single "
                        f"array; found {', '.join(sorted(arrays)) or 'none'}")
    return arrays


def _read_image_folder(folder: Path) -> np.ndarray:
    """[N, H, W] float32 in [0, 1] from the folder's images in name order; colour -> luminance."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no .png/.jpg/.jpeg images in the folder")
    images = [_read_image(p) for p in files]
    for p, image in zip(files, images):
        if image.shape != images[0].shape:
            raise DataError(f"{p}: image is {image.shape[1]}x{image.shape[0]}, "
                            f"expected {images[0].shape[1]}x{images[0].shape[0]} like {files[0].name}")
    return np.stack(images)


def _read_image(path: Path) -> np.ndarray:
    """[H, W] float32 in [0, 1]: grey as is, RGB(A) as luminance (alpha ignored)."""
    try:
        import matplotlib.image  # imported where used: `import iwae` stays light
        image = matplotlib.image.imread(path)        # [H, W] or [H, W, 3|4]; float or uint8
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from e
    image = to_float32(image, str(path), unit_interval=True)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = image[:, :, :3] @ LUMINANCE
    elif image.ndim != 2:
        raise DataError(f"{path}: unsupported image layout {image.shape}")
    return image
