"""Downloading MNIST: every broken mirror is survived or reported, loudly, and nothing partial is kept.

The mirrors are real: a local ThreadingHTTPServer serves the real MNIST files from MNIST_MIRROR, and
damaged versions of them (bad checksum, truncated gzip, a transfer cut short, HTTP errors, a server that
never answers). Only the backoff pauses are recorded instead of slept, through the `sleep` parameter.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipeline.data.download import PUBLIC_MIRRORS, download_all, fetch_verified, file_url, mirrors_from_env
from pipeline.common.errors import GanpipeError
from pipeline.data.mnist import FILES

from .conftest import REPO, mirror_path

SMALL = "t10k-labels-idx1-ubyte.gz"  # 10 kB payload: quick to damage and re-compress
FIRST = next(iter(FILES))  # the file download_all fetches first
LAST = list(FILES)[-1]
HANG_TIMEOUT = 1.0


class Mirror:
    """A local HTTP server whose first path segment says how to (mis)behave: /<kind>/<file name>."""

    def __init__(self, source: Path):
        self.source = source
        self._cache: dict[tuple[str, str], bytes] = {}
        self._lock = threading.RLock()
        self.requests: dict[str, int] = {}
        self.release = threading.Event()  # lets the hanging handlers go at shutdown
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                mirror.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, kind: str) -> str:
        return f"{self.base}/{kind}/"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- content ---------------------------------------------------------------------------------
    def good(self, name: str) -> bytes:
        return self._cached("good", name, lambda: (self.source / name).read_bytes())

    def payload(self, name: str) -> bytes:
        return self._cached("payload", name, lambda: gzip.decompress(self.good(name)))

    def recompressed(self, name: str) -> bytes:
        return self._cached("recompressed", name, lambda: gzip.compress(self.payload(name), compresslevel=1, mtime=0))

    def corrupt(self, name: str) -> bytes:
        def make() -> bytes:
            data = bytearray(self.payload(name))
            data[len(data) // 2] ^= 0xFF  # one flipped byte: a valid gzip holding the wrong payload
            return gzip.compress(bytes(data), compresslevel=1, mtime=0)

        return self._cached("corrupt", name, make)

    def _cached(self, kind: str, name: str, make) -> bytes:
        with self._lock:
            if (kind, name) not in self._cache:
                self._cache[(kind, name)] = make()
            return self._cache[(kind, name)]

    # -- behaviour -------------------------------------------------------------------------------
    def handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = req.path.strip("/").split("/")
        kind, name = parts[0], parts[-1]
        with self._lock:
            self.requests[req.path] = count = self.requests.get(req.path, 0) + 1
        if name not in FILES:
            return req.send_error(404)
        if kind == "good":
            return self._send(req, self.good(name))
        if kind == "recompressed":
            return self._send(req, self.recompressed(name))
        if kind == "corrupt":
            return self._send(req, self.corrupt(name))
        if kind == "truncated":  # a complete response holding half a gzip file
            return self._send(req, self.good(name)[: len(self.good(name)) // 2])
        if kind == "cut":  # announces the full length, sends half, drops the connection
            data = self.good(name)
            req.send_response(200)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data[: len(data) // 2])
            req.wfile.flush()
            req.close_connection = True
            return None
        if kind == "e500":
            return req.send_error(500)
        if kind == "e404":
            return req.send_error(404)
        if kind == "hang":  # accepts the connection, never answers
            self.release.wait(60)
            return None
        if kind == "stall":  # answers, sends a little, then goes silent
            data = self.good(name)
            req.send_response(200)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data[:1000])
            req.wfile.flush()
            self.release.wait(60)
            return None
        if kind == "flaky":  # /flaky/<failures>/<token>/<name>: 503 for the first <failures> requests
            if count <= int(parts[1]):
                return req.send_error(503)
            return self._send(req, self.good(name))
        if kind == "nolast":  # serves every file except the last one download_all asks for
            return req.send_error(404) if name == LAST else self._send(req, self.good(name))
        return req.send_error(404)

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, data: bytes) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/gzip")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


@pytest.fixture(scope="module")
def mirror():
    server = Mirror(mirror_path())
    # Build the re-compressed and corrupted copies before serving: made on first request, the big
    # file's copy can take longer than the 1 s client timeout on a loaded machine.
    for name in FILES:
        server.corrupt(name)
        server.recompressed(name)
    yield server
    server.close()


def payload_md5(data: bytes) -> str:
    return hashlib.md5(gzip.decompress(data)).hexdigest()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- mirrors that work ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["directory", "file-url"])
def test_a_directory_path_or_file_url_as_mnist_mirror_downloads_all_four_verified_files(tmp_path, form):
    source = mirror_path()
    value = str(source) if form == "directory" else source.as_uri() + "/"
    mirrors = mirrors_from_env({"MNIST_MIRROR": f"  {value} "})
    assert mirrors == [value] + list(PUBLIC_MIRRORS)  # tried before the public mirrors, whitespace ignored
    assert file_url(value, SMALL) == (source / SMALL).as_uri()

    used = download_all(tmp_path / "raw", mirrors, timeout=5, retries=1, backoff=0)

    assert used == {name: value for name in FILES}
    assert files_in(tmp_path / "raw") == sorted(FILES)  # no temporary files left beside them
    for name, md5 in FILES.items():
        assert payload_md5((tmp_path / "raw" / name).read_bytes()) == md5


def test_an_http_mirror_serving_a_recompressed_copy_is_accepted(mirror, tmp_path):
    data, used = fetch_verified(SMALL, [mirror.url("recompressed")], timeout=5, retries=1, backoff=0)

    assert used == mirror.url("recompressed")
    assert data != mirror.good(SMALL)  # different gzip bytes ...
    assert payload_md5(data) == FILES[SMALL]  # ... same payload


def test_an_http_mirror_downloads_all_four_files_with_progress(mirror, tmp_path):
    seen: dict[str, tuple[int, int | None]] = {}
    used = download_all(
        tmp_path / "raw", [mirror.url("good")], timeout=5, retries=1, backoff=0,
        progress=lambda name, done, total: seen.__setitem__(name, (done, total)),
    )

    assert set(used.values()) == {mirror.url("good")}
    assert files_in(tmp_path / "raw") == sorted(FILES)
    for name in FILES:
        size = len(mirror.good(name))
        assert seen[name] == (size, size)
        assert (tmp_path / "raw" / name).read_bytes() == mirror.good(name)


# --- each kind of broken mirror falls through to the next ----------------------------------------


@pytest.mark.parametrize(
    "kind, says, attempts",
    [
        ("corrupt", "checksum mismatch", 1),  # permanent: not retried
        ("truncated", "served a damaged file", 1),
        ("e404", "HTTP 404", 1),
        ("e500", "HTTP 500", 3),  # transient: retried with backoff, then the next mirror
        ("cut", "connection closed after", 3),
    ],
)
def test_a_broken_mirror_is_skipped_for_the_next_one(mirror, kind, says, attempts):
    sleeps: list[float] = []
    broken = mirror.url(kind)

    data, used = fetch_verified(
        SMALL, [broken, mirror.url("good")], timeout=5, retries=3, backoff=0.5, sleep=sleeps.append
    )

    assert used == mirror.url("good")
    assert payload_md5(data) == FILES[SMALL]
    assert mirror.requests[f"/{kind}/{SMALL}"] >= attempts
    assert sleeps == [0.5, 1.0][: attempts - 1]  # exponential backoff only for transient failures

    # and the same broken mirror alone gives a message naming what it did
    with pytest.raises(GanpipeError) as err:
        fetch_verified(SMALL, [broken], timeout=5, retries=3, backoff=0, sleep=lambda s: None)
    assert f"{broken}{SMALL}: {says}" in str(err.value)
    assert "MNIST_MIRROR" in str(err.value)


def test_transient_errors_are_retried_with_exponential_backoff_on_the_same_mirror(mirror):
    sleeps: list[float] = []
    flaky = mirror.url("flaky/2/backoff")  # 503, 503, then the file

    data, used = fetch_verified(SMALL, [flaky, mirror.url("e404")], timeout=5, retries=3, backoff=0.25, sleep=sleeps.append)

    assert used == flaky
    assert payload_md5(data) == FILES[SMALL]
    assert sleeps == [0.25, 0.5]
    assert mirror.requests[f"/flaky/2/backoff/{SMALL}"] == 3


@pytest.mark.parametrize("kind", ["hang", "stall"])
def test_a_hanging_mirror_is_abandoned_within_the_timeout(mirror, kind):
    sleeps: list[float] = []
    start = time.monotonic()

    data, used = fetch_verified(
        SMALL, [mirror.url(kind), mirror.url("good")], timeout=HANG_TIMEOUT, retries=3, backoff=5, sleep=sleeps.append
    )

    assert time.monotonic() - start < HANG_TIMEOUT + 1.5
    assert used == mirror.url("good") and payload_md5(data) == FILES[SMALL]
    assert sleeps == []  # a silent mirror is not retried: it would cost `timeout` every time


def test_a_hanging_mirror_is_waited_on_once_not_once_per_file(mirror, tmp_path):
    start = time.monotonic()
    used = download_all(
        tmp_path / "raw", [mirror.url("hang"), mirror.url("good")], timeout=HANG_TIMEOUT, retries=2, backoff=0
    )

    assert time.monotonic() - start < 2 * HANG_TIMEOUT + 1.0  # four files, one wait
    assert set(used.values()) == {mirror.url("good")}
    assert files_in(tmp_path / "raw") == sorted(FILES)


# --- when every mirror fails ---------------------------------------------------------------------


def test_when_every_mirror_fails_one_error_says_what_each_did_and_nothing_is_written(mirror, tmp_path):
    out = tmp_path / "raw"
    missing_dir = tmp_path / "no-such-mirror"
    mirrors = [
        mirror.url("e500"),
        mirror.url("e404"),
        mirror.url("corrupt"),
        mirror.url("truncated"),
        mirror.url("hang"),
        str(missing_dir),
        f"http://127.0.0.1:{closed_port()}/mnist/",
    ]
    sleeps: list[float] = []
    start = time.monotonic()

    with pytest.raises(GanpipeError) as err:
        download_all(out, mirrors, timeout=HANG_TIMEOUT, retries=2, backoff=0.1, sleep=sleeps.append)

    message = str(err.value)
    assert time.monotonic() - start < 15
    assert "\n" not in message  # one paragraph
    assert message.startswith(f"could not download a verified copy of {FIRST} from any of 7 mirrors")
    expected = [
        f"{mirror.url('e500')}{FIRST}: HTTP 500 Internal Server Error (2 attempts)",
        f"{mirror.url('e404')}{FIRST}: HTTP 404 Not Found",
        f"{mirror.url('corrupt')}{FIRST}: checksum mismatch: the payload's MD5 is",
        f"{mirror.url('truncated')}{FIRST}: served a damaged file",
        f"{mirror.url('hang')}{FIRST}: did not answer within 1 s, abandoned",
        f"{(missing_dir / FIRST).as_uri()}: no such directory ({missing_dir})",
        "connection refused",
    ]
    for text in expected:
        assert text in message
    assert f"Nothing was written to {out}" in message
    assert "MNIST_MIRROR" in message and "realpath ../shared/mnist" in message
    assert sleeps == [0.1, 0.1]  # one pause for each mirror with a transient failure (500, refused)
    assert files_in(out) == []


def test_a_mirror_missing_one_file_leaves_no_partial_set(mirror, tmp_path):
    out = tmp_path / "raw"
    with pytest.raises(GanpipeError) as err:
        download_all(out, [mirror.url("nolast")], timeout=5, retries=1, backoff=0)

    assert f"could not download a verified copy of {LAST}" in str(err.value)
    assert f"{mirror.url('nolast')}{LAST}: HTTP 404 Not Found" in str(err.value)
    assert files_in(out) == []  # three good files were fetched, none was kept


def test_the_download_stage_fails_in_one_paragraph_and_leaves_data_raw_empty(mirror, tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["download"].update(timeout_s=2, retries=2, backoff_s=0.01)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        MNIST_MIRROR=mirror.url("e500"),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        # the public mirrors are reached through a proxy that refuses, so the test never uses the network
        http_proxy=dead_proxy, https_proxy=dead_proxy, no_proxy="127.0.0.1,localhost",
    )

    result = subprocess.run(
        [sys.executable, "-m", "stages.download"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    paragraphs = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(paragraphs) == 1, result.stderr
    message = paragraphs[0]
    assert message.startswith("error: could not download a verified copy of")
    assert f"{mirror.url('e500')}{FIRST}: HTTP 500" in message
    for public in PUBLIC_MIRRORS:
        assert public in message
    assert f'MNIST_MIRROR is set to "{mirror.url("e500")}"' in message
    assert files_in(tmp_path / "data" / "raw") == []


def test_without_mnist_mirror_the_tests_download_mnist_once_into_a_cache_outside_the_repository(mirror, tmp_path, monkeypatch):
    """`make test` in a fresh clone on a machine with internet and no MNIST_MIRROR: the tests fetch MNIST with
    ganpipe's own verified downloader into a per-user cache, once. The loopback mirror stands in for the
    public mirrors (this machine has no internet)."""
    from tests.conftest import _mnist_folder, mnist_cache

    cache = tmp_path / "cache" / "ganpipe" / "mnist"
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.delenv("GANPIPE_TEST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("pipeline.data.download.PUBLIC_MIRRORS", (mirror.url("good"),))
    assert mnist_cache() == cache
    assert _mnist_folder.__wrapped__() == cache
    assert files_in(cache) == sorted(FILES) and not cache.is_relative_to(REPO)
    downloads = sum(n for path, n in mirror.requests.items() if path.startswith("/good/"))
    assert _mnist_folder.__wrapped__() == cache  # the verified copy is reused
    assert sum(n for path, n in mirror.requests.items() if path.startswith("/good/")) == downloads
    (cache / SMALL).write_bytes(b"damaged")  # a damaged cache is fetched again, not trusted
    assert _mnist_folder.__wrapped__() == cache and payload_md5((cache / SMALL).read_bytes()) == FILES[SMALL]
