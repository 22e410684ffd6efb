"""Downloading one file safely: https only, checksum verified, atomic placement.

The file is streamed into a temporary file beside its destination, checked (md5 when
one is known, else a layout check), then moved into place with os.replace; on any failure
the temporary file is removed, so the cache never holds a partial or unverified file.
A mirror (IWAE_MIRROR, or the mirror argument) replaces the canonical URLs; plain http is
accepted only for a mirror on this machine (127.0.0.1 / localhost), as tests use.
"""
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .dataset import DataError

TIMEOUT_S = 60
_CHUNK = 1 << 20
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def mirror_url() -> str | None:
    """The mirror base URL from $IWAE_MIRROR, or None."""
    return os.environ.get("IWAE_MIRROR") or None


def check_url(url: str) -> None:
    """Raise DataError unless url is https, or http to this machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
        return
    raise DataError(f"refusing to download {url}: only https:// URLs are accepted")


def fetch(urls: list[str], dest: Path, md5: str | None,
          check: Callable[[Path], object] | None = None) -> None:
    """Download dest from the first of urls that answers, verify it, and move it into place.

    md5: expected checksum of the file (DataError on mismatch, nothing left behind).
    check: when no checksum is known, a reader that raises DataError for a bad file.
    Network failures on every URL give one DataError naming the file and the folder.
    """
    for url in urls:
        check_url(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                got = _stream(url, out)
            if md5 is not None and got != md5:
                raise DataError(f"{dest.name} from {url}: checksum mismatch: expected md5 {md5}, "
                                f"got {got}; the download was discarded")
            if check is not None:
                try:
                    check(tmp)
                except DataError as e:
                    raise DataError(str(e).replace(str(tmp), f"{dest.name} from {url}")
                                    + "; the download was discarded") from e
            os.replace(tmp, dest)
            return
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"{url}: {_reason(e)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name} ({'; '.join(errors)}); "
                    f"put the file in {dest.parent} yourself")


def _stream(url: str, out) -> str:
    """Write the body at url to out; return its md5. Raises OSError when cut short."""
    print(f"iwae: downloading {url}", file=sys.stderr)
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        check_url(response.geturl())                      # after redirects
        expected = response.headers.get("Content-Length")
        size = 0
        while chunk := response.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    if expected is not None and size != int(expected):
        raise OSError(f"truncated download: {size} of {expected} bytes")
    return digest.hexdigest()


def _reason(error: Exception) -> str:
    """One line describing a network error."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return " ".join(str(error).split()) or type(error).__name__
