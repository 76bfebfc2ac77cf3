"""Unit tests of the filter language of Run Artifact Definitions: go-bexpr's (README).

What go-bexpr itself does with each of these is checked by tests/test_conformance_bexpr.py,
which sends every string literal of this file to the real go-bexpr; here are the intentions,
the messages and the properties that need no Go.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import selectable
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exit_handler.artifact_filter import (
    KEYWORDS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_PARSE_STEPS,
    And,
    Expr,
    FilterEvaluationError,
    FilterSyntaxError,
    Match,
    Not,
    Or,
    Value,
    evaluate,
    parse,
    parse_steps,
    render,
)

# An artifact as the exit handler describes it to filters: a pushed Pusher output.
PUSHED: dict[str, object] = {
    "pushed": 1,
    "version": "1234",
    "uri": "gs://bucket/penguin/Pusher/pushed_model/1234",
    "component": "Pusher",
    "output": "pushed_model",
    "metadata": {"blessed": "true", "model-version": "v2", "a.b": "dotted", "empty": "", "é": "ü"},
}
NOT_PUSHED: dict[str, object] = {**PUSHED, "pushed": 0, "metadata": {}, "version": ""}


def num(text: str) -> Value:
    return Value("number", text)


def string(text: str) -> Value:
    return Value("string", text)


def word(text: str) -> Value:
    return Value("bareword", text)


def eq(selector: str, value: Value) -> Match:
    return Match(tuple(selector.split(".")), "==", value)


def nested(depth: int, shape: str, inner: str = "a == 1") -> str:
    for _ in range(depth):
        inner = shape % inner
    return inner


A, B, C = eq("a", num("1")), eq("b", num("2")), eq("c", num("3"))


# ------------------------------------------------------------------------------------ parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pushed == 1", Match(("pushed",), "==", num("1"))),
        ("pushed != 0", Match(("pushed",), "!=", num("0"))),
        ('"blessed" in metadata', Match(("metadata",), "in", string("blessed"))),
        ("blessed not in metadata", Match(("metadata",), "not in", word("blessed"))),
        ("uri contains Pusher", Match(("uri",), "contains", word("Pusher"))),
        ("uri not contains 12", Match(("uri",), "not contains", num("12"))),
        ('uri matches "^gs://"', Match(("uri",), "matches", string("^gs://"))),
        ("uri not matches `\\d$`", Match(("uri",), "not matches", string("\\d$"))),
        ("uri matches gs", Match(("uri",), "matches", word("gs"))),
        ("version is empty", Match(("version",), "is empty", None)),
        ("metadata is not empty", Match(("metadata",), "is not empty", None)),
        ("metadata.x is nil", Match(("metadata", "x"), "is nil", None)),
        ("metadata.x is not nil", Match(("metadata", "x"), "is not nil", None)),
        ("metadata.blessed == true", Match(("metadata", "blessed"), "==", word("true"))),
    ],
)
def test_every_operator(text: str, expected: Match) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "selector"),
    [
        ("a == 1", ("a",)),
        ("A_b/c9 == 1", ("A_b/c9",)),
        ("a.b.c == 1", ("a", "b", "c")),
        ("metadata.1 == 1", ("metadata", "1")),
        ("metadata.01 == 1", ("metadata", "01")),
        ('metadata["model-version"] == 1', ("metadata", "model-version")),
        ("metadata[ `a.b` ] == 1", ("metadata", "a.b")),
        ('metadata["a"]["b"].c == 1', ("metadata", "a", "b", "c")),
        ('"/metadata/model-version" == 1', ("metadata", "model-version")),
        ('"/metadata/a~1b/c~0" == 1', ("metadata", "a/b", "c~")),
        ('"" == 1', ("",)),
        ("metadata.in == 1", ("metadata", "in")),
    ],
)
def test_selectors(text: str, selector: tuple[str, ...]) -> None:
    """go-bexpr's: names are [a-zA-Z][a-zA-Z0-9_/]*, other keys need ["..."] or a pointer."""
    match = parse(text)
    assert isinstance(match, Match)
    assert match.selector == selector


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # go-bexpr groups to the right; and/or are associative, so the meaning is the same
        ("a == 1 or b == 2 and c == 3", Or(A, And(B, C))),
        ("a == 1 and b == 2 or c == 3", Or(And(A, B), C)),
        ("not a == 1 and b == 2", And(Not(A), B)),
        ("not a == 1 or b == 2", Or(Not(A), B)),
        ("a == 1 or b == 2 or c == 3", Or(A, Or(B, C))),
        ("a == 1 and b == 2 and c == 3", And(A, And(B, C))),
        ("(a == 1 or b == 2) or c == 3", Or(Or(A, B), C)),
        ("(a == 1 or b == 2) and c == 3", And(Or(A, B), C)),
        ("not (a == 1 and b == 2)", Not(And(A, B))),
        ("not not a == 1", A),  # go-bexpr drops double negations
        ("not not not a == 1", Not(A)),
        ("not (not a == 1)", A),
        ("((a == 1))", A),
        ("( a==1 )", A),
        ("\ta == 1\n\r\nor b == 2 ", Or(A, B)),
    ],
)
def test_precedence_and_parentheses(text: str, expected: Expr) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('v == "plain"', string("plain")),
        ('v == ""', string("")),
        ('v == "\\x22quoted\\x22"', string('"quoted"')),
        ('v == "back\\\\slash"', string("back\\slash")),
        ('v == "tab\\tnew\\nline"', string("tab\tnew\nline")),
        ('v == "\\a\\b\\f\\r\\v"', string("\a\b\f\r\v")),
        ('v == "\\101\\x42\\u0043\\U00000044"', string("ABCD")),
        ('v == "\\xc3\\xa9"', string("é")),  # bytes, decoded as UTF-8
        ('v == "\\xff"', string("\udcff")),  # a byte that is no UTF-8: equals no text
        ('v == "\\U0010ffff\\uE000\\uD7FF"', string("\U0010ffff\ue000\ud7ff")),  # rune bounds
        ('v == "\ud800"', string("\udced\udca0\udc80")),  # a lone surrogate: its bytes
        ('v == "and or not ) ( == ]"', string("and or not ) ( == ]")),
        ('v == "ünïcødé ✓"', string("ünïcødé ✓")),
        ('v == `raw \\d+ \\" no escapes`', string('raw \\d+ \\" no escapes')),
        ("v == `multi\nline`", string("multi\nline")),
        ("v == `cr\r\nlf`", string("cr\nlf")),  # Go drops \r from raw strings
        ("v == ``", string("")),
        ('v == "/a/b"', string("a/b")),  # a JSON pointer: go-bexpr's value is its path, no "/"
        ('v == "/a/"', string("/a/")),  # not a pointer (empty segment): a string
        ('v == "\\x2fa"', string("/a")),
        ('v == a["b c"]', string("a.b c")),  # a selector's text
        ("v == 0", num("0")),
        ("v == 1234", num("1234")),
        ("v == -1", num("-1")),
        ("v == -0", num("-0")),
        ("v == 3.25", num("3.25")),
        ("v == Pusher", word("Pusher")),
        ("v == pushed_model", word("pushed_model")),
        ("v == a.b.1", word("a.b.1")),
        ("v == AND", word("AND")),
        ("v == empty", word("empty")),  # keywords are names where the grammar allows
        ("v == or", word("or")),
    ],
)
def test_literals(text: str, value: Value) -> None:
    assert parse(text) == Match(("v",), "==", value)


def test_keywords_are_lowercase_and_only_where_the_grammar_tries_them() -> None:
    assert parse("NOT == AND") == Match(("NOT",), "==", word("AND"))
    assert parse("not == 1") == Match(("not",), "==", num("1"))
    assert parse("x in not") == Match(("not",), "in", word("x"))
    assert parse("and in metadata") == Match(("metadata",), "in", word("and"))
    assert {"and", "or", "not", "in", "is", "empty", "nil", "any", "all"} <= KEYWORDS
    with pytest.raises(FilterSyntaxError) as caught:
        parse("a == 1 AND b == 2")
    assert caught.value.position == 7


def test_limits() -> None:
    padding = MAX_FILTER_LENGTH - len('v == ""')
    assert parse('v == "' + "x" * padding + '"') == Match(("v",), "==", string("x" * padding))
    assert parse("not " * MAX_DEPTH + "a == 1") == A  # an even count: all dropped
    # cheap for go-bexpr at any depth, so only our limit refuses it
    shape = "(%s and a == 1 or a == 1)"
    assert isinstance(parse("b == 1 and " + nested(MAX_DEPTH, shape)), And)
    assert isinstance(parse(nested(MAX_DEPTH + 1, shape)), Or)  # a pair around all: no level
    with pytest.raises(FilterSyntaxError, match="nests deeper than 32"):
        parse("not " * (MAX_DEPTH + 1) + "a == 1")
    with pytest.raises(FilterSyntaxError, match="nests deeper than 32"):
        parse("b == 1 and " + nested(MAX_DEPTH + 1, shape))
    with pytest.raises(FilterSyntaxError, match="nests deeper than 32"):
        parse("b == 1 and " + "not " * (MAX_DEPTH + 1) + "a == 1")  # not only at the start


def test_go_bexprs_parse_budget_is_counted_like_its_parser() -> None:
    """pigeon does not memoize: each of these parentheses multiplies its steps by four.

    The counts are go-bexpr's own (``ExprCnt``, measured with WithMaxExpressions); go-bexpr
    v0.1.15+ refuses a filter past 2,000,000 steps, and so do we.
    """
    assert parse_steps("pushed == 1") == 528
    assert parse_steps("(pushed == 1)") == 535
    assert parse_steps("((pushed == 1))") == 2183
    assert parse_steps(nested(5, "(%s)", "pushed == 1")) == 140_615
    assert parse_steps(nested(6, "(%s)", "pushed == 1")) < MAX_PARSE_STEPS
    over = nested(7, "(%s)", "pushed == 1")
    assert parse_steps(over, budget=10**9) > MAX_PARSE_STEPS
    with pytest.raises(FilterSyntaxError, match="too complex: go-bexpr gives up after 2,000,000"):
        parse(over)
    # Linear shapes are cheap at any depth: go-bexpr takes them.
    assert parse_steps(nested(30, "(%s and a == 1 or a == 1)")) < 30_000


def test_refused_filters_count_their_steps_too() -> None:
    """A fault ends the parse but its steps still count toward go-bexpr's budget.

    Pinned from this parser; the conformance run checks the budget against go-bexpr.
    """
    assert parse_steps("a == 0 x") == 491
    assert parse_steps("(a == 0 x") == 5030
    assert parse_steps('v == "a\\q"') == 636
    assert parse_steps("(pushed == 1") == 5363


def test_the_parse_budget_is_a_ceiling() -> None:
    """A filter may take exactly its budget; one step over, at any rule, is refused."""
    assert parse_steps("pushed == 1", budget=528) == 528
    for budget, message in (
        (527, TOO_COMPLEX),
        (505, TOO_COMPLEX),
        (504, TOO_COMPLEX + " " + NESTED_HINT),
    ):
        with pytest.raises(FilterSyntaxError) as caught:
            parse_steps("pushed == 1", budget=budget)
        assert (caught.value.message, caught.value.position) == (message, 0)


def test_error_string_names_the_column() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse("component ==")
    error = caught.value
    assert error.message == "expected a value after '==' but found end of filter"
    assert error.position == 12
    assert str(error) == "expected a value after '==' but found end of filter at column 13"
    assert isinstance(error, ValueError)


# (filter, a fragment of the message, 1-based column); go-bexpr refuses each (conformance).
MALFORMED = [
    ("", "expected a match expression but found end of filter", 1),
    ("   ", "expected a match expression but found end of filter", 4),
    ("pushed ==", "expected a value after '==' but found end of filter", 10),
    ("pushed != )", "expected a value after '!=' but found ')'", 11),
    ("pushed =~ 1", "unknown operator '=~'", 8),
    ("pushed = 1", "unknown operator '='", 8),
    ("pushed == 1 && version == 2", "unknown operator '&&'", 13),
    ("pushed === 1", "unknown operator '==='", 8),
    ("pushed > 1", "unknown operator '>'", 8),
    ("(pushed == 1", "unbalanced '('", 1),
    ("((pushed == 1)", "unbalanced '('", 1),
    ("pushed == 1)", "unbalanced ')'", 12),
    ("(pushed == 1 version == 2)", "expected 'and', 'or', ')' or end of filter but found", 14),
    ('version == "abc', "unterminated string", 12),
    ("version == `abc", "unterminated string", 12),
    ('version == "abc\\', "unterminated string", 12),
    ('version == "a\nb"', "newline in a double-quoted string", 14),
    ('version == "a\\qb"', "unknown or malformed escape '\\\\q'", 14),
    ('version == "\\u12"', "unknown or malformed escape '\\\\u'", 13),
    ('version == "\\ud800"', "unknown or malformed escape", 13),
    ('version == "\\400"', "unknown or malformed escape", 13),
    ('v == "say \\"hi\\""', "ends at the first '\"', even after a backslash", 11),
    ("version == 'abc'", "strings use double quotes or backticks", 12),
    ("pushed == 1 and", "expected a match expression after 'and' but found end of filter", 16),
    ("pushed == 1 or", "expected a match expression after 'or' but found end of filter", 15),
    ("not", "expected a match expression after 'not' but found end of filter", 4),
    ("not(pushed == 1)", "'not' needs a blank before '('", 4),
    ("(a == 1)and(b == 2)", "'and' needs a blank on each side", 9),
    ("()", "expected a match expression after '(' but found ')'", 2),
    ("pushed 1", "expected an operator", 8),
    ("pushed", "but found end of filter", 7),
    ("pushed is", "expected 'empty', 'not empty', 'nil' or 'not nil' after 'is'", 10),
    ("pushed is full", "expected 'empty', 'not empty', 'nil' or 'not nil' after 'is'", 11),
    ("pushed is not", "expected 'empty' or 'nil' after 'is not'", 14),
    ("pushed not 1", "expected 'in', 'contains' or 'matches' after 'not' but found '1'", 12),
    ("uri contains", "expected a value after 'contains'", 13),
    ("uri matches", "expected a pattern after 'matches'", 12),
    ('uri contains"x"', "expected a blank after 'contains'", 13),
    ('"x" == uri', "expected 'in' or 'not in' after a value but found '=='", 5),
    ("1 in 2", "expected a selector after 'in' but found '2'", 6),
    ('x not in "y"', "expected a selector after 'in' but found '\"y\"'", 10),
    ("x in", "expected a selector after 'in' but found end of filter", 5),
    ("metadata. == 1", "expected a name or a number after '.'", 10),
    ("metadata[k] == 1", "expected a quoted key after '['", 10),
    ('metadata["k" == 1', "expected ']'", 14),
    ("metadata.model-version == v2", 'write metadata["model-version"]', 15),
    ("pushed == 1.", "malformed number", 12),
    ("pushed == 1.2.3", "malformed number", 14),
    ("pushed == 1abc", "malformed number", 12),
    ("pushed == 007", "malformed number", 12),
    ("pushed == +1", "expected a value after '==' but found '+'", 11),
    ("pushed==1and x==1", "malformed number", 10),
    ("pushed == 1]", "unexpected character ']'", 12),
    ("pushed == @", "expected a value after '==' but found '@'", 11),
    ("pushed == - 1", "expected a digit after '-'", 12),
    ("pushed == 1 == 2", "expected 'and', 'or' or end of filter but found '=='", 13),
    ("a == 1 AND b == 2", "expected 'and', 'or' or end of filter but found 'AND'", 8),
    ('uri matches "["', "invalid regular expression", 13),
    ('uri matches "a{1001}"', "invalid regular expression", 13),
    ('uri matches "a{99999999999}"', "invalid regular expression", 13),
    ('uri matches "(a)\\\\1"', "invalid regular expression", 13),
    ('uri matches "(?=a)"', "invalid regular expression", 13),
    ('uri matches "(?<!a)b"', "invalid regular expression", 13),
    ('uri matches "\\\\C"', "invalid regular expression", 13),
    ('uri not matches "\\xff"', "invalid regular expression", 17),
    ("x == 1 or uri matches `*`", "invalid regular expression", 23),
    ('(x == 1 or y == 2) and (z == 1 or w matches "[")', "invalid regular expression", 45),
    ("any metadata as k { k == x }", "'any' and 'all' are not supported", 1),
    ("x" * (MAX_FILTER_LENGTH + 1), "filter is 1025 characters long; the limit is 1024", 1025),
    ("not " * (MAX_DEPTH + 1) + "a == 1", "nests deeper than 32 levels", 4 * MAX_DEPTH + 1),
    (nested(7, "(%s)"), "too complex", 1),
]


@pytest.mark.parametrize(("text", "fragment", "column"), MALFORMED)
def test_malformed_filters_report_what_and_where(text: str, fragment: str, column: int) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse(text)
    assert fragment in caught.value.message
    assert caught.value.position + 1 == column
    assert str(caught.value).endswith(f" at column {column}")


OPERATORS = "'==', '!=', 'in', 'contains', 'matches' or 'is'"
TOO_COMPLEX = "filter is too complex: go-bexpr gives up after 2,000,000 parser steps"
NESTED_HINT = (
    "(nested parentheses multiply them: write 'not (a or b)' as 'not a and not b', "
    "or drop parentheses)"
)
# The whole message and its column, where the wording itself is what helps the author.
EXACT_MESSAGES = [
    ("version == 'abc'", 'unexpected "\'": strings use double quotes or backticks', 12),
    (
        "any metadata as k { k == x }",
        "'any' and 'all' are not supported: no property is a list; test a metadata key with "
        "'\"KEY\" in metadata'",
        1,
    ),
    (nested(7, "(%s)"), TOO_COMPLEX + " " + NESTED_HINT, 1),
    ("( 0 ", "expected 'in' or 'not in' after a value but found end of filter", 5),
    ("(a == 1)or(b == 2)", "'or' needs a blank on each side", 9),
    ("not( a == 1)", "'not' needs a blank before '('", 4),
    ("a not (b == 1)", "expected 'in', 'contains' or 'matches' after 'not' but found '('", 7),
    ("a == is x", "expected 'and', 'or' or end of filter but found 'x'", 9),
    ("a == not x", "expected 'and', 'or' or end of filter but found 'x'", 10),
    ('(a == "x"nil)', "expected ')' but found 'nil'", 10),
    ('(x contains "x".', "expected ')' but found '.'", 16),
    ("!= 1", "expected a match expression but found '!='", 1),
    ("a == 1 and != 2", "expected a match expression after 'and' but found '!='", 12),
    ("a in b@", "expected '.', '[', a name after 'b' but found '@'", 7),
    ("a !~ 1", f"unknown operator '!~' (expected {OPERATORS}, or 'and', 'or', 'not')", 3),
    # what was found: a whole string, or the first 21 characters of a longer one
    ('a == 1 "" "x"', "expected 'and', 'or' or end of filter but found '\"\"'", 8),
    ('a == 1 "ab" "cd"', "expected 'and', 'or' or end of filter but found '\"ab\"'", 8),
    ('a == 1 "ab', "expected 'and', 'or' or end of filter but found '\"ab'", 8),
    ("a == 1 `ab", "expected 'and', 'or' or end of filter but found '`ab'", 8),
    (
        "a == 1 abcdefghijklmnopqrstuvwx",
        "expected 'and', 'or' or end of filter but found 'abcdefghijklmnopqrstuvwx'",
        8,
    ),
    (
        "a == 1 abcdefghijklmnopqrstuvwxy",
        "expected 'and', 'or' or end of filter but found 'abcdefghijklmnopqrstu...'",
        8,
    ),
    (
        'a == 1 "abcdefghijklmnopqrstuvwxyz"',
        "expected 'and', 'or' or end of filter but found '\"abcdefghijklmnopqrst...'",
        8,
    ),
    ("a is empty)", "unbalanced ')'", 11),
    ("pushed == 1)", "unbalanced ')'", 12),
    ("pushed 1", f"expected an operator ({OPERATORS}) after 'pushed' but found '1'", 8),
    # A selector as a pattern is its text, here "a.(": refused where it stands.
    ('version == 1 or uri matches a["("]', "invalid regular expression: missing ): a.(", 29),
    ("(a == 1 and)", "expected a blank after 'and' but found ')'", 12),
    ("(a == 1 )x", "expected a blank after ')' but found 'x'", 10),
    ("a is not", "expected 'empty' or 'nil' after 'is not' but found end of filter", 9),
    ("(not", "expected a match expression after 'not' but found end of filter", 5),
    ("not not", "expected a match expression after 'not' but found end of filter", 8),
    ("a == 1 and not", "expected a match expression after 'not' but found end of filter", 15),
    ("a == 1 or not", "expected a match expression after 'not' but found end of filter", 14),
    (
        "a is not empty and not",
        "expected a match expression after 'not' but found end of filter",
        23,
    ),
    ("x not @", "expected 'in', 'contains' or 'matches' after 'not' but found '@'", 7),
    ("a is not @ not", "expected 'empty' or 'nil' after 'not' but found '@'", 10),
    (
        "model-version == 1",
        f"expected an operator ({OPERATORS}) after 'model' but found '-version' "
        "('-' cannot be part of a name)",
        6,
    ),
    (
        'metadata["k"].model-version == 1',
        f"expected an operator ({OPERATORS}) after '.model' but found '-version' "
        "('-' cannot be part of a name)",
        20,
    ),
    (
        "a.model-version == 1",
        f"expected an operator ({OPERATORS}) after 'a.model' but found '-version' "
        "('-' cannot be part of a name: write a[\"model-version\"])",
        8,
    ),
    (
        "metadata.a.model-version == 1",
        f"expected an operator ({OPERATORS}) after 'metadata.a.model' but found '-version' "
        "('-' cannot be part of a name: write metadata.a[\"model-version\"])",
        17,
    ),
    (
        "metadata.model-ver.sion == 1",
        f"expected an operator ({OPERATORS}) after 'metadata.model' but found '-ver.sion' "
        "('-' cannot be part of a name: write metadata.model-ver[\"sion\"])",
        15,
    ),
    (
        'v == "say \\"hi\\""',
        "a double-quoted string ends at the first '\"', even after a backslash: write \\x22 "
        "for a quote, or use a backtick string",
        11,
    ),
    (
        "pushed == 1x",
        "malformed number: unexpected 'x' (numbers are -?(0|[1-9][0-9]*)(.[0-9]+)? followed by "
        "a space or ')'; quote text that is not a number)",
        12,
    ),
    ('v == "a\nb"', "newline in a double-quoted string: write \\n, or use a backtick string", 8),
    *(
        (
            f'v == "{escape}"',
            f"unknown or malformed escape {escape[:2]!r} in string (use '\\\\' for a backslash, "
            "or a backtick string)",
            7,
        )
        for escape in ("\\q", "\\X41", "\\U00110000", "\\uDFFF", "\\uD800")
    ),
]


@pytest.mark.parametrize(("text", "message", "column"), EXACT_MESSAGES)
def test_syntax_error_messages(text: str, message: str, column: int) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse(text)
    assert (caught.value.message, caught.value.position + 1) == (message, column)


def test_a_refused_pattern_is_named() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse("version == 1 or uri matches `(?=x)`")
    assert caught.value.pattern == "(?=x)"


def test_the_leftmost_fault_is_reported() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse('v == "a\\q" or w == "b\\q"')
    assert caught.value.position == 7


def test_parse_needs_a_bounded_stack() -> None:
    """The worst accepted filters parse with 650 frames to spare below the caller."""
    worst = [
        nested(MAX_DEPTH - 1, "(%s and a == 1 or a == 1)"),
        " and ".join(["a==1"] * 113)[:MAX_FILTER_LENGTH],
        "not " * MAX_DEPTH + "a == 1",
        nested(16, "not (%s and a == 1 or a == 1)"),
    ]
    depth = len(_frames())
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 650)
    try:
        for text in worst:
            parse(text)
    finally:
        sys.setrecursionlimit(limit)


def _frames() -> list[object]:
    frames: list[object] = []
    frame = sys._getframe()
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back  # type: ignore[assignment]
    return frames


# ------------------------------------------------------------------------------------ render


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("pushed==1", "pushed == 1"),
        ("  (pushed == 1)  ", "pushed == 1"),
        ("a==1 or (b==2 and c==3)", "a == 1 or b == 2 and c == 3"),
        ("(a==1 or b==2) and c==3", "(a == 1 or b == 2) and c == 3"),
        ("(a==1 and b==2) and c==3", "(a == 1 and b == 2) and c == 3"),
        ("a==1 and (b==2 and c==3)", "a == 1 and b == 2 and c == 3"),
        ("(a==1 or b==2) or c==3", "(a == 1 or b == 2) or c == 3"),
        ("not (a==1 or b==2)", "not (a == 1 or b == 2)"),
        ("not (not a==1)", "a == 1"),
        ('`a\\b"c` in  uri', '"a\\\\b\\x22c" in uri'),
        ('v == "tab\tline\\nquote\\x22"', 'v == "tab\\tline\\nquote\\x22"'),
        ('v == "/a/b"', 'v == "a/b"'),
        ('v == "\\x2fa/b"', 'v == "\\x2fa/b"'),
        ('v == "\\xff"', 'v == "\\xff"'),
        ('v == "\\x80\\xc3"', 'v == "\\x80\\xc3"'),  # bytes that are not UTF-8
        ('v == "a b\\x00\\x1f\\x7f\\r~"', 'v == "a b\\x00\\x1f\\x7f\\x0d~"'),  # controls as \\xNN
        ('metadata["model-version"] == v2', 'metadata["model-version"] == v2'),
        ('"/metadata/a~1b" == x', "metadata.a/b == x"),  # '/' is a name character
        ('"/metadata/a~0b" == x', 'metadata["a~b"] == x'),
        ('"/1/x" == y', '"/1/x" == y'),
        ('"/1~0a/b~1c" == y', '"/1~0a/b~1c" == y'),  # a pointer keeps ~ and / escaped
        ('v == "/a/"', 'v == "/a/"'),  # strings that are not pointers keep their "/"
        ('v == "/a b"', 'v == "/a b"'),
        ("metadata.1 is nil", "metadata.1 is nil"),
        ("x not in metadata", "x not in metadata"),
        ("version is not empty", "version is not empty"),
        ("uri not matches `^gs`", 'uri not matches "^gs"'),
    ],
)
def test_render_is_canonical(text: str, canonical: str) -> None:
    assert render(parse(text)) == canonical
    assert parse(canonical) == parse(text)


# ------------------------------------------------------------------------------------ evaluate


@pytest.mark.parametrize(
    ("text", "pushed", "not_pushed"),
    [
        # kfp-operator's own examples
        ("pushed == 1", True, False),
        ('metadata.blessed == "true"', True, False),
        ("pushed == 1 and version is not empty", True, False),
        # an int property reads the literal with Go's strconv.ParseInt(text, 0, 64)
        ('pushed == "1"', True, False),
        ('pushed == "+1"', True, False),
        ('pushed == "0x1"', True, False),
        ('pushed == "0b1"', True, False),
        ('pushed == "0o1"', True, False),
        ('pushed == "01"', True, False),  # octal
        ('pushed == "1_0"', False, False),  # ten
        ("pushed != 0", True, False),
        ("pushed == -0", False, True),
        # a string property compares the literal's text
        ("version == 1234", True, False),
        ('version == "1234"', True, False),
        ("version == `1234`", True, False),
        ('version == "\\x31\\x32\\x33\\x34"', True, False),
        ("version == 1234.0", False, False),
        ("component == Pusher", True, True),
        ("component == pusher", False, False),
        ("output != pushed_model", False, False),
        ('"/component" == Pusher', True, True),
        # substrings, map keys
        ("1234 in uri", True, True),
        ('"Pusher/" in uri', True, True),
        ('uri contains "/Pusher"', True, True),  # the pointer "/Pusher" is the value "Pusher"
        ("uri contains pushed_model", True, True),
        ("uri not contains Trainer", True, True),
        ("x not in uri", True, True),
        ('"blessed" in metadata', True, False),
        ("blessed not in metadata", False, True),
        ("metadata contains blessed", True, False),
        ("metadata not contains blessed", False, True),
        ('"a.b" in metadata', True, False),
        ('"\\xc3" in metadata["é"]', True, False),  # bytes, as Go's strings.Contains
        # a missing metadata key is "not present": false, and its negations true
        ("metadata.blessed == true", True, False),
        ("metadata.blessed != true", False, True),
        ("not metadata.blessed == true", False, True),
        ("x in metadata.blessed", False, False),
        ("x not in metadata.blessed", True, True),
        ("metadata.blessed matches `.`", True, False),
        ("metadata.blessed not matches `.`", False, True),
        ("metadata.blessed is empty", False, True),
        ("metadata.blessed is not empty", True, False),
        ("metadata.blessed is nil", None, True),
        ("metadata.blessed is not nil", None, False),
        # keys that names cannot spell
        ('metadata["model-version"] == v2', True, False),
        ('metadata["a.b"] == dotted', True, False),
        ('"/metadata/a.b" == dotted', True, False),
        ("metadata.a.b == dotted", None, None),  # the path metadata -> a -> b: no "a"
        # regular expressions: RE2, searched anywhere, like Go's regexp.Match
        ('uri matches "pushed_model/[0-9]+"', True, True),
        ('uri matches "^pushed_model"', False, False),
        (r"version matches `^\d+$`", True, False),
        (r"version not matches `^\d+$`", False, True),
        ("version matches 34", True, False),
        ("component matches `(?i)^pusher$`", True, True),
        # emptiness, nil
        ("version is empty", False, True),
        ("metadata is empty", False, True),
        ("metadata is not empty", True, False),
        ("metadata is nil", False, False),
        ("metadata is not nil", True, True),
        ('metadata.empty == ""', True, False),
        ("metadata.empty is empty", True, True),
        # logic
        ("not pushed == 1", False, True),
        ("pushed == 1 or version == 1234", True, False),
        ("pushed == 0 or (component == Pusher and not version is empty)", True, True),
    ],
)
def test_evaluate(text: str, pushed: bool | None, not_pushed: bool | None) -> None:
    """None: an evaluation error (kfp-operator then selects nothing)."""
    expr = parse(text)
    for properties, expected in ((PUSHED, pushed), (NOT_PUSHED, not_pushed)):
        if expected is None:
            with pytest.raises(FilterEvaluationError):
                evaluate(expr, properties)
        else:
            assert evaluate(expr, properties) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pushed_version == 1", "unknown selector 'pushed_version': no such property"),
        ("pushed_version != 1", "unknown selector 'pushed_version'"),
        ("pushed_version is empty", "unknown selector 'pushed_version'"),
        ("1 in pushed_version", "unknown selector 'pushed_version'"),
        ("metadata.missing.deeper == x", "unknown selector 'metadata.missing.deeper': no key"),
        ("pushed.x == 1", "'pushed' is an integer, it has no fields"),
        ("version.x == 1", "'version' is a string, it has no fields"),
        ("metadata.blessed.x == 1", "'metadata.blessed' is a string"),
        ("pushed == yes", "'pushed' is an integer property: yes is not a 64-bit integer"),
        ('pushed == "one"', "'pushed' is an integer property"),
        ('pushed == ""', "'pushed' is an integer property"),
        ("pushed == 1.0", "'pushed' is an integer property"),
        ('pushed == " 1"', "'pushed' is an integer property"),
        ('pushed == "\u0661"', "'pushed' is an integer property"),
        ('pushed == "_1"', "'pushed' is an integer property"),
        ('pushed == "9223372036854775808"', "'pushed' is an integer property"),
        ("x in pushed", "'pushed' is an integer property"),
        ("1 in pushed", "'pushed' is an integer: 'in' and 'contains' do not apply"),
        ("pushed contains 1", "'pushed' is an integer"),
        ('pushed matches "1"', "'pushed' is an integer: 'matches' applies to strings"),
        ("pushed is empty", "'pushed' is an integer: 'is empty' does not apply"),
        ("pushed is not empty", "'pushed' is an integer"),
        ("pushed is nil", "'pushed' is an integer: 'is nil' does not apply"),
        ("version is nil", "'version' is a string"),
        ("metadata == x", "'metadata' is a mapping: '==' and '!=' do not apply"),
        ('metadata matches "x"', "'metadata' is a mapping"),
        ("weight == 1", "'weight' is a float"),
    ],
)
def test_evaluation_errors_name_the_selector(text: str, fragment: str) -> None:
    with pytest.raises(FilterEvaluationError) as caught:
        evaluate(parse(text), {**PUSHED, "weight": 0.5})
    assert fragment in str(caught.value)


# (the literal an integer property is compared with, Go's strconv.ParseInt(literal, 0, 64)
# or None where it refuses): base prefixes, and underscores only between digits or after a
# prefix. Each checked against Go.
GO_INTEGERS: list[tuple[str, int | None]] = [
    ("1_0", 10),
    ("1__0", None),
    ("_1", None),
    ("1_", None),
    ("0x_1", 1),
    ("0x1_f", 31),
    ("0x_1_f", 31),
    ("0_1", 1),
    ("0b_1", 1),
    ("0o_7", 7),
    ("0x_", None),
    ("0x", None),
    ("0b", None),
    ("0o", None),
    ("0", 0),
    ("00", 0),
    ("0_0", 0),
    ("08", None),
    ("0_8", None),
    ("0x1g", None),
    ("0b2", None),
    ("0o8", None),
    ("1_000_000", 1000000),
    ("-1_0", -10),
    ("+1_0", 10),
    ("-_1", None),
    ("0x__1", None),
    ("0X_A", 10),
    ("0B_1", 1),
    ("0O_7", 7),
    ("0xa_b", 171),
    ("1a", None),
    ("1_a", None),
    ("0_", None),
    ("0__1", None),
    ("0b1_", None),
    ("0x_1_", None),
    ("9_223_372_036_854_775_807", 9223372036854775807),
    ("0x7fffffffffffffff", 9223372036854775807),
    ("0x8000000000000000", None),
    ("-0x8000000000000000", -9223372036854775808),
    ("0777", 511),
    ("0b101", 5),
    ("0B11", 3),
    ("0XFF", 255),
    ("0o_1_2", 10),
    ("0_7_7", 63),
    ("07_7", 63),
    ("0x1__2", None),
    ("z", None),
    ("", None),
    ("-", None),
    ("+", None),
    ("1_0_", None),
    ("0b_", None),
    ("0o_", None),
    ("0x_g", None),
    ("0xg_1", None),
    ("1_ ", None),
    ("0_b1", None),
    ("0bb1", None),
    ("0x_F", 15),
    ("0xf_", None),
    ("0b1_1", 3),
    ("0O17", 15),
    ("0o1_7", 15),
    ("0b_1_0", 2),
    ("-0b_1", -1),
    ("0x1_A_b", 427),
    ("0xA_1", 161),
    ("1__", None),
    ("0x_a", 10),
    ("0xa_", None),
    ("0b1__1", None),
    ("0_x1", None),
    ("+_1", None),
    ("0_o1", None),
    ("0o1__0", None),
    ("0x1_g", None),
    ("1_g", None),
    ("0X1_F", 31),
    ("0B1_0", 2),
]


@pytest.mark.parametrize(("literal", "number"), GO_INTEGERS)
def test_integer_literals_read_as_gos_parseint(literal: str, number: int | None) -> None:
    expr = parse(f"n == {json.dumps(literal)}")
    if number is None:
        with pytest.raises(FilterEvaluationError) as caught:
            evaluate(expr, {"n": 0})
        assert "'n' is an integer property" in str(caught.value)
    else:
        assert evaluate(expr, {"n": number}) is True
        assert evaluate(expr, {"n": number + 1}) is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b == 1", "unknown selector 'a.b': no such property"),
        (
            "pushed.x.y == 1",
            "unknown selector 'pushed.x.y': 'pushed' is an integer, it has no fields",
        ),
        (
            "metadata.blessed.y.z == 1",
            "unknown selector 'metadata.blessed.y.z': 'metadata.blessed' is a string, it has no "
            "fields",
        ),
        (
            "pushed == yes",
            "'pushed' is an integer property: yes is not a 64-bit integer "
            "(Go's strconv.ParseInt with base 0)",
        ),
    ],
)
def test_evaluation_error_messages(text: str, message: str) -> None:
    with pytest.raises(FilterEvaluationError) as caught:
        evaluate(parse(text), PUSHED)
    assert str(caught.value) == message


def test_integer_bounds_are_int64() -> None:
    assert evaluate(parse('pushed != "9223372036854775807"'), PUSHED) is True
    assert evaluate(parse('pushed != "-9223372036854775808"'), PUSHED) is True
    with pytest.raises(FilterEvaluationError):
        evaluate(parse('pushed != "-9223372036854775809"'), PUSHED)


def test_evaluation_short_circuits_like_go_bexpr() -> None:
    assert evaluate(parse("pushed == 1 or pushed_version == 1"), PUSHED) is True
    assert evaluate(parse("pushed == 0 and pushed_version == 1"), PUSHED) is False
    with pytest.raises(FilterEvaluationError):
        evaluate(parse("pushed_version == 1 or pushed == 1"), PUSHED)
    with pytest.raises(FilterEvaluationError):
        evaluate(parse("not pushed_version == 1"), PUSHED)


# ------------------------------------------------------------------------------------ RE2


@pytest.mark.parametrize(
    ("pattern", "value", "matched"),
    [
        ("^1234$", "1234\n", False),  # $ is the end of the text, as in Go (Python: before \n)
        (r"^\d+$", "\u0661\u0662", False),  # \d is ASCII, as in Go (Python: any digit)
        (r"\w+", "é", False),
        (r"\pL", "é", True),
        ("(?i)straße", "STRASSE", False),  # simple case folding only, as in Go
        ("(?i)k", "\u212a", True),  # the Kelvin sign folds to k in Go and RE2
        ("a.c", "a\nc", False),
        ("(?s)a.c", "a\nc", True),
        (r"\Qa.c\E", "abc", False),
        ("x*", "", True),
    ],
)
def test_patterns_are_re2_with_gos_semantics(pattern: str, value: str, matched: bool) -> None:
    expr = Match(("v",), "matches", Value("string", pattern))
    assert evaluate(parse(render(expr)), {"v": value}) is matched


# (pattern, None if Go's regexp takes it, else a fragment of the refusal); each checked
# against Go's regexp.Compile. RE2 reads a repeat count of ten digits as literal text, Go
# refuses it: the scan that finds such counts must skip classes, escapes and \Q...\E as Go does.
GO_PATTERNS: list[tuple[str, str | None]] = [
    # repeat counts: {n}, {n,}, {n,m}; a leading zero or a missing } makes { literal
    ("a{1234567890}", "invalid repeat count (more than 1000)"),
    ("a{1034567890}", "invalid repeat count (more than 1000)"),
    ("a{0,1234567890}", "invalid repeat count (more than 1000)"),
    ("a{1,1234567890}", "invalid repeat count (more than 1000)"),
    ("a{1234567890,}", "invalid repeat count (more than 1000)"),
    ("a{1234567890,}x", "invalid repeat count (more than 1000)"),
    ("a{1234567890,1}", "invalid repeat count (more than 1000)"),
    ("(?:a){1234567890}", "invalid repeat count (more than 1000)"),
    (r"\d{1234567890}", "invalid repeat count (more than 1000)"),
    ("a{01234567890}", None),
    ("a{09,1234567890}", None),
    ("a{1,01234567890}", None),
    ("a{,1234567890}", None),
    ("a{1234567890x}", None),
    ("a{1234567890", None),
    ("a{1234567890,", None),
    ("a{1,1234567890", None),
    ("a{", None),
    ("a{2}", None),
    ("a{1,}", None),
    ("x1234567890}", None),
    (r"\{1234567890}", None),
    # character classes: a leading ] (after ^) is literal, [:name:] and escapes do not end them
    ("[a]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[a]b{1234567890}", "invalid repeat count (more than 1000)"),
    ("[]]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[]a]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[^]]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[^]a]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[^x]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[^^]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[[]{1234567890}]", "invalid repeat count (more than 1000)"),
    ("[[:alpha:]]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[[:^alpha:]]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[[:alpha:][:digit:]]{1234567890}", "invalid repeat count (more than 1000)"),
    ("[[:alpha:]]{1234567890}[[:digit:]]", "invalid repeat count (more than 1000)"),
    ("[[:x]{1234567890}", "invalid repeat count (more than 1000)"),
    (":][[:x]{1234567890}", "invalid repeat count (more than 1000)"),
    (r"[\\]{1234567890}", "invalid repeat count (more than 1000)"),
    (r"[\x{5d}]{1234567890}", "invalid repeat count (more than 1000)"),
    (r"[\p{Greek}]{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\[{1234567890}]", "invalid repeat count (more than 1000)"),
    ("[{1234567890}]", None),
    ("x[{1234567890}]", None),
    ("[]{1234567890}]", None),
    ("[^]{1234567890}]", None),
    ("[[:alpha:]{1234567890}]", None),
    (r"[\]{1234567890}]", None),
    ("[[::]{1234567890}]", "invalid character class range: [::]"),
    # escapes: \Q...\E is literal text; \p{...}, \P{...} and \x{...} take a braced argument
    (r"\Q{1234567890}\E", None),
    (r"\Q{1234567890}", None),
    (r"\\E\Q{1234567890}", None),
    (r"\Qa\E{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\Q\E{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\Qa\E{1234567890}\Qb\E", "invalid repeat count (more than 1000)"),
    (r"\x7b1234567890}", None),
    (r"\x61{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\x{61}{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\pL{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\pN{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\p{L}{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\P{L}{1234567890}", "invalid repeat count (more than 1000)"),
    (r"}\p{L}{1234567890}", "invalid repeat count (more than 1000)"),
    (r"\p{1234567890}", "invalid character class range: "),
    (r"\P{1234567890}", "invalid character class range: "),
    (r"a\p{1234567890", "invalid character class range: "),
    (r"\x{1234567890}", "invalid escape sequence: "),
    # \C: RE2's any-byte class, which Go's regexp does not have
    (r"\C", r"invalid escape sequence: \C (Go's regexp has no any-byte class)"),
    (r"a\C", r"invalid escape sequence: \C (Go's regexp has no any-byte class)"),
    (r"[\C]", r"invalid escape sequence: \C (Go's regexp has no any-byte class)"),
]


@pytest.mark.parametrize(
    ("pattern", "refusal"), GO_PATTERNS, ids=selectable([p for p, _ in GO_PATTERNS])
)
def test_patterns_are_refused_where_gos_regexp_refuses_them(
    pattern: str, refusal: str | None
) -> None:
    text = render(Match(("v",), "matches", Value("string", pattern)))
    if refusal is None:
        assert evaluate(parse(text), {"v": ""}) is False
        return
    with pytest.raises(FilterSyntaxError) as caught:
        parse(text)
    assert caught.value.message.startswith("invalid regular expression: ")
    assert refusal in caught.value.message
    assert caught.value.pattern == pattern


def test_refused_patterns_print_nothing_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    """RE2 would log each refused pattern; the refusal is the filter's error, nothing else."""
    with pytest.raises(FilterSyntaxError):
        parse(r"v matches `\p{Klingon}`")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("length", [30, 100_000])
def test_hostile_patterns_run_in_linear_time(length: int) -> None:
    """(a+)+$ against a*N! backtracks 2^N times in Python's re (N=30: minutes); RE2 is linear.

    The bound is generous: only catastrophic backtracking could come near it.
    """
    expr = parse('uri matches "(a+)+$" or uri matches "(x+x+)+y" or uri matches "(.*a){12}$"')
    started = time.perf_counter()
    assert evaluate(expr, {"uri": "a" * length + "!"}) is False
    assert time.perf_counter() - started < 5


def test_re2_is_imported_only_for_matches() -> None:
    """Runs without a matches filter never load the RE2 binding (import cost: see README)."""
    script = (
        "import sys\n"
        "from exit_handler.artifact_filter import parse, evaluate\n"
        "evaluate(parse('pushed == 1 and uri contains x and version is not empty'), "
        "{'pushed': 1, 'uri': 'x', 'version': '1'})\n"
        "print('re2' in sys.modules)\n"
        "parse('uri matches `x`')\n"
        "print('re2' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True"]


# ------------------------------------------------------------------------------------ properties

TOKENS = [
    *sorted(KEYWORDS),
    *["==", "!=", "=~", "(", ")", ".", "[", "]", "'", '"', "`", "\\", "-", "+", "@", "{", "}"],
    *["pushed", "version", "uri", "metadata", "metadata.blessed", "x.", "A_b-c", "a/b", ","],
    *["1", "-2", "3.5", "1.", "0x1", '"s"', '"a\\"b"', '"\\q"', "`r`", '"[', '"/a/b"', "_"],
]


def _assert_syntax_error_or_expr(text: str) -> None:
    """Parse ``text``: it either parses or raises a FilterSyntaxError that points into it."""
    error: FilterSyntaxError | None = None
    try:
        parse(text)
    except FilterSyntaxError as raised:
        error = raised
    if error is not None:
        assert 0 <= error.position <= len(text)
        assert str(error) == f"{error.message} at column {error.position + 1}"
        assert "\n" not in error.message or "\n" in text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=MAX_FILTER_LENGTH + 40))
def test_parse_raises_only_syntax_errors_on_any_text(text: str) -> None:
    _assert_syntax_error_or_expr(text)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(TOKENS), max_size=300),
    st.sampled_from([" ", "", "\n"]),
)
def test_parse_raises_only_syntax_errors_on_token_soup(tokens: list[str], separator: str) -> None:
    _assert_syntax_error_or_expr(separator.join(tokens))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_render_is_a_fixpoint_of_what_parses(text: str) -> None:
    try:
        expr = parse(text)
    except FilterSyntaxError:
        return
    assert parse(render(expr)) == expr


IDENTIFIER = st.from_regex(r"[A-Za-z][A-Za-z0-9_/]{0,8}", fullmatch=True)
KEY = st.text(max_size=6)
POINTER_PART = st.text(
    st.characters(categories=["L", "N"]) | st.sampled_from("-_.~:|/"), min_size=1, max_size=5
)
# Every selector a filter can spell: a name then any keys (metadata["k"]), a JSON pointer
# ("/a/b", parts of letters, digits and -_.~:|/), or "" (the pointer with no part).
selectors = st.one_of(
    IDENTIFIER.map(lambda name: (name,)),
    st.builds(lambda name, keys: (name, *keys), IDENTIFIER, st.lists(KEY, max_size=2)),
    st.lists(POINTER_PART, min_size=1, max_size=3).map(tuple),
    st.just(("",)),
)
values = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,5})(\.[0-9]{1,3})?", fullmatch=True).map(num),
    st.text(max_size=12).map(string),
    IDENTIFIER.map(word),
    st.lists(IDENTIFIER, min_size=2, max_size=3).map(".".join).map(word),
)
patterns = st.sampled_from(["", "^gs://", "[0-9]+$", "a|b", r"\d{2,}", "(?i)pusher", '"', "\\\\"])


def match_strategy(
    selectors: st.SearchStrategy[tuple[str, ...]], values: st.SearchStrategy[Value]
) -> st.SearchStrategy[Match]:
    return st.one_of(
        st.builds(
            Match, selectors, st.sampled_from(["==", "!=", "contains", "not contains"]), values
        ),
        st.builds(Match, selectors, st.sampled_from(["in", "not in"]), values),
        st.builds(
            Match, selectors, st.sampled_from(["matches", "not matches"]), patterns.map(string)
        ),
        st.builds(
            Match,
            selectors,
            st.sampled_from(["is empty", "is not empty", "is nil", "is not nil"]),
            st.none(),
        ),
    )


def trees(depth: int, matches: st.SearchStrategy[Match]) -> st.SearchStrategy[Expr]:
    """Expressions at most ``depth`` deep, so that their nesting stays within MAX_DEPTH."""
    if depth == 0:
        return matches
    below = trees(depth - 1, matches)
    return st.one_of(
        matches,
        st.builds(Not, below),
        st.builds(And, below, below),
        st.builds(Or, below, below),
    )


def normal(expr: Expr) -> Expr:
    """The tree go-bexpr builds for ``expr``: double negations dropped."""
    if isinstance(expr, Not):
        inner = normal(expr.operand)
        return inner.operand if isinstance(inner, Not) else Not(inner)
    if isinstance(expr, And | Or):
        return type(expr)(normal(expr.left), normal(expr.right))
    return expr


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(3, match_strategy(selectors, values)))
def test_parse_of_render_is_identity(expr: Expr) -> None:
    text = render(expr)
    assume(len(text) <= MAX_FILTER_LENGTH)
    try:
        parsed = parse(text)
    except FilterSyntaxError as error:
        assume("too complex" not in error.message)  # deep parentheses: go-bexpr's budget
        raise
    assert parsed == normal(expr)


PROPERTY_SETS = [PUSHED, NOT_PUSHED, {"version": "", "metadata": {}}]
known_selectors = st.sampled_from(
    [("pushed",), ("version",), ("uri",), ("metadata",), ("metadata", "blessed"), ("other",)]
)
known_values = st.one_of(
    st.sampled_from([num("1"), num("0"), string("1"), word("yes"), string("blessed")]),
    st.sampled_from(["1234", "Pusher", "", "true", "gs://"]).map(string),
    values,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(4, match_strategy(known_selectors, known_values)), st.sampled_from(PROPERTY_SETS))
def test_evaluate_returns_a_bool_or_raises_an_evaluation_error(
    expr: Expr, properties: dict[str, object]
) -> None:
    try:
        result = evaluate(expr, properties)
    except FilterEvaluationError:
        with pytest.raises(FilterEvaluationError):
            evaluate(Not(expr), properties)
        return
    assert isinstance(result, bool)
    assert evaluate(Not(expr), properties) is not result
