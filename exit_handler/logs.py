"""Logs on stderr, as text for people or as one JSON object a line for collectors."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TextIO

LOGGER = "exit_handler"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str, stream: TextIO) -> None:
    """Send the package's logs to `stream`; calling it again replaces the handler."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("exit-handler: %(levelname)s: %(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
