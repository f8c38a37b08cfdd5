"""Stores read at a URL: a real HTTP server on 127.0.0.1 and fsspec's memory://, read-only.

Every result read through a URL must equal the local store's, field by field (only the path and what a
remote store does not look at, its size on disk, lock and leftovers, may differ). Reading must never list a
folder, take or read the lock, or write. Bad URLs, a server that is down, a chunk that answers 404 or 500
mid-read: one line on stderr and exit 2 (not a store, unreachable) or 3 (a chunk missing or unreadable).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from faults.faultkit import assert_one_line_error, cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradmanifold.errors import UsageError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.layout import chunk_file
from gradmanifold.store.location import (
    LocalLocation,
    RemoteLocation,
    locate,
    require_local,
    url_scheme,
)
from gradmanifold.store.lock import LOCK_NAME

SAMPLES = Path(__file__).resolve().parent.parent / "sample_logs"
MLP = "mlp_digits_adamw.zarr"  # 800 steps, 3 groups, k = 256, 8 chunks
CNN = "cnn_digits_spectra.zarr"  # with a layer-spectra table
DAMAGED_CHUNK = 3  # the proj chunk a test deletes (rows 300..399 of MLP)


class Server:
    """A threaded `http.server` serving `root` on 127.0.0.1 (a free port), logging every request.

    `fail` maps a request path to the HTTP status to answer instead of the file (a server error mid-read).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, str, int]] = []
        self.fail: dict[str, int] = {}
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                server.log.append((self.command, self.path, int(code) if isinstance(code, int) else 0))

            def send_head(self) -> Any:
                status = server.fail.get(self.path)
                if status is not None:
                    self.send_error(status)
                    return None
                return super().send_head()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Copies of two sample stores, and of MLP with one proj chunk deleted, served over HTTP."""
    root = tmp_path_factory.mktemp("served")
    for name in (MLP, CNN):
        shutil.copytree(SAMPLES / name, root / name)
    shutil.copytree(SAMPLES / MLP, root / "damaged.zarr")
    chunk_file(root / "damaged.zarr", "proj", DAMAGED_CHUNK).unlink()
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("not a store\n")
    server = Server(root)
    yield server
    server.close()


def _json(args: list[str], code: int = 0) -> Any:
    r = cli(*args)
    assert r.exit_code == code, (args, r.exit_code, r.stderr)
    return json.loads(r.stdout)


def _as_local(doc: Any, url: str, local: Path) -> Any:
    """`doc` with every mention of the URL replaced by the local path (the only field allowed to differ)."""
    return json.loads(json.dumps(doc).replace(url, str(local)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------- results equal the local store's
@pytest.mark.parametrize("name", [MLP, CNN])
def test_info_over_http_equals_local(served: Server, name: str) -> None:
    url, local = f"{served.url}/{name}", served.root / name
    remote, here = _json(["info", url, "--json"]), _json(["info", str(local), "--json"])
    assert remote["path"] == url
    # a remote store is never listed (size unknown) and its lock is not read
    assert remote["size_bytes"] is None and here["size_bytes"] > 0 and remote["writer"] is None
    for d in (remote, here):
        del d["size_bytes"]
    assert _as_local(remote, url, local) == here


def test_verify_over_http_equals_local(served: Server) -> None:
    url, local = f"{served.url}/{MLP}", served.root / MLP
    remote, here = _json(["verify", url, "--json"]), _json(["verify", str(local), "--json"])
    assert remote["ok"] and here["ok"] and remote["n_rows"] == 800
    assert len(remote["notes"]) == 1 and "not looked for" in remote["notes"][0]
    for d in (remote, here):
        del d["notes"]
    assert _as_local(remote, url, local) == here


def test_spectrum_over_http_equals_local(served: Server) -> None:
    url, local = f"{served.url}/{CNN}", served.root / CNN
    remote = _json(["spectrum", url, "--json"])
    assert remote["store"]["path"] == url and remote["layers"]
    assert _as_local(remote, url, local) == _json(["spectrum", str(local), "--json"])


def test_analyze_over_http_equals_local(served: Server) -> None:
    url, local = f"{served.url}/{MLP}", served.root / MLP
    args = ["--window", "200", "--json"]
    remote = _json(["analyze", url, *args])
    assert remote["store"]["path"] == url and remote["store"]["n_steps"] == 800
    assert _as_local(remote, url, local) == _json(["analyze", str(local), *args])


def test_reading_never_lists_locks_or_writes(served: Server) -> None:
    """Only GET/HEAD of files the manifest and the zarr metadata name: no folder, no lock, no write."""
    served.log.clear()
    before = sorted((p, p.stat().st_mtime_ns) for p in served.root.rglob("*"))
    url = f"{served.url}/{MLP}"
    for args in (["info", url], ["verify", url], ["analyze", url, "--json"]):
        assert cli(*args).exit_code == 0
    assert cli("spectrum", f"{served.url}/{CNN}").exit_code == 0
    assert served.log, "the server saw no request"
    for method, path, status in served.log:
        assert method in ("GET", "HEAD"), (method, path)
        assert status == 200, (method, path, status)
        target = served.root / path.lstrip("/")
        assert target.is_file(), f"{path} is not a file of the store (a listing?)"
        assert LOCK_NAME not in path and not path.endswith(".partial")
    requested = {path for _, path, _ in served.log}
    assert f"/{MLP}/manifest.json" in requested and f"/{MLP}/proj/c/7/0/0" in requested
    assert sorted((p, p.stat().st_mtime_ns) for p in served.root.rglob("*")) == before


def test_file_url_is_the_local_folder(served: Server) -> None:
    local = served.root / MLP
    loc = locate(local.as_uri())
    assert isinstance(loc, LocalLocation) and loc.root == local
    # a file:// URL is the folder itself: everything local applies, the size on disk included
    assert _json(["info", local.as_uri(), "--json"]) == _json(["info", str(local), "--json"])


# ------------------------------------------------------------------- memory://
@pytest.fixture
def memory_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """MLP copied file by file into fsspec's memory file system; yields its URL and a list that records
    every listing or writing call made on that file system while the test runs."""
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    base = f"/gm-{uuid.uuid4().hex}"
    src = SAMPLES / MLP
    for p in src.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"{base}/{MLP}/{p.relative_to(src).as_posix()}", p.read_bytes())
    calls: list[str] = []

    def spy(name: str) -> Any:
        real = getattr(MemoryFileSystem, name)

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return real(self, *args, **kwargs)

        return wrapped

    for name in ("ls", "find", "walk", "glob", "pipe_file", "rm_file", "rm", "mkdir", "makedirs", "touch"):
        monkeypatch.setattr(MemoryFileSystem, name, spy(name))
    real_open = MemoryFileSystem._open

    def open_read_only(self: Any, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if mode != "rb":
            calls.append(f"open {mode}")
        return real_open(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "_open", open_read_only)
    yield f"memory:/{base}/{MLP}", calls
    monkeypatch.undo()
    fs.rm(base, recursive=True)


def test_memory_url_equals_local(memory_store: tuple[str, list[str]]) -> None:
    url, calls = memory_store
    local = SAMPLES / MLP
    assert isinstance(locate(url), RemoteLocation)
    info = _json(["info", url, "--json"])
    here = _json(["info", str(local), "--json"])
    assert info["size_bytes"] is None
    del info["size_bytes"], here["size_bytes"]
    assert _as_local(info, url, local) == here
    assert _json(["verify", url, "--json"])["ok"]
    args = ["--eps", "0.1,0.01", "--json"]
    assert _as_local(_json(["analyze", url, *args]), url, local) == _json(["analyze", str(local), *args])
    assert calls == [], f"reading a memory:// store listed or wrote: {calls}"


def test_memory_url_missing_chunk_is_damage(memory_store: tuple[str, list[str]]) -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    url, _ = memory_store
    MemoryFileSystem.store.pop(url.removeprefix("memory:/") + "/proj/c/2/0/0")
    msg = assert_one_line_error(cli("analyze", url), 3)
    assert "chunk 2 of 'proj' (rows 200..299, steps 200..299) is damaged (missing)" in msg


# ------------------------------------------------------------------- damage and bad input
def test_404_mid_read_is_exit_3(served: Server) -> None:
    url = f"{served.url}/damaged.zarr"
    msg = assert_one_line_error(cli("analyze", url, "--json"), 3)
    assert (
        f"{url}: chunk {DAMAGED_CHUNK} of 'proj' (rows 300..399, steps 300..399) is damaged (missing)" in msg
    )
    assert "read-only" in msg and "gradmanifold repair" not in msg
    r = cli("verify", url)
    assert r.exit_code == 3
    assert f"BAD: chunk {DAMAGED_CHUNK} of 'proj' (rows 300..399, steps 300..399): missing" in r.stdout
    assert_one_line_error(r, 3)


def test_skip_corrupt_over_http_equals_local(served: Server, tmp_path: Path) -> None:
    """--skip-corrupt reads around a chunk that answers 404 exactly as around a local chunk that is gone."""
    url, local = f"{served.url}/damaged.zarr", tmp_path / "damaged.zarr"
    shutil.copytree(served.root / "damaged.zarr", local)
    args = ["--skip-corrupt", "--json"]
    remote = _json(["analyze", url, *args])
    assert remote["store"]["n_steps"] == 800
    assert _as_local(remote, url, local) == _json(["analyze", str(local), *args])


def test_server_error_mid_read_is_exit_3(served: Server) -> None:
    url = f"{served.url}/{MLP}"
    served.fail[f"/{MLP}/sqnorm/c/5/0"] = 500
    try:
        msg = assert_one_line_error(cli("analyze", url), 3)
    finally:
        served.fail.clear()
    assert "chunk 5 of 'sqnorm' (rows 500..599, steps 500..599) is damaged (unreadable" in msg
    assert "500" in msg


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (500, "the server answered HTTP 500 Internal Server Error"),
        (403, "access refused (HTTP 403 Forbidden)"),
    ],
)
def test_manifest_refused_is_exit_2(served: Server, status: int, words: str) -> None:
    url = f"{served.url}/{MLP}"
    served.fail[f"/{MLP}/manifest.json"] = status
    try:
        msg = assert_one_line_error(cli("info", url), 2)
    finally:
        served.fail.clear()
    assert f"{url}/manifest.json: {words}" in msg


@pytest.mark.parametrize("command", ["info", "verify", "analyze", "spectrum"])
@pytest.mark.parametrize("where", ["plain", "nope.zarr", ""])
def test_url_that_is_not_a_store_is_exit_2(served: Server, command: str, where: str) -> None:
    url = f"{served.url}/{where}"
    msg = assert_one_line_error(cli(command, url), 2)
    assert f"is not a gradmanifold store (no manifest.json at {url.rstrip('/')}/manifest.json)" in msg


@pytest.mark.parametrize("command", ["info", "verify", "analyze", "spectrum"])
def test_unreachable_server_is_exit_2_quickly(command: str) -> None:
    url = f"http://127.0.0.1:{_free_port()}/run.zarr"
    t0 = time.monotonic()
    msg = assert_one_line_error(cli(command, url), 2)
    assert time.monotonic() - t0 < 10.0
    assert f"{url}/manifest.json: cannot read it (ClientConnectorError" in msg


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("xyz://host/run.zarr", "not a URL gradmanifold can read (Protocol not known: xyz)"),
        ("http://127.0.0.1:notaport/run.zarr", "cannot read it"),
        ("http:///run.zarr", "cannot read it"),
        ("file://otherhost/run.zarr", "a file:// URL must name a folder on this machine"),
    ],
)
def test_bad_urls_are_exit_2(url: str, words: str) -> None:
    for command in ("info", "verify", "analyze", "spectrum"):
        assert words in assert_one_line_error(cli(command, url), 2)


def test_scheme_without_its_package_is_exit_2() -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("s3fs is installed: s3:// is readable here")
    msg = assert_one_line_error(cli("info", "s3://bucket/run.zarr"), 2)
    assert "reading s3:// URLs needs a package that is not installed (Install s3fs" in msg


# ------------------------------------------------------------------- writing to a URL is refused
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/run.zarr", "memory://x/run.zarr", "s3://bucket/run.zarr"]
)
def test_writer_refuses_a_url(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        UsageError, match="writing to a URL is not supported; record to a local folder and copy"
    ):
        StoreWriter(url, ProjectionSpec(k=8, seed=0), [("a", 10)])
    # pathlib folds "http://h/x" into "http:/h/x": refused too, never a local folder named "http:", and the
    # message names the URL, not the folded path under the working folder
    with pytest.raises(UsageError, match=f"^{re.escape(url)}: writing to a URL is not supported"):
        StoreWriter(Path(url), ProjectionSpec(k=8, seed=0), [("a", 10)])
    assert list(tmp_path.iterdir()) == []


def test_record_and_repair_refuse_a_url(
    served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"{served.url}/{MLP}"
    served.log.clear()
    r = cli("record", "--out", url, "--synthetic", "white-noise", "--steps", "3", "--dim", "16", "--k", "8")
    assert f"{url}: writing to a URL is not supported" in assert_one_line_error(r, 2)
    msg = assert_one_line_error(cli("repair", url), 2)
    assert "repairing a store at a URL is not supported; copy it to a local folder" in msg
    assert list(tmp_path.iterdir()) == [] and served.log == []


def test_file_url_writes_the_local_folder(tmp_path: Path) -> None:
    out = tmp_path / "run.zarr"
    with StoreWriter(out.as_uri(), ProjectionSpec(k=8, seed=0), [("a", 10)], fsync=False) as w:
        w.append(0, [[1.0] * 8], [8.0])
    assert open_store(out).n_steps == 1 and open_store(out.as_uri()).n_steps == 1


def test_url_scheme_and_require_local() -> None:
    assert url_scheme("http://h/x") == "http" and url_scheme("S3://b/x") == "s3"
    assert url_scheme("run.zarr") is None and url_scheme("a:b/c") is None and url_scheme(Path("x")) is None
    assert require_local("file:///tmp/run.zarr", "w", "a") == Path("/tmp/run.zarr")
    assert require_local("runs/http/x.zarr", "w", "a") == Path("runs/http/x.zarr")
    with pytest.raises(UsageError, match="gs://b/x: writing is not supported; do this"):
        require_local("gs://b/x", "writing", "do this")


@pytest.fixture(scope="module")
def closed_port() -> int:
    return _free_port()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    base=st.sampled_from(["memory://", "xyz://", "file://", "http://127.0.0.1:{port}/", "http:", "memory:"]),
    rest=st.text(max_size=20),
    command=st.sampled_from(["info", "verify", "analyze", "spectrum"]),
)
def test_fuzzed_urls_fail_in_one_line(closed_port: int, base: str, rest: str, command: str) -> None:
    """URL-like garbage (a server that is down, schemes unknown, odd characters): exit 2, one line."""
    url = base.format(port=closed_port) + rest
    r = cli(command, url)
    assert r.exit_code != 0 and "internal error" not in r.stderr, (url, r.stderr)
    assert_one_line_error(r, 2)
