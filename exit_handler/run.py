"""What Argo tells the exit handler about the finished run (docs/events.md).

Argo hands over its template variables as text; this module turns that text into a
validated `Run`. Every bad field is gathered so that one error line names them all.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from exit_handler.errors import InvalidFields

log = logging.getLogger(__name__)

# The names `exit-handler inject` gives the exit handler's own nodes: the onExit wrapper
# template, and the step in it that calls the WorkflowTemplate by templateRef.
WRAPPER = "run-completion-exit-handler"
OUR_STEP = "publish-run-completion"
OWN_NODES = (WRAPPER, OUR_STEP)
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
_JSON_SPACE = " \t\n\r"
# A Go interpreted string literal, as strconv.Quote writes it and strconv.Unquote reads it.
# Patterns from here on stay text: only a list that is not plain JSON (or is cut) needs them,
# and `re` compiles each once, on first use, instead of on every run's start.
_GO_ESCAPE = r'\\(?:[abfnrtv\\"]|x[0-9a-fA-F]{2}|[0-7]{3}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})'
_GO_BODY = rf'(?:[^"\\\n]++|{_GO_ESCAPE})*+'
_GO_CUT_ESCAPE = r"\\(?:x[0-9a-fA-F]?|[0-7]{0,2}|u[0-9a-fA-F]{0,3}|U[0-9a-fA-F]{0,7})"
_GO_CONTROLS = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_UNDECODABLE = "[\udc80-\udcff]"
# What a cut leaves of an entry: the start of a flat object of strings and nulls, the only
# shape Go's json.Marshal gives a failed node.
_JSON_CHARS = r'(?:[^"\\\x00-\x1f]++|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*+'
_JSON_STRING = rf'"{_JSON_CHARS}"'
_JSON_CUT_STRING = rf'"{_JSON_CHARS}(?:\\(?:u[0-9a-fA-F]{{0,3}})?)?'
_JSON_MEMBER = rf"{_JSON_STRING}:(?:{_JSON_STRING}|null)"
_CUT_ENTRY = (
    rf"\{{(?:{_JSON_MEMBER},)*+"
    rf"(?:{_JSON_MEMBER}|{_JSON_STRING}(?::(?:{_JSON_CUT_STRING}|n(?:ul?)?)?)?|{_JSON_CUT_STRING})?"
)


@dataclass(frozen=True)
class Failure:
    """One entry of `{{workflow.failures}}`; empty strings stand for absent keys."""

    display_name: str = ""
    template_name: str = ""
    phase: str = ""
    message: str = ""
    finished_at: str = ""

    def is_exit_handler(self, own_nodes: tuple[str, ...]) -> bool:
        """A node of the exit handler itself, e.g. a failed earlier attempt of this pod.

        The wrapper is a local template: its node carries its name. The step that calls the
        WorkflowTemplate by `templateRef` carries an empty `templateName` before Argo 3.5 and
        the referenced template's name (`publish`, which a pipeline may use too) from 3.5:
        its display name, the step's name with `(n)` on each retry, is what identifies it.
        """
        return (
            self.template_name in own_nodes or _RETRY_SUFFIX.sub("", self.display_name) in own_nodes
        )

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
    # When the run's entrypoint ended; known only from the Workflow object.
    finished_at: datetime | None = None
    run_id: str | None = None
    run_name: str | None = None
    run_configuration_name: str | None = None
    # Argo's failures without the exit handler's own nodes, in Argo's order, untrimmed.
    failures: tuple[Failure, ...] = ()
    # The list arrived cut at inject's bound: `failures` is an arbitrary subset of it.
    failures_cut: bool = False
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
    finished_at: str | None = None
    run_id: str | None = None
    run_name: str | None = None
    run_configuration_name: str | None = None
    failures: str | None = None
    # Template and step names of the exit handler's own nodes (`--exit-templates`).
    exit_templates: tuple[str, ...] = OWN_NODES
    output_parameters: tuple[str, ...] = ()
    # The outputs were read from the Workflow: data, never an unresolved variable.
    outputs_resolved: bool = False


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
    created_at = _timestamp("--created-at", text.created_at, problems)
    finished_at = _timestamp("--workflow: finishedAt", text.finished_at, problems)
    failures: tuple[Failure, ...] = ()
    cut = False
    try:
        decoded = decode_failures(text.failures)
        cut = decoded.cut
        failures = tuple(
            failure
            for failure in decoded.entries
            if not failure.is_exit_handler(text.exit_templates)
        )
    except ValueError as err:
        problems.append(f"--failures: {err}")
    parameters = _output_parameters(text.output_parameters, problems, text.outputs_resolved)
    if problems:
        raise InvalidFields(problems)
    if cut:
        log.warning(
            "{{workflow.failures}} arrived cut at the size bound that inject puts on it "
            "(more failed nodes than fit): kept the %d failed nodes that arrived whole; the "
            "event shows only those and its id stands for any cut list of this run",
            len(failures),
        )
    return Run(
        status=status,
        pipeline_name=names["--pipeline-name"] or "",
        workflow_name=names["--workflow-name"] or "",
        workflow_uid=names["--workflow-uid"] or "",
        namespace=names["--namespace"],
        created_at=created_at,
        finished_at=finished_at,
        run_id=names["--run-id"],
        run_name=names["--run-name"],
        run_configuration_name=names["--run-configuration-name"],
        failures=failures,
        failures_cut=cut,
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


def _timestamp(option: str, value: str | None, problems: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as err:
        problems.append(f"{option}: {err}")
        return None


def parse_timestamp(value: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset (Argo's `creationTimestamp`)."""
    if "{{" in value:
        raise ValueError(f"{_show(value)} is an unresolved Argo variable")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", value):
        raise ValueError(f"{_show(value)} is not an RFC 3339 timestamp like 2026-11-26T10:00:00Z")
    try:
        parsed = datetime.fromisoformat(value)  # since 3.11: nanoseconds cut to microseconds
    except ValueError:
        raise ValueError(f"{_show(value)} is not a valid date and time") from None
    return parsed.astimezone(UTC)


class DecodedFailures(NamedTuple):
    """The entries of `{{workflow.failures}}`, and whether the list arrived cut short."""

    entries: list[Failure]
    cut: bool


def decode_failures(text: str | None) -> DecodedFailures:
    """Decode `{{workflow.failures}}`: JSON that Argo quotes a second time, or `null`.

    Argo quotes with Go's strconv.Quote, which writes escapes that JSON does not know
    (`\\x7f`, `\\U0001fae9`): the outer layer is read as JSON, else as a Go string literal.
    Inject bounds the text with `sprig.trunc`, which cuts it anywhere, even inside an escape
    or a character: of a cut list, the entries that arrived whole are kept.
    """
    if not text:
        return DecodedFailures([], cut=False)
    if len(text) > MAX_FAILURES_TEXT:
        raise ValueError(f"larger than {MAX_FAILURES_TEXT} bytes")
    try:
        value, cut = _outer_layer(text)
        if isinstance(value, str):
            value, cut = _inner_list(value, cut)
    except RecursionError:  # json's scanner on `[[[[…`, in either layer
        raise ValueError(_not_failures("nested too deeply")) from None
    if value is None:
        return DecodedFailures([], cut)
    if not isinstance(value, list):
        raise ValueError(f"expected a JSON list of failed nodes, got {type(value).__name__}")
    return DecodedFailures([_failure(number, entry) for number, entry in enumerate(value, 1)], cut)


def go_unquote(text: str) -> tuple[str, bool]:
    """Read a Go interpreted string literal as strconv.Unquote does; also a cut one.

    Returns the value and whether the closing quote is missing (JSON's whitespace may follow
    it; a cut leaves none). The escapes build bytes (`\\xe2\\x82\\xac` is one character); bytes
    that are not UTF-8 become U+FFFD one by one, as Go's encoding/json reads them.
    """
    if not text.startswith('"'):
        raise ValueError(_not_failures("not a quoted string"))
    end = re.compile(_GO_BODY).match(text, 1).end()  # type: ignore[union-attr]  # `*+` matches
    rest = text[end:]
    cut = not rest or bool(re.fullmatch(_GO_CUT_ESCAPE, rest))
    if rest.rstrip(_JSON_SPACE) != '"' and not cut:
        shown = json.dumps(rest[:12])
        raise ValueError(_not_failures(f"invalid Go string literal at character {end}: {shown}"))
    body = re.sub(_GO_ESCAPE, _go_escape, text[1:end])
    try:
        data = body.encode("utf-8", "surrogateescape")  # argv's undecodable bytes too
    except UnicodeEncodeError:
        raise ValueError(_not_failures("not valid Unicode")) from None
    return re.sub(_UNDECODABLE, "\ufffd", data.decode("utf-8", "surrogateescape")), cut


def _go_escape(match: re.Match[str]) -> str:
    """One escape: a character, or a byte (as surrogateescape writes one above 0x7f)."""
    escape = match.group()
    kind = escape[1]
    if kind in _GO_CONTROLS:
        return _GO_CONTROLS[kind]
    if kind in '\\"':
        return kind
    if kind in "uU":
        value = int(escape[2:], 16)
        if 0xD800 <= value <= 0xDFFF or value > 0x10FFFF:
            raise ValueError(_not_failures(f"{escape} is no Unicode character"))
        return chr(value)
    value = int(escape[2:], 16) if kind == "x" else int(escape[1:], 8)
    if value > 0xFF:
        raise ValueError(_not_failures(f"octal escape {escape} is above 255"))
    return chr(value) if value < 0x80 else chr(0xDC00 + value)


def _outer_layer(text: str) -> tuple[object, bool]:
    """Argo's quoting read as JSON, else as a Go string literal; and whether it was cut."""
    try:
        return json.loads(text), False
    except json.JSONDecodeError as err:
        quoted = text.lstrip(_JSON_SPACE)
        if not quoted.startswith('"'):
            raise ValueError(_not_failures(err.msg)) from None
        return go_unquote(quoted)


def _inner_list(text: str, cut: bool) -> tuple[object, bool]:
    """The JSON inside the quotes, or the entries that a cut left whole (and `cut`)."""
    if not text.strip(_JSON_SPACE):
        return None, cut  # `""`, or a cut right after the opening quote
    try:
        return json.loads(text), False  # whole, even when only the closing quote was cut
    except json.JSONDecodeError as err:
        if not cut:
            raise ValueError(_not_failures(err.msg)) from None
    return _whole_entries(text), True


def _whole_entries(text: str) -> list[object]:
    """The entries of `[{…},{…},{…` before the cut; what follows must be a cut entry."""
    if not text.startswith("["):
        raise ValueError(_not_failures("expected a list"))
    entries: list[object] = []
    position = 1
    decoder = json.JSONDecoder()
    while position < len(text):
        try:
            entry, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            if re.compile(_CUT_ENTRY).fullmatch(text, position):
                break
            raise ValueError(_not_failures(f"entry {len(entries) + 1}: {err.msg}")) from None
        entries.append(entry)
        if text.startswith(",", position):
            position += 1
        elif position < len(text):
            raise ValueError(_not_failures(f"expected ',' after entry {len(entries)}"))
    return entries


def _not_failures(reason: str) -> str:
    return f"not the JSON that {{{{workflow.failures}}}} gives ({reason})"


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


def _output_parameters(
    items: tuple[str, ...], problems: list[str], resolved: bool
) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not _PARAMETER_NAME.fullmatch(name):
            problems.append(f"--output-parameter: {_show(item)} is not NAME=VALUE")
        elif name in parameters:
            problems.append(f"--output-parameter: {name} given twice")
        elif "{{" in value and not resolved:
            problems.append(f"--output-parameter: {name} is an unresolved Argo variable")
        elif len(value) > MAX_PARAMETER_VALUE and resolved:
            log.warning("global output %s is longer than %d: left out", name, MAX_PARAMETER_VALUE)
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
