"""The named data sets, where their files are looked for, and load_dataset.

Layout of a data directory (that of shared/data, so IWAE_DATA_DIR can point at it):
    mnist/{train,t10k}-images-idx3-ubyte.gz         (or the gunzipped files)
    fashion_mnist/{train,t10k}-images-idx3-ubyte.gz (or the gunzipped files)
    binarized_mnist/binarized_mnist_{train,valid,test}.amat.gz (or .amat, or .mat)
    omniglot/chardata.mat
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .binarized import read_amat, read_mat
from .dataset import DataError, Dataset, check_likelihood_name, is_binary, to_float32
from .download import fetch, mirror_url
from .files import resolve_data_dir
from .idx import read_idx
from .omniglot import paper_split, read_chardata
from .user import read_user_data

VALIDATIONS = ("none", "paper")
MNIST_VALIDATION_SIZE = 400     # Burda's code: train on the first 59,600, validate on the last 400


@dataclass(frozen=True)
class DataFile:
    """One file a data set needs, under the names it may have on disk."""

    names: tuple[str, ...]      # the first is the canonical name, the one downloaded
    md5: str | None             # md5 of the canonical file; None where none is published
    rows: int | None            # number of examples it must hold; None: any


@dataclass(frozen=True)
class DatasetInfo:
    """A named data set: what it is, and where its files are found or fetched."""

    name: str
    description: str
    folder: str                 # sub-folder of the data directory
    files: dict                 # role ("train", "valid", "test", "chardata") -> DataFile
    urls: tuple[str, ...] = ()  # https base URLs serving the canonical names
    manual: str = ""            # where the files come from when no https source exists


def _idx_files(train_md5, test_md5):
    return {"train": DataFile(("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"), train_md5, 60000),
            "test": DataFile(("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"), test_md5, 10000)}


def _amat_files(md5s, rows):
    return {split: DataFile(tuple(f"binarized_mnist_{split}{ext}" for ext in (".amat.gz", ".amat", ".mat")),
                            md5s[split], rows[split])
            for split in ("train", "valid", "test")}


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in [
    DatasetInfo(
        "mnist", "MNIST handwritten digits, 28x28 grey, 60k train / 10k test, dynamic binarization",
        "mnist", _idx_files("f68b3c2dcbeaaa9fbdd348bbdeb94873", "9fb629c4189551a2d022fa330f9573f3"),
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    DatasetInfo(
        "fashion-mnist", "Fashion-MNIST clothing images, 28x28 grey, 60k train / 10k test, "
        "dynamic binarization", "fashion_mnist",
        _idx_files("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "bef4ecab320f06d8554ea6380940ec79"),
        urls=("https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",)),
    DatasetInfo(
        "binarized-mnist", "MNIST with the fixed binarization of Larochelle & Murray, "
        "50k train / 10k valid / 10k test", "binarized_mnist",
        # md5 of the .amat.gz copies in shared/data (no checksum of the originals exists)
        _amat_files({"train": "55c6be0db63f47a228822edc21049d6f",
                     "valid": "bf325c5893052cb8b540dfeb3c0c6fbe",
                     "test": "f7f18e7c5d551792f6aab10d62a7ea74"},
                    {"train": 50000, "valid": 10000, "test": 10000}),
        manual="http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"),
    DatasetInfo(
        "omniglot", "Omniglot characters, 28x28 (Burda et al.'s chardata.mat), "
        "24,345 train / 8,070 test, dynamic binarization", "omniglot",
        # no published checksum: a download is checked by reading its layout instead
        {"chardata": DataFile(("chardata.mat",), None, None)},
        urls=("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",)),
]}


def _info(name: str) -> DatasetInfo | None:
    return DATASETS.get(name.lower().replace("_", "-"))


def _locate(info: DatasetInfo, root: Path) -> dict[str, Path | None]:
    """role -> the first existing file among its names in root/folder, or None."""
    folder = root / info.folder
    return {role: next((folder / n for n in f.names if (folder / n).is_file()), None)
            for role, f in info.files.items()}


def describe_datasets(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """For each named data set: name, description, files (canonical names), found, path."""
    root = resolve_data_dir(data_dir)
    return [{"name": info.name, "description": info.description,
             "files": [f.names[0] for f in info.files.values()],
             "found": all(p is not None for p in _locate(info, root).values()),
             "path": str(root / info.folder)}
            for info in DATASETS.values()]


def download_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                     mirror: str | None = None) -> dict[str, Path]:
    """Fetch the missing files of a named data set; role -> path of every file.

    mirror: base URL laid out like a data directory (mirror/mnist/train-images-idx3-ubyte.gz);
    defaults to $IWAE_MIRROR; replaces the canonical https sources.
    """
    info = _info(name)
    if info is None:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    root = resolve_data_dir(data_dir)
    folder = root / info.folder
    paths = _locate(info, root)
    mirror = mirror or mirror_url()
    missing = [info.files[role].names[0] for role, p in paths.items() if p is None]
    if missing and not mirror and not info.urls:
        raise DataError(f"{info.name}: missing {', '.join(missing)} in {folder}; the files are "
                        f"served only over plain http ({info.manual}), which iwae does not "
                        f"download: fetch them yourself and put them there")
    for role, path in paths.items():
        if path is None:
            file = info.files[role]
            name0 = file.names[0]
            urls = [f"{mirror.rstrip('/')}/{info.folder}/{name0}"] if mirror \
                else [base + name0 for base in info.urls]
            check = read_chardata if info.name == "omniglot" else None
            fetch(urls, folder / name0, file.md5, check)
            paths[role] = folder / name0
    return paths


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, validation: str = "none",
                 download: bool = True, likelihood: str = "bernoulli") -> Dataset:
    """A named data set (see DATASETS) or your own data (a .npy/.npz path or an image folder).

    validation "none": valid is None and train is the whole training set, except for
    binarized-mnist and an .npz with a valid array, whose own valid split is always given.
    validation "paper": the original code's split. MNIST (and Fashion-MNIST alike): the
    first 59,600 training images train, the last 400 validate. Omniglot: training images
    permuted by np.random.RandomState(123).permutation, the last 1,345 validate.
    likelihood "bernoulli": binarization "dynamic", or "fixed" for 0/1 data;
    "gaussian": binarization "none" (the data used as is).
    download: fetch missing files of a named data set (https, md5-checked; see download_dataset).
    """
    if validation not in VALIDATIONS:
        raise DataError(f"unknown validation {validation!r}: expected one of {', '.join(VALIDATIONS)}")
    check_likelihood_name(likelihood)
    bernoulli = likelihood == "bernoulli"
    info = _info(name)
    if info is None:
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(f"unknown dataset {name!r}: not one of {', '.join(DATASETS)}, "
                            "and no such file or folder")
        return _load_user(path, validation, bernoulli)
    root = resolve_data_dir(data_dir)
    paths = _locate(info, root)
    missing = [info.files[role].names[0] for role, p in paths.items() if p is None]
    if missing and not download:
        raise DataError(f"{info.name}: missing {', '.join(missing)} in {root / info.folder} "
                        "(download=False); put the files there")
    if missing:
        paths = download_dataset(info.name, root)
    splits = _read_splits(info, paths)
    if info.name == "omniglot" and validation == "paper":
        splits["train"], splits["valid"] = paper_split(splits["train"], paths["chardata"])
    elif info.name in ("mnist", "fashion-mnist") and validation == "paper":
        train = splits["train"]
        splits["train"] = train[:-MNIST_VALIDATION_SIZE]
        splits["valid"] = train[-MNIST_VALIDATION_SIZE:]
    kind = "fixed" if info.name == "binarized-mnist" else "dynamic"
    return _dataset(info.name, splits, (28, 28), kind if bernoulli else "none")


def _read_splits(info: DatasetInfo, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """split name -> [N, 784] float32 in [0, 1] of a named data set, row counts checked."""
    if info.name == "omniglot":
        train, test = read_chardata(paths["chardata"])
        return {"train": train, "test": test}
    splits = {}
    for role, path in paths.items():
        file = info.files[role]
        md5 = file.md5 if path.name == file.names[0] else None
        if info.name == "binarized-mnist":                               # 0/1 values
            array = read_mat(path) if path.suffix == ".mat" else read_amat(path, md5)
            array = array.astype(np.float32)                              # [N, 784]
        else:                                                             # grey levels 0..255
            array = read_idx(path, 3, md5)                                # [N, 28, 28] uint8
            if array.shape[1:] != (28, 28):
                raise DataError(f"{path}: images are {array.shape[1]}x{array.shape[2]}, expected 28x28")
            array = to_float32(array.reshape(len(array), -1), str(path), unit_interval=True)
        if file.rows is not None and len(array) != file.rows:
            raise DataError(f"{path}: {len(array)} images, expected {file.rows}")
        splits[role] = array
    return splits


def _load_user(path: Path, validation: str, bernoulli: bool) -> Dataset:
    splits, image_shape = read_user_data(path, bernoulli=bernoulli)
    if validation == "paper" and "valid" not in splits:
        raise DataError(f"{path}: validation='paper' needs a 'valid' array in an .npz file "
                        "(the paper's splits exist only for the named data sets)")
    if not bernoulli:
        kind = "none"
    else:
        kind = "fixed" if all(is_binary(a) for a in splits.values()) else "dynamic"
    return _dataset(str(path), splits, image_shape, kind)


def _dataset(name: str, splits: dict[str, np.ndarray], image_shape, binarization: str) -> Dataset:
    """Dataset of float32 tensors from float32 arrays split name -> [N, D]."""
    def tensor(array):
        return None if array is None else torch.from_numpy(np.ascontiguousarray(array))
    return Dataset(name, tensor(splits["train"]), tensor(splits["test"]), tensor(splits.get("valid")),
                   tuple(image_shape), binarization)
