"""Unit tests of the go-bexpr-style filter language of Run Artifact Definitions (SPEC §4)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exit_handler.artifact_filter import (
    KEYWORDS,
    MAX_DEPTH,
    MAX_FILTER_LENGTH,
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
    render,
)

# An artifact as the exit handler describes it to filters: a pushed Pusher output.
PUSHED = {
    "pushed": 1,
    "version": "1234",
    "uri": "gs://bucket/penguin/Pusher/pushed_model/1234",
    "component": "Pusher",
    "output": "pushed_model",
    "metadata": {"blessed": "true", "model-version": "v2", "a.b": "dotted", "empty": ""},
}
NOT_PUSHED = {**PUSHED, "pushed": 0, "metadata": {}, "version": ""}


def num(text: str) -> Value:
    return Value("number", text)


def string(text: str) -> Value:
    return Value("string", text)


def word(text: str) -> Value:
    return Value("bareword", text)


def eq(selector: str, value: Value) -> Match:
    return Match(tuple(selector.split(".")), "==", value)


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
        ("version is empty", Match(("version",), "is empty", None)),
        ("metadata is not empty", Match(("metadata",), "is not empty", None)),
        ("metadata.blessed == true", Match(("metadata", "blessed"), "==", word("true"))),
        ("metadata.model-version == v2", Match(("metadata", "model-version"), "==", word("v2"))),
        ("_a.b_c.d-e == x", Match(("_a", "b_c", "d-e"), "==", word("x"))),
    ],
)
def test_every_operator(text: str, expected: Match) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a == 1 or b == 2 and c == 3", Or(A, And(B, C))),
        ("a == 1 and b == 2 or c == 3", Or(And(A, B), C)),
        ("not a == 1 and b == 2", And(Not(A), B)),
        ("not a == 1 or b == 2", Or(Not(A), B)),
        ("a == 1 or b == 2 or c == 3", Or(Or(A, B), C)),
        ("a == 1 and b == 2 and c == 3", And(And(A, B), C)),
        ("a == 1 or (b == 2 or c == 3)", Or(A, Or(B, C))),
        ("(a == 1 or b == 2) and c == 3", And(Or(A, B), C)),
        ("not (a == 1 and b == 2)", Not(And(A, B))),
        ("not not a == 1", Not(Not(A))),
        ("((a == 1))", A),
        ("(a==1)and(b==2)", And(A, B)),
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
        (r'v == "a\"b"', string('a"b')),
        (r'v == "back\\slash"', string("back\\slash")),
        (r'v == "tab\tnew\nline"', string("tab\tnew\nline")),
        ('v == "and or not ) ( == ]"', string("and or not ) ( == ]")),
        ('v == "ünïcødé ✓"', string("ünïcødé ✓")),
        (r"v == `raw \d+ \" no escapes`", string(r"raw \d+ \" no escapes")),
        ("v == `multi\nline`", string("multi\nline")),
        ("v == ``", string("")),
        ("v == 0", num("0")),
        ("v == 1234", num("1234")),
        ("v == -1", num("-1")),
        ("v == +2", num("+2")),
        ("v == 3.25", num("3.25")),
        ("v == 007", num("007")),
        ("v == Pusher", word("Pusher")),
        ("v == pushed_model-2", word("pushed_model-2")),
        ("v == a.b", word("a.b")),
        ("v == AND", word("AND")),
        ("v == True", word("True")),
    ],
)
def test_literals(text: str, value: Value) -> None:
    assert parse(text) == Match(("v",), "==", value)


def test_keywords_are_lowercase_and_case_sensitive() -> None:
    assert parse("NOT == AND") == Match(("NOT",), "==", word("AND"))
    with pytest.raises(FilterSyntaxError) as caught:
        parse("a == 1 AND b == 2")
    assert caught.value.position == 7


def test_keyword_parts_of_a_dotted_selector_are_names() -> None:
    assert parse("metadata.in == x") == Match(("metadata", "in"), "==", word("x"))


def test_limits_are_inclusive() -> None:
    padding = MAX_FILTER_LENGTH - len('v == ""')
    assert parse('v == "' + "x" * padding + '"') == Match(("v",), "==", string("x" * padding))
    deepest: Expr = A
    for _ in range(MAX_DEPTH):
        deepest = Not(deepest)
    assert parse("not " * MAX_DEPTH + "a == 1") == deepest
    nested = "(" * MAX_DEPTH + "a == 1" + ")" * MAX_DEPTH
    assert parse(nested) == A
    mixed = "not (" * (MAX_DEPTH // 2) + "a == 1" + ")" * (MAX_DEPTH // 2)
    assert isinstance(parse(mixed), Not)


def test_error_string_names_the_column() -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse("component ==")
    error = caught.value
    assert error.message == "expected a value after '==' but found end of filter"
    assert error.position == 12
    assert str(error) == "expected a value after '==' but found end of filter at column 13"
    assert isinstance(error, ValueError)


# (filter, a fragment of the message, 1-based column)
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
    ("(pushed == 1 version == 2)", "expected 'and', 'or' or ')' but found 'version'", 14),
    ('version == "abc', "unterminated string", 12),
    ('version == "a\nb"', "unterminated string", 12),
    ("version == `abc", "unterminated string", 12),
    ('version == "abc\\', "unterminated string", 12),
    ('version == "a\\qb"', "unknown escape '\\q'", 14),
    ("version == 'abc'", "strings use double quotes or backticks", 12),
    ("pushed == 1 and", "expected a match expression after 'and' but found end of filter", 16),
    ("pushed == 1 or or", "expected a match expression after 'or' but found 'or'", 16),
    ("and pushed == 1", "expected a match expression but found 'and'", 1),
    ("not", "expected a match expression after 'not' but found end of filter", 4),
    ("()", "expected a match expression after '(' but found ')'", 2),
    ("pushed 1", "expected an operator", 8),
    ("pushed", "but found end of filter", 7),
    ("pushed is", "expected 'empty' or 'not empty' after 'is' but found end of filter", 10),
    ("pushed is full", "expected 'empty' or 'not empty' after 'is' but found 'full'", 11),
    ("pushed is not", "expected 'empty' after 'is not' but found end of filter", 14),
    ("pushed not 1", "expected 'contains' or 'matches' after 'not' but found '1'", 12),
    ("uri matches abc", "expected a quoted regular expression after 'matches'", 13),
    ("uri not matches 1", "expected a quoted regular expression after 'not matches'", 17),
    ('uri matches "["', "invalid regular expression", 13),
    ('uri matches "a{99999999999}"', "invalid regular expression", 13),
    ('uri matches "' + "(" * 500 + ")" * 500 + '"', "invalid regular expression", 13),
    ('"x" == uri', "expected 'in' or 'not in' after a value but found '=='", 5),
    ("1 in 2", "expected a selector after 'in' but found '2'", 6),
    ('x not in "y"', "expected a selector after 'not in' but found '\"y\"'", 10),
    ("x in not", "expected a selector after 'in' but found 'not'", 6),
    ("metadata. == 1", "expected an identifier after '.'", 10),
    ("metadata.1 == 1", "expected an identifier after '.'", 10),
    ("pushed == 1.", "malformed number", 12),
    ("pushed == 1.2.3", "malformed number", 14),
    ("pushed == 1abc", "malformed number", 12),
    ("pushed == 1 or-1 in x", "expected 'and', 'or' or end of filter but found 'or-1'", 13),
    ("pushed == @", "unexpected character '@'", 11),
    ("pushed == - 1", "unexpected character '-'", 11),
    ("pushed == 1 == 2", "expected 'and', 'or' or end of filter but found '=='", 13),
    ("version == empty", "expected a value after '==' but found 'empty'", 12),
    ("a == 1 AND b == 2", "expected 'and', 'or' or end of filter but found 'AND'", 8),
    ("x" * (MAX_FILTER_LENGTH + 1), "filter is 1025 characters long; the limit is 1024", 1025),
    ("not " * (MAX_DEPTH + 1) + "a == 1", "nests deeper than 32 levels", 4 * MAX_DEPTH + 1),
    ("(" * (MAX_DEPTH + 1) + "a == 1" + ")" * (MAX_DEPTH + 1), "nests deeper", MAX_DEPTH + 1),
]


@pytest.mark.parametrize(("text", "fragment", "column"), MALFORMED)
def test_malformed_filters_report_what_and_where(text: str, fragment: str, column: int) -> None:
    with pytest.raises(FilterSyntaxError) as caught:
        parse(text)
    assert fragment in caught.value.message
    assert caught.value.position + 1 == column
    assert str(caught.value).endswith(f" at column {column}")


def test_the_leftmost_fault_is_reported() -> None:
    # The unterminated string comes after an earlier syntax error: the earlier one wins.
    with pytest.raises(FilterSyntaxError) as caught:
        parse('pushed == == "abc')
    assert caught.value.position == 10


# ------------------------------------------------------------------------------------ render


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("pushed==1", "pushed == 1"),
        ("  (pushed == 1)  ", "pushed == 1"),
        ("a==1 or (b==2 and c==3)", "a == 1 or b == 2 and c == 3"),
        ("(a==1 or b==2) and c==3", "(a == 1 or b == 2) and c == 3"),
        ("a==1 and (b==2 and c==3)", "a == 1 and (b == 2 and c == 3)"),
        ("a==1 or (b==2 or c==3)", "a == 1 or (b == 2 or c == 3)"),
        ("(a==1 or b==2) or c==3", "a == 1 or b == 2 or c == 3"),
        ("not (a==1 or b==2)", "not (a == 1 or b == 2)"),
        ("not (not a==1)", "not not a == 1"),
        ('`a\\b"c` in  uri', '"a\\\\b\\"c" in uri'),
        ('v == "tab\tline\\nquote\\""', 'v == "tab\\tline\\nquote\\""'),
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
        ('metadata.blessed == "true"', True, None),
        ("pushed == 1 and version is not empty", True, False),
        # int coercion: integer numbers and integer strings
        ('pushed == "1"', True, False),
        ('pushed == "+1"', True, False),
        ("pushed != 0", True, False),
        ("pushed == -0", False, True),
        # str comparison uses the literal's text
        ("version == 1234", True, False),
        ('version == "1234"', True, False),
        ("version == `1234`", True, False),
        ("version == 01234", False, False),
        ("version == 1234.0", False, False),
        ("component == Pusher", True, True),
        ("component == pusher", False, False),
        ("output != pushed_model", False, False),
        # substring and key membership
        ("1234 in uri", True, True),
        ('"Pusher/" in uri', True, True),
        ("uri contains pushed_model", True, True),
        ("uri not contains Trainer", True, True),
        ("x not in uri", True, True),
        ('"blessed" in metadata', True, False),
        ("blessed not in metadata", False, True),
        ("metadata contains blessed", True, False),
        ("metadata not contains blessed", False, True),
        # regular expressions: search, like Go's MatchString
        ('uri matches "pushed_model/[0-9]+"', True, True),
        ('uri matches "^pushed_model"', False, False),
        (r"version matches `^\d+$`", True, False),
        (r"version not matches `^\d+$`", False, True),
        # emptiness
        ("version is empty", False, True),
        ("metadata is empty", False, True),
        ("metadata is not empty", True, False),
        ('metadata.empty == ""', True, None),
        ("metadata.empty is empty", True, None),
        # metadata keys: dashes, and dots taken as part of the key
        ("metadata.model-version == v2", True, None),
        ("metadata.a.b == dotted", True, None),
        # logic
        ("not pushed == 1", False, True),
        ("pushed == 1 or version == 1234", True, False),
        ("pushed == 0 or (component == Pusher and not version is empty)", True, True),
    ],
)
def test_evaluate(text: str, pushed: bool, not_pushed: bool | None) -> None:
    expr = parse(text)
    assert evaluate(expr, PUSHED) is pushed
    if not_pushed is None:
        with pytest.raises(FilterEvaluationError):
            evaluate(expr, NOT_PUSHED)
    else:
        assert evaluate(expr, NOT_PUSHED) is not_pushed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("pushed_version == 1", "unknown selector 'pushed_version'"),
        ("pushed_version is empty", "unknown selector 'pushed_version'"),
        ("1 in pushed_version", "unknown selector 'pushed_version'"),
        ("metadata.missing == x", "unknown selector 'metadata.missing'"),
        ("pushed.x == 1", "unknown selector 'pushed.x'"),
        ("version.x == 1", "unknown selector 'version.x'"),
        ("pushed == yes", "'pushed' is an integer property: expected an integer"),
        ('pushed == "one"', "'pushed' is an integer property"),
        ('pushed == ""', "'pushed' is an integer property"),
        ("pushed == 1.0", "'pushed' is an integer property"),
        ('pushed == "1 "', "'pushed' is an integer property"),
        ('pushed == "\u0661"', "'pushed' is an integer property"),
        ("1 in pushed", "'pushed' is an integer property: 'in' applies only to strings"),
        ("pushed contains 1", "'pushed' is an integer property"),
        ('pushed matches "1"', "'pushed' is an integer property"),
        ("pushed is empty", "'pushed' is not a string or mapping"),
        ("pushed is not empty", "'pushed' is not a string or mapping"),
        ("metadata == x", "'metadata' is a mapping"),
        ('metadata matches "x"', "'metadata' is a mapping"),
        ("weight == 1", "'weight' has an unsupported type float"),
    ],
)
def test_evaluation_errors_name_the_selector(text: str, fragment: str) -> None:
    with pytest.raises(FilterEvaluationError) as caught:
        evaluate(parse(text), {**PUSHED, "weight": 0.5})
    assert fragment in str(caught.value)


def test_evaluation_short_circuits_like_go_bexpr() -> None:
    assert evaluate(parse("pushed == 1 or pushed_version == 1"), PUSHED) is True
    assert evaluate(parse("pushed == 0 and pushed_version == 1"), PUSHED) is False
    with pytest.raises(FilterEvaluationError):
        evaluate(parse("pushed_version == 1 or pushed == 1"), PUSHED)
    with pytest.raises(FilterEvaluationError):
        evaluate(parse("not pushed_version == 1"), PUSHED)


# ------------------------------------------------------------------------------------ properties

TOKENS = [
    *sorted(KEYWORDS),
    *["==", "!=", "=~", "(", ")", ".", "[", "]", "'", '"', "`", "\\", "-", "+", "@"],
    *["pushed", "version", "uri", "metadata", "metadata.blessed", "x.", "A_b-c"],
    *["1", "-2", "3.5", "1.", "0x1", '"s"', '"a\\"b"', '"\\q"', "`r`", '"['],
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


IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_-]{0,8}"
names = st.from_regex(IDENTIFIER, fullmatch=True).filter(lambda name: name not in KEYWORDS)
selectors = st.one_of(
    names.map(lambda name: (name,)),
    st.lists(st.from_regex(IDENTIFIER, fullmatch=True), min_size=2, max_size=3).map(tuple),
)
values = st.one_of(
    st.from_regex(r"[+-]?[0-9]{1,6}(\.[0-9]{1,3})?", fullmatch=True).map(num),
    st.text(max_size=12).map(string),
    names.map(word),
    st.lists(names, min_size=2, max_size=3).map(".".join).map(word),
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
        st.builds(Match, selectors, st.sampled_from(["is empty", "is not empty"]), st.none()),
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(5, match_strategy(selectors, values)))
def test_parse_of_render_is_identity(expr: Expr) -> None:
    text = render(expr)
    assume(len(text) <= MAX_FILTER_LENGTH)
    assert parse(text) == expr


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
