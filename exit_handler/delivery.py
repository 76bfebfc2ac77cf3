"""Publish the message on NATS and confirm it (SPEC §7).

Every attempt connects, chooses core or JetStream, publishes and confirms; a transient
failure anywhere closes the connection and starts again with backoff, inside the one
deadline. Every re-send carries the same `Nats-Msg-Id`, so a stream stores it once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exit_handler.deadline import Deadline, backoff
from exit_handler.errors import BadInput, Refused, Unavailable
from exit_handler.wire import Message

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)

DELIVERIES = ("auto", "core", "jetstream")
ATTEMPT_TIMEOUT = 5.0
_AUTH_ERRORS = ("authorization violation", "authentication", "user authentication expired")
_PERMISSION_ERROR = "permissions violation"


@dataclass(frozen=True)
class NatsAuth:
    """At most one way to authenticate; secrets already read from files or env."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    creds_file: str | None = None
    nkey_seed_file: str | None = None

    def __repr__(self) -> str:  # never let a secret reach a log through repr()
        return "NatsAuth(<redacted>)"


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...]
    subject: str
    delivery: str = "auto"
    auth: NatsAuth = field(default_factory=NatsAuth)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context when any TLS option or a tls:// server is given."""
        wants_tls = any(server.startswith("tls://") for server in self.servers)
        if not (wants_tls or self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


@dataclass(frozen=True)
class Receipt:
    """What the server confirmed, for the one success log line."""

    delivery: str
    stream: str | None = None
    sequence: int | None = None
    duplicate: bool = False


class _Retry(Exception):
    """A transient failure of one attempt: close, back off, try again."""


def deliver(
    settings: NatsSettings, prepare: Callable[[int], Message], deadline: Deadline
) -> Receipt:
    """Publish until confirmed; `prepare(max_payload)` gives the message that fits."""
    return asyncio.run(_deliver(settings, prepare, deadline))


async def _deliver(
    settings: NatsSettings, prepare: Callable[[int], Message], deadline: Deadline
) -> Receipt:
    delays = backoff(deadline)
    last = "no attempt finished"
    while True:
        try:
            return await asyncio.wait_for(
                _attempt(settings, prepare, deadline), timeout=deadline.remaining()
            )
        except _Retry as err:
            last = str(err)
        except TimeoutError:  # the deadline cut an attempt short
            last = last if last != "no attempt finished" else "timed out"
        delay = next(delays, None)
        if delay is None:
            raise Unavailable(
                f"NATS {', '.join(settings.servers)} did not confirm the event before the "
                f"deadline ({deadline.seconds:g} s; last error: {last})"
            )
        log.info("NATS attempt failed (%s); retrying in %.1f s", last, delay)
        await asyncio.sleep(delay)


async def _attempt(
    settings: NatsSettings, prepare: Callable[[int], Message], deadline: Deadline
) -> Receipt:
    from nats import errors as nats_errors

    errors: list[Exception] = []
    nc = await _connect(settings, deadline, errors)
    try:
        message = prepare(nc.max_payload)
        if not _supports_headers(nc):
            log.warning(
                "NATS server %s predates headers (2.2): publishing the payload without "
                "CloudEvent attributes",
                nc.connected_server_version,
            )
            message = Message(message.subject, {}, message.payload)
            return await _publish_core(nc, message, deadline, errors)
        stream = await _stream_for(nc, settings, deadline, errors)
        if stream is None:
            return await _publish_core(nc, message, deadline, errors)
        return await _publish_jetstream(nc, message, stream, deadline)
    except (TimeoutError, OSError, nats_errors.Error) as err:
        # A lost connection or an unanswered request; but a permission violation
        # reported meanwhile (a denied JetStream publish times out) is final.
        _raise_if_refused(err, errors)
        raise _Retry(_describe(err)) from err
    finally:
        await nc.close()


async def _connect(settings: NatsSettings, deadline: Deadline, errors: list[Exception]) -> NATS:
    import nats
    from nats import errors as nats_errors

    async def on_error(err: Exception) -> None:
        errors.append(err)

    auth = settings.auth
    try:
        return await nats.connect(
            servers=list(settings.servers),
            name="exit-handler",
            # No reconnects inside an attempt: our own loop retries with backoff.
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            connect_timeout=deadline.cap(ATTEMPT_TIMEOUT),
            error_cb=on_error,
            tls=settings.tls_context(),
            token=auth.token,
            user=auth.user,
            password=auth.password,
            user_credentials=auth.creds_file,
            nkeys_seed=auth.nkey_seed_file,
        )
    except ssl.SSLCertVerificationError as err:
        raise Refused(
            f"NATS {', '.join(settings.servers)}: TLS verification failed "
            f"({err.verify_message}); pass the server's CA with --nats-tls-ca"
        ) from err
    except (TimeoutError, OSError, nats_errors.NoServersError) as err:
        raise _Retry(f"cannot connect: {_describe(err)}") from err
    except nats_errors.Error as err:
        _raise_if_refused(err, errors)
        raise _Retry(_describe(err)) from err


def _supports_headers(nc: NATS) -> bool:
    version = nc.connected_server_version
    return (version.major, version.minor) >= (2, 2)


async def _stream_for(
    nc: NATS, settings: NatsSettings, deadline: Deadline, errors: list[Exception]
) -> str | None:
    """The stream covering the subject, or None for core delivery (SPEC §7 `auto`)."""
    if settings.delivery == "core":
        return None
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    reason: str
    try:
        js = nc.jetstream(timeout=deadline.cap(ATTEMPT_TIMEOUT))
        return await js.find_stream_name_by_subject(settings.subject)
    except js_errors.NotFoundError:
        reason = f"no JetStream stream covers subject {settings.subject!r}"
    except (nats_errors.NoRespondersError, js_errors.ServiceUnavailableError):
        reason = "the server has no JetStream"
    except nats_errors.TimeoutError:
        if settings.delivery == "jetstream":
            raise
        denied = any(_PERMISSION_ERROR in str(err).lower() for err in errors)
        reason = "no permission for the JetStream API" if denied else "JetStream did not answer"
        log.warning("%s: publishing with core NATS", reason)
    if settings.delivery == "jetstream":
        raise BadInput(f"--delivery jetstream: {reason}; create one, or use --delivery auto")
    return None


async def _publish_core(
    nc: NATS, message: Message, deadline: Deadline, errors: list[Exception]
) -> Receipt:
    """Publish and flush; a permission violation reaches only the error callback."""
    seen = len(errors)
    await nc.publish(message.subject, message.payload, headers=message.headers or None)
    # nats-py writes flush()'s PING straight to the socket while the PUB may still sit
    # in its buffer: the PONG could then return before the server saw the PUB, and a
    # permission violation would arrive after we declared success. Wait for the buffer.
    while nc.pending_data_size and not deadline.expired():
        await asyncio.sleep(0.001)
    await nc.flush(timeout=deadline.cap(ATTEMPT_TIMEOUT))  # type: ignore[arg-type]  # float works
    for err in errors[seen:]:
        if _PERMISSION_ERROR in str(err).lower():
            raise Refused(
                f"NATS refused to publish to {message.subject!r}: {_describe(err)}; "
                "grant the user publish permission on the subject"
            )
    return Receipt("core")


async def _publish_jetstream(
    nc: NATS, message: Message, stream: str, deadline: Deadline
) -> Receipt:
    """Publish to the stream and wait for its ack; the caller retries on timeout."""
    from nats.js import errors as js_errors

    js = nc.jetstream(timeout=deadline.cap(ATTEMPT_TIMEOUT))
    try:
        ack = await js.publish(
            message.subject,
            message.payload,
            stream=stream,
            headers=dict(message.headers),  # nats-py adds to the dict it is given
        )
    except js_errors.NoStreamResponseError as err:
        raise _Retry(f"stream {stream!r} did not answer") from err
    except js_errors.ServiceUnavailableError as err:
        raise _Retry(f"stream {stream!r} is unavailable ({err.description})") from err
    except js_errors.APIError as err:
        raise BadInput(
            f"JetStream stream {stream!r} rejected the event: {err.description} "
            f"(code {err.err_code})"
        ) from err
    return Receipt("jetstream", ack.stream, ack.seq, bool(ack.duplicate))


def _raise_if_refused(err: Exception, errors: list[Exception]) -> None:
    for candidate in (err, *errors):
        text = str(candidate).lower()
        if any(marker in text for marker in _AUTH_ERRORS):
            raise Refused(
                f"NATS refused the credentials: {_describe(candidate)}; check the token, "
                "user/password, creds or NKey the handler was given"
            ) from err
        if _PERMISSION_ERROR in text:
            raise Refused(f"NATS refused an operation: {_describe(candidate)}") from err


def _describe(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]
