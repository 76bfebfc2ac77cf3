"""What Argo tells the exit handler about the finished run (SPEC §2.1, §5).

Argo hands over its template variables as text; this module turns that text into a
validated `Run`. Every bad field is gathered so that one error line names them all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from exit_handler.errors import InvalidFields

STATUSES = {"Succeeded": "succeeded", "Failed": "failed", "Error": "failed"}
MAX_FAILURES_IN_EVENT = 20
MAX_FAILURE_MESSAGE = 1000
MAX_FAILURES_TEXT = 8 * 1024 * 1024
MAX_NAME = 253
MAX_PARAMETER_VALUE = 64 * 1024
# Argo parameter names: what `{{workflow.outputs.parameters.NAME}}` can name.
_PARAMETER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_RETRY_SUFFIX = re.compile(r"\(\d+\)$")
_FAILURE_KEYS = ("displayName", "templateName", "phase", "message", "finishedAt")


@dataclass(frozen=True)
class Failure:
    """One entry of `{{workflow.failures}}`; empty strings stand for absent keys."""

    display_name: str = ""
    template_name: str = ""
    phase: str = ""
    message: str = ""
    finished_at: str = ""

    def is_exit_handler(self, exit_templates: tuple[str, ...]) -> bool:
        """A node of the exit handler itself, e.g. a failed earlier attempt of this pod.

        Argo leaves `templateName` empty on a node that a `templateRef` step created; for
        those, the step's display name (without a retry's `(n)` suffix) counts instead.
        """
        if self.template_name:
            return self.template_name in exit_templates
        return _RETRY_SUFFIX.sub("", self.display_name) in exit_templates

    def identity(self) -> tuple[str, str, str, str]:
        """The part of a failure that identifies the outcome (the event id hashes it)."""
        return (self.display_name, self.template_name, self.phase, self.message)

    def to_data(self) -> dict[str, str]:
        """The event's camelCase entry, message cut, empty keys omitted."""
        values = (
            self.display_name,
            self.template_name,
            self.phase,
            self.message[:MAX_FAILURE_MESSAGE],
            self.finished_at,
        )
        return {key: value for key, value in zip(_FAILURE_KEYS, values, strict=True) if value}


@dataclass(frozen=True)
class Run:
    """The finished workflow, as validated input."""

    status: str
    pipeline_name: str
    workflow_name: str
    workflow_uid: str
    namespace: str | None = None
    created_at: datetime | None = None
    run_id: str | None = None
    run_name: str | None = None
    run_configuration_name: str | None = None
    # Argo's failures without the exit handler's own nodes, in Argo's order, untrimmed.
    failures: tuple[Failure, ...] = ()
    output_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunText:
    """The run's inputs as text, exactly as they arrived (None or "" = not given)."""

    status: str | None = None
    pipeline_name: str | None = None
    workflow_name: str | None = None
    workflow_uid: str | None = None
    namespace: str | None = None
    created_at: str | None = None
    run_id: str | None = None
    run_name: str | None = None
    run_configuration_name: str | None = None
    failures: str | None = None
    exit_templates: tuple[str, ...] = ("publish",)
    output_parameters: tuple[str, ...] = ()


def read_run(text: RunText) -> Run:
    """Validate the run's inputs; raise `InvalidFields` naming every bad one."""
    problems: list[str] = []
    status = _status(text.status, problems)
    names = {
        option: _name(option, value, problems, required=required)
        for option, value, required in (
            ("--pipeline-name", text.pipeline_name, True),
            ("--workflow-name", text.workflow_name, True),
            ("--workflow-uid", text.workflow_uid, True),
            ("--namespace", text.namespace, False),
            ("--run-id", text.run_id, False),
            ("--run-name", text.run_name, False),
            ("--run-configuration-name", text.run_configuration_name, False),
        )
    }
    created_at = None
    if text.created_at:
        try:
            created_at = parse_timestamp(text.created_at)
        except ValueError as err:
            problems.append(f"--created-at: {err}")
    failures: tuple[Failure, ...] = ()
    try:
        failures = tuple(
            failure
            for failure in decode_failures(text.failures)
            if not failure.is_exit_handler(text.exit_templates)
        )
    except ValueError as err:
        problems.append(f"--failures: {err}")
    parameters = _output_parameters(text.output_parameters, problems)
    if problems:
        raise InvalidFields(problems)
    return Run(
        status=status,
        pipeline_name=names["--pipeline-name"] or "",
        workflow_name=names["--workflow-name"] or "",
        workflow_uid=names["--workflow-uid"] or "",
        namespace=names["--namespace"],
        created_at=created_at,
        run_id=names["--run-id"],
        run_name=names["--run-name"],
        run_configuration_name=names["--run-configuration-name"],
        failures=failures,
        output_parameters=parameters,
    )


def _status(value: str | None, problems: list[str]) -> str:
    if not value:
        problems.append("--status: required (pass {{workflow.status}})")
        return ""
    if value not in STATUSES:
        problems.append(
            f"--status: {_show(value)} is not a final workflow status "
            "(expected Succeeded, Failed or Error)"
        )
        return ""
    return STATUSES[value]


def _name(option: str, value: str | None, problems: list[str], *, required: bool) -> str | None:
    if not value:
        if required:
            problems.append(f"{option}: required")
        return None
    if "{{" in value:
        problems.append(f"{option}: {_show(value)} is an unresolved Argo variable")
    elif len(value) > MAX_NAME:
        problems.append(f"{option}: longer than {MAX_NAME} characters")
    elif not value.isprintable():
        problems.append(f"{option}: contains control characters or invalid UTF-8")
    return value


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset (Argo's `creationTimestamp`)."""
    if "{{" in value:
        raise ValueError(f"{_show(value)} is an unresolved Argo variable")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", value):
        raise ValueError(f"{_show(value)} is not an RFC 3339 timestamp like 2026-11-26T10:00:00Z")
    try:
        # Python's parser takes at most microseconds; Kubernetes never sends more.
        parsed = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value))
    except ValueError:
        raise ValueError(f"{_show(value)} is not a valid date and time") from None
    return parsed.astimezone(UTC)


def decode_failures(text: str | None) -> list[Failure]:
    """Decode `{{workflow.failures}}`: JSON that Argo quotes a second time, or `null`."""
    if not text:
        return []
    if len(text) > MAX_FAILURES_TEXT:
        raise ValueError(f"larger than {MAX_FAILURES_TEXT} bytes")
    try:
        value = json.loads(text)
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else None
    except (json.JSONDecodeError, RecursionError) as err:
        reason = getattr(err, "msg", "nested too deeply")
        raise ValueError(f"not the JSON that {{{{workflow.failures}}}} gives ({reason})") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list of failed nodes, got {type(value).__name__}")
    return [_failure(number, entry) for number, entry in enumerate(value, 1)]


def _failure(number: int, entry: object) -> Failure:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {number} is not a JSON object")
    values = []
    for key in _FAILURE_KEYS:
        value = entry.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"entry {number}: {key} is not a string")
        if not is_unicode(value):
            raise ValueError(f"entry {number}: {key} is not valid Unicode")
        values.append(value)
    return Failure(*values)


def _output_parameters(items: tuple[str, ...], problems: list[str]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not _PARAMETER_NAME.fullmatch(name):
            problems.append(f"--output-parameter: {_show(item)} is not NAME=VALUE")
        elif name in parameters:
            problems.append(f"--output-parameter: {name} given twice")
        elif "{{" in value:
            problems.append(f"--output-parameter: {name} is an unresolved Argo variable")
        elif len(value) > MAX_PARAMETER_VALUE:
            problems.append(f"--output-parameter: {name} is longer than {MAX_PARAMETER_VALUE}")
        elif not is_unicode(value):
            problems.append(f"--output-parameter: {name} is not valid UTF-8")
        else:
            parameters[name] = value
    return parameters


def is_unicode(value: str) -> bool:
    """False for the lone surrogates that invalid UTF-8 in argv or `\\ud800` in JSON give."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _show(value: str, limit: int = 60) -> str:
    """Quote a bad value for an error line: short, one line, escapes visible."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return json.dumps(shown)  # ASCII escapes: control characters and surrogates stay visible
