"""Publish the message on NATS and confirm it (README, Delivery).

Every attempt connects, chooses core or JetStream, publishes and confirms; a transient
failure anywhere closes the connection and starts again with backoff, inside the one
deadline. Every re-send carries the same `Nats-Msg-Id`, so a stream stores it once.

Only a definite answer sends `auto` to core NATS: no stream covers the subject, the
server has no JetStream, or JetStream is off for the account. A JetStream that is
there but does not answer (a cluster without a meta leader, a timeout) is retried:
a core publish would reach no stream and no one would acknowledge it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from exit_handler.deadline import Deadline, backoff
from exit_handler.errors import BadInput, Refused, Unavailable
from exit_handler.wire import Message

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js.errors import APIError

log = logging.getLogger(__name__)

DELIVERIES = ("auto", "core", "jetstream")
ATTEMPT_TIMEOUT = 5.0
_AUTH_ERRORS = ("authorization violation", "authentication", "user authentication expired")
_PERMISSION_ERROR = "permissions violation"
T = TypeVar("T")

# The JetStream API errors a stream lookup or a publish can answer (nats-server's
# server/errors.json and stream.go, v2.15), by err_code: (transient, what to do).
# Transient ones are retried inside the deadline, then exit 3; the others are exit 2.
# Kept in step with the table in README "### Delivery".
_JS_ERRORS: dict[int, tuple[bool, str]] = {
    10008: (True, "the JetStream cluster has no meta leader; bring a quorum of its servers up"),
    10023: (True, "the server is out of JetStream resources; free or add storage"),
    10028: (True, "JetStream memory is exhausted; raise max_mem or free memory"),
    10047: (True, "JetStream storage is exhausted; raise max_file or free storage"),
    10002: (True, "the account's JetStream limits are reached; raise them or free space"),
    10077: (True, "the stream is full and discards new messages; raise its limits"),
    10060: (True, "another stream took the subject since the lookup; looking it up again"),
    10063: (True, "the clustered stream is catching up; retrying"),
    10158: (True, "the same event is being stored right now; retrying for its ack"),
    10167: (True, "the stream is overloaded; retrying"),
    10054: (False, "raise the stream's max_msg_size above the event's size"),
    10097: (False, "the event's headers exceed 64 KiB; shorten the run's inputs"),
    10109: (False, "a sealed stream takes no more messages; cover the subject by another"),
}
# A code this table does not know is retried: exit 3 leaves the event logged for replay
# and lets Argo try again, where exit 2 would drop it.
_UNKNOWN_JS_ERROR = (True, "an error this version does not know; retrying")
_NO_JETSTREAM_FOR_ACCOUNT = 10039


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
    jetstream_domain: str | None = None
    auth: NatsAuth = field(default_factory=NatsAuth)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context for a private CA or a client certificate; for a tls://
        URL alone, nats-py verifies against the system's CAs itself."""
        if not (self.tls_ca or self.tls_cert):
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


class _ServerErrors:
    """What the server reported through the error callback, in order.

    A denied request is never answered: the server tells only the error callback, so
    `denied` lets a waiting request stop at once instead of timing out.
    """

    def __init__(self) -> None:
        self.seen: list[Exception] = []
        self.denied = asyncio.Event()

    async def add(self, err: Exception) -> None:
        self.seen.append(err)
        if _PERMISSION_ERROR in str(err).lower():
            self.denied.set()


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

    errors = _ServerErrors()
    nc = await _connect(settings, deadline, errors)
    try:
        message = prepare(nc.max_payload)
        if not _supports_headers(nc):
            version = nc.connected_server_version
            log.warning(
                "NATS server %d.%d.%d predates headers (2.2): publishing the payload without "
                "CloudEvent attributes",
                version.major,
                version.minor,
                version.patch,
            )
            message = Message(message.subject, {}, message.payload)
            return await _publish_core(nc, message, deadline, errors)
        stream = await _stream_for(nc, settings, deadline, errors)
        if stream is None:
            return await _publish_core(nc, message, deadline, errors)
        return await _publish_jetstream(
            nc, message, stream, deadline, domain=settings.jetstream_domain, errors=errors
        )
    except (TimeoutError, OSError, nats_errors.Error) as err:
        # A lost connection or an unanswered request; but a permission violation
        # reported meanwhile is final.
        _raise_if_refused(err, errors)
        raise _Retry(_describe(err)) from err
    finally:
        await nc.close()


async def _connect(settings: NatsSettings, deadline: Deadline, errors: _ServerErrors) -> NATS:
    import nats
    from nats import errors as nats_errors

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
            error_cb=errors.add,
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
    nc: NATS, settings: NatsSettings, deadline: Deadline, errors: _ServerErrors
) -> str | None:
    """The stream covering the subject, or None for core delivery (`--delivery auto`)."""
    if settings.delivery == "core":
        return None
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    domain = settings.jetstream_domain
    timeout = deadline.cap(ATTEMPT_TIMEOUT)
    js = nc.jetstream(timeout=timeout, domain=domain)
    where = f"JetStream stream lookup for subject {settings.subject!r}"
    reason: str
    remedy = "enable JetStream for it"
    try:
        return await _unless_denied(
            js.find_stream_name_by_subject(settings.subject), errors, _api_advice(domain)
        )
    except nats_errors.TimeoutError as err:
        raise _Retry(f"{where}: JetStream did not answer within {timeout:.1f} s") from err
    except js_errors.NotFoundError:  # nats-py's answer to an empty list of streams
        reason = f"no JetStream stream covers subject {settings.subject!r}"
        remedy = "create one"
    except js_errors.APIError as err:
        if err.code is None and err.err_code is None:  # nats-py's word for no responders
            if domain is not None:
                # A hub behind a leafnode link that is down looks the same as a wrong domain.
                raise _Retry(
                    f"no JetStream answered in domain {domain!r}; check --jetstream-domain "
                    "and the leafnode link to that domain"
                ) from err
            reason = "the server has no JetStream"
        elif err.err_code == _NO_JETSTREAM_FOR_ACCOUNT:
            reason = "JetStream is not enabled for this account"
        else:
            raise _api_failure(err, where) from err
    if settings.delivery == "jetstream":
        raise BadInput(f"--delivery jetstream: {reason}; {remedy}, or use --delivery auto")
    return None


async def _publish_core(
    nc: NATS, message: Message, deadline: Deadline, errors: _ServerErrors
) -> Receipt:
    """Publish and flush; a permission violation reaches only the error callback."""
    seen = len(errors.seen)
    await nc.publish(message.subject, message.payload, headers=message.headers or None)
    # nats-py writes flush()'s PING straight to the socket while the PUB may still sit
    # in its buffer: the PONG could then return before the server saw the PUB, and a
    # permission violation would arrive after we declared success. Wait for the buffer.
    while nc.pending_data_size and not deadline.expired():
        await asyncio.sleep(0.001)
    await nc.flush(timeout=deadline.cap(ATTEMPT_TIMEOUT))  # type: ignore[arg-type]  # float works
    for err in errors.seen[seen:]:
        if _PERMISSION_ERROR in str(err).lower():
            raise Refused(
                f"NATS refused to publish to {message.subject!r}: {_describe(err)}; "
                "grant the user publish permission on the subject"
            )
    return Receipt("core")


async def _publish_jetstream(
    nc: NATS,
    message: Message,
    stream: str,
    deadline: Deadline,
    *,
    domain: str | None,
    errors: _ServerErrors,
) -> Receipt:
    """Publish to the stream and wait for its ack; the caller retries on timeout."""
    from nats.js import errors as js_errors

    js = nc.jetstream(timeout=deadline.cap(ATTEMPT_TIMEOUT), domain=domain)
    publish = js.publish(
        message.subject,
        message.payload,
        stream=stream,
        headers=dict(message.headers),  # nats-py adds to the dict it is given
    )
    advice = f"grant the user publish permission on {message.subject!r} and subscribe on _INBOX.>"
    try:
        ack = await _unless_denied(publish, errors, advice)
    except js_errors.NoStreamResponseError as err:
        raise _Retry(f"stream {stream!r} did not answer") from err
    except js_errors.APIError as err:
        raise _api_failure(err, f"JetStream stream {stream!r}") from err
    return Receipt("jetstream", ack.stream, ack.seq, bool(ack.duplicate))


async def _unless_denied(request: Awaitable[T], errors: _ServerErrors, advice: str) -> T:
    """Await a request, unless the server denies it first (exit 4, not a timeout)."""
    answer = asyncio.ensure_future(request)
    denied = asyncio.ensure_future(errors.denied.wait())
    try:
        done, _ = await asyncio.wait((answer, denied), return_when=asyncio.FIRST_COMPLETED)
    finally:
        denied.cancel()
        answer.cancel()  # nothing to cancel once answered
    if answer in done:
        return answer.result()
    violation = next(e for e in errors.seen if _PERMISSION_ERROR in str(e).lower())
    raise Refused(f"NATS refused a JetStream request: {_describe(violation)}; {advice}")


def _api_advice(domain: str | None) -> str:
    api = f"$JS.{domain}.API.>" if domain else "$JS.API.>"
    return (
        f"grant the user publish permission on {api} and subscribe on _INBOX.>, or use "
        "--delivery core if no stream is meant to keep the event"
    )


def _api_failure(err: APIError, where: str) -> Exception:
    """The exit a JetStream API error maps to: `_Retry` (exit 3 at the deadline) or exit 2."""
    transient, advice = _JS_ERRORS.get(err.err_code or 0, _UNKNOWN_JS_ERROR)
    description = err.description or type(err).__name__
    text = f"{where}: {description} (JetStream error {err.err_code}); {advice}"
    return _Retry(text) if transient else BadInput(text)


def _raise_if_refused(err: Exception, errors: _ServerErrors) -> None:
    for candidate in (err, *errors.seen):
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
