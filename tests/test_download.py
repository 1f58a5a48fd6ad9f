"""Tests for mi_ref.download and `mi-ref download`, against a local HTTP server on 127.0.0.1 only.

The server is started and stopped by each test (a fixture) and serves small generated IDX files; the pins
are those of the generated files (``pins=`` argument, or the module's table patched for the CLI).
"""

import gzip
import hashlib
import http.server
import time
import os
import shutil
import threading

import numpy as np
import pytest

from mi_ref import download as dl
from mi_ref.cli import main
from mi_ref.datasets import MNIST_FILES, load_mnist
from mi_ref.download import DownloadError, MNIST_SHA256, content_sha256, download_mnist

NAMES = list(MNIST_FILES.values())


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (mode, body)``; records every requested path in ``server.requests``.

    Modes: "ok"; "truncate" (announces the full Content-Length, sends half, closes the connection);
    "nolength" (no Content-Length, the body ends when the connection closes); "trickle" (one byte every
    0.2 s: each read succeeds well within any per-operation timeout); "endless" (no Content-Length, the body
    repeated without end, until the client goes away). Unknown paths get 404.
    """

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        mode, body = route
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        if mode not in ("nolength", "endless"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "endless":
            try:
                while True:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):      # the client stopped reading, as it should
                pass
            self.close_connection = True
            return
        if mode == "trickle":
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):      # the client gave up, as it should
                pass
            self.close_connection = True
            return
        self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.routes, srv.requests = {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def tiny():
    """Contents (uncompressed IDX bytes) of four tiny MNIST-like files, and their pins."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(6, 3, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=6, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(2, 3, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=2, dtype=np.uint8),
    }
    contents = {}
    for name, array in arrays.items():
        header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
        contents[name] = header + array.tobytes()
    pins = {name: hashlib.sha256(c).hexdigest() for name, c in contents.items()}
    return contents, pins


def serve(server, prefix, contents, mode="ok", names=None):
    for name in names or contents:
        server.routes[f"{prefix}/{name}.gz"] = (mode, gzip.compress(contents[name], mtime=0))
    return f"{server.url}{prefix}/"


def snapshot(directory):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in directory.iterdir()}


def test_download_success_then_load(tmp_path, server, tiny):
    contents, pins = tiny
    mirror = serve(server, "/m1", contents)
    lines = []
    result = download_mnist(tmp_path / "new" / "dir", [mirror], pins=pins, log=lines.append)
    dest = tmp_path / "new" / "dir"
    assert sorted(os.listdir(dest)) == sorted(f"{n}.gz" for n in NAMES)  # no temporary file left
    assert result == {n: dest / f"{n}.gz" for n in NAMES}
    for name in NAMES:
        assert gzip.decompress((dest / f"{name}.gz").read_bytes()) == contents[name]
        assert content_sha256(dest / f"{name}.gz") == pins[name]
    assert len(lines) == 4 and all("downloaded" in line for line in lines)
    d = load_mnist(dest, n_train=6, n_test=2, image_shape=(3, 4))
    assert d.x_train.shape == (6, 12)


def test_valid_files_are_skipped_and_untouched(tmp_path, server, tiny):
    contents, pins = tiny
    mirror = serve(server, "/m1", contents)
    # one file uncompressed (as a user may have it), the others downloaded
    (tmp_path / NAMES[0]).write_bytes(contents[NAMES[0]])
    download_mnist(tmp_path, [mirror], pins=pins)
    assert f"/m1/{NAMES[0]}.gz" not in server.requests and len(server.requests) == 3
    before = snapshot(tmp_path)
    server.requests.clear()
    lines = []
    result = download_mnist(tmp_path, [mirror], pins=pins, log=lines.append)
    assert server.requests == []  # nothing fetched
    assert snapshot(tmp_path) == before  # same files, inodes, mtimes and bytes
    assert result[NAMES[0]] == tmp_path / NAMES[0]
    assert all("present, SHA-256 ok, skipped" in line for line in lines)


def test_fallback_to_next_mirror(tmp_path, server, tiny):
    contents, pins = tiny
    # mirror 1: a closed port; mirror 2: 404 for everything; mirror 3 serves the files
    closed = _closed_port_url()
    good = serve(server, "/good", contents)
    download_mnist(tmp_path, [closed, f"{server.url}/empty", good], pins=pins, timeout=5)
    for name in NAMES:
        assert gzip.decompress((tmp_path / f"{name}.gz").read_bytes()) == contents[name]
        assert server.requests.count(f"/empty/{name}.gz") == 1
        assert server.requests.count(f"/good/{name}.gz") == 1


def _closed_port_url():
    import socket

    with socket.socket() as s:  # bind and release: nothing listens there afterwards
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_checksum_mismatch_leaves_nothing_and_deletes_nothing_valid(tmp_path, server, tiny):
    contents, pins = tiny
    # the first file is already present and valid; the second is served with the wrong content
    (tmp_path / f"{NAMES[0]}.gz").write_bytes(gzip.compress(contents[NAMES[0]]))
    tampered = dict(contents)
    tampered[NAMES[1]] = contents[NAMES[1]][:-1] + bytes([contents[NAMES[1]][-1] ^ 1])
    mirror = serve(server, "/m1", tampered)
    before = snapshot(tmp_path)
    with pytest.raises(DownloadError, match=f"could not obtain a verified {NAMES[1]}.*checksum mismatch") as err:
        download_mnist(tmp_path, [mirror], pins=pins)
    assert pins[NAMES[1]] in str(err.value) and "--mirror" in str(err.value)
    assert snapshot(tmp_path) == before  # no file (or temporary file) for the bad one, the valid one kept


def test_checksum_mismatch_on_first_mirror_falls_back(tmp_path, server, tiny):
    contents, pins = tiny
    tampered = dict(contents)
    tampered[NAMES[2]] = contents[NAMES[2]][:-1] + bytes([contents[NAMES[2]][-1] ^ 1])
    bad = serve(server, "/bad", tampered)
    good = serve(server, "/good", contents)
    download_mnist(tmp_path, [bad, good], pins=pins)
    assert gzip.decompress((tmp_path / f"{NAMES[2]}.gz").read_bytes()) == contents[NAMES[2]]
    assert f"/good/{NAMES[2]}.gz" in server.requests and f"/good/{NAMES[0]}.gz" not in server.requests


def test_interrupted_transfer_leaves_no_partial_file(tmp_path, server, tiny):
    contents, pins = tiny
    mirror = serve(server, "/m1", contents, mode="truncate")
    with pytest.raises(DownloadError, match=r"transfer interrupted: received \d+ of \d+ bytes|IncompleteRead"):
        download_mnist(tmp_path, [mirror], pins=pins)
    assert os.listdir(tmp_path) == []


def test_a_trickling_mirror_fails_within_the_deadline(tmp_path, server, tiny):
    """A server sending one byte every 0.2 s never trips the per-read timeout (5 s here) but trips the
    overall deadline, and, after the grace period, the minimum rate; nothing is left behind."""
    contents, pins = tiny
    name = NAMES[0]
    mirror = serve(server, "/slow", contents, mode="trickle", names=[name])
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"past the deadline of 1.5 s"):
        download_mnist(tmp_path, [mirror], pins={name: pins[name]}, timeout=5, deadline=1.5)
    assert time.monotonic() - start < 5 and os.listdir(tmp_path) == []


def test_the_minimum_rate_is_checked_after_the_grace_period(monkeypatch):
    """fetch's average-rate limit, with a fake clock: 10 bytes in 40 s is 0.25 bytes/s."""
    from mi_ref import download

    class Response:
        headers = {"Content-Length": "100"}

        def __init__(self):
            self.sent = 0

        def read1(self, n):
            self.sent += 1
            return b"x" if self.sent <= 10 else b""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    times = iter([0.0] + [4.0 * (i + 1) for i in range(20)])
    monkeypatch.setattr(download.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(OSError, match=r"bytes/s on average after 32 s, below the minimum of 1 bytes/s"):
        download.fetch("http://127.0.0.1:1/x", timeout=1, deadline=100, min_rate=1, clock=lambda: next(times))


def test_truncated_body_without_length_is_caught_by_gzip(tmp_path, server, tiny):
    contents, pins = tiny
    name = NAMES[0]
    server.routes[f"/m1/{name}.gz"] = ("nolength", gzip.compress(contents[name])[:-10])
    with pytest.raises(DownloadError, match="not a valid gzip file"):
        download_mnist(tmp_path, [f"{server.url}/m1"], pins={name: pins[name]})
    assert os.listdir(tmp_path) == []


def _peak_memory(call):
    """(the exception ``call()`` raised, the peak of Python's allocations meanwhile, in bytes)."""
    import tracemalloc
    tracemalloc.start()
    try:
        call()
    except Exception as err:                  # noqa: BLE001 (the test looks at it)
        raised = err
    else:
        raised = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, peak


def test_an_endless_download_stops_at_the_size_cap_and_streams_to_disk(tmp_path, server, tiny):
    """Was: a server sending without end was buffered in memory (4.2 GB in 5 s). Now the body goes to disk
    and stops at the most a gzipped file of the expected size can be; memory stays far below that."""
    contents, pins = tiny
    name = NAMES[0]
    server.routes[f"/m1/{name}.gz"] = ("endless", os.urandom(1 << 16))
    sizes = {name: 8_000_000}
    err, peak = _peak_memory(lambda: download_mnist(tmp_path, [f"{server.url}/m1"], pins={name: pins[name]},
                                                    sizes=sizes, deadline=60))
    assert isinstance(err, DownloadError) and "sent more than" in str(err), err
    assert peak < 2_000_000, peak                                   # streamed, not held: 8 MB passed through
    assert os.listdir(tmp_path) == []


def test_a_gzip_bomb_stops_at_the_expected_size(tmp_path, server, tiny):
    """Was: a 2 MB gzip file decompressing to gigabytes reached 4.2 GB of memory. Now decompression streams
    and stops past the expected size of the file, which the error names."""
    contents, pins = tiny
    name = NAMES[1]
    bomb = gzip.compress(bytes(50_000_000), compresslevel=9)          # 50 MB of zeros in ~50 KB
    server.routes[f"/m1/{name}.gz"] = ("ok", bomb)
    err, peak = _peak_memory(lambda: download_mnist(tmp_path, [f"{server.url}/m1"], pins={name: pins[name]},
                                                    sizes={name: 1_000_000}))
    assert isinstance(err, DownloadError) and "decompresses to more than 1000000 bytes" in str(err), err
    assert peak < 5_000_000, peak
    assert os.listdir(tmp_path) == []


def test_a_declared_length_beyond_the_cap_is_refused_before_the_body(tmp_path, server, tiny):
    contents, pins = tiny
    name = NAMES[2]
    server.routes[f"/m1/{name}.gz"] = ("ok", bytes(300_000))
    with pytest.raises(DownloadError, match=r"announces 300000 bytes, more than the \d+ a gzipped"):
        download_mnist(tmp_path, [f"{server.url}/m1"], pins={name: pins[name]}, sizes={name: 1000})
    assert os.listdir(tmp_path) == []


def test_the_expected_sizes_are_mnists():
    """The caps come from the sizes of MNIST's files: an IDX header and the uint8 data."""
    assert dl.MNIST_SIZES == {"train-images-idx3-ubyte": 16 + 60000 * 28 * 28, "train-labels-idx1-ubyte": 8 + 60000,
                              "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28, "t10k-labels-idx1-ubyte": 8 + 10000}
    with pytest.raises(ValueError, match="expected size"):
        download_mnist("unused", ["http://127.0.0.1:9/"], pins={"other": "0" * 64})


def test_invalid_present_file_is_replaced_in_its_own_form(tmp_path, server, tiny):
    contents, pins = tiny
    mirror = serve(server, "/m1", contents)
    (tmp_path / NAMES[3]).write_bytes(b"junk")  # an invalid uncompressed file (the loader would read it)
    lines = []
    download_mnist(tmp_path, [mirror], pins=pins, log=lines.append)
    assert (tmp_path / NAMES[3]).read_bytes() == contents[NAMES[3]]
    assert not (tmp_path / f"{NAMES[3]}.gz").exists()
    assert any("present but invalid" in line for line in lines)


def test_arguments_are_validated_before_anything_is_written(tmp_path, tiny):
    _, pins = tiny
    dest = tmp_path / "d"
    with pytest.raises(ValueError, match="not an http"):
        download_mnist(dest, ["ftp://example.org/mnist/"], pins=pins)
    with pytest.raises(ValueError, match="no mirror given"):
        download_mnist(dest, [], pins=pins)
    with pytest.raises(ValueError, match="64-digit hex SHA-256"):
        download_mnist(dest, ["http://127.0.0.1:9/"], pins={NAMES[0]: "abc"})
    with pytest.raises(ValueError, match="timeout"):
        download_mnist(dest, ["http://127.0.0.1:9/"], pins=pins, timeout=0)
    assert not dest.exists()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="not a directory"):
        download_mnist(tmp_path / "file", ["http://127.0.0.1:9/"], pins=pins)


def test_cli_download(tmp_path, server, tiny, monkeypatch, capsys):
    contents, pins = tiny
    mirror = serve(server, "/m1", contents)
    monkeypatch.setattr(dl, "MNIST_SHA256", pins)
    dest = tmp_path / "mnist"
    assert main(["download", "mnist", "--to", str(dest), "--mirror", f"{server.url}/none", "--mirror", mirror]) == 0
    out = capsys.readouterr().out
    assert out.count("downloaded from") == 4 and f"--data-dir {dest}" in out
    assert main(["download", "mnist", "--to", str(dest), "--mirror", mirror]) == 0
    assert capsys.readouterr().out.count("skipped") == 4


def test_cli_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys):
    """Was: under `ulimit -v` a download ended in a MemoryError traceback."""
    def no_memory(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(dl, "download_mnist", no_memory)
    assert main(["download", "mnist", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mi-ref download: error: out of memory") and err.count("\n") == 1


def test_cli_download_mismatch_exits_2(tmp_path, server, tiny, capsys):
    contents, _ = tiny  # the real pins: the tiny files cannot match them
    mirror = serve(server, "/m1", contents)
    assert main(["download", "mnist", "--to", str(tmp_path), "--mirror", mirror]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mi-ref download: error: could not obtain a verified") and "checksum mismatch" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.mnist
def test_pins_match_the_shared_mnist_files(mnist_dir):
    from mi_ref.idx import read_file_bytes
    assert MNIST_SHA256 == {name: content_sha256(next(mnist_dir.glob(name + "*"))) for name in NAMES}
    assert dl.MNIST_SIZES == {name: len(read_file_bytes(next(mnist_dir.glob(name + "*")))) for name in NAMES}


@pytest.mark.mnist
def test_shared_mnist_is_recognized_without_network(mnist_dir, tmp_path):
    # a copy of the real files is complete: nothing is fetched (the mirror is a closed port), nothing changes
    for path in mnist_dir.iterdir():
        if path.name.split(".")[0] in NAMES:
            shutil.copy2(path, tmp_path / path.name)
    before = snapshot(tmp_path)
    result = download_mnist(tmp_path, [_closed_port_url()], timeout=5)
    assert set(result) == set(NAMES) and snapshot(tmp_path) == before
