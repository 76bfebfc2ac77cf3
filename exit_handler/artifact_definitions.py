"""Run Artifact Definitions: ``{name, path}`` pairs that name artifacts of a run.

``path`` is ``COMPONENT:OUTPUT[:INDEX][FILTER]``, for example ``Pusher:pushed_model:0[pushed == 1]``
as in kfp-operator. COMPONENT and OUTPUT become segments of a GCS path, so they are restricted to
names that can neither contain ``/`` nor traverse (``.``/``..``). FILTER is parsed with
:mod:`exit_handler.artifact_filter`.

Definitions arrive as a JSON or YAML list (``--artifacts`` or ``--artifacts-file``). The text comes
from the pipeline author, so the loader bounds its size and, for YAML, its nodes and nesting, and
refuses anchors and aliases (which make "billion laughs" documents possible) before any Python
object is built. Every fault is one DefinitionError line naming the definition and the column.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, cast

from exit_handler.artifact_filter import MAX_FILTER_LENGTH, Expr, FilterSyntaxError, parse

if TYPE_CHECKING:
    import yaml

__all__ = [
    "MAX_INDEX",
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_SEGMENT_LENGTH",
    "MAX_TEXT_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "ArtifactDefinition",
    "DefinitionError",
    "load_definitions",
    "parse_definition",
]

MAX_NAME_LENGTH = 253
"""Longest definition name: the length of a Kubernetes object name."""

MAX_SEGMENT_LENGTH = 128
"""Longest component or output name."""

MAX_INDEX = 9999
"""Largest INDEX; a run does not execute one component more often than this."""

MAX_PATH_LENGTH = 2 * MAX_SEGMENT_LENGTH + len(str(MAX_INDEX)) + len("::[]") + MAX_FILTER_LENGTH
"""Longest path that can be valid; longer ones are refused without being echoed."""

MAX_TEXT_BYTES = 1 << 20
"""Largest definitions text (UTF-8 bytes)."""

MAX_YAML_NODES = 50_000
"""YAML node budget: about 10,000 definitions; bounds the pure-Python parser's time."""

MAX_YAML_DEPTH = 16
"""Deepest YAML nesting; definitions need three levels, the composer recurses per level."""

_NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_CHARS = _NAME_START | {".", "-"}
_KEYS = ("name", "path")


class DefinitionError(ValueError):
    """A malformed definition or definitions text; the message is one line."""


@dataclass(frozen=True)
class ArtifactDefinition:
    """One parsed definition; ``path`` keeps the original text for messages."""

    name: str
    component: str
    output: str
    index: int
    filter: Expr | None
    path: str


def _shorten(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _check_name(name: str) -> str | None:
    """Return what is wrong with a definition name, or None."""
    if not name:
        return "'name' is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"'name' is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
    for column, char in enumerate(name, start=1):
        if unicodedata.category(char) in ("Cc", "Cs"):
            return (
                f"'name' {_shorten(name)} contains {char!r} at column {column}: control and "
                "surrogate characters are not allowed"
            )
    return None


def _segment_fault(segment: str, start: int, what: str) -> tuple[str, int] | None:
    """Check a COMPONENT or OUTPUT name at 0-based ``start``; return (message, position)."""
    if not segment:
        return f"expected the {what} name", start
    if len(segment) > MAX_SEGMENT_LENGTH:
        return (
            f"the {what} name is {len(segment)} characters long; the limit is {MAX_SEGMENT_LENGTH}",
            start + MAX_SEGMENT_LENGTH,
        )
    for offset, char in enumerate(segment):
        if char not in (_NAME_CHARS if offset else _NAME_START):
            allowed = "letters, digits, '_', '.' and '-'" if offset else "a letter, digit or '_'"
            return f"unexpected {char!r} in the {what} name (allowed: {allowed})", start + offset
    return None


def _index_fault(text: str, start: int) -> tuple[str, int] | None:
    if not text:
        return "expected an index after ':'", start
    if len(text) > len(str(MAX_INDEX)) or any(char not in "0123456789" for char in text):
        return f"expected an index from 0 to {MAX_INDEX} but found {_shorten(text)}", start
    return None


def parse_definition(name: str, path: str, *, number: int = 1) -> ArtifactDefinition:
    """Parse one definition; ``number`` (1-based) identifies it in messages.

    Raises DefinitionError naming the definition and, for a bad path, the 1-based column in it.
    """
    fault = _check_name(name)
    if fault is not None:
        raise DefinitionError(f"artifact definition {number}: {fault}")
    label = f"artifact definition {number} ({name!r})"
    if len(path) > MAX_PATH_LENGTH:
        raise DefinitionError(
            f"{label}: path {_shorten(path)} is {len(path)} characters long; "
            f"the limit is {MAX_PATH_LENGTH}"
        )

    def fail(message: str, position: int) -> DefinitionError:
        return DefinitionError(f"{label}: path {path!r}: {message} at column {position + 1}")

    bracket = path.find("[")
    head = path if bracket < 0 else path[:bracket]
    parts = head.split(":")
    if len(parts) == 1:
        raise fail("expected ':' and an output name after the component name", len(head))
    output_start = len(parts[0]) + 1
    index_start = output_start + len(parts[1]) + 1
    if len(parts) > 3:
        raise fail("unexpected ':' after the index", index_start + len(parts[2]))
    for segment, start, what in ((parts[0], 0, "component"), (parts[1], output_start, "output")):
        segment_fault = _segment_fault(segment, start, what)
        if segment_fault is not None:
            raise fail(*segment_fault)
    index = 0
    if len(parts) == 3:
        index_fault = _index_fault(parts[2], index_start)
        if index_fault is not None:
            raise fail(*index_fault)
        index = int(parts[2])
    expr: Expr | None = None
    if bracket >= 0:
        if not path.endswith("]") or len(path) == bracket + 1:
            raise fail("unbalanced '[': the filter must end the path with ']'", bracket)
        try:
            expr = parse(path[bracket + 1 : -1])
        except FilterSyntaxError as error:
            raise fail(error.message, bracket + 1 + error.position) from None
    return ArtifactDefinition(name, parts[0], parts[1], index, expr, path)


def _kind(value: object) -> str:
    """Describe a loaded value's type in the words of JSON and YAML."""
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
        (type(None), "null"),
    )
    for types, word in kinds:
        if isinstance(value, types):
            return word
    return f"a {type(value).__name__}"


@cache
def _yaml_loader() -> type[yaml.SafeLoader]:
    """Build, once and only when YAML is met, a SafeLoader that bounds what it composes."""
    import yaml  # lazily: only YAML input needs it

    class BoundedLoader(yaml.SafeLoader):
        """Counts nodes and depth, and refuses anchors, aliases and tags, before nodes are built."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.nodes = 0
            self.depth = 0

        def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
            event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # stubs
            fault = None
            if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
                fault = "YAML anchors and aliases are not supported"
            elif isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent) and event.tag:
                # Explicit tags reach constructors that fail with any exception (!!bool x,
                # !!timestamp ''), or construct objects (!!python/...): definitions need none.
                fault = f"YAML tags are not supported (found {_shorten(event.tag)})"
            elif self.nodes >= MAX_YAML_NODES:
                fault = f"more than {MAX_YAML_NODES} YAML nodes"
            elif self.depth >= MAX_YAML_DEPTH:
                fault = f"YAML nests deeper than {MAX_YAML_DEPTH} levels"
            if fault is not None:
                mark = cast("yaml.Mark", event.start_mark)  # the pure-Python parser's Mark
                raise yaml.composer.ComposerError(None, None, fault, mark)
            self.nodes += 1
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


def _load_yaml(text: str, source: str) -> object:
    import yaml  # lazily: only YAML input needs it

    try:
        loader = _yaml_loader()(text)  # reads at once: a bad character fails here
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(
            ", ".join(part for part in (error.context, error.problem) if part).split()
        )
        raise DefinitionError(f"{source}: not valid JSON or YAML: {problem}{where}") from None
    except (yaml.YAMLError, ValueError) as error:
        # ValueError: PyYAML's constructors for implicit timestamps and integers (2001-13-01,
        # digits beyond Python's int limit) let Python's own errors through.
        problem = " ".join(str(error).split())
        raise DefinitionError(f"{source}: not valid JSON or YAML: {problem}") from None


def _load(text: str, source: str) -> object:
    """Decode JSON, or YAML when the text is not JSON (YAML is imported only then)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _load_yaml(text, source)


def load_definitions(text: str, *, source: str) -> list[ArtifactDefinition]:
    """Load a JSON or YAML list of ``{name, path}`` mappings; ``source`` prefixes messages.

    Empty text, null and an empty list give no definitions.
    """
    if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise DefinitionError(f"{source}: definitions text is larger than {MAX_TEXT_BYTES} bytes")
    if not text.strip():
        return []
    loaded = _load(text, source)
    if loaded is None:
        return []
    if not isinstance(loaded, list):
        raise DefinitionError(
            f"{source}: expected a list of {{name, path}} mappings but found {_kind(loaded)}"
        )
    # Several definitions may share a name: each match adds an entry, as in kfp-operator.
    return [_definition(item, number, source) for number, item in enumerate(loaded, start=1)]


def _definition(item: object, number: int, source: str) -> ArtifactDefinition:
    prefix = f"{source}: artifact definition {number}"
    if not isinstance(item, dict):
        raise DefinitionError(
            f"{prefix}: expected a mapping with 'name' and 'path' but found {_kind(item)}"
        )
    for key in item:
        if not isinstance(key, str):
            raise DefinitionError(f"{prefix}: keys must be strings but found {_kind(key)}")
        if key not in _KEYS:
            raise DefinitionError(
                f"{prefix}: unknown key {_shorten(key)} (expected 'name' and 'path')"
            )
    fields: dict[str, str] = {}
    for key in _KEYS:
        if key not in item:
            raise DefinitionError(f"{prefix}: missing '{key}'")
        value = item[key]
        if not isinstance(value, str):
            raise DefinitionError(f"{prefix}: '{key}' must be a string but found {_kind(value)}")
        fields[key] = value
    try:
        return parse_definition(fields["name"], fields["path"], number=number)
    except DefinitionError as error:
        raise DefinitionError(f"{source}: {error}") from None
