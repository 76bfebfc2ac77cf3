"""Credentials for every NATS authentication method, generated offline for tests.

The tests must prove the product against a real nats-server for token, user/password,
NKey, decentralised JWT (``.creds``) and TLS authentication. CI has no network and no
``nsc``/``openssl``, so everything is made here: NKeys with PyNaCl plus the NKey
base32+CRC16 encoding, JWTs signed the way ``nats-io/jwt`` v2 signs them, and X.509
material with ``cryptography``. Every helper returns plain data (strings or paths) so each
test can write its own nats-server configuration.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nacl.signing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NKeyKind = Literal["operator", "account", "user"]

# Version bytes from nats-io/nkeys: the top five bits pick the first base32 letter.
_PREFIX_SEED = 18 << 3  # 'S'
_PREFIX_PUBLIC: dict[NKeyKind, int] = {
    "operator": 14 << 3,  # 'O'
    "account": 0,  # 'A'
    "user": 20 << 3,  # 'U'
}

_JWT_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
# Account limits where -1 means unlimited, as ``nsc`` writes them; JetStream limits are extra.
_UNLIMITED: dict[str, Any] = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
}


def _crc16_xmodem(data: bytes) -> int:
    """CRC16-XMODEM (poly 0x1021, init 0), the checksum NKeys append to every key."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32_nkey(payload: bytes) -> str:
    """Append the little-endian CRC16 and base32-encode without padding, as nkeys does."""
    data = payload + _crc16_xmodem(payload).to_bytes(2, "little")
    return base64.b32encode(data).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class NKeyPair:
    """An encoded NKey: the secret ``S...`` seed and its ``O``/``A``/``U`` public key."""

    seed: str
    public_key: str

    def sign(self, data: bytes) -> bytes:
        """Ed25519-sign ``data``; JWT issuers need this and ``nkeys`` only signs with seeds."""
        return _signing_key(self.seed).sign(data).signature


def _signing_key(seed: str) -> nacl.signing.SigningKey:
    """Decode an ``S...`` seed back to its ed25519 key (checksum verified)."""
    raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
    body, checksum = raw[:-2], raw[-2:]
    if _crc16_xmodem(body).to_bytes(2, "little") != checksum or len(body) != 34:
        raise ValueError("not an NKey seed")
    return nacl.signing.SigningKey(body[2:])


def new_nkey(kind: NKeyKind) -> NKeyPair:
    """Generate a fresh NKey; the ``nkeys`` package can only parse seeds, not create them."""
    prefix = _PREFIX_PUBLIC[kind]
    signing_key = nacl.signing.SigningKey.generate()
    # Seed header: 5 bits of 'S' then the 5-bit public prefix spread over two bytes.
    header = bytes([_PREFIX_SEED | prefix >> 5, (prefix & 31) << 3])
    seed = _b32_nkey(header + bytes(signing_key))
    public_key = _b32_nkey(bytes([prefix]) + bytes(signing_key.verify_key))
    return NKeyPair(seed=seed, public_key=public_key)


def _conf_string(value: str) -> str:
    """Quote a value for nats-server's config syntax (a JSON string literal is valid)."""
    return json.dumps(value)


def token_server_config(token: str) -> str:
    """Server snippet for token authentication (nats-py ``token=``)."""
    return f"authorization {{ token: {_conf_string(token)} }}"


def user_password_server_config(user: str, password: str) -> str:
    """Server snippet for one plain user/password (nats-py ``user=``, ``password=``)."""
    return (
        f"authorization {{ users = [ {{ user: {_conf_string(user)}, "
        f"password: {_conf_string(password)} }} ] }}"
    )


def nkey_server_config(user_public_key: str) -> str:
    """Server snippet admitting one NKey user (nats-py ``nkeys_seed=`` a file with the seed)."""
    return f"authorization {{ users = [ {{ nkey: {_conf_string(user_public_key)} }} ] }}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _encode_jwt(issuer: NKeyPair, subject: str, name: str, nats: dict[str, Any]) -> str:
    """Sign claims as nats-io/jwt v2 does; ``jti`` is base32(sha512/256) of the jti-less claims."""
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key,
        "name": name,
        "sub": subject,
        "nats": nats,
    }
    digest = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":")).encode())
    claims["jti"] = base64.b32encode(digest.digest()).decode("ascii").rstrip("=")
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (_JWT_HEADER, claims)
    )
    return f"{signing_input}.{_b64url(issuer.sign(signing_input.encode()))}"


def format_creds(user_jwt: str, user_seed: str) -> str:
    """Lay out a ``.creds`` file the way ``nsc`` does; nats-py reads the line after each BEGIN."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user_seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


@dataclass(frozen=True)
class JwtAuth:
    """A trusted operator's server snippet plus the ``.creds`` text of one user under it."""

    server_config: str
    creds: str


def jwt_auth(*, allow_publish: list[str] | None = None, jetstream: bool = True) -> JwtAuth:
    """Build operator → account → user JWTs and a memory-resolver server snippet.

    ``jetstream`` gives the account unlimited JetStream limits, without which the server
    refuses JetStream API calls for the account even when the server runs JetStream.
    ``allow_publish`` limits the user's ``pub.allow`` (JetStream clients then also need
    ``$JS.API.>``); ``None`` leaves publishing unrestricted.
    """
    operator, account, user = new_nkey("operator"), new_nkey("account"), new_nkey("user")
    system = new_nkey("account")
    operator_jwt = _encode_jwt(
        operator,
        operator.public_key,
        "test-operator",
        {"system_account": system.public_key, "type": "operator", "version": 2},
    )
    system_jwt = _encode_jwt(
        operator, system.public_key, "SYS", {"limits": _UNLIMITED, "type": "account", "version": 2}
    )
    limits = dict(_UNLIMITED)
    if jetstream:
        limits |= {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    account_jwt = _encode_jwt(
        operator,
        account.public_key,
        "test-account",
        {
            "limits": limits,
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        },
    )
    user_claims: dict[str, Any] = {
        "pub": {} if allow_publish is None else {"allow": list(allow_publish)},
        "sub": {},
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }
    user_jwt = _encode_jwt(account, user.public_key, "test-user", user_claims)
    server_config = (
        f"operator: {_conf_string(operator_jwt)}\n"
        f"system_account: {system.public_key}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {system.public_key}: {_conf_string(system_jwt)}\n"
        f"  {account.public_key}: {_conf_string(account_jwt)}\n"
        "}\n"
    )
    return JwtAuth(server_config=server_config, creds=format_creds(user_jwt, user.seed))


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a private CA, a server certificate and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """Sign a one-day certificate; ``issuer=None`` self-signs (the CA)."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a CA, a server cert valid for 127.0.0.1/localhost, and a client cert (EC P-256).

    The extensions are what strict verifiers (Go's crypto/tls for client certificates,
    OpenSSL's X509_STRICT) insist on: CA basic constraints, key usage, extended key usage
    and key identifiers.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(
        "nats-auth test CA",
        ca_key,
        None,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_key_usage(cert_sign=True), True),
        ],
    )
    leaf_constraints = (x509.BasicConstraints(ca=False, path_length=None), True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "localhost",
        server_key,
        (ca_cert, ca_key),
        [
            leaf_constraints,
            (_key_usage(cert_sign=False), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                False,
            ),
        ],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue(
        "nats-auth test client",
        client_key,
        (ca_cert, ca_key),
        [
            leaf_constraints,
            (_key_usage(cert_sign=False), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, server_key)
    _write_key(files.client_key, client_key)
    return files


def tls_server_config(files: TlsFiles, *, verify_clients: bool) -> str:
    """Server ``tls`` block; ``verify_clients`` demands a CA-signed client cert (mutual TLS)."""
    return (
        "tls {\n"
        f"  cert_file: {_conf_string(str(files.server_cert))}\n"
        f"  key_file: {_conf_string(str(files.server_key))}\n"
        f"  ca_file: {_conf_string(str(files.ca))}\n"
        f"  verify: {'true' if verify_clients else 'false'}\n"
        "  timeout: 2\n"
        "}\n"
    )
