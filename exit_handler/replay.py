"""`exit-handler replay`: send an event that NATS did not take, exactly as it was rendered.

When delivery fails (exit 3 or 4) `publish` logs the rendered message on one line after
`UNPUBLISHED`. `replay` finds those lines in a log (text or JSON format, with or without a
collector's prefix), or reads one bare message object, and delivers each message once
under the same rules as `publish`: its original subject, headers and payload, so the same
`Nats-Msg-Id` lets a JetStream stream store a replayed event once. Everything is read and
checked before anything is sent: bad input publishes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re

from exit_handler.deadline import Deadline
from exit_handler.delivery import NatsSettings, deliver
from exit_handler.errors import BadInput
from exit_handler.wire import MSG_ID_HEADER, Message

log = logging.getLogger(__name__)
UNPUBLISHED = "unpublished event (replay it with exit-handler replay): "
# Also what earlier releases logged: "unpublished event (replay it with nats pub): ".
_MARKER = re.compile(r"unpublished event \(replay it with [^)]*\): ")
MAX_INPUT = 64 * 1024 * 1024


def find_messages(text: str, source: str) -> list[Message]:
    """The unpublished messages of a log, or the one bare message `text` is; each id once."""
    found: list[Message] = []
    for number, line in enumerate(text.splitlines(), 1):
        logged = _logged_event(line)
        if logged is not None:
            found.append(_message(logged, f"{source} line {number}"))
    if not found and text.strip():
        try:
            bare = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadInput(
                f"bad input: {source}: no unpublished event found, and not a message object "
                f"({err.msg} at line {err.lineno})"
            ) from None
        found.append(_message(bare, source))
    if not found:
        raise BadInput(f"bad input: {source}: empty")
    unique = {message.headers[MSG_ID_HEADER]: message for message in found}
    return list(unique.values())


def _logged_event(line: str) -> str | None:
    """The message JSON text of a log line that reports an unpublished event."""
    text = line
    brace = line.find("{")
    if brace >= 0:  # a JSON log line, maybe behind a collector's timestamp
        try:
            entry = json.loads(line[brace:])
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("message"), str):
            text = entry["message"]
    found = _MARKER.search(text)
    return None if found is None else text[found.end() :]


def _message(found: object, where: str) -> Message:
    """A `--dry-run`-shaped object ({subject, headers, payload}) as the message it was."""
    if isinstance(found, str):
        try:
            found = json.loads(found)
        except json.JSONDecodeError as err:
            raise BadInput(f"bad input: {where}: the event is cut or garbled ({err.msg})") from None
    if not isinstance(found, dict):
        raise BadInput(f"bad input: {where}: expected a message object")
    subject, headers, payload = found.get("subject"), found.get("headers"), found.get("payload")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        headers = {}
    problems = [
        *(["subject"] if not isinstance(subject, str) or not subject else []),
        *([f"headers with {MSG_ID_HEADER}"] if MSG_ID_HEADER not in headers else []),
        *(["payload"] if not isinstance(payload, str) else []),
    ]
    if problems or not isinstance(subject, str) or not isinstance(payload, str):
        raise BadInput(f"bad input: {where}: the message lacks {', '.join(problems)}")
    return Message(subject, dict(headers), payload.encode())


def replay(messages: list[Message], nats: NatsSettings, timeout: float) -> None:
    """Deliver each message within one deadline; the first failure stops with its status."""
    deadline = Deadline(timeout)
    for message in messages:
        settings = dataclasses.replace(nats, subject=message.subject)

        def prepare(max_payload: int, message: Message = message) -> Message:
            if message.size() > max_payload:
                raise BadInput(
                    f"bad input: the event {message.headers[MSG_ID_HEADER]} is {message.size()} "
                    f"bytes, over the server's max_payload of {max_payload}"
                )
            return message

        receipt = deliver(settings, prepare, deadline)
        stream = f", stream {receipt.stream} seq {receipt.sequence}" if receipt.stream else ""
        duplicate = " (duplicate: already stored)" if receipt.duplicate else ""
        log.info(
            "replayed event %s to %s (%s delivery%s)%s",
            message.headers[MSG_ID_HEADER],
            message.subject,
            receipt.delivery,
            stream,
            duplicate,
        )
