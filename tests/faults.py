"""Fault-injecting proxies in front of the real test servers.

Tests run against real servers, but neither fake-gcs-server nor nats-server can fail on
demand: the first never answers 503, the second never loses one JetStream ack.  These small
proxies sit between the client under test and the real server, pass everything through, and
misbehave only when a test asks, so every other byte still comes from the real thing.

Both run on loopback in threads of their own, use only the standard library, bound what they
buffer, and stop within a few seconds even with requests hanging or clients still connected.

* ``GcsFaultProxy``: an HTTP/1.1 reverse proxy, plain or TLS, with a queue of faults (an
  error status with a GCS-style JSON body, a hang, a connection reset, a response cut
  mid-body) consumed one per request, in order.
* ``NatsProxy``: a TCP proxy that can rewrite the server's first ``INFO``, swallow
  server-to-client messages, cut every connection, and stop accepting new ones.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import struct
import sys
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

_LOOPBACK = "127.0.0.1"
_POLL_S = 0.05
_JOIN_S = 5.0
_UPSTREAM_TIMEOUT_S = 30.0
_IDLE_TIMEOUT_S = 60.0  # a keep-alive connection nobody uses is dropped after this
_MAX_BODY = 64 * 1024 * 1024
_MAX_LINE = 64 * 1024  # longest NATS control line (INFO can be a few KiB)
_RECV = 64 * 1024

# Headers that describe one hop, not the message (RFC 9110 7.6.1); never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The `reason` GCS puts in `error.errors[0]` for each status, so clients that look at it
# (google-api-core keeps it in `exc.errors`) see what production would send.
_GCS_REASONS = {
    400: "invalid",
    401: "required",
    403: "forbidden",
    404: "notFound",
    408: "requestTimeout",
    409: "conflict",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    502: "badGateway",
    503: "backendError",
    504: "gatewayTimeout",
}


def gcs_error_body(status: int, message: str | None = None) -> str:
    """The JSON error document GCS answers with, e.g. for 403::

    {"error": {"code": 403, "message": "...", "errors": [{"reason": "forbidden", ...}]}}
    """
    text = message or f"injected {status} {_phrase(status)}"
    reason = _GCS_REASONS.get(status, "backendError" if status >= 500 else "invalid")
    error = {"message": text, "domain": "global", "reason": reason}
    return json.dumps({"error": {"code": status, "message": text, "errors": [error]}})


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


Framing = Literal["length", "chunked", "close"]
"""How a cut response announces its body: Content-Length, chunked, or until the close."""


@dataclass(frozen=True)
class _Fault:
    kind: Literal["status", "hang", "reset", "cut", "slow"]
    status: int = 0
    body: bytes = b""
    content_type: str = ""
    match: str | None = None
    framing: Framing = "length"
    delay: float = 0.0


class _ProxyHttpServer(ThreadingHTTPServer):
    """One thread per client connection; knows its proxy so handlers can reach the state."""

    daemon_threads = True  # joined with a timeout by GcsFaultProxy.stop, never forever

    def __init__(self, proxy: GcsFaultProxy, port: int) -> None:
        self.proxy = proxy
        super().__init__((_LOOPBACK, port), _GcsHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """With TLS, the handshake happens in the connection's own thread, on first read."""
        connection, address = super().get_request()
        if self.proxy._tls is None:
            return connection, address
        tls = self.proxy._tls.wrap_socket(
            connection, server_side=True, do_handshake_on_connect=False
        )
        return tls, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Silent for TLS errors: a client that refuses our certificate aborts the handshake,
        which is what the TLS tests want; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], ssl.SSLError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Close without the polite FIN of ``shutdown(SHUT_WR)`` when resetting, so the
        client sees a bare RST as from a crashed load balancer."""
        if self.proxy._take_reset(request):
            self.close_request(request)
        else:
            super().shutdown_request(request)


class _GcsHandler(BaseHTTPRequestHandler):
    """Serves one client connection, request after request (keep-alive)."""

    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT_S
    server: _ProxyHttpServer
    _upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.server.proxy._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()
            self.server.proxy._closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: pytest output is for the test's own failures."""

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _serve(self) -> None:
        proxy = self.server.proxy
        try:
            body = self._read_body()
        except ValueError as err:
            self.close_connection = True
            self._answer(400, gcs_error_body(400, f"proxy: {err}").encode(), "application/json")
            return
        fault = proxy._record(self.command, self.path)
        if fault is not None and fault.kind == "slow":
            proxy._stopping.wait(fault.delay)
            fault = None
        if fault is None or fault.kind == "cut":
            self._forward(body, fault)
        elif fault.kind == "status":
            self._answer(fault.status, fault.body, fault.content_type)
        elif fault.kind == "hang":
            proxy._stopping.wait()
            self.close_connection = True
        else:  # reset: RST on close (linger 0), no response at all
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            proxy._mark_reset(self.connection)
            self.close_connection = True

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or de-chunked; bounded by ``_MAX_BODY``."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(_MAX_LINE).split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while self.rfile.readline(_MAX_LINE).strip():  # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > _MAX_BODY:
                    raise ValueError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(_MAX_LINE)
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= _MAX_BODY:
            raise ValueError(f"bad Content-Length {length}")
        return self.rfile.read(length)

    def _forward(self, body: bytes, cut: _Fault | None = None) -> None:
        """Send the request upstream on this connection's own keep-alive upstream
        connection and relay the (fully buffered) response; with ``cut``, relay only the
        first half of its body, then close."""
        proxy = self.server.proxy
        for attempt in (1, 2):
            reused = self._upstream is not None
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    proxy._upstream_host, proxy._upstream_port, timeout=_UPSTREAM_TIMEOUT_S
                )
            try:
                response, data = self._exchange(self._upstream, body)
                break
            except (OSError, http.client.HTTPException) as err:
                self._upstream.close()
                self._upstream = None
                # An idle upstream connection the server closed meanwhile (RemoteDisconnected
                # is a ConnectionError): one fresh try.
                if attempt == 1 and reused and isinstance(err, ConnectionError):
                    continue
                message = f"proxy: upstream failed: {type(err).__name__}: {err}"
                self._answer(502, gcs_error_body(502, message).encode(), "application/json")
                return
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        self.send_response_only(response.status, response.reason)
        upstream_base = f"http://{proxy._upstream_netloc}/"
        proxy_base = f"{proxy._scheme}://{_LOOPBACK}:{self.server.server_address[1]}/"
        for key, value in response.getheaders():
            lower = key.lower()
            if lower in _HOP_BY_HOP or (lower == "content-length" and not no_body):
                continue
            if lower == "location" and value.startswith(upstream_base):  # keep clients on us
                self.send_header(key, proxy_base + value[len(upstream_base) :])
            else:
                self.send_header(key, value)
        if cut is not None:
            self._send_cut(b"" if no_body else data, cut.framing)
            return
        if not no_body:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        proxy._count_forwarded()  # before the client can see the response, so tests can assert
        if not no_body:
            self.wfile.write(data)

    def _send_cut(self, data: bytes, framing: Framing) -> None:
        """End the headers, send the first half of ``data``, then close (FIN): what the
        client sees when a load balancer or backend dies mid-response."""
        part = data[: len(data) // 2]
        self.close_connection = True
        if framing == "length":
            self.send_header("Content-Length", str(len(data)))
        elif framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            part = b"%x\r\n%s\r\n" % (len(part), part) if part else b""  # no last chunk
        else:  # the body ends where the connection does: the cut cannot be told apart
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(part)

    def _exchange(
        self, upstream: http.client.HTTPConnection, body: bytes
    ) -> tuple[http.client.HTTPResponse, bytes]:
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        upstream.putheader("Host", self.server.proxy._upstream_netloc)
        for key, value in self.headers.items():
            if key.lower() not in _HOP_BY_HOP | {"host", "content-length"}:
                upstream.putheader(key, value)
        if body or self.command in ("POST", "PUT", "PATCH"):
            upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body or None)
        response = upstream.getresponse()
        return response, response.read()

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response_only(status, _phrase(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class GcsFaultProxy:
    """HTTP/1.1 reverse proxy in front of fake-gcs-server that fails requests on demand.

    Point google-cloud-storage at ``proxy.endpoint`` through ``STORAGE_EMULATOR_HOST``.
    Faults queue up and each one is spent on the next request received, in the order they
    were queued; with the queue empty every request is forwarded.

    A fault queued with ``match`` waits at the head of the queue for a request whose path
    and query contain that text; requests before it pass through.  That matters with
    google-cloud-storage 3.17: the first ``list_blobs`` of a bucket on a new ``Client`` also
    starts a background thread that GETs ``/storage/v1/b/NAME`` (bucket metadata for
    tracing; off with ``DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA=1``), which races the
    listing for an unmatched fault.

    Client connections are kept alive (the requests Session of google-cloud-storage reuses
    them) and each holds a keep-alive connection upstream; responses are buffered and
    re-sent with a Content-Length.  ``Location`` headers pointing at the upstream (a
    resumable upload's session URL) are rewritten to point at the proxy, so the upload's
    later requests pass it too.
    """

    def __init__(
        self, upstream_endpoint: str, *, port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        """``tls``: serve HTTPS with this server-side context (the upstream stays HTTP)."""
        parsed = urllib.parse.urlsplit(upstream_endpoint)
        if parsed.scheme != "http" or parsed.hostname is None or parsed.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream_endpoint!r}")
        self._upstream_host, self._upstream_port = parsed.hostname, parsed.port
        self._upstream_netloc = parsed.netloc
        self._requested_port = port
        self._tls = tls
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._requests: list[tuple[str, str]] = []
        self._forwarded = 0
        self._connections = 0
        self._open: dict[socket.socket, threading.Thread] = {}
        self._resetting: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _ProxyHttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- programming faults ------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        body: str | None = None,
        *,
        content_type: str = "application/json; charset=UTF-8",
        match: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` and ``body`` (default: the
        JSON error GCS sends for that status) instead of forwarding them."""
        data = (gcs_error_body(status) if body is None else body).encode()
        self._queue(count, _Fault("status", status, data, content_type, match))

    def hang_next(self, count: int = 1, *, match: str | None = None) -> None:
        """Read the next ``count`` requests and never answer them (until ``stop``), as an
        overloaded backend does: only the client's read timeout ends the wait."""
        self._queue(count, _Fault("hang", match=match))

    def reset_next(self, count: int = 1, *, match: str | None = None) -> None:
        """Read the next ``count`` requests, then reset their connections (RST, no
        response), as a crashed load balancer does."""
        self._queue(count, _Fault("reset", match=match))

    def cut_next(
        self, count: int = 1, *, framing: Framing = "length", match: str | None = None
    ) -> None:
        """Forward the next ``count`` requests, then relay each response's headers and the
        first half of its body and close the connection, as a load balancer or backend
        that dies mid-response does.  ``framing``: the body is announced by its full
        Content-Length (``length``), or sent as one chunk without the last, zero-size one
        (``chunked``), or delimited by the close alone (``close``, as HTTP/1.0 servers do:
        the client reads half a body as a whole one)."""
        self._queue(count, _Fault("cut", match=match, framing=framing))

    def slow_next(self, count: int, seconds: float, *, match: str | None = None) -> None:
        """Forward the next ``count`` requests after ``seconds`` each, as a backend under load
        answers: every answer arrives, late."""
        self._queue(count, _Fault("slow", delay=seconds, match=match))

    def clear(self) -> None:
        """Drop the faults not yet spent."""
        with self._lock:
            self._faults.clear()

    def _queue(self, count: int, fault: _Fault) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        with self._lock:
            self._faults.extend([fault] * count)

    # -- counters ----------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every request received, faulted or not, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def forwarded(self) -> int:
        """Requests forwarded upstream and answered whole, so not those ``cut_next`` cut
        (counted just before the answer is relayed, so a test that got its response can
        rely on the count)."""
        with self._lock:
            return self._forwarded

    @property
    def connections(self) -> int:
        """Client connections accepted so far (keep-alive keeps this low)."""
        with self._lock:
            return self._connections

    @property
    def pending_faults(self) -> int:
        """Faults queued and not yet spent."""
        with self._lock:
            return len(self._faults)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._server is None:
            raise RuntimeError("GcsFaultProxy is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def endpoint(self) -> str:
        """Base URL for ``STORAGE_EMULATOR_HOST``, e.g. ``http://127.0.0.1:PORT``
        (``https://`` with ``tls``)."""
        return f"{self._scheme}://{_LOOPBACK}:{self.port}"

    url = endpoint  # the same, under the name NatsServer and NatsProxy use

    @property
    def _scheme(self) -> str:
        return "http" if self._tls is None else "https"

    def start(self) -> None:
        """Listen on loopback and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("GcsFaultProxy is already running")
        self._stopping.clear()
        self._server = _ProxyHttpServer(self, self._requested_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_S},
            name=f"gcs-fault-proxy-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening, release hanging requests, close client connections, and wait
        (bounded) for the handler threads; safe to call repeatedly."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            open_connections = dict(self._open)
        for connection in open_connections:
            _shutdown(connection)  # wakes a handler blocked reading the next request
        for thread in open_connections.values():
            thread.join(_JOIN_S)
        if self._thread is not None:
            self._thread.join(_JOIN_S)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- called by the handler threads -------------------------------------------------

    def _record(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            self._requests.append((method, path))
            if not self._faults:
                return None
            match = self._faults[0].match
            return self._faults.popleft() if match is None or match in path else None

    def _count_forwarded(self) -> None:
        with self._lock:
            self._forwarded += 1

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open[connection] = threading.current_thread()

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.pop(connection, None)

    def _mark_reset(self, connection: socket.socket) -> None:
        with self._lock:
            self._resetting.add(connection)

    def _take_reset(self, connection: socket.socket) -> bool:
        with self._lock:
            if connection in self._resetting:
                self._resetting.discard(connection)
                return True
            return False


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer or by us
        sock.shutdown(socket.SHUT_RDWR)


# ------------------------------------------------------------------------------------------
# NATS


InfoRewriter = Callable[[dict[str, Any]], dict[str, Any]]


def override_info(**changes: object) -> InfoRewriter:
    """An ``rewrite_info`` that sets some INFO fields, e.g. to pretend to be a NATS server
    before 2.2: ``override_info(headers=False, version="2.1.9")``."""

    def rewrite(info: dict[str, Any]) -> dict[str, Any]:
        return {**info, **changes}

    return rewrite


def is_pub_ack(payload: bytes) -> bool:
    """Whether a message payload is a JetStream publish ack: ``{"stream": ..., "seq": ...}``."""
    if not payload.startswith(b"{") or b'"stream"' not in payload:
        return False
    try:
        parsed = json.loads(payload)
    except ValueError:
        return False
    return isinstance(parsed, dict) and "stream" in parsed and "seq" in parsed


@dataclass
class _SwallowRule:
    pattern: bytes
    remaining: int


class _NatsProtocolError(Exception):
    """The server sent something the minimal parser cannot frame; the link is cut."""


class _Link:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self._lock = threading.Lock()
        self._shut = False
        self._pumps = 2
        self.threads: list[threading.Thread] = []

    def cut(self) -> None:
        """Shut both sockets down: the peers see EOF and both pump threads wake."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        _shutdown(self.client)
        _shutdown(self.upstream)

    def pump_done(self) -> bool:
        """Called as each pump ends; the last one closes the sockets.  True when closed."""
        self.cut()
        with self._lock:
            self._pumps -= 1
            if self._pumps:
                return False
        self.client.close()
        self.upstream.close()
        return True


class NatsProxy:
    """TCP proxy in front of a real nats-server, able to lie in INFO, lose messages, cut
    connections and refuse new ones.

    Client-to-server bytes pass untouched.  Server-to-client bytes are framed with the
    minimal NATS grammar: control lines (``INFO``, ``PING``, ``PONG``, ``+OK``, ``-ERR``)
    up to CRLF, and ``MSG subject sid [reply] size`` / ``HMSG subject sid [reply] hdr_size
    total_size`` followed by that many bytes and CRLF.  Only the first line of each
    connection (the server's ``INFO``) may be rewritten.  When that INFO requires TLS the
    rest of the connection is relayed raw (encrypted, so nothing can be swallowed).
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        rewrite_info: InfoRewriter | None = None,
        drop_acks: bool = False,
        cut_after_error: bool = False,
        port: int = 0,
    ) -> None:
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"upstream must be nats://HOST:PORT, not {upstream_url!r}")
        self._upstream = (parsed.hostname, parsed.port)
        self.rewrite_info = rewrite_info
        self.drop_acks = drop_acks  # read on every message: tests may flip it mid-connection
        # Relay a -ERR, then cut the connection: a server that fails right after refusing.
        self.cut_after_error = cut_after_error
        self._port = port
        self._lock = threading.Lock()
        self._rules: list[_SwallowRule] = []
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._running = False
        self.connections = 0
        """Client connections accepted."""
        self.messages = 0
        """MSG/HMSG relayed to clients."""
        self.swallowed = 0
        """MSG/HMSG dropped by ``swallow`` or ``drop_acks``."""
        self.infos_rewritten = 0
        """INFO lines changed by ``rewrite_info``."""
        self.severed = 0
        """Connections cut by ``sever``."""
        self.bytes_up = 0  # client to server
        self.bytes_down = 0  # server to client, after swallowing

    # -- faults ------------------------------------------------------------------------

    def swallow(self, pattern: bytes, count: int = 1) -> None:
        """Silently drop the next ``count`` server-to-client messages whose payload (after
        the headers, for HMSG) contains ``pattern``; e.g. ``b'"stream"'`` for a PubAck."""
        if count < 1 or not pattern:
            raise ValueError("swallow needs a non-empty pattern and a count of at least 1")
        with self._lock:
            self._rules.append(_SwallowRule(pattern, count))

    def sever(self) -> int:
        """Cut every current connection (both sides see EOF), as a server restart between
        connect and publish would; new connections are still accepted.  Returns how many
        were cut."""
        with self._lock:
            links = list(self._links)
            self.severed += len(links)
        for link in links:
            link.cut()
        return len(links)

    def pause(self) -> None:
        """Stop accepting: the port is closed, so new connections are refused as by a
        server that is down.  Current connections are left alone (see ``sever``)."""
        listener, self._listener = self._listener, None
        self._accepting.clear()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_S)
            self._accept_thread = None
        if listener is not None:
            listener.close()

    def resume(self) -> None:
        """Accept again, on the same port."""
        if not self._running:
            raise RuntimeError("NatsProxy is not running")
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_LOOPBACK, self._port))
        listener.listen(64)
        listener.settimeout(_POLL_S)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._accepting.set()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"nats-proxy-{self._port}"
        )
        self._accept_thread.daemon = True
        self._accept_thread.start()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Connections currently relayed."""
        with self._lock:
            return len(self._links)

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started; kept across pause/resume)."""
        if not self._running:
            raise RuntimeError("NatsProxy is not running")
        return self._port

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://{_LOOPBACK}:{self.port}"

    def start(self) -> None:
        """Listen on loopback and relay in background threads."""
        if self._running:
            raise RuntimeError("NatsProxy is already running")
        self._running = True
        try:
            self.resume()
        except BaseException:
            self._running = False
            raise

    def stop(self) -> None:
        """Stop accepting, cut every connection, and wait (bounded) for the threads."""
        if not self._running:
            return
        self.pause()
        self.sever()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(_JOIN_S)
        self._running = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- relaying ----------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._accepting.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed by pause()
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self._upstream, timeout=_JOIN_S)
            except OSError:
                client.close()  # upstream down: the client sees the connection close
                continue
            upstream.settimeout(None)
            self._open_link(client, upstream)

    def _open_link(self, client: socket.socket, upstream: socket.socket) -> None:
        link = _Link(client, upstream)
        link.threads = [
            threading.Thread(target=self._pump_up, args=(link,), daemon=True),
            threading.Thread(target=self._pump_down, args=(link,), daemon=True),
        ]
        with self._lock:
            self.connections += 1
            self._links.add(link)
            self._threads = [t for t in self._threads if t.is_alive()] + link.threads
        for thread in link.threads:
            thread.start()

    def _pump_up(self, link: _Link) -> None:
        try:
            while data := link.client.recv(_RECV):
                link.upstream.sendall(data)
                with self._lock:
                    self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            self._pump_done(link)

    def _pump_down(self, link: _Link) -> None:
        buffer = bytearray()
        state = {"first": True, "raw": False, "cut": False}
        try:
            while data := link.upstream.recv(_RECV):
                buffer += data
                out = self._frame(buffer, state)
                if out:
                    link.client.sendall(out)
                    with self._lock:
                        self.bytes_down += len(out)
                if state["cut"]:
                    link.cut()
        except (OSError, _NatsProtocolError):
            pass
        finally:
            self._pump_done(link)

    def _pump_done(self, link: _Link) -> None:
        if link.pump_done():
            with self._lock:
                self._links.discard(link)

    def _frame(self, buffer: bytearray, state: dict[str, bool]) -> bytes:
        """Take every complete server operation off ``buffer``; return what to relay."""
        out = bytearray()
        while buffer:
            if state["raw"]:
                out += buffer
                buffer.clear()
                break
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > _MAX_LINE:
                    raise _NatsProtocolError("control line too long")
                break
            line = bytes(buffer[:end])
            op = line.split(b" ", 1)[0].upper()
            if op in (b"MSG", b"HMSG"):
                header_size, size = _message_sizes(op, line)
                total = end + 2 + size + 2
                if len(buffer) < total:
                    break
                block = bytes(buffer[:total])
                del buffer[:total]
                if not self._keep(block[end + 2 + header_size : end + 2 + size]):
                    continue
                out += block
                with self._lock:
                    self.messages += 1
            else:
                del buffer[: end + 2]
                if state["first"] and op == b"INFO":
                    line, state["raw"] = self._rewrite(line)
                out += line + b"\r\n"
                if op == b"-ERR" and self.cut_after_error:
                    state["cut"] = True
                    break  # nothing after the error reaches the client
            state["first"] = False
        return bytes(out)

    def _rewrite(self, line: bytes) -> tuple[bytes, bool]:
        """Apply ``rewrite_info`` to the first INFO; also report whether TLS follows."""
        try:
            info = json.loads(line[len(b"INFO") :])
        except ValueError as err:
            raise _NatsProtocolError("INFO is not JSON") from err
        if not isinstance(info, dict):
            raise _NatsProtocolError("INFO is not a JSON object")
        if self.rewrite_info is not None:
            info = self.rewrite_info(info)
            line = b"INFO " + json.dumps(info, separators=(",", ":")).encode()
            with self._lock:
                self.infos_rewritten += 1
        return line, bool(info.get("tls_required"))

    def _keep(self, payload: bytes) -> bool:
        """False if the message must be swallowed (and count it)."""
        with self._lock:
            for rule in self._rules:
                if rule.pattern in payload:
                    rule.remaining -= 1
                    if not rule.remaining:
                        self._rules.remove(rule)
                    self.swallowed += 1
                    return False
            if self.drop_acks and is_pub_ack(payload):
                self.swallowed += 1
                return False
        return True


def _message_sizes(op: bytes, line: bytes) -> tuple[int, int]:
    """(header size, total size) from a MSG or HMSG line; bounded by ``_MAX_BODY``."""
    parts = line.split()
    expected = (4, 5) if op == b"MSG" else (5, 6)
    if len(parts) not in expected:
        raise _NatsProtocolError(f"malformed {op.decode()} line")
    try:
        size = int(parts[-1])
        header_size = int(parts[-2]) if op == b"HMSG" else 0
    except ValueError as err:
        raise _NatsProtocolError(f"malformed {op.decode()} sizes") from err
    if not 0 <= header_size <= size <= _MAX_BODY:
        raise _NatsProtocolError(f"{op.decode()} sizes out of bounds")
    return header_size, size
