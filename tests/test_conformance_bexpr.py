"""Differential test of the filter language against the real hashicorp/go-bexpr (README).

kfp-operator evaluates Run Artifact Definition filters with ``bexpr.CreateEvaluator(filter)``
and ``Evaluate(properties)``: go-bexpr v0.1.14 at kfp-operator v0.7, v0.1.16 at its head. The
harnesses in ``conformance/go-bexpr/`` do exactly that with the real module from the Go proxy
(nothing upstream is copied here), one process per version for the whole corpus. Our
``parse`` and ``evaluate`` must give the same accept/reject and, for each property map, the same
result (match, no match, evaluation error). The only disagreements allowed are the deliberate
deviations below, each documented in README.md ("Conformance -> go-bexpr") and recognised by
a rule; any other disagreement fails with the cases that show it.

The corpus: every inline code span and every filter in a definition path of README.md, every
string literal of the filter and definition tests, hand-picked edge cases (go-bexpr's quirks,
Go string escapes, ParseInt's base prefixes, RE2 syntax, parse budgets), and a few thousand
expressions and property maps drawn by Hypothesis with a fixed seed (``derandomize``), so a
failure reproduces on every run and machine.
"""

from __future__ import annotations

import ast
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from go_harness import run_harness
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exit_handler.artifact_filter import (
    KEYWORDS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_PARSE_STEPS,
    Expr,
    FilterEvaluationError,
    FilterSyntaxError,
    Match,
    Not,
    Value,
    evaluate,
    parse,
    parse_steps,
    render,
)

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).parent.parent
V14, V16 = "go-bexpr/v0.1.14", "go-bexpr/v0.1.16"
# More cases for a deeper local run: EXIT_HANDLER_BEXPR_CASES=20000 make conformance
GENERATED = int(os.environ.get("EXIT_HANDLER_BEXPR_CASES", "2500"))
# v0.1.14 has no parse budget and pigeon is exponential in some nestings: beyond this many
# steps a case takes seconds there, so only a few such cases are sent (see EDGE_DEEP).
V14_STEPS = 12_000_000

T = TypeVar("T")

# ------------------------------------------------------------------------------ property maps
# As the exit handler hands them to filters (artifacts.properties) and as kfp-operator would
# hand go-bexpr MLMD values: integers are int64, strings are strings, metadata is a
# map[string]any of strings. The harness types JSON integers as int64 to match.

PUSHED: dict[str, object] = {
    "pushed": 1,
    "version": "1234",
    "uri": "gs://bucket/penguin/Pusher/pushed_model/1234",
    "component": "Pusher",
    "output": "pushed_model",
    "metadata": {
        "blessed": "true",
        "model-version": "v2",
        "a.b": "dotted",
        "empty": "",
        "x/y": "slash",
        "~": "tilde",
        "é": "ünïcødé ✓",
        "1": "one",
    },
}
NOT_PUSHED: dict[str, object] = {**PUSHED, "pushed": 0, "version": "", "metadata": {}}
FIXED_PROPERTIES = [PUSHED, NOT_PUSHED]

# ------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Outcome:
    """One side's answer for one case: accepted or not, and each property map's result."""

    ok: bool
    error: str
    results: tuple[str, ...]  # "match", "no match", "error: ...", "panic: ..."
    pattern: str | None = None  # the regular expression we refused, if that was the fault


def ours(text: str, properties: list[dict[str, object]]) -> Outcome:
    try:
        expr = parse(text)
    except FilterSyntaxError as error:
        return Outcome(ok=False, error=str(error), results=(), pattern=error.pattern)
    results: list[str] = []
    for item in properties:
        try:
            results.append("match" if evaluate(expr, item) else "no match")
        except FilterEvaluationError as error:
            results.append(f"error: {error}")
    return Outcome(ok=True, error="", results=tuple(results))


def theirs(answer: Mapping[str, Any]) -> Outcome:
    results: list[str] = []
    for item in answer["results"]:
        if item.get("panic"):
            results.append(f"panic: {item['panic']}")
        elif item.get("error"):
            results.append(f"error: {item['error']}")
        else:
            results.append("match" if item["match"] else "no match")
    return Outcome(ok=bool(answer["ok"]), error=answer.get("error", ""), results=tuple(results))


def kind(result: str) -> str:
    """Results agree when their kinds do: messages are free to differ."""
    return result.split(":", 1)[0]


# ------------------------------------------------------------------------------ deviations
# (key, README phrase, versions, rule). A rule sees the text, our outcome and go-bexpr's and
# says whether the disagreement is this deviation. Keys are what the test reports counts of.


def _operators(text: str) -> set[str]:
    """The match operators of a filter we accept."""
    try:
        stack: list[Expr] = [parse(text)]
    except FilterSyntaxError:
        return set()
    found: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, Match):
            found.add(node.operator)
        elif isinstance(node, Not):
            stack.append(node.operand)
        else:
            stack += [node.left, node.right]
    return found


def _we_refuse(fragment: str) -> Callable[[str, Outcome, Outcome], bool]:
    return lambda _text, mine, go: go.ok and not mine.ok and fragment in mine.error


def _unicode_class(text: str, mine: Outcome, go: Outcome) -> bool:
    """RE2 (and Go up to 1.24) vs Go 1.25+ on \\p{Name}: Go refuses what RE2 takes."""
    # The pattern as Go quotes it in its error: the filter may spell \p with escapes.
    go_refused = [r for r in go.results if "regular expression" in r and ("\\p" in r or "\\P" in r)]
    return mine.ok and go.ok and bool(go_refused)


def _v14_is_nil(text: str, mine: Outcome, go: Outcome) -> bool:
    return mine.ok and not go.ok and bool(_operators(text) & {"is nil", "is not nil"})


def _v14_panics(_text: str, mine: Outcome, go: Outcome) -> bool:
    if not (mine.ok and go.ok):
        return False
    return all(
        kind(a) == kind(b) or (kind(a) == "error" and kind(b) == "panic")
        for a, b in zip(mine.results, go.results, strict=True)
    ) and any(kind(b) == "panic" for b in go.results)


@dataclass(frozen=True)
class Deviation:
    key: str
    readme: str  # the phrase README.md's "Conformance -> go-bexpr" section uses for it
    versions: frozenset[str]
    applies: Callable[[str, Outcome, Outcome], bool]


BOTH = frozenset({V14, V16})
PATTERN_AT_PARSE = "pattern checked when parsed"
DEVIATIONS = [
    Deviation(
        "filter longer than 1,024 characters",
        "1,024 characters",
        BOTH,
        lambda text, mine, go: len(text) > MAX_FILTER_LENGTH and go.ok and not mine.ok,
    ),
    Deviation("nesting deeper than 32", "32 levels", BOTH, _we_refuse("nests deeper than")),
    Deviation("any/all refused", "`any`/`all`", BOTH, _we_refuse("'any' and 'all'")),
    # Provisional: compare() then asks Go's regexp whether it refuses the pattern too.
    Deviation(
        PATTERN_AT_PARSE,
        "checked when parsed",
        BOTH,
        lambda _text, mine, go: go.ok and not mine.ok and mine.pattern is not None,
    ),
    Deviation("RE2 8 MiB program limit", "8 MiB", BOTH, lambda *_: False),  # see compare()
    Deviation("unicode class names", "`\\p{Name}`", BOTH, _unicode_class),
    Deviation("v0.1.14: no is nil", "`is nil`", frozenset({V14}), _v14_is_nil),
    Deviation("v0.1.14: no parse budget", "2,000,000", frozenset({V14}), _we_refuse("too complex")),
    Deviation("v0.1.14: is empty on a number panics", "panics", frozenset({V14}), _v14_panics),
]


def refused_patterns(version: str, patterns: list[str]) -> list[bool]:
    """Does Go's regexp (through go-bexpr) refuse each pattern? One process for all."""
    answers = run_harness(
        version,
        [
            {
                "expr": render(Match(("v",), "matches", Value("string", p))),
                "properties": [{"v": ""}],
            }
            for p in patterns
        ],
    )
    refused = []
    for pattern, answer in zip(patterns, answers, strict=True):
        assert answer["ok"], (pattern, answer)  # render() must reach go-bexpr's regexp
        refused.append("regular expression" in answer["results"][0].get("error", ""))
    return refused


def pattern_deviation(pattern: str, mine: Outcome, go_refuses: bool) -> str:
    """Which deviation a pattern we refused at parse time is, once Go's regexp has spoken."""
    if go_refuses:
        return PATTERN_AT_PARSE
    if "too large" in mine.error:
        return "RE2 8 MiB program limit"
    if "\\p" in pattern or "\\P" in pattern:
        return "unicode class names"
    return "UNEXPLAINED"


def classify(version: str, text: str, mine: Outcome, go: Outcome) -> str | None:
    """None when both agree; else the deviation's key, or "UNEXPLAINED"."""
    if mine.ok == go.ok and (
        not mine.ok or [kind(r) for r in mine.results] == [kind(r) for r in go.results]
    ):
        return None
    for deviation in DEVIATIONS:
        if version in deviation.versions and deviation.applies(text, mine, go):
            return deviation.key
    return "UNEXPLAINED"


@dataclass
class Case:
    text: str
    properties: list[dict[str, object]]


def compare(version: str, cases: list[Case], *, sent: list[str] | None = None) -> Counter[str]:
    """Run ``cases`` through the harness and us; fail on any unexplained disagreement.

    ``sent`` replaces the texts go-bexpr sees (the mutation test uses it); returns the number
    of cases per deviation key, plus "agree".
    """
    texts = sent if sent is not None else [case.text for case in cases]
    answers = run_harness(
        version,
        [
            {"expr": text, "properties": case.properties}
            for text, case in zip(texts, cases, strict=True)
        ],
    )
    assert len(answers) == len(cases)
    outcomes = [
        (case, ours(case.text, case.properties), theirs(answer))
        for case, answer in zip(cases, answers, strict=True)
    ]
    keys = [classify(version, case.text, mine, go) for case, mine, go in outcomes]
    # A pattern we refused at parse time must be one Go's regexp refuses too.
    provisional = [i for i, key in enumerate(keys) if key == PATTERN_AT_PARSE]
    patterns = [str(outcomes[i][1].pattern) for i in provisional]
    for i, pattern, go_refuses in zip(
        provisional, patterns, refused_patterns(version, patterns) if patterns else [], strict=True
    ):
        keys[i] = pattern_deviation(pattern, outcomes[i][1], go_refuses)
    counts: Counter[str] = Counter()
    unexplained: list[str] = []
    for (case, mine, go), key in zip(outcomes, keys, strict=True):
        counts[key or "agree"] += 1
        if key == "UNEXPLAINED":
            unexplained.append(
                f"{case.text!r}\n    ours: {mine}\n    {version}: {go}\n"
                f"    properties: {case.properties}"
            )
    assert not unexplained, (
        f"{len(unexplained)} of {len(cases)} cases disagree with {version}:\n"
        + "\n".join(unexplained[:15])
    )
    return counts


# ------------------------------------------------------------------------------ the corpus

PATH_FILTER = re.compile(r"[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+(?::\d+)?\[(.*)\]$", re.DOTALL)


def readme_cases() -> list[str]:
    """Every inline code span of README.md, and the filter of every definition path in it."""
    text = (ROOT / "README.md").read_text()
    spans = re.findall(r"``? ?([^`\n]+?) ?``?", text)
    paths = re.findall(r'path: "((?:[^"\\]|\\.)*)"', text) + re.findall(r"`([^`\n]+\])`", text)
    filters = []
    for path in paths:
        found = PATH_FILTER.match(path.replace('\\"', '"'))
        if found:
            filters.append(found.group(1))
    return spans + filters


def source_strings(*names: str) -> list[str]:
    """Every string literal of these test modules; a definition path adds its filter."""
    strings: list[str] = []
    for name in names:
        tree = ast.parse((ROOT / "tests" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.append(node.value)
                found = PATH_FILTER.match(node.value)
                if found:
                    strings.append(found.group(1))
    return [s for s in strings if len(s) <= 2 * MAX_FILTER_LENGTH]


PATTERNS = [
    *["(a+)+$", "(x+x+)+y", "^(a|a)*$", r"(.*a){12}", r"^\d+$", r"[0-9]+$", "^gs://", "a|b", ""],
    *[r"(a)\1", "(?=a)", "(?!a)", "(?<=a)b", "(?<!a)b", "(?P<n>a)", "(?<n>a)", r"\C", r"\Q\C\E"],
    *[r"\Z", r"\z", r"\A", "a{1001}", "a{1000}", "(a{1000}){1000}", "(a{100}){100}", "[[:word:]]"],
    *["[[:foo:]]", r"\pN", r"\p{Greek}", r"\p{greek}", r"\p{Letter}", r"\p{Old_Italic}", r"\PL"],
    *["(?i)pusher", "(?i)k", "(?U)a+", "(?s).", "(?m)^1234$", "x*?", "a**", "(?#c)", r"\Qa.b\E"],
    *["[a-]", "[]a]", r"\b", r"\B", r"\8", r"\0", r"\x{10FFFF}", r"\x{110000}", r"\cA", r"\e"],
    *[r"\v", r"\h", "x{2,1}", "x{,3}", "(", ")", "[", "*", "a|", "()", "(?i)", "(?-i)a", "(?x) a"],
    *[
        "(?P=n)",
        "(?>a)",
        "[[.a.]]",
        r"\p{Han}",
        "(?i)\u017f",
        r"(?i)\x{212A}",
        r"\W\S\D",
        r"\_",
        "é+",
    ],
    *["$", "^", "^$", r"1234\z", r"^\d+$", "\u00e9", "[\u00e0-\u00ff]", "pushed_model/[0-9]+"],
    *["(" * 999 + ")" * 999, "(" * 1001 + ")" * 1001, "tilde|~", "^ünï"],
    *["a{1000000000}", "a{1,1000000000}", "a{0123456789}", "[a{1000000000}]", r"\{1000000000}"],
    *["(a{1000}){10}", "((a{10}){10}){10}", r"(\pL{1000}){1}", r"[\C]", r"\Q\C", "a{1,}"],
]


def quote(text: str) -> str:
    """A Go string literal of ``text`` go-bexpr reads back (quotes as \\x22)."""
    escaped = text.replace("\\", "\\\\").replace('"', "\\x22").replace("\n", "\\n")
    return f'"{escaped}"'


EDGE = [
    # keywords are names where the grammar does not try them
    *["version == empty", "x in not", "not == 1", "and in metadata", "any == x", "a == or"],
    *[
        "not(pushed == 1)",
        "(pushed==1)and(pushed==1)",
        "pushed==1 or(pushed==0)",
        "not  not pushed == 1",
    ],
    # selectors: dots, digits, index keys, JSON pointers
    *["metadata.model-version == v2", 'metadata["model-version"] == v2', "metadata.a.b == dotted"],
    *['metadata["a.b"] == dotted', '"/metadata/a.b" == dotted', '"/metadata/x~1y" == slash'],
    *[
        '"/metadata/~0" == tilde',
        "metadata.1 == one",
        "metadata[ `1` ] == one",
        '"/metadata/1" == one',
    ],
    *['"/metadata/é" contains ünï', 'metadata["é"] is not empty', '"" == x', '"/" == x'],
    *["metadata. == x", 'metadata["k" == x', "metadata[k] == x", "metadata.x/y == slash"],
    *['uri contains "/Pusher"', 'uri contains "/Pusher/"', '"/pushed_model/1234" in uri'],
    *["_a == 1", "A_b/c.d == x", "metadata.missing.deeper == x", "pushed.x == 1", "version.x == 1"],
    # missing keys: "not present", not an error; a missing property is an error
    *["metadata.missing != x", "not metadata.missing == x", "metadata.missing is empty"],
    *["metadata.missing is nil", "metadata.blessed is not nil", "metadata is nil", "pushed is nil"],
    *["x not in metadata.missing", "metadata.missing not matches `x`", "pushed_version == 1"],
    *["pushed_version != 1", "not pushed_version == 1", "pushed == 1 or pushed_version == 1"],
    # numbers and Go's ParseInt(text, 0, 64)
    *[
        "pushed == 007",
        "pushed == 1.",
        "pushed == 1abc",
        "pushed == +1",
        "pushed == -0",
        "pushed == 0.0",
    ],
    *['pushed == "0x1"', 'pushed == "0X1"', 'pushed == "0b1"', 'pushed == "0o1"', 'pushed == "01"'],
    *['pushed == "1_0"', 'pushed == "0x_1"', 'pushed == "_1"', 'pushed == "1_"', 'pushed == "08"'],
    *['pushed == "9223372036854775807"', 'pushed != "9223372036854775808"', 'pushed == "+-1"'],
    *['pushed != "-9223372036854775808"', 'pushed != "-9223372036854775809"', 'pushed == " 1"'],
    *[
        'pushed == "\u0661"',
        "pushed == 1)",
        "pushed == 1]",
        "(pushed == 1)",
        "version == -2.5",
        "1 in 2",
    ],
    *["1 in pushed", "x in pushed", "pushed contains 1", "pushed is empty", "pushed is not empty"],
    *["pushed matches 1", "metadata == x", "metadata contains blessed", "metadata is empty"],
    # Go string literals: strconv.Unquote, ending at the first quote
    *['v == "a\\"b"', 'version == "\\x31\\x32\\x33\\x34"', 'version == "\\061234"', "v == `a\\b`"],
    *[
        'uri contains "\\xff"',
        '"\\xc3" in metadata',
        'metadata.é contains "\\xc3"',
        'version == "\\q"',
    ],
    *[
        'version == "\\u0031234"',
        'version == "\\U00000031234"',
        'version == "\\ud800"',
        'v == "\\400"',
    ],
    *['version == "1234\\n"', 'version == "12\n34"', "version == `12\r34`", "version == `1234\r`"],
    *[
        'version == "1234',
        "version == `1234",
        'version == "\\',
        "version == '1234'",
        'v == "\\a\\b\\f\\v"',
    ],
    *[
        '"\\u00e9" in metadata',
        '"é" in metadata',
        '"\\x2fmetadata" == x',
        'metadata["\\x7e"] == tilde',
    ],
    # whitespace, grouping, precedence
    *["\tpushed == 1\n", "pushed\n==\n1", "( pushed == 1 )", "((pushed == 1) )", "pushed == 1 ()"],
    *["pushed == 1 or pushed == 0 and version == x", "not pushed == 1 and version == 1234"],
    *["pushed == 1 AND version == 1234", "pushed === 1", "pushed = 1", "pushed =~ 1", "pushed > 1"],
    *["pushed == 1 && version == 2", "pushed == 1 ||", "pushed == 1)", "(pushed == 1", ")", ""],
    # collections (refused here), is nil (v0.1.16)
    *["any metadata as k { k == blessed }", "all metadata as k, v { v is not empty }"],
    *["any metadata as _, v { v == true }", "all version as c { c == x }", "metadata is not nil"],
    # limits
    "pushed == 1 and " * 70 + "pushed == 1",
    '"' + "x" * (MAX_FILTER_LENGTH - 8) + '" in uri',
    "not " * MAX_DEPTH + "pushed == 1",
    "not " * (MAX_DEPTH + 1) + "pushed == 1",
    # patterns on every string property
    *(f"{sel} matches {quote(p)}" for p in PATTERNS for sel in ("uri", 'metadata["é"]')),
    *(f"version not matches {quote(p)}" for p in PATTERNS[:12]),
]


def nested(depth: int, shape: str, inner: str = "pushed == 1") -> str:
    for _ in range(depth):
        inner = shape % inner
    return inner


SHAPES = ["(%s)", "not (%s)", "(%s and version == x)", "(pushed == 0 or %s)", "( %s )", "(not %s)"]
# around go-bexpr's 2,000,000-step budget: where it refuses, ours must too, at the same step
EDGE_DEEP = [nested(depth, shape) for depth in range(3, 9) for shape in SHAPES] + [
    nested(40, "(%s and pushed == 1 or pushed == 0)"),  # deep but linear: go-bexpr takes it
    nested(MAX_DEPTH + 1, "(%s and pushed == 1 or pushed == 0)"),
    " and ".join([nested(3, "(%s)")] * 12),
    " and ".join([nested(4, "(%s)")] * 3),
]

# ------------------------------------------------------------------------------ generation

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
IDENT = st.builds(
    str.__add__, st.sampled_from(LETTERS), st.text(LETTERS + "0123456789_/", max_size=6)
)
DIGITS = st.integers(0, 99).map(str)
NUMBERS = st.builds(
    lambda sign, whole, fraction: f"{sign}{whole}{fraction}",
    st.sampled_from(["", "-"]),
    st.integers(0, 99999),
    st.sampled_from(["", ".5", ".25", ".0"]),
)
PROPERTY_NAMES = ["pushed", "version", "uri", "component", "output", "metadata"]
WORDS = st.sampled_from([*PROPERTY_NAMES, "pushed_version", "Pusher", *sorted(KEYWORDS)])
KEYS = st.sampled_from(["blessed", "model-version", "a.b", "empty", "x/y", "~", "é", "1", "k", ""])
TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cn"]), max_size=8
) | st.sampled_from(["true", "1234", "v2", "Pusher", "pushed_model", "/", "gs://", "dotted", ""])


def space(minimum: int) -> st.SearchStrategy[str]:
    blank = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", " \n "])
    if minimum:
        return blank
    return st.sampled_from(["", "", " "]) | blank


@st.composite
def go_string(draw: st.DrawFn, text: str) -> str:
    """``text`` as one of the Go literal forms, with escapes go-bexpr accepts or refuses."""
    form = draw(st.sampled_from(["plain"] * 4 + ["escaped"] * 3 + ["raw"] * 2 + ["broken"]))
    if form == "raw" and "`" not in text:
        return f"`{text}`"
    if form == "plain" and '"' not in text and "\\" not in text and "\n" not in text:
        return f'"{text}"'
    pieces = []
    for char in text:
        style = draw(st.sampled_from(["as is", "hex", "unicode", "octal"]))
        if char in '"\\\n' and style == "as is":
            style = "hex"
        if style == "as is":
            pieces.append(char)
        elif style == "hex" and ord(char) < 128:
            pieces.append(f"\\x{ord(char):02x}")
        elif style == "octal" and ord(char) < 128:
            pieces.append(f"\\{ord(char):03o}")
        else:
            pieces.append(f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    if form == "broken":
        pieces.insert(
            draw(st.integers(0, len(pieces))), draw(st.sampled_from(['\\"', "\\q", "\\x4", "\n"]))
        )
    return '"' + "".join(pieces) + '"'


@st.composite
def selectors(draw: st.DrawFn) -> str:
    form = draw(st.sampled_from(["property", "metadata", "index", "pointer", "word", "path"]))
    if form == "property":
        return draw(st.sampled_from(PROPERTY_NAMES))
    key = draw(KEYS)
    if form == "metadata":
        return f"metadata.{key}"
    if form == "index":
        return f"metadata[{draw(go_string(key))}]"
    if form == "pointer":
        escaped = key.replace("~", "~0").replace("/", "~1")
        return f'"/metadata/{escaped}"'
    if form == "word":
        return draw(WORDS)
    parts = draw(st.lists(IDENT | DIGITS, max_size=2))
    return ".".join([draw(IDENT), *parts])


@st.composite
def values(draw: st.DrawFn) -> str:
    form = draw(
        st.sampled_from(["number"] * 3 + ["string"] * 4 + ["selector"] * 3 + ["odd number"])
    )
    if form == "number":
        return draw(NUMBERS)
    if form == "odd number":
        return draw(st.sampled_from(["007", "1.", "+1", "0x1", "1e3", "-", "1_0", ".5"]))
    if form == "string":
        return draw(go_string(draw(TEXT)))
    return draw(selectors())


@st.composite
def matches(draw: st.DrawFn) -> str:
    selector, value = draw(selectors()), draw(values())
    form = draw(
        st.sampled_from(["compare"] * 4 + ["member", "contains", "pattern", "is"] * 2 + ["odd"])
    )
    if form == "compare":
        operator = draw(st.sampled_from(["==", "!="]))
        return f"{selector}{draw(space(0))}{operator}{draw(space(0))}{value}"
    if form == "member":
        negation = draw(st.sampled_from(["", "not" + draw(space(1))]))
        return f"{value}{draw(space(1))}{negation}in{draw(space(1))}{selector}"
    if form == "contains":
        negation = draw(st.sampled_from(["", "not" + draw(space(1))]))
        return f"{selector}{draw(space(1))}{negation}contains{draw(space(1))}{value}"
    if form == "pattern":
        negation = draw(st.sampled_from(["", "not" + draw(space(1))]))
        pattern = draw(st.sampled_from(PATTERNS[:40]) | TEXT)
        return (
            f"{selector}{draw(space(1))}{negation}matches{draw(space(1))}{draw(go_string(pattern))}"
        )
    if form == "is":
        tail = draw(st.sampled_from(["empty", "not empty", "nil", "not nil"] * 3 + ["full", "not"]))
        return f"{selector}{draw(space(1))}is{draw(space(1))}{tail.replace(' ', draw(space(1)))}"
    return f"{selector} {draw(st.sampled_from(['=', '=~', '>', '===', '<>', '']))} {value}"


def expressions(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return matches()
    below = expressions(depth - 1)
    return st.one_of(
        matches(),
        st.builds(lambda e, s: f"not{s}{e}", below, space(1)),
        st.builds(
            lambda a, s, o, t, b: f"{a}{s}{o}{t}{b}",
            below,
            space(1),
            st.sampled_from(["and", "or"]),
            space(1),
            below,
        ),
        st.builds(lambda s, e, t: f"({s}{e}{t})", space(0), below, space(0)),
    )


EXPRESSIONS = expressions(4)


@st.composite
def filters(draw: st.DrawFn) -> str:
    """A filter, and one time in five a near miss: a character dropped, doubled or added."""
    text = draw(space(0)) + draw(EXPRESSIONS) + draw(space(0))
    if text and draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(text) - 1))
        change = draw(st.sampled_from(["drop", "double", "insert"]))
        if change == "drop":
            text = text[:at] + text[at + 1 :]
        elif change == "double":
            text = text[:at] + text[at] + text[at:]
        else:
            text = text[:at] + draw(st.sampled_from(list('()"`[]\\.=!/ -~{}'))) + text[at:]
    return text


property_maps = st.fixed_dictionaries(
    {
        "pushed": st.sampled_from([0, 1]),
        "version": st.sampled_from(["", "1234", "41", "x"]) | TEXT,
        "uri": st.sampled_from([str(PUSHED["uri"]), "gs://b/r/Trainer/model/7", "gs://ü/é"]),
        "component": st.sampled_from(["Pusher", "Trainer", "pusher"]),
        "output": st.sampled_from(["pushed_model", "model"]),
        "metadata": st.dictionaries(KEYS | TEXT, TEXT | KEYS, max_size=4),
    }
)


def generate(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of ``strategy``, the same ones on every run (derandomize).

    Hypothesis draws them inside one @given run so that the whole batch goes to one Go
    process; the database and shrinking are off, a failure prints its cases instead.
    """
    drawn: list[T] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    texts = [
        *readme_cases(),
        *source_strings(
            "test_artifact_filter.py", "test_artifact_definitions.py", "test_artifacts.py"
        ),
        *EDGE,
        *EDGE_DEEP,
    ]
    cases = [Case(text, FIXED_PROPERTIES) for text in dict.fromkeys(texts)]
    generated = generate(st.tuples(filters(), property_maps), GENERATED)
    cases += [Case(text, [*FIXED_PROPERTIES, dict(extra)]) for text, extra in generated]
    return cases


def steps(text: str) -> int:
    try:
        return parse_steps(text, budget=10 * V14_STEPS)
    except FilterSyntaxError:  # deeper than our limit, or more steps than we count to
        return 10 * V14_STEPS


def test_our_filter_agrees_with_go_bexpr_v0_1_16(corpus: list[Case]) -> None:
    counts = compare(V16, corpus)
    results = sum(len(case.properties) for case in corpus)
    print(f"\n{V16}: {len(corpus)} cases, {results} results: {dict(counts)}")
    assert counts["agree"] > 0.9 * len(corpus)


def test_our_filter_agrees_with_go_bexpr_v0_1_14(corpus: list[Case]) -> None:
    # pigeon without a budget is exponential in some nestings: cases over V14_STEPS would take
    # minutes there; we refuse those (over 2,000,000) like v0.1.16, a listed deviation.
    sendable = [case for case in corpus if steps(case.text) <= V14_STEPS]
    counts = compare(V14, sendable)
    print(f"\n{V14}: {len(sendable)} cases: {dict(counts)}")
    assert len(sendable) > 0.98 * len(corpus)
    assert counts["v0.1.14: no parse budget"] > 0  # the 2-12 million step cases


def test_the_corpus_covers_every_operator_and_outcome(corpus: list[Case]) -> None:
    """Not only syntax errors: each operator parses and yields each kind of result."""
    seen: Counter[str] = Counter()
    for case in corpus:
        outcome = ours(case.text, case.properties)
        if not outcome.ok:
            seen["refused"] += 1
            continue
        for result in outcome.results:
            seen[kind(result)] += 1
        for op in ("==", "!=", " in ", "not in", "contains", "matches", "is empty", "is nil"):
            if op in case.text:
                seen[op] += 1
    for key in ("refused", "match", "no match", "error", "==", "!=", "matches", "contains"):
        assert seen[key] > 100, (key, seen)
    for key in (" in ", "not in", "is empty", "is nil"):
        assert seen[key] > 20, (key, seen)


def test_readme_and_test_examples_are_in_the_corpus(corpus: list[Case]) -> None:
    texts = {case.text for case in corpus}
    assert "pushed == 1" in texts
    assert 'metadata.blessed == "true"' in texts  # from README's path: "...[...\"true\"]"
    assert len(readme_cases()) > 50
    assert len(source_strings("test_artifact_filter.py")) > 200


@pytest.mark.parametrize("version", [V14, V16])
def test_the_harness_can_fail(version: str) -> None:
    """A disagreement is caught: go-bexpr is sent mutated texts the parsers disagree on."""
    cases = [
        Case(text, FIXED_PROPERTIES) for text in ["pushed == 1", "version is empty", "1 in uri"]
    ]
    assert compare(version, cases)["agree"] == 3
    mutated = ["pushed = 1", 'version == "a\\"b"', "1 in uri)"]  # each refused by go-bexpr
    with pytest.raises(AssertionError, match="3 of 3 cases disagree"):
        compare(version, cases, sent=mutated)
    # A result, not only acceptance: same text, go-bexpr evaluates other properties.
    with pytest.raises(AssertionError, match="1 of 1 cases disagree"):
        compare(version, [Case("pushed == 1", [PUSHED])], sent=["pushed == 0"])


def readme_section(readme: str, word: str) -> str:
    """The README section whose heading names ``word``, down to the next heading as high."""
    heading = re.search(rf"^(#{{2,5}}) [^\n]*{re.escape(word)}[^\n]*$", readme, re.MULTILINE)
    if heading is None:
        return ""
    level = len(heading.group(1))
    rest = readme[heading.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def test_every_deviation_is_documented_in_the_readme() -> None:
    section = readme_section((ROOT / "README.md").read_text(), "go-bexpr")
    assert section, "README.md needs its 'Conformance -> go-bexpr' section"
    missing = [d.key for d in DEVIATIONS if d.readme not in section]
    assert not missing, f"deviations not described in README.md: {missing}"


def test_the_budget_is_go_bexprs() -> None:
    """Our step count is pigeon's: the budget bites at the same filters, both sides of it."""
    under = nested(6, "(%s)")  # 562,503 steps
    over = nested(7, "(%s)")  # 2,250,055 steps
    assert parse_steps(under) < MAX_PARSE_STEPS < parse_steps(over, budget=10**9)
    answers = run_harness(V16, [{"expr": t, "properties": []} for t in (under, over)])
    assert [a["ok"] for a in answers] == [True, False]
    assert "max number of expressions parsed" in answers[1]["error"]
