"""Exit statuses and the errors that map to them (README, Running it).

Every failure the product expects is one of the exceptions below; `cli.main` turns
it into a single line on stderr and the matching exit status. Anything else is a bug
(exit 1).
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """What the exit code tells Argo's `retryStrategy`: only UNAVAILABLE is retried."""

    SUCCESS = 0
    ERROR = 1
    BAD_INPUT = 2
    UNAVAILABLE = 3
    REFUSED = 4


class ExitHandlerError(Exception):
    """An expected failure: its message is the one line the operator reads."""

    status: ExitStatus = ExitStatus.ERROR


class BadInput(ExitHandlerError):
    """Bad input or configuration: retrying cannot help, nothing was published."""

    status = ExitStatus.BAD_INPUT


class Unavailable(ExitHandlerError):
    """A dependency (NATS, GCS) stayed unavailable until the deadline."""

    status = ExitStatus.UNAVAILABLE


class Refused(ExitHandlerError):
    """Authentication, permission or TLS verification failed."""

    status = ExitStatus.REFUSED


class InvalidFields(BadInput):
    """Several bad inputs gathered into one line, each naming its field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("bad input: " + "; ".join(problems))
