"""Where data lives, and reading a file's bytes with its checksum verified."""
import gzip
import hashlib
import os
import zlib
from pathlib import Path

from .dataset import DataError


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data directory: data_dir if given, else $IWAE_DATA_DIR, else the user cache.

    The user cache is $XDG_CACHE_HOME/iwae, or ~/.cache/iwae when XDG_CACHE_HOME is unset.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("IWAE_DATA_DIR"):
        return Path(os.environ["IWAE_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "iwae"


def check_md5(path: Path, data: bytes, md5: str) -> None:
    """Raise DataError if data (the bytes of path) does not have the given md5."""
    got = hashlib.md5(data).hexdigest()
    if got != md5:
        raise DataError(f"{path}: checksum mismatch: expected md5 {md5}, got {got}")


def read_bytes(path: Path, md5: str | None = None) -> bytes:
    """The content of path, gunzipped when its name ends in .gz.

    md5, when given, is checked against the file as stored (before gunzip).
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if md5 is not None:
        check_md5(path, raw, md5)
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from e
