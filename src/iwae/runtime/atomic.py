"""Files replaced atomically: a reader sees the old file or the complete new one, never a
half-written one, and a kill at any moment leaves the previous file intact."""
import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0o022)         # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def atomic_write(path, write, *, durable=True):
    """Call write(f) on a temporary file beside path, flush, fsync, then rename it to path.

    A reader sees either the old file or the complete new one; if anything fails (a full
    disk, say) the temporary file is removed and the old file is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0600 -> what open() would give
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err)                     # a full disk, say (torch.save wraps it
        if cause is None:                          # in a RuntimeError): name the file
            raise
        raise OSError(cause.errno, f"cannot write {path}: {cause.strerror or cause}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _os_error(err):
    """err, or the OSError it was raised while handling, or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def write_text(path, text, *, durable=True):
    """Replace the text file at path atomically (config.json, metrics.jsonl, eval.json)."""
    atomic_write(path, lambda f: f.write(text.encode()), durable=durable)


def remove_stale_temporaries(directory, names):
    """Delete the temporary files (.NAME.XXXX.tmp) a killed writer of NAME left in directory."""
    for name in names:
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def write_json(path, value, *, durable=True, **dumps):
    """Replace the JSON file at path atomically with value (json.dumps options in dumps,
    indent 2 by default)."""
    write_text(path, json.dumps(value, **{"indent": 2, **dumps}) + "\n", durable=durable)
