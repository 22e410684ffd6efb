"""Downloads through a local mirror: files land verified and load; a corrupted or cut
download raises DataError and leaves nothing in the cache; refusals need no network."""
import functools
import hashlib
import http.server
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from iwae.data import DataError, download_dataset, load_dataset

MNIST_FILES = ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records request paths; /cut/... sends half a body with a full length."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/cut/"):
            body = (Path(self.directory) / self.path[5:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """(base URL, served folder, server) of an HTTP server on 127.0.0.1, shut down afterwards."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_download_lands_verified_files_that_load(mirror, data_dir, tmp_path, monkeypatch):
    url, served, server = mirror
    (served / "mnist").mkdir()
    for name in MNIST_FILES:
        shutil.copy(Path(data_dir) / "mnist" / name, served / "mnist" / name)
    cache = tmp_path / "cache"
    monkeypatch.setenv("IWAE_MIRROR", url)
    ds = load_dataset("mnist", cache)                         # empty cache: downloads both
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert files_under(cache) == sorted(f"mnist/{n}" for n in MNIST_FILES)   # no temp files
    for name in MNIST_FILES:
        assert (cache / "mnist" / name).read_bytes() == (Path(data_dir) / "mnist" / name).read_bytes()
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in MNIST_FILES)
    load_dataset("mnist", cache)                              # present now: no new request
    assert len(server.requests) == 2


def test_corrupted_download_is_rejected_and_discarded(mirror, data_dir, tmp_path):
    url, served, _ = mirror
    (served / "mnist").mkdir()
    data = bytearray((Path(data_dir) / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    data[1000:1010] = bytes(b ^ 0xFF for b in data[1000:1010])
    (served / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(data)
    shutil.copy(Path(data_dir) / "mnist" / "train-images-idx3-ubyte.gz", served / "mnist")
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    got = hashlib.md5(data).hexdigest()
    with pytest.raises(DataError, match="^" + re.escape(
            f"t10k-images-idx3-ubyte.gz from {url}/mnist/t10k-images-idx3-ubyte.gz: checksum mismatch: "
            f"expected md5 9fb629c4189551a2d022fa330f9573f3, got {got}; the download was discarded") + "$"):
        download_dataset("mnist", cache, mirror=url)
    assert files_under(cache) == ["mnist/train-images-idx3-ubyte.gz"]   # the good file only


def test_cut_download_is_rejected_and_discarded(mirror, tmp_path):
    url, served, _ = mirror
    (served / "omniglot").mkdir()
    (served / "omniglot" / "chardata.mat").write_bytes(b"x" * 5000)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="^" + re.escape(
            f"could not download chardata.mat ({url}/cut/omniglot/chardata.mat: truncated download: "
            f"2500 of 5000 bytes); put the file in {cache / 'omniglot'} yourself") + "$"):
        download_dataset("omniglot", cache, mirror=f"{url}/cut")
    assert files_under(cache) == []


def test_omniglot_download_is_checked_by_layout(mirror, tmp_path):
    url, served, _ = mirror
    (served / "omniglot").mkdir()
    scipy.io.savemat(served / "omniglot" / "chardata.mat",
                     {"data": np.zeros((784, 3)), "testdata": np.ones((784, 2))})
    paths = download_dataset("omniglot", tmp_path / "good", mirror=url)
    assert paths == {"chardata": tmp_path / "good" / "omniglot" / "chardata.mat"}
    ds = load_dataset("omniglot", tmp_path / "good", download=False)
    assert ds.train.shape == (3, 784) and ds.test.shape == (2, 784) and ds.test.min() == 1
    scipy.io.savemat(served / "omniglot" / "chardata.mat", {"data": np.zeros((783, 3))})
    with pytest.raises(DataError, match="^" + re.escape(
            f"chardata.mat from {url}/omniglot/chardata.mat: 'data' has shape (783, 3), "
            "expected (784, N); the download was discarded") + "$"):
        download_dataset("omniglot", tmp_path / "bad", mirror=url)
    assert files_under(tmp_path / "bad") == []


def test_binarized_mnist_downloads_from_a_mirror(mirror, data_dir, tmp_path):
    url, served, _ = mirror
    (served / "binarized_mnist").mkdir()
    for split in ("valid", "test"):
        name = f"binarized_mnist_{split}.amat.gz"
        shutil.copy(Path(data_dir) / "binarized_mnist" / name, served / "binarized_mnist" / name)
    cache = tmp_path / "cache"
    (cache / "binarized_mnist").mkdir(parents=True)
    (cache / "binarized_mnist" / "binarized_mnist_train.mat").symlink_to(
        Path(data_dir) / "binarized_mnist" / "binarized_mnist_train.mat")       # present as .mat
    paths = download_dataset("binarized-mnist", cache, mirror=url)
    assert paths["train"].name == "binarized_mnist_train.mat"
    assert [paths[s].name for s in ("valid", "test")] == \
        ["binarized_mnist_valid.amat.gz", "binarized_mnist_test.amat.gz"]


def test_network_failure_names_the_file_and_folder(tmp_path):
    with socket.socket() as s:                                # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=re.escape(
            f"could not download train-images-idx3-ubyte.gz (http://127.0.0.1:{port}/mnist/"
            "train-images-idx3-ubyte.gz: ") + ".*" + re.escape(
            f"); put the file in {tmp_path / 'mnist'} yourself")):
        download_dataset("mnist", tmp_path, mirror=f"http://127.0.0.1:{port}")
    assert files_under(tmp_path) == []


def test_missing_file_on_the_mirror(mirror, tmp_path):
    url, _, _ = mirror
    with pytest.raises(DataError, match=re.escape(
            f"could not download train-images-idx3-ubyte.gz ({url}/mnist/train-images-idx3-ubyte.gz: "
            f"HTTP 404 File not found); put the file in {tmp_path / 'mnist'} yourself")):
        download_dataset("mnist", tmp_path, mirror=url)


def test_download_false_never_touches_the_network(mirror, tmp_path, monkeypatch):
    url, _, server = mirror
    monkeypatch.setenv("IWAE_MIRROR", url)
    with pytest.raises(DataError, match=re.escape("(download=False); put the files there")):
        load_dataset("fashion-mnist", tmp_path, download=False)
    assert server.requests == []


def test_plain_http_is_refused_except_to_this_machine(tmp_path):
    with pytest.raises(DataError, match="^" + re.escape(
            "refusing to download http://example.com/mnist/train-images-idx3-ubyte.gz: "
            "only https:// URLs are accepted") + "$"):
        download_dataset("mnist", tmp_path, mirror="http://example.com")
    assert files_under(tmp_path) == []
