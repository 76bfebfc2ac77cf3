"""The filter language of Run Artifact Definitions, in the style of HashiCorp go-bexpr.

kfp-operator selects artifacts with go-bexpr expressions such as ``pushed == 1`` or
``metadata.blessed == "true"``. This module is a small, dependency-free reimplementation of
the part of that language that applies to the exit handler's artifact properties: a
hand-written tokenizer and recursive-descent parser (never ``eval``, never Python syntax), a
canonical renderer, and an evaluator.

Grammar (go-bexpr operand order; ``not`` binds tighter than ``and``, ``and`` than ``or``)::

    expr     := or
    or       := and ("or" and)*
    and      := unary ("and" unary)*
    unary    := "not" unary | primary
    primary  := "(" expr ")" | match
    match    := selector ("==" | "!=") value
              | value ["not"] "in" selector
              | selector ["not"] "contains" value
              | selector ["not"] "matches" string
              | selector "is" ["not"] "empty"
    selector := identifier ("." identifier)*
    value    := number | string | bareword

Identifiers are ``[A-Za-z_][A-Za-z0-9_-]*``; keywords (``and or not in contains matches is
empty``) are lowercase and case-sensitive. Strings are double-quoted with the escapes
``\\" \\\\ \\n \\t``, or backtick raw strings. Numbers are ``[+-]digits[.digits]``. A bareword
is a selector-shaped word that is not a keyword.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "And",
    "Expr",
    "FilterEvaluationError",
    "FilterSyntaxError",
    "Match",
    "Not",
    "Or",
    "Value",
    "evaluate",
    "parse",
    "render",
]

MAX_FILTER_LENGTH = 1024
"""Longest accepted filter, in characters: filters are hand-written one-liners."""

MAX_DEPTH = 32
"""Deepest accepted nesting; each ``(`` and each prefix ``not`` counts one level.

The bound keeps the recursive-descent parser far from Python's recursion limit.
"""

KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "matches", "is", "empty"})

ValueKind: TypeAlias = Literal["number", "string", "bareword"]
Operator: TypeAlias = Literal[
    "==",
    "!=",
    "in",
    "not in",
    "contains",
    "not contains",
    "matches",
    "not matches",
    "is empty",
    "is not empty",
]


class FilterSyntaxError(ValueError):
    """A filter that does not parse; ``position`` is the 0-based offset of the fault."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at column {position + 1}")
        self.message = message
        self.position = position


class FilterEvaluationError(Exception):
    """A clause that cannot be evaluated against the given properties.

    As in go-bexpr an evaluation error aborts the whole evaluation; callers treat it as
    "no match" for that artifact.
    """


@dataclass(frozen=True)
class Value:
    """A literal: ``text`` is the decoded text (strings without quotes or escapes)."""

    kind: ValueKind
    text: str


@dataclass(frozen=True)
class Match:
    """One comparison; ``value`` is None for ``is empty`` and ``is not empty``."""

    selector: tuple[str, ...]
    operator: Operator
    value: Value | None


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    left: Expr
    right: Expr


Expr: TypeAlias = Or | And | Not | Match

# --------------------------------------------------------------------------- tokenizer

TokenKind: TypeAlias = Literal["word", "number", "string", "==", "!=", "(", ")", "end"]

_WHITESPACE = frozenset(" \t\r\n")
_DIGITS = frozenset("0123456789")
_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | _DIGITS | {"-"}
_OPERATOR_CHARS = frozenset("=!<>~&|")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}
_VALUE_KINDS: dict[TokenKind, ValueKind] = {
    "number": "number",
    "string": "string",
    "word": "bareword",
}


@dataclass(frozen=True)
class _Token:
    kind: TokenKind
    source: str  # the token's text as written
    value: str  # decoded string contents; the source text for other kinds
    position: int

    def is_keyword(self, keyword: str) -> bool:
        return self.kind == "word" and self.source == keyword

    @property
    def is_name(self) -> bool:
        """A word that can be a selector or a bareword."""
        return self.kind == "word" and self.source not in KEYWORDS

    def describe(self) -> str:
        if self.kind == "end":
            return "end of filter"
        shown = self.source if len(self.source) <= 24 else self.source[:21] + "..."
        return repr(shown)


class _Lexer:
    """Produces tokens on demand, so that the leftmost fault is the one reported."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._offset = 0
        self._pending: list[_Token] = []

    def peek(self, ahead: int = 0) -> _Token:
        while len(self._pending) <= ahead:
            self._pending.append(self._scan())
        return self._pending[ahead]

    def next(self) -> _Token:
        token = self.peek()
        self._pending.pop(0)
        return token

    def _scan(self) -> _Token:
        text = self._text
        start = self._offset
        while start < len(text) and text[start] in _WHITESPACE:
            start += 1
        char = text[start : start + 1]
        if not char:
            token = _Token("end", "", "", start)
        elif char in _IDENT_START:
            token = self._plain("word", start, self._word_end(start))
        elif char in _DIGITS or (char in "+-" and text[start + 1 : start + 2] in _DIGITS):
            token = self._plain("number", start, self._number_end(start))
        elif char in '"`':
            token = self._scan_string(start)
        elif char in "()":
            token = self._plain("(" if char == "(" else ")", start, start + 1)
        elif char in _OPERATOR_CHARS:
            token = self._scan_operator(start)
        elif char == "'":
            raise FilterSyntaxError(
                'unexpected character "\'": strings use double quotes or backticks', start
            )
        else:
            raise FilterSyntaxError(f"unexpected character {char!r}", start)
        self._offset = start + len(token.source)
        return token

    def _plain(self, kind: TokenKind, start: int, end: int) -> _Token:
        source = self._text[start:end]
        return _Token(kind, source, source, start)

    def _scan_operator(self, start: int) -> _Token:
        text = self._text
        end = start
        while end < len(text) and text[end] in _OPERATOR_CHARS:
            end += 1
        operator = text[start:end]
        if operator == "==":
            return self._plain("==", start, end)
        if operator == "!=":
            return self._plain("!=", start, end)
        raise FilterSyntaxError(
            f"unknown operator {operator!r} (expected '==', '!=', 'in', 'contains', 'matches' "
            "or 'is')",
            start,
        )

    def _word_end(self, start: int) -> int:
        text = self._text
        end = start + 1
        while True:
            while end < len(text) and text[end] in _IDENT_CHARS:
                end += 1
            if end == len(text) or text[end] != ".":
                return end
            if text[end + 1 : end + 2] not in _IDENT_START:
                raise FilterSyntaxError("expected an identifier after '.'", end + 1)
            end += 2

    def _number_end(self, start: int) -> int:
        text = self._text
        end = start + 1
        while end < len(text) and text[end] in _DIGITS:
            end += 1
        if text[end : end + 1] == "." and text[end + 1 : end + 2] in _DIGITS:
            end += 2
            while end < len(text) and text[end] in _DIGITS:
                end += 1
        if end < len(text) and (text[end] in _IDENT_CHARS or text[end] == "."):
            raise FilterSyntaxError(
                f"malformed number: unexpected {text[end]!r} (quote text that is not a number)",
                end,
            )
        return end

    def _scan_string(self, start: int) -> _Token:
        text = self._text
        quote = text[start]
        if quote == "`":
            end = text.find("`", start + 1)
            if end < 0:
                raise FilterSyntaxError("unterminated string", start)
            return _Token("string", text[start : end + 1], text[start + 1 : end], start)
        parts: list[str] = []
        index = start + 1
        while index < len(text) and text[index] != "\n":
            char = text[index]
            if char == '"':
                return _Token("string", text[start : index + 1], "".join(parts), start)
            if char == "\\":
                escape = text[index + 1 : index + 2]
                if escape not in _ESCAPES:
                    break
                char = _ESCAPES[escape]
                index += 1
            parts.append(char)
            index += 1
        escape = text[index + 1 : index + 2] if text[index : index + 1] == "\\" else ""
        if escape and escape.isprintable():
            raise FilterSyntaxError(
                f"unknown escape '\\{escape}' in string (use '\\\\' for a backslash, "
                "or a backtick string)",
                index,
            )
        raise FilterSyntaxError("unterminated string", start)


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str) -> None:
        self._lexer = _Lexer(text)
        self._depth = 0

    def parse(self) -> Expr:
        expr = self._or("")
        token = self._lexer.peek()
        if token.kind == ")":
            raise FilterSyntaxError("unbalanced ')'", token.position)
        if token.kind != "end":
            raise FilterSyntaxError(
                f"expected 'and', 'or' or end of filter but found {token.describe()}",
                token.position,
            )
        return expr

    def _or(self, after: str) -> Expr:
        expr = self._and(after)
        while self._lexer.peek().is_keyword("or"):
            self._lexer.next()
            expr = Or(expr, self._and(" after 'or'"))
        return expr

    def _and(self, after: str) -> Expr:
        expr = self._unary(after)
        while self._lexer.peek().is_keyword("and"):
            self._lexer.next()
            expr = And(expr, self._unary(" after 'and'"))
        return expr

    def _unary(self, after: str) -> Expr:
        token = self._lexer.peek()
        if not token.is_keyword("not"):
            return self._primary(after)
        self._enter(token)
        self._lexer.next()
        operand = self._unary(" after 'not'")
        self._depth -= 1
        return Not(operand)

    def _primary(self, after: str) -> Expr:
        token = self._lexer.peek()
        if token.kind != "(":
            return self._match(after)
        self._enter(token)
        self._lexer.next()
        expr = self._or(" after '('")
        closing = self._lexer.peek()
        if closing.kind == "end":
            raise FilterSyntaxError("unbalanced '('", token.position)
        if closing.kind != ")":
            raise FilterSyntaxError(
                f"expected 'and', 'or' or ')' but found {closing.describe()}", closing.position
            )
        self._lexer.next()
        self._depth -= 1
        return expr

    def _enter(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise FilterSyntaxError(
                f"filter nests deeper than {MAX_DEPTH} levels of parentheses and 'not'",
                token.position,
            )

    def _match(self, after: str) -> Match:
        lexer = self._lexer
        token = lexer.peek()
        if token.is_name:
            following = lexer.peek(1)
            if following.is_keyword("in") or (
                following.is_keyword("not") and lexer.peek(2).is_keyword("in")
            ):
                return self._value_first()
            return self._selector_first()
        if token.kind in ("number", "string"):
            return self._value_first()
        raise FilterSyntaxError(
            f"expected a match expression{after} but found {token.describe()}", token.position
        )

    def _value_first(self) -> Match:
        lexer = self._lexer
        literal = lexer.next()
        value = Value(_VALUE_KINDS[literal.kind], literal.value)
        token = lexer.peek()
        operator: Operator
        if token.is_keyword("in"):
            operator = "in"
        elif token.is_keyword("not") and lexer.peek(1).is_keyword("in"):
            lexer.next()
            operator = "not in"
        else:
            raise FilterSyntaxError(
                f"expected 'in' or 'not in' after a value but found {token.describe()}",
                token.position,
            )
        lexer.next()
        token = lexer.peek()
        if not token.is_name:
            raise FilterSyntaxError(
                f"expected a selector after '{operator}' but found {token.describe()}",
                token.position,
            )
        lexer.next()
        return Match(tuple(token.source.split(".")), operator, value)

    def _selector_first(self) -> Match:
        lexer = self._lexer
        selector_token = lexer.next()
        selector = tuple(selector_token.source.split("."))
        token = lexer.peek()
        if token.kind in ("==", "!="):
            lexer.next()
            return Match(selector, "==" if token.kind == "==" else "!=", self._value(token.source))
        negated = token.is_keyword("not")
        if negated:
            lexer.next()
            token = lexer.peek()
            if not (token.is_keyword("contains") or token.is_keyword("matches")):
                raise FilterSyntaxError(
                    f"expected 'contains' or 'matches' after 'not' but found {token.describe()}",
                    token.position,
                )
        prefix = "not " if negated else ""
        if token.is_keyword("contains"):
            lexer.next()
            operator: Operator = "not contains" if negated else "contains"
            return Match(selector, operator, self._value(f"{prefix}contains"))
        if token.is_keyword("matches"):
            lexer.next()
            operator = "not matches" if negated else "matches"
            return Match(selector, operator, self._pattern(f"{prefix}matches"))
        if token.is_keyword("is"):
            lexer.next()
            return Match(selector, self._emptiness(), None)
        raise FilterSyntaxError(
            f"expected an operator ('==', '!=', 'contains', 'matches', 'is' or 'not') after "
            f"{selector_token.describe()} but found {token.describe()}",
            token.position,
        )

    def _emptiness(self) -> Operator:
        lexer = self._lexer
        token = lexer.next()
        if token.is_keyword("empty"):
            return "is empty"
        if token.is_keyword("not"):
            token = lexer.next()
            if token.is_keyword("empty"):
                return "is not empty"
            raise FilterSyntaxError(
                f"expected 'empty' after 'is not' but found {token.describe()}", token.position
            )
        raise FilterSyntaxError(
            f"expected 'empty' or 'not empty' after 'is' but found {token.describe()}",
            token.position,
        )

    def _value(self, operator: str) -> Value:
        token = self._lexer.peek()
        if token.kind not in ("number", "string") and not token.is_name:
            raise FilterSyntaxError(
                f"expected a value after '{operator}' but found {token.describe()}",
                token.position,
            )
        self._lexer.next()
        return Value(_VALUE_KINDS[token.kind], token.value)

    def _pattern(self, operator: str) -> Value:
        token = self._lexer.peek()
        if token.kind != "string":
            raise FilterSyntaxError(
                f"expected a quoted regular expression after '{operator}' but found "
                f"{token.describe()}",
                token.position,
            )
        try:
            re.compile(token.value)
        except re.error as error:
            raise FilterSyntaxError(
                f"invalid regular expression: {error.msg}", token.position
            ) from None
        except (RecursionError, OverflowError) as error:
            raise FilterSyntaxError(
                f"invalid regular expression: {error}", token.position
            ) from None
        self._lexer.next()
        return Value("string", token.value)


def parse(text: str) -> Expr:
    """Parse a filter; every fault, including length and nesting limits, is a FilterSyntaxError."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterSyntaxError(
            f"filter is {len(text)} characters long; the limit is {MAX_FILTER_LENGTH}",
            MAX_FILTER_LENGTH,
        )
    return _Parser(text).parse()


# --------------------------------------------------------------------------- renderer


def _render_value(value: Value) -> str:
    if value.kind != "string":
        return value.text
    escaped = (
        value.text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _render_match(match: Match) -> str:
    selector = ".".join(match.selector)
    if match.value is None:
        return f"{selector} {match.operator}"
    value = _render_value(match.value)
    if match.operator in ("in", "not in"):
        return f"{value} {match.operator} {selector}"
    return f"{selector} {match.operator} {value}"


def _operand(expr: Expr, *grouped: type) -> str:
    """Render an operand, in parentheses when its type would otherwise bind wrongly."""
    text = render(expr)
    return f"({text})" if isinstance(expr, grouped) else text


def render(expr: Expr) -> str:
    """Render the canonical text of ``expr``, parenthesised just enough that it parses back.

    ``and`` and ``or`` associate to the left, so a right operand of the same kind is grouped.
    """
    if isinstance(expr, Or):
        return f"{render(expr.left)} or {_operand(expr.right, Or)}"
    if isinstance(expr, And):
        return f"{_operand(expr.left, Or)} and {_operand(expr.right, Or, And)}"
    if isinstance(expr, Not):
        return f"not {_operand(expr.operand, Or, And)}"
    return _render_match(expr)


# --------------------------------------------------------------------------- evaluator


def _describe(value: Value) -> str:
    return f"{value.kind} {_render_value(value)}"


def _as_int(selector: str, value: Value) -> int:
    """Coerce a literal for an integer property: integer numbers and integer strings only."""
    text = value.text
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or any(c not in _DIGITS for c in digits):
        raise FilterEvaluationError(
            f"{selector!r} is an integer property: expected an integer to compare with but "
            f"found {_describe(value)}"
        )
    return int(text)


def _lookup(selector: tuple[str, ...], properties: Mapping[str, object]) -> object:
    name = ".".join(selector)
    root = selector[0]
    if root not in properties:
        raise FilterEvaluationError(f"unknown selector {name!r}: no such property")
    found = properties[root]
    if len(selector) == 1:
        return found
    if not isinstance(found, Mapping):
        raise FilterEvaluationError(f"unknown selector {name!r}: {root!r} has no fields")
    key = ".".join(selector[1:])
    if key not in found:
        raise FilterEvaluationError(f"unknown selector {name!r}: no {root} key {key!r}")
    return found[key]


_NEGATIONS: dict[Operator, Operator] = {
    "!=": "==",
    "not in": "in",
    "not contains": "contains",
    "not matches": "matches",
    "is not empty": "is empty",
}


def _compare(match: Match, value: Value, found: object, name: str) -> bool:
    """Evaluate ``match`` (one of the operators that take a value) without its negation."""
    operator = _NEGATIONS.get(match.operator, match.operator)
    if isinstance(found, Mapping):
        if operator in ("in", "contains"):
            return value.text in found
        raise FilterEvaluationError(
            f"{name!r} is a mapping: {match.operator!r} does not apply (use 'KEY in {name}' or "
            f"'{name}.KEY')"
        )
    if isinstance(found, str):
        if operator == "==":
            return found == value.text
        if operator in ("in", "contains"):
            return value.text in found
        return re.search(value.text, found) is not None
    if isinstance(found, int):
        if operator == "==":
            return found == _as_int(name, value)
        raise FilterEvaluationError(
            f"{name!r} is an integer property: {match.operator!r} applies only to strings"
        )
    raise FilterEvaluationError(f"{name!r} has an unsupported type {type(found).__name__}")


def _evaluate_match(match: Match, properties: Mapping[str, object]) -> bool:
    name = ".".join(match.selector)
    found = _lookup(match.selector, properties)
    if match.value is not None:
        result = _compare(match, match.value, found, name)
    elif isinstance(found, str | Mapping):
        result = len(found) == 0
    else:
        raise FilterEvaluationError(
            f"{name!r} is not a string or mapping: {match.operator!r} does not apply"
        )
    return not result if match.operator in _NEGATIONS else result


def evaluate(expr: Expr, properties: Mapping[str, object]) -> bool:
    """Evaluate ``expr`` over an artifact's properties.

    ``properties`` maps names to ``str`` or ``int`` values, and ``"metadata"`` to a
    ``Mapping[str, str]`` addressed as ``metadata.KEY`` (a dotted rest is one key).
    Literals are coerced to the property's type: an int property needs an integer literal
    (``1`` or ``"1"``); a str property is compared with the literal's text.
    ``and``/``or`` short-circuit from the left, as in go-bexpr.

    Raises FilterEvaluationError, naming the selector, for a clause that cannot be evaluated:
    an unknown selector (e.g. ``pushed_version``, which exists only in ML Metadata), a missing
    metadata key, a literal that cannot be coerced, or an operator that does not apply to the
    property's type. Following go-bexpr the error aborts the whole evaluation; the caller
    counts it as no match for that artifact.
    """
    if isinstance(expr, Or):
        return evaluate(expr.left, properties) or evaluate(expr.right, properties)
    if isinstance(expr, And):
        return evaluate(expr.left, properties) and evaluate(expr.right, properties)
    if isinstance(expr, Not):
        return not evaluate(expr.operand, properties)
    return _evaluate_match(expr, properties)
