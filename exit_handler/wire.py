"""How the CloudEvent travels on NATS (docs/events.md): binary or structured content mode.

A `Message` is exactly what goes on the wire; `--dry-run` prints it and delivery sends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudevents.core.v1.event import CloudEvent

from exit_handler.errors import BadInput

CONTENT_MODES = ("binary", "structured")
MSG_ID_HEADER = "Nats-Msg-Id"


@dataclass(frozen=True)
class Message:
    subject: str
    headers: dict[str, str]
    payload: bytes

    def size(self) -> int:
        """Bytes the server counts against `max_payload`: the header block plus payload."""
        block = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return len((block + "\r\n").encode()) + len(self.payload)

    def to_json(self) -> dict[str, Any]:
        """The `--dry-run` form; the payload as the UTF-8 text that travels."""
        return {
            "subject": self.subject,
            "headers": self.headers,
            "payload": self.payload.decode(),
        }


def encode(event: CloudEvent, subject: str, mode: str) -> Message:
    """Encode the event in the CloudEvents NATS binding's `mode`."""
    if mode == "structured":
        # Imported here: only structured mode needs the SDK's JSON format.
        from cloudevents.core.formats.json import JSONFormat

        headers = {"Content-Type": JSONFormat.CONTENT_TYPE}
        payload = JSONFormat().write(event)
    else:
        headers = {
            f"ce-{name}": percent_encode(value) for name, value in event.get_attributes().items()
        }
        headers["Content-Type"] = "application/json"
        payload = json_bytes(event.get_data())
    headers[MSG_ID_HEADER] = event.get_id()
    return Message(subject, headers, payload)


def fit(render: Callable[[int], Message], max_size: int, failure_limit: int) -> Message:
    """The message with as many failures as fit in `max_size` bytes, else bad input."""
    for limit in range(failure_limit, -1, -1):
        message = render(limit)
        if message.size() <= max_size:
            return message
    raise BadInput(
        f"the event is {message.size()} bytes, more than the server's max_payload of "
        f"{max_size} even without failures: shorten the artifact definitions or output "
        "parameters, or raise max_payload"
    )


def json_bytes(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def percent_encode(value: object) -> str:
    """The HTTP binding's rule (§3.1.3.2) that the NATS binding adopts.

    Space, `"`, `%` and anything outside printable ASCII are percent-encoded as UTF-8.
    """
    text = value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else str(value)
    return "".join(
        char if "!" <= char <= "~" and char not in '"%' else _escape(char) for char in text
    )


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode())
