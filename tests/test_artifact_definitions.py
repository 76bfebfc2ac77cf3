"""Unit tests of Run Artifact Definitions: paths, and loading them from JSON or YAML (README)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from conftest import selectable
from hypothesis import given, settings
from hypothesis import strategies as st

from exit_handler.artifact_definitions import (
    MAX_INDEX,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    MAX_SEGMENT_LENGTH,
    MAX_TEXT_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    ArtifactDefinition,
    DefinitionError,
    load_definitions,
    parse_definition,
)
from exit_handler.artifact_filter import Match, Value, evaluate, parse

PROJECT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("path", "component", "output", "index", "filter_text"),
    [
        ("Pusher:pushed_model:0[pushed == 1]", "Pusher", "pushed_model", 0, "pushed == 1"),
        ("Pusher:pushed_model", "Pusher", "pushed_model", 0, None),
        ("Trainer:model:1", "Trainer", "model", 1, None),
        (
            'Evaluator:evaluation[metadata.blessed == "true"]',
            "Evaluator",
            "evaluation",
            0,
            'metadata.blessed == "true"',
        ),
        ("Pusher:pushed_model:9999", "Pusher", "pushed_model", MAX_INDEX, None),
        ("_a:b.c-d:12", "_a", "b.c-d", 12, None),
        ("0:a..b", "0", "a..b", 0, None),
        ('P:o[uri contains "]" and "[" in uri]', "P", "o", 0, 'uri contains "]" and "[" in uri'),
        ("P:o[uri matches `[0-9]+$`]", "P", "o", 0, "uri matches `[0-9]+$`"),
    ],
)
def test_parse_definition(
    path: str, component: str, output: str, index: int, filter_text: str | None
) -> None:
    definition = parse_definition("serving-model", path)
    assert definition == ArtifactDefinition(
        name="serving-model",
        component=component,
        output=output,
        index=index,
        filter=None if filter_text is None else parse(filter_text),
        path=path,
    )


def test_kfp_operator_example_selects_the_pushed_model() -> None:
    definition = parse_definition("serving-model", "Pusher:pushed_model:0[pushed == 1]")
    assert definition.filter == Match(("pushed",), "==", Value("number", "1"))
    properties = {"pushed": 1, "version": "1234", "uri": "gs://b/p/Pusher/pushed_model/1234"}
    assert evaluate(definition.filter, properties) is True
    assert evaluate(definition.filter, {**properties, "pushed": 0}) is False


def test_segment_and_index_limits_are_inclusive() -> None:
    longest = "c" * MAX_SEGMENT_LENGTH
    definition = parse_definition("n", f"{longest}:{longest}:{MAX_INDEX}")
    assert (definition.component, definition.output) == (longest, longest)


def test_error_message_names_definition_path_and_column() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("serving-model", "Pusher:pushed_model:0[pushed ==]", number=2)
    assert str(caught.value) == (
        "artifact definition 2 ('serving-model'): path 'Pusher:pushed_model:0[pushed ==]': "
        "expected a value after '==' but found end of filter at column 32"
    )
    assert isinstance(caught.value, ValueError)


# (path, a fragment of the message, 1-based column in the path)
MALFORMED_PATHS = [
    ("", "expected ':' and an output name", 1),
    ("Pusher", "expected ':' and an output name after the component name", 7),
    ("Pusher[pushed == 1]", "expected ':' and an output name", 7),
    ("Pusher:", "expected the output name", 8),
    (":pushed_model", "expected the component name", 1),
    ("Pusher::0", "expected the output name", 8),
    ("../etc:passwd", "unexpected '.' in the component name", 1),
    (".:x", "unexpected '.' in the component name", 1),
    ("P:..", "unexpected '.' in the output name", 3),
    ("P:.", "unexpected '.' in the output name", 3),
    ("Pusher/x:pushed_model", "unexpected '/' in the component name", 7),
    ("Pusher:pushed/model", "unexpected '/' in the output name", 14),
    ("Pusher:pushed model", "unexpected ' ' in the output name", 14),
    (" Pusher:pushed_model", "unexpected ' ' in the component name", 1),
    ("Pusher:-x", "unexpected '-' in the output name", 8),
    ("Püsher:x", "unexpected 'ü' in the component name", 2),
    ("P" * (MAX_SEGMENT_LENGTH + 1) + ":x", "the component name is 129 characters long", 129),
    ("P:" + "o" * (MAX_SEGMENT_LENGTH + 1), "the output name is 129 characters long", 131),
    ("Pusher:pushed_model:", "expected an index after ':'", 21),
    ("Pusher:pushed_model:x", "expected an index from 0 to 9999 but found 'x'", 21),
    ("Pusher:pushed_model:-1", "expected an index from 0 to 9999 but found '-1'", 21),
    ("Pusher:pushed_model:10000", "but found '10000'", 21),
    ("Pusher:pushed_model:1.5", "but found '1.5'", 21),
    ("Pusher:pushed_model:0:1", "unexpected ':' after the index", 22),
    ("Pusher:pushed_model]", "unexpected ']' in the output name", 20),
    ("Pusher:pushed_model[", "unbalanced '['", 20),
    ("Pusher:pushed_model[pushed == 1", "unbalanced '['", 20),
    ("Pusher:pushed_model[pushed == 1] ", "unbalanced '['", 20),
    ("Pusher:pushed_model[pushed == 1]x", "unbalanced '['", 20),
    ("Pusher:pushed_model[]", "expected a match expression but found end of filter", 21),
    ("Pusher:pushed_model:0[pushed =~ 1]", "unknown operator '=~'", 30),
    ("Pusher:pushed_model:0[pushed == 1]]", "unexpected character ']'", 34),
    ("Pusher:pushed_model[(pushed == 1]", "unbalanced '('", 21),
    ('Evaluator:evaluation[metadata.blessed == "true]', "unterminated string", 42),
    ("Pusher:pushed_model[pushed == 1 AND version == 2]", "found 'AND'", 33),
]


@pytest.mark.parametrize(
    ("path", "fragment", "column"),
    MALFORMED_PATHS,
    ids=selectable([p for p, _, _ in MALFORMED_PATHS]),
)
def test_malformed_paths_report_what_and_where(path: str, fragment: str, column: int) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition("m", path, number=3)
    message = str(caught.value)
    assert message.startswith(f"artifact definition 3 ('m'): path {path!r}: ")
    assert fragment in message
    assert message.endswith(f" at column {column}")


def test_over_long_path_is_refused_without_echoing_it() -> None:
    path = "Pusher:pushed_model[" + "x" * MAX_PATH_LENGTH + "]"
    with pytest.raises(DefinitionError) as caught:
        parse_definition("m", path)
    assert f"is {len(path)} characters long; the limit is {MAX_PATH_LENGTH}" in str(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "artifact definition 1: 'name' is empty"),
        ("n" * (MAX_NAME_LENGTH + 1), "'name' is 254 characters long; the limit is 253"),
        ("serving\nmodel", "contains '\\n' at column 8"),
        ("\x00", "contains '\\x00' at column 1"),
        ("tab\there", "contains '\\t' at column 4"),
        ("surrogate\ud800", "contains '\\ud800' at column 10"),
    ],
)
def test_bad_names(name: str, fragment: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(name, "Pusher:pushed_model")
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_names_may_be_any_printable_text_up_to_the_limit() -> None:
    for name in ("n" * MAX_NAME_LENGTH, "serving model ✓", "a:b/c"):
        assert parse_definition(name, "P:o").name == name


# ------------------------------------------------------------------------------------ loading

PATHS = ["Pusher:pushed_model:0[pushed == 1]", "Trainer:model:1"]
EXPECTED = [
    ArtifactDefinition(
        "serving-model", "Pusher", "pushed_model", 0, parse("pushed == 1"), PATHS[0]
    ),
    ArtifactDefinition("trainer-model", "Trainer", "model", 1, None, PATHS[1]),
]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(
            [
                {"name": "serving-model", "path": PATHS[0]},
                {"path": PATHS[1], "name": "trainer-model"},
            ]
        ),
        "- name: serving-model\n  path: Pusher:pushed_model:0[pushed == 1]\n"
        "- name: trainer-model\n  path: 'Trainer:model:1'\n",
        "# comment\n---\n[{name: serving-model, path: 'Pusher:pushed_model:0[pushed == 1]'},\n"
        ' {name: "trainer-model", path: "Trainer:model:1"}]\n',
    ],
    ids=["json", "yaml-block", "yaml-flow"],
)
def test_load_json_and_yaml(text: str) -> None:
    assert load_definitions(text, source="--artifacts") == EXPECTED


@pytest.mark.parametrize("text", ["", "  \n\t", "[]", "null", "~", "# only a comment\n", "---\n"])
def test_nothing_to_load(text: str) -> None:
    assert load_definitions(text, source="--artifacts") == []


# (text, the whole message after "SOURCE: ")
MALFORMED_TEXTS = [
    (
        '{"name": "a", "path": "P:o"}',
        "expected a list of {name, path} mappings but found a mapping",
    ),
    ('"P:o"', "expected a list of {name, path} mappings but found a string"),
    ("Pusher:pushed_model", "expected a list of {name, path} mappings but found a string"),
    ("42", "expected a list of {name, path} mappings but found an integer"),
    (
        "[1]",
        "artifact definition 1: expected a mapping with 'name' and 'path' but found an integer",
    ),
    (
        '[{"name": "a", "path": "P:o"}, ["b", "P:o"]]',
        "artifact definition 2: expected a mapping with 'name' and 'path' but found a list",
    ),
    ("[null]", "artifact definition 1: expected a mapping with 'name' and 'path' but found null"),
    ('[{"path": "P:o"}]', "artifact definition 1: missing 'name'"),
    ('[{"name": "a"}]', "artifact definition 1: missing 'path'"),
    (
        '[{"name": "a", "path": "P:o", "paht": "x"}]',
        "artifact definition 1: unknown key 'paht' (expected 'name' and 'path')",
    ),
    (
        "- {name: a, path: 'P:o', 1: x}",
        "artifact definition 1: keys must be strings but found an integer",
    ),
    (
        '[{"name": 7, "path": "P:o"}]',
        "artifact definition 1: 'name' must be a string but found an integer",
    ),
    (
        "- name: yes\n  path: P:o",
        "artifact definition 1: 'name' must be a string but found a boolean",
    ),
    ("- name: a\n  path: 1.5", "artifact definition 1: 'path' must be a string but found a number"),
    (
        "- name: a\n  path: 2001-02-03",
        "artifact definition 1: 'path' must be a string but found a date",
    ),
    ('[{"name": "", "path": "P:o"}]', "artifact definition 1: 'name' is empty"),
    (
        '[{"name": "a", "path": "P:o"}, {"name": "b", "path": "P:o:x"}]',
        "artifact definition 2 ('b'): path 'P:o:x': expected an index from 0 to 9999 but found "
        "'x' at column 5",
    ),
    (
        "!!python/object/apply:os.system ['true']",
        "not valid JSON or YAML: YAML tags are not supported "
        "(found 'tag:yaml.org,2002:python/object/apply:os.system') at line 1, column 1",
    ),
    (
        "- !!python/name:os.system {}",
        "not valid JSON or YAML: YAML tags are not supported "
        "(found 'tag:yaml.org,2002:python/name:os.system') at line 1, column 3",
    ),
    (
        "- &a {name: a, path: 'P:o'}\n- *a\n",
        "not valid JSON or YAML: YAML anchors and aliases are not supported at line 1, column 3",
    ),
    (
        '[{"name": "a", "path": "P:o"}',
        "not valid JSON or YAML: while parsing a flow sequence, "
        "expected ',' or ']', but got '<stream end>' at line 1, column 30",
    ),
    (
        "- a\n---\n- b\n",
        "not valid JSON or YAML: expected a single document in the stream, "
        "but found another document at line 2, column 1",
    ),
    ("- name: 2001-13-01", "not valid JSON or YAML: month must be in 1..12"),
    (
        "- \x07",
        "not valid JSON or YAML: unacceptable character #x0007: special characters are not "
        'allowed in "<unicode string>", position 2',
    ),
    (
        "[" * (MAX_YAML_DEPTH + 1) + "a" + "]" * (MAX_YAML_DEPTH + 1),
        "not valid JSON or YAML: YAML nests deeper than 16 levels at line 1, column 17",
    ),
]


@pytest.mark.parametrize(
    "text",
    [
        "- !!str a",
        "- {name: !!bool x, path: 'P:o'}",
        "!!timestamp ''",
        "- ! 1",
        "--- !<tag:example.com,2000:x> {}",
        "%TAG !e! tag:example.com,2000:\n--- !e!x []",
        "- !!set {a, b}",
    ],
)
def test_yaml_tags_are_refused(text: str) -> None:
    with pytest.raises(DefinitionError, match=r"^s: not valid JSON or YAML: YAML tags are not"):
        load_definitions(text, source="s")


@pytest.mark.parametrize(("text", "message"), MALFORMED_TEXTS)
def test_malformed_texts(text: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definitions(text, source="defs.yaml")
    assert str(caught.value) == f"defs.yaml: {message}"


def test_nesting_up_to_the_limit_is_composed() -> None:
    depth = MAX_YAML_DEPTH - 1  # inside the block sequence
    with pytest.raises(DefinitionError, match=r"definition 1: expected a mapping .* found a list"):
        load_definitions("- " + "[" * depth + "]" * depth, source="s")


def test_deep_json_is_refused() -> None:
    with pytest.raises(DefinitionError, match="YAML nests deeper than 16 levels"):
        load_definitions("[" * 100_000, source="s")


def test_text_size_is_measured_in_utf8_bytes() -> None:
    name = "é" * ((MAX_TEXT_BYTES // 2) + 20)  # fewer characters than the limit, more bytes
    text = json.dumps([{"name": name, "path": "P:o"}], ensure_ascii=False)
    assert len(text) < MAX_TEXT_BYTES < len(text.encode())
    with pytest.raises(DefinitionError, match="larger than 1048576 bytes"):
        load_definitions(text, source="--artifacts-file")


def test_yaml_node_budget() -> None:
    text = "[" + ",".join(["a"] * MAX_YAML_NODES) + "]"
    with pytest.raises(DefinitionError, match=f"more than {MAX_YAML_NODES} YAML nodes"):
        load_definitions(text, source="s")


def test_billion_laughs_is_refused_fast_and_small() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        alias = f"*{chr(ord('a') + level - 1)}"
        lines.append(f"{chr(ord('a') + level)}: &{chr(ord('a') + level)} [{','.join([alias] * 9)}]")
    bomb = "\n".join(lines) + "\n"
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DefinitionError, match="anchors and aliases are not supported"):
            load_definitions(bomb, source="bomb")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1 << 20


def test_many_definitions_load() -> None:
    count = 2_000
    text = "".join(
        f"- name: n{i}\n  path: 'Pusher:pushed_model:{i % 10}[pushed == 1]'\n" for i in range(count)
    )
    definitions = load_definitions(text, source="s")
    assert [d.name for d in definitions] == [f"n{i}" for i in range(count)]
    assert definitions[-1].index == (count - 1) % 10


def _imports_yaml(text: str) -> bool:
    code = (
        "import sys\n"
        "from exit_handler.artifact_definitions import load_definitions\n"
        f"load_definitions({text!r}, source='s')\n"
        "print('yaml' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    return result.stdout.strip() == "True"


def test_yaml_is_imported_only_for_yaml_text() -> None:
    assert _imports_yaml('[{"name": "a", "path": "P:o"}]') is False
    assert _imports_yaml("- {name: a, path: 'P:o'}") is True


# ------------------------------------------------------------------------------------ properties

YAML_TOKENS = [
    *["- ", "-", ":", ": ", "\n", "  ", "[", "]", "{", "}", ",", "'", '"', "#", "---", "..."],
    *["=", "<<: ", "|\n", ">-\n", "1:20", "2001-01-01 00:00:00 +99", "~"],
    *["&a ", "*a", "!!python/object:os.system", "!!binary", "!!set", "!!timestamp", "? ", "<<"],
    *["name", "path", "Pusher:pushed_model:0[pushed == 1]", "P:o[", "yes", "null", "1e999"],
    *["2001-13-01", "0x1", "9" * 5000, "\t", "\\", "\x00", "\ufeff", "é", "%YAML 1.1\n"],
]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_load_raises_only_definition_errors_on_any_text(text: str) -> None:
    _load_or_definition_error(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(YAML_TOKENS), max_size=60).map("".join))
def test_load_raises_only_definition_errors_on_yaml_soup(text: str) -> None:
    _load_or_definition_error(text)


def _load_or_definition_error(text: str) -> None:
    """Load ``text``: it either gives definitions or raises a one-line DefinitionError."""
    error: DefinitionError | None = None
    try:
        definitions = load_definitions(text, source="s")
    except DefinitionError as raised:
        error = raised
    if error is None:
        assert all(isinstance(d, ArtifactDefinition) for d in definitions)
    else:
        assert str(error).startswith("s: ")
        assert "\n" not in str(error)


SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}"
FILTERS = ["pushed == 1", 'metadata.blessed == "true"', "version is not empty", "`a]` in uri"]
names = st.text(
    st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=MAX_NAME_LENGTH
)
paths = st.builds(
    "{}:{}{}{}".format,
    st.from_regex(SEGMENT, fullmatch=True),
    st.from_regex(SEGMENT, fullmatch=True),
    st.one_of(st.just(""), st.integers(0, MAX_INDEX).map(":{}".format)),
    st.one_of(st.just(""), st.sampled_from(FILTERS).map("[{}]".format)),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, paths, max_size=5), st.sampled_from(["json", "yaml"]))
def test_valid_definitions_load_from_json_and_yaml(mapping: dict[str, str], form: str) -> None:
    items = [{"name": name, "path": path} for name, path in mapping.items()]
    text = json.dumps(items) if form == "json" else yaml.safe_dump(items, allow_unicode=True)
    loaded = load_definitions(text, source="s")
    assert [(d.name, d.path) for d in loaded] == list(mapping.items())
    assert loaded == [
        parse_definition(n, p, number=i) for i, (n, p) in enumerate(mapping.items(), 1)
    ]


def test_several_definitions_may_share_a_name() -> None:
    loaded = load_definitions(
        '[{"name": "model", "path": "P:o"}, {"name": "model", "path": "Q:o:1"}]', source="t"
    )
    assert [(d.name, d.component, d.index) for d in loaded] == [
        ("model", "P", 0),
        ("model", "Q", 1),
    ]
