"""The filter language of Run Artifact Definitions: HashiCorp go-bexpr, as kfp-operator runs it.

kfp-operator selects artifacts with ``bexpr.CreateEvaluator(filter)`` and ``Evaluate(properties)``
(go-bexpr v0.1.14 at kfp-operator v0.7, v0.1.16 at its head); a filter that fails to evaluate
selects nothing. A definition that works there must select the same artifacts here, so this
module follows go-bexpr v0.1.16 to the letter rather than a tidier language of our own, and
``tests/test_conformance_bexpr.py`` holds it to that against the real go-bexpr.

Parsing. go-bexpr's grammar is a PEG (``grammar/grammar.peg``, compiled by pigeon). The parser
below runs that same grammar over the same ordered choices, so it accepts exactly the same
texts: keywords are only keywords where the grammar tries them (``version == empty`` and
``x in not`` are valid; ``not(x == 1)`` and ``(a == 1)and(b == 2)`` are not), selectors are
``[a-zA-Z][a-zA-Z0-9_/]*`` joined by ``.`` with ``.123`` and ``["any key"]`` parts or a quoted
JSON pointer ``"/metadata/a.b"``, numbers are ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?`` followed by a
space, ``)`` or the end, and strings are Go literals (``strconv.Unquote``) that end at the first
quote, so ``"a\\"b"`` is an error and ``\\x22`` is the way to write a quote. pigeon does not
memoize, so go-bexpr's parse time grows fourfold with each level of some nestings; since v0.1.15
it gives up after 2,000,000 grammar steps. This parser memoizes (linear time) but counts the
steps pigeon would take, and refuses exactly where go-bexpr does.

Evaluation follows go-bexpr too: a selector is a path into the properties (``metadata.blessed``
is ``properties["metadata"]["blessed"]``); a missing top-level property or a path through a
non-mapping is an evaluation error, a missing key of a mapping is "not present" (``==``,
``in``, ``matches``, ``is not empty`` and ``is not nil`` are then false, their negations true);
literals are coerced to the property's type (an int property parses the literal with Go's
``strconv.ParseInt(text, 0, 64)``: ``"0x1"`` and ``"1_0"`` are numbers); ``matches`` is RE2
(the ``google-re2`` binding, imported only when a filter uses ``matches``), searched anywhere,
so evaluation is linear in the pattern and the value.

Deliberate deviations (see README, "Conformance -> go-bexpr"): filters are at most 1,024
characters and 32 levels of ``(``, ``not`` and ``any``/``all`` deep; a pattern RE2 rejects is a
syntax error here (go-bexpr only fails when it evaluates it); ``any``/``all`` collection
expressions are refused; ``is empty`` on a number is an evaluation error as in v0.1.16 (v0.1.14
panics); ``is nil`` is accepted as in v0.1.16 (a syntax error in v0.1.14).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, cast

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "KEYWORDS",
    "MAX_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_PARSE_STEPS",
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
    "parse_steps",
    "render",
]

MAX_FILTER_LENGTH = 1024
"""Longest accepted filter, in characters: filters are hand-written one-liners."""

MAX_DEPTH = 32
"""Deepest accepted nesting: each ``(``, ``not`` and ``any``/``all`` opens a level.

The parser recurses once per level; the bound keeps it far from Python's recursion limit.
"""

MAX_PARSE_STEPS = 2_000_000
"""go-bexpr's default ``MaxExpressions`` (since v0.1.15): pigeon's steps before it gives up."""

KEYWORDS = frozenset(
    {"and", "or", "not", "in", "contains", "matches", "is", "empty", "nil", "any", "all", "as"}
)
"""Words with a meaning somewhere in the grammar; elsewhere they are plain names."""

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
    "is nil",
    "is not nil",
]


class FilterSyntaxError(ValueError):
    """A filter go-bexpr would refuse; ``position`` is the 0-based offset of the fault.

    ``pattern`` is the regular expression RE2 refused, when that is the fault.
    """

    def __init__(self, message: str, position: int, *, pattern: str | None = None) -> None:
        super().__init__(f"{message} at column {position + 1}")
        self.message = message
        self.position = position
        self.pattern = pattern


class FilterEvaluationError(Exception):
    """A clause that cannot be evaluated against the given properties.

    As in go-bexpr an evaluation error aborts the whole evaluation; callers treat it as
    "no match" for that artifact, as kfp-operator does.
    """


@dataclass(frozen=True)
class Value:
    """A literal; ``text`` is go-bexpr's ``MatchValue.Raw``, the text every operator uses.

    ``bareword`` is a selector-shaped word (``Pusher``, ``a.b``); a number keeps its text
    (``-2.5``); a string is decoded (``"a\\tb"`` is ``a<TAB>b``). Escapes that make invalid
    UTF-8 (``"\\xff"``) keep their bytes as surrogate escapes, so they equal nothing.
    """

    kind: ValueKind
    text: str


@dataclass(frozen=True)
class Match:
    """One comparison; ``selector`` is the property path; ``value`` is None for ``is ...``."""

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

# ------------------------------------------------------------------------------ the PEG engine
#
# Nodes mirror pigeon's: every node visited is one step (pigeon's ``ExprCnt``), a rule
# reference is a step and so is the rule's body. Results are memoized per (rule, position), so
# a parse is linear, yet each result carries the steps pigeon spends to reach it again.

_FAIL = -1
_Result: TypeAlias = tuple[int, object, int]  # (end or _FAIL, value, steps)
_Action: TypeAlias = Callable[["_State", int, int, object], object]


class _Node:
    __slots__ = ()

    def match(self, state: _State, pos: int) -> _Result:
        raise NotImplementedError


# A child as its parent calls it: (rule name or None, node, steps of the labels and the rule
# reference folded into this call). Folding saves a Python frame per label and reference.
_Item: TypeAlias = tuple["str | None", "_Node", int]


class _Ref(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Label(_Node):
    """``label:expr``; only its step matters here (values are positional)."""

    __slots__ = ("expr",)

    def __init__(self, expr: _Node) -> None:
        self.expr = expr


def _item(node: _Node) -> _Item:
    steps = 0
    while isinstance(node, _Label):
        steps += 1
        node = node.expr
    if isinstance(node, _Ref):
        return node.name, node, steps + 1
    return None, node, steps


def _call(state: _State, item: _Item, pos: int) -> _Result:
    name, node, steps = item
    end, value, taken = state.rule(name, pos) if name is not None else node.match(state, pos)
    return end, value, taken + steps


class _Lit(_Node):
    __slots__ = ("text", "want")

    def __init__(self, text: str) -> None:
        self.text = text
        self.want = f"'{text}'"

    def match(self, state: _State, pos: int) -> _Result:
        if state.text.startswith(self.text, pos):
            return pos + len(self.text), self.text, 1
        state.fail(pos, self.want)
        return _FAIL, None, 1


class _Class(_Node):
    __slots__ = ("test", "want")

    def __init__(self, test: Callable[[str], bool], want: str) -> None:
        self.test = test
        self.want = want

    def match(self, state: _State, pos: int) -> _Result:
        text = state.text
        if pos < len(text) and self.test(text[pos]):
            return pos + 1, text[pos], 1
        state.fail(pos, self.want)
        return _FAIL, None, 1


class _Any(_Node):
    __slots__ = ()

    def match(self, state: _State, pos: int) -> _Result:
        if pos < len(state.text):
            return pos + 1, state.text[pos], 1
        state.fail(pos, "any character")
        return _FAIL, None, 1


class _Fault(_Node):
    """``&{ return false, errors.New(...) }``: records a fault, never matches (see _Seq)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


class _Seq(_Node):
    __slots__ = ("items", "optional")

    def __init__(self, *nodes: _Node) -> None:
        # ``expr?`` directly in a sequence is folded too: one step for the ``?`` node.
        items: list[_Item] = []
        optional: list[bool] = []
        for node in nodes:
            if isinstance(node, _Opt):
                name, inner, steps = _item(node.expr)
                items.append((name, inner, steps + 1))
                optional.append(True)
            else:
                items.append(_item(node))
                optional.append(False)
        self.items = tuple(items)
        self.optional = tuple(optional)

    def match(self, state: _State, pos: int) -> _Result:
        steps = 1
        values: list[object] = []
        at = pos
        for (name, node, extra), optional in zip(self.items, self.optional, strict=True):
            if node.__class__ is _Fault:
                state.record(node.kind, pos, at)
                return _FAIL, None, steps + 1
            end, value, taken = state.rule(name, at) if name is not None else node.match(state, at)
            steps += taken + extra
            if end == _FAIL:
                if not optional:
                    return _FAIL, None, steps
                end, value = at, None
            values.append(value)
            at = end
        return at, values, steps


class _Act(_Node):
    """``expr { code }``: pigeon runs the code on a match; here it builds the tree."""

    __slots__ = ("action", "item")

    def __init__(self, expr: _Node, action: _Action) -> None:
        self.item = _item(expr)
        self.action = action

    def match(self, state: _State, pos: int) -> _Result:
        end, value, steps = _call(state, self.item, pos)
        if end != _FAIL:
            value = self.action(state, pos, end, value)
        return end, value, steps + 1


class _Choice(_Node):
    """Ordered choice; an action alternative is run in place (one Python frame fewer)."""

    __slots__ = ("alternatives",)

    def __init__(self, *alternatives: _Node) -> None:
        compiled: list[tuple[_Item, _Action | None]] = []
        for alternative in alternatives:
            if isinstance(alternative, _Act):
                name, inner, steps = alternative.item
                compiled.append(((name, inner, steps + 1), alternative.action))
            else:
                compiled.append((_item(alternative), None))
        self.alternatives = tuple(compiled)

    def match(self, state: _State, pos: int) -> _Result:
        steps = 1
        for (name, node, extra), action in self.alternatives:
            end, value, taken = (
                state.rule(name, pos) if name is not None else node.match(state, pos)
            )
            steps += taken + extra
            if end != _FAIL:
                if action is not None:
                    value = action(state, pos, end, value)
                return end, value, steps
        return _FAIL, None, steps


class _Opt(_Node):
    """``expr?``: only ever an item of a `_Seq`, which folds it (and so does its matching)."""

    __slots__ = ("expr",)

    def __init__(self, expr: _Node) -> None:
        self.expr = expr


class _Repeat(_Node):
    """``expr*`` (``least`` 0) or ``expr+`` (``least`` 1)."""

    __slots__ = ("item", "least")

    def __init__(self, expr: _Node, least: int) -> None:
        self.item = _item(expr)
        self.least = least

    def match(self, state: _State, pos: int) -> _Result:
        steps = 1
        values: list[object] = []
        at = pos
        while True:
            end, value, taken = _call(state, self.item, at)
            steps += taken
            if end == _FAIL:
                break
            values.append(value)
            at = end
        if len(values) < self.least:
            return _FAIL, None, steps
        return at, values, steps


class _Lookahead(_Node):
    """``&expr`` (``positive``) or ``!expr``; failures inside ``!`` are not what was expected."""

    __slots__ = ("item", "positive")

    def __init__(self, expr: _Node, *, positive: bool) -> None:
        self.item = _item(expr)
        self.positive = positive

    def match(self, state: _State, pos: int) -> _Result:
        if not self.positive:
            state.inverted = not state.inverted
        end, _, steps = _call(state, self.item, pos)
        if not self.positive:
            state.inverted = not state.inverted
        if (end != _FAIL) == self.positive:
            return pos, None, steps + 1
        return _FAIL, None, steps + 1


class _TooDeep(Exception):
    def __init__(self, position: int) -> None:
        self.position = position


class _OverBudget(Exception):
    pass


@dataclass
class _Selector:
    """A parsed selector: ``parts`` is go-bexpr's ``Selector.Path``."""

    parts: tuple[str, ...]
    pointer: bool  # a quoted JSON pointer, "/a/b"
    plain: bool  # identifiers and digits joined by dots: renders as it was written

    @property
    def raw(self) -> str:
        """go-bexpr's ``Selector.String()``, the text of a selector used as a value."""
        return ("/" if self.pointer else ".").join(self.parts)


class _State:
    __slots__ = (
        "budget",
        "depth",
        "expected",
        "fail_pos",
        "faults",
        "inverted",
        "memo",
        "patterns",
        "stack",
        "text",
        "unsupported",
    )

    def __init__(self, text: str, budget: int) -> None:
        self.text = text
        self.budget = budget
        self.memo: dict[tuple[str, int, bool], _Result] = {}
        self.inverted = False
        self.fail_pos = -1
        # at fail_pos: (what, innermost rule, whether a value after an operator was wanted)
        self.expected: set[tuple[str, str, bool]] = set()
        self.faults: set[tuple[int, str, int]] = set()  # (position, kind, start)
        self.stack: list[tuple[str, int]] = []  # active rules and where they started
        self.depth = 0
        self.patterns: dict[int, int] = {}  # id(Value) -> position, for "matches" values
        self.unsupported: list[int] = []  # positions of any/all expressions

    def rule(self, name: str, pos: int) -> _Result:
        key = (name, pos, self.inverted)
        hit = self.memo.get(key)
        if hit is not None:
            return hit
        nesting = name in _NESTING and _NESTING[name](self.text, pos)
        if nesting:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _TooDeep(pos)
        self.stack.append((name, pos))
        hit = _RULES[name].match(self, pos)
        self.stack.pop()
        if nesting:
            self.depth -= 1
        if hit[2] > self.budget:
            raise _OverBudget
        self.memo[key] = hit
        return hit

    def fail(self, pos: int, want: str) -> None:
        if self.inverted or pos < self.fail_pos:
            return
        if pos > self.fail_pos:
            self.fail_pos = pos
            self.expected = set()
        names = [name for name, _ in self.stack]
        if "AfterNumbers" in names:  # a lookahead: what may follow a number, not a want
            return
        rule = next((r for r in reversed(names) if r not in _ANONYMOUS), "")
        # a value was wanted here: after an operator, not inside a value that started earlier
        value = ("Value", pos) in self.stack and "MatchSelectorOpValue" in names
        self.expected.add((want, rule, value))

    def record(self, kind: str, start: int, pos: int) -> None:
        """A fault pigeon records as an error: the parse fails even if the grammar matched."""
        self.faults.add((start if kind in _AT_START else pos, kind, start))


# Rules whose failures are reported as their caller's (whitespace, end of input).
_ANONYMOUS = frozenset({"_", "EOF", "AfterNumbers"})
# Faults reported where their construct starts rather than where the grammar noticed them.
_AT_START = frozenset({"unterminated string", "unbalanced '('"})


def _is_blank(char: str) -> bool:
    return char in " \t\r\n"


def _is_letter(char: str) -> bool:
    return ("a" <= char <= "z") or ("A" <= char <= "Z")


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def _is_name_char(char: str) -> bool:
    return _is_letter(char) or _is_digit(char) or char in "_/"


def _is_pointer_char(char: str) -> bool:
    """``[\\pL\\pN-_.~:|]``: Unicode letters and numbers (Python's Unicode tables)."""
    if char in "-_.~:|":
        return True
    import unicodedata

    return unicodedata.category(char)[0] in "LN"


def _starts_keyword(text: str, pos: int, word: str) -> bool:
    end = pos + len(word)
    return text.startswith(word, pos) and end < len(text) and _is_blank(text[end])


# Rules that open a nesting level when invoked here (checked against MAX_DEPTH).
_NESTING: dict[str, Callable[[str, int], bool]] = {
    "ParenthesizedExpression": lambda text, pos: text.startswith("(", pos),
    "NotExpression": lambda text, pos: _starts_keyword(text, pos, "not"),
    "CollectionExpression": lambda text, pos: True,
}


# ------------------------------------------------------------------------------ actions


def _second(_state: _State, _start: int, _end: int, value: object) -> object:
    return cast(list[object], value)[1]


def _pass(_state: _State, _start: int, _end: int, value: object) -> object:
    return value


def _text(state: _State, start: int, end: int, _value: object) -> object:
    return state.text[start:end]


def _constant(result: object) -> _Action:
    return lambda _state, _start, _end, _value: result


def _binary(kind: type[And] | type[Or]) -> _Action:
    def build(_state: _State, _start: int, _end: int, value: object) -> object:
        values = cast(list[Expr], value)
        return kind(values[0], values[4])

    return build


def _not(_state: _State, _start: int, _end: int, value: object) -> object:
    operand = cast(list[Expr], value)[2]
    # go-bexpr drops double negations: "not not x" is x.
    return operand.operand if isinstance(operand, Not) else Not(operand)


def _collection(state: _State, start: int, _end: int, _value: object) -> object:
    state.unsupported.append(start)
    return None


def _selector_path(_state: _State, _start: int, _end: int, value: object) -> object:
    first, rest = cast(list[object], value)
    parts = [cast(str, first)]
    plain = True
    for kind, part in cast(list[tuple[str, str]], rest):
        parts.append(part)
        plain = plain and kind != "index"
    return _Selector(tuple(parts), pointer=False, plain=plain)


def _selector_pointer(_state: _State, _start: int, _end: int, value: object) -> object:
    segments = cast(list[str], cast(list[object], value)[1])
    # pointerstructure.Parse("/" + join(segments, "/")): no segment is one empty part.
    parts = [s.replace("~1", "/").replace("~0", "~") for s in segments] or [""]
    return _Selector(tuple(parts), pointer=True, plain=False)


def _segment(state: _State, start: int, end: int, _value: object) -> object:
    return state.text[start + 1 : end]


def _selector_part(kind: str) -> _Action:
    def build(state: _State, start: int, end: int, value: object) -> object:
        if kind == "index":
            return kind, value
        return kind, state.text[start + 1 : end]

    return build


def _index(_state: _State, _start: int, _end: int, value: object) -> object:
    return cast(list[object], value)[2]


def _value_selector(state: _State, start: int, _end: int, value: object) -> object:
    selector = cast(_Selector, value)
    # A selector used as a value is its text: "/a/b" (a JSON pointer) is the value "a/b".
    result = Value("bareword" if selector.plain else "string", selector.raw)
    state.patterns[id(result)] = start
    return result


def _value_number(state: _State, start: int, end: int, _value: object) -> object:
    # No position kept for 'matches': -?(0|[1-9][0-9]*)(.[0-9]+)? is always a valid pattern.
    return Value("number", state.text[start:end])


def _value_string(state: _State, start: int, _end: int, value: object) -> object:
    result = Value("string", cast(str, value))
    state.patterns[id(result)] = start
    return result


def _string(state: _State, start: int, end: int, _value: object) -> object:
    decoded, fault = _unquote(state.text[start:end])
    if decoded is None:
        state.faults.add((start + fault, "string", start))
        return ""
    return decoded


def _match_selector_value(_state: _State, _start: int, _end: int, value: object) -> object:
    selector, operator, literal = cast(list[object], value)
    return Match(cast(_Selector, selector).parts, cast(Operator, operator), cast(Value, literal))


def _match_selector(_state: _State, _start: int, _end: int, value: object) -> object:
    selector, operator = cast(list[object], value)
    return Match(cast(_Selector, selector).parts, cast(Operator, operator), None)


def _match_value_selector(_state: _State, _start: int, _end: int, value: object) -> object:
    literal, operator, selector = cast(list[object], value)
    return Match(cast(_Selector, selector).parts, cast(Operator, operator), cast(Value, literal))


# ------------------------------------------------------------------------------ the grammar
#
# go-bexpr v0.1.16 grammar/grammar.peg, rule by rule and alternative by alternative; the order
# of alternatives and of the elements in each is what makes the parse and the step count agree.


def _lit(text: str) -> _Lit:
    return _Lit(text)


def _ref(name: str) -> _Ref:
    return _Ref(name)


def _ws() -> _Ref:
    return _Ref("_")


def _op(*words: str, trailing: bool = True) -> _Seq:
    """``_ "w1" _ "w2" ... _``, as in ``MatchNotIn <- _ "not" _ "in" _``."""
    nodes: list[_Node] = []
    for word in words:
        nodes += [_ws(), _lit(word)]
    if trailing:
        nodes.append(_ws())
    return _Seq(*nodes)


def _label(expr: _Node) -> _Label:
    return _Label(expr)


_DIGIT = _Class(_is_digit, "a digit")

_OPT_WS = _Opt(_Ref("_"))


def _seq(*nodes: _Node) -> _Seq:
    return _Seq(*nodes)


_RULES: dict[str, _Node] = {
    "Input": _Choice(
        _Act(
            _seq(
                _OPT_WS,
                _lit("("),
                _OPT_WS,
                _label(_ref("OrExpression")),
                _OPT_WS,
                _lit(")"),
                _OPT_WS,
                _ref("EOF"),
            ),
            lambda _s, _b, _e, v: cast(list[object], v)[3],
        ),
        _Act(_seq(_OPT_WS, _label(_ref("OrExpression")), _OPT_WS, _ref("EOF")), _second),
    ),
    "OrExpression": _Choice(
        _Act(
            _seq(
                _label(_ref("AndExpression")),
                _ws(),
                _lit("or"),
                _ws(),
                _label(_ref("OrExpression")),
            ),
            _binary(Or),
        ),
        _Act(_label(_ref("AndExpression")), _pass),
        _Act(_label(_ref("CollectionExpression")), _pass),
    ),
    "AndExpression": _Choice(
        _Act(
            _seq(
                _label(_ref("NotExpression")),
                _ws(),
                _lit("and"),
                _ws(),
                _label(_ref("AndExpression")),
            ),
            _binary(And),
        ),
        _Act(_label(_ref("NotExpression")), _pass),
    ),
    "NotExpression": _Choice(
        _Act(_seq(_lit("not"), _ws(), _label(_ref("NotExpression"))), _not),
        _Act(_label(_ref("ParenthesizedExpression")), _pass),
    ),
    "CollectionExpression": _Act(
        _seq(
            _label(_Choice(_ref("CollectionOpAny"), _ref("CollectionOpAll"))),
            _label(_ref("Selector")),
            _ws(),
            _lit("as"),
            _ws(),
            _label(_ref("CollectionIdentifiers")),
            _OPT_WS,
            _lit("{"),
            _OPT_WS,
            _label(_ref("OrExpression")),
            _OPT_WS,
            _lit("}"),
        ),
        _collection,
    ),
    "CollectionIdentifiers": _Choice(
        _Act(
            _seq(
                _label(_ref("Identifier")),
                _OPT_WS,
                _lit(","),
                _OPT_WS,
                _label(_ref("Identifier")),
            ),
            _pass,
        ),
        _Act(_seq(_label(_ref("Identifier")), _OPT_WS, _lit(","), _OPT_WS, _lit("_")), _pass),
        _Act(_seq(_lit("_"), _OPT_WS, _lit(","), _OPT_WS, _label(_ref("Identifier"))), _pass),
        _Act(_label(_ref("Identifier")), _pass),
    ),
    "CollectionOpAny": _Act(_seq(_lit("any"), _ws()), _constant("any")),
    "CollectionOpAll": _Act(_seq(_lit("all"), _ws()), _constant("all")),
    "ParenthesizedExpression": _Choice(
        _Act(
            _seq(_lit("("), _OPT_WS, _label(_ref("OrExpression")), _OPT_WS, _lit(")")),
            lambda _s, _b, _e, v: cast(list[object], v)[2],
        ),
        _Act(_label(_ref("MatchExpression")), _pass),
        _seq(
            _lit("("),
            _OPT_WS,
            _ref("OrExpression"),
            _OPT_WS,
            _Lookahead(_lit(")"), positive=False),
            _Fault("unbalanced '('"),
        ),
    ),
    "MatchExpression": _Choice(
        _ref("MatchSelectorOpValue"), _ref("MatchSelectorOp"), _ref("MatchValueOpSelector")
    ),
    "MatchSelectorOpValue": _Act(
        _seq(
            _label(_ref("Selector")),
            _label(
                _Choice(
                    _ref("MatchEqual"),
                    _ref("MatchNotEqual"),
                    _ref("MatchContains"),
                    _ref("MatchNotContains"),
                    _ref("MatchMatches"),
                    _ref("MatchNotMatches"),
                )
            ),
            _label(_ref("Value")),
        ),
        _match_selector_value,
    ),
    "MatchSelectorOp": _Act(
        _seq(
            _label(_ref("Selector")),
            _label(
                _Choice(
                    _ref("MatchIsEmpty"),
                    _ref("MatchIsNotEmpty"),
                    _ref("MatchIsNil"),
                    _ref("MatchIsNotNil"),
                )
            ),
        ),
        _match_selector,
    ),
    "MatchValueOpSelector": _Choice(
        _Act(
            _seq(
                _label(_ref("Value")),
                _label(_Choice(_ref("MatchIn"), _ref("MatchNotIn"))),
                _label(_ref("Selector")),
            ),
            _match_value_selector,
        ),
        _seq(
            _ref("Value"),
            _label(_Choice(_ref("MatchIn"), _ref("MatchNotIn"))),
            _Lookahead(_ref("Selector"), positive=False),
            _Fault("invalid selector"),
        ),
    ),
    "MatchEqual": _Act(_seq(_OPT_WS, _lit("=="), _OPT_WS), _constant("==")),
    "MatchNotEqual": _Act(_seq(_OPT_WS, _lit("!="), _OPT_WS), _constant("!=")),
    "MatchIsEmpty": _Act(_op("is", "empty", trailing=False), _constant("is empty")),
    "MatchIsNotEmpty": _Act(_op("is", "not", "empty", trailing=False), _constant("is not empty")),
    "MatchIn": _Act(_op("in"), _constant("in")),
    "MatchNotIn": _Act(_op("not", "in"), _constant("not in")),
    "MatchContains": _Act(_op("contains"), _constant("contains")),
    "MatchNotContains": _Act(_op("not", "contains"), _constant("not contains")),
    "MatchMatches": _Act(_op("matches"), _constant("matches")),
    "MatchNotMatches": _Act(_op("not", "matches"), _constant("not matches")),
    "MatchIsNil": _Act(_op("is", "nil", trailing=False), _constant("is nil")),
    "MatchIsNotNil": _Act(_op("is", "not", "nil", trailing=False), _constant("is not nil")),
    "Selector": _Choice(
        _Act(
            _seq(_label(_ref("Identifier")), _label(_Repeat(_ref("SelectorOrIndex"), 0))),
            _selector_path,
        ),
        _Act(
            _seq(_lit('"'), _label(_Repeat(_ref("JsonPointerSegment"), 0)), _lit('"')),
            _selector_pointer,
        ),
    ),
    "JsonPointerSegment": _Act(
        _seq(_lit("/"), _label(_Repeat(_Class(_is_pointer_char, "a pointer character"), 1))),
        _segment,
    ),
    "Identifier": _Act(
        _seq(_Class(_is_letter, "a letter"), _Repeat(_Class(_is_name_char, "a name"), 0)),
        _text,
    ),
    "SelectorOrIndex": _Choice(
        _Act(_seq(_lit("."), _label(_ref("Identifier"))), _selector_part("name")),
        _Act(_label(_ref("IndexExpression")), _selector_part("index")),
        _Act(_seq(_lit("."), _label(_Repeat(_DIGIT, 1))), _selector_part("digits")),
    ),
    "IndexExpression": _Choice(
        _Act(
            _seq(_lit("["), _OPT_WS, _label(_ref("StringLiteral")), _OPT_WS, _lit("]")),
            _index,
        ),
        _seq(
            _lit("["),
            _OPT_WS,
            _Lookahead(_ref("StringLiteral"), positive=False),
            _Fault("invalid index"),
        ),
        _seq(
            _lit("["),
            _OPT_WS,
            _ref("StringLiteral"),
            _OPT_WS,
            _Lookahead(_lit("]"), positive=False),
            _Fault("unclosed index"),
        ),
    ),
    "Value": _Choice(
        _Act(_label(_ref("Selector")), _value_selector),
        _Act(_label(_ref("NumberLiteral")), _value_number),
        _Act(_label(_ref("StringLiteral")), _value_string),
    ),
    "NumberLiteral": _Choice(
        _Act(
            _seq(
                _Opt(_lit("-")),
                _ref("IntegerOrFloat"),
                _Lookahead(_ref("AfterNumbers"), positive=True),
            ),
            _text,
        ),
        _seq(
            _Opt(_lit("-")),
            _ref("IntegerOrFloat"),
            _Lookahead(_ref("AfterNumbers"), positive=False),
            _Fault("number"),
        ),
    ),
    "AfterNumbers": _Lookahead(_Choice(_ws(), _ref("EOF"), _lit(")")), positive=True),
    "IntegerOrFloat": _seq(
        _Choice(_lit("0"), _seq(_Class(lambda c: "1" <= c <= "9", "a digit"), _Repeat(_DIGIT, 0))),
        _Opt(_seq(_lit("."), _Repeat(_DIGIT, 1))),
    ),
    "StringLiteral": _Choice(
        _Act(
            _Choice(
                _seq(_lit("`"), _Repeat(_ref("RawStringChar"), 0), _lit("`")),
                _seq(_lit('"'), _Repeat(_ref("DoubleStringChar"), 0), _lit('"')),
            ),
            _string,
        ),
        _seq(
            _Choice(
                _seq(_lit("`"), _Repeat(_ref("RawStringChar"), 0)),
                _seq(_lit('"'), _Repeat(_ref("DoubleStringChar"), 0)),
            ),
            _ref("EOF"),
            _Fault("unterminated string"),
        ),
    ),
    "RawStringChar": _seq(_Lookahead(_lit("`"), positive=False), _Any()),
    "DoubleStringChar": _seq(_Lookahead(_lit('"'), positive=False), _Any()),
    "_": _Repeat(_Class(_is_blank, "whitespace"), 1),
    "EOF": _Lookahead(_Any(), positive=False),
}


# ------------------------------------------------------------------------------ Go literals


_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")


def _escape(body: str, index: int) -> tuple[bytes, int] | None:
    """Go's ``strconv.UnquoteChar`` for the escape at ``body[index]``: its bytes and length."""
    escape = body[index + 1 : index + 2]
    if escape in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[escape].encode(), 2
    if escape and escape in "xuU":  # \xNN is a byte, possibly not UTF-8; \u and \U are runes
        width = {"x": 2, "u": 4, "U": 8}[escape]
        digits, allowed, length = body[index + 2 : index + 2 + width], _HEX_DIGITS, 2 + width
    else:
        width, digits, allowed, length = 3, body[index + 1 : index + 4], _OCTAL_DIGITS, 4
    if len(digits) < width or not set(digits) <= allowed:
        return None
    number = int(digits, 16 if allowed is _HEX_DIGITS else 8)
    if escape in "uU" and escape:
        valid = number <= 0x10FFFF and not 0xD800 <= number <= 0xDFFF
        return (chr(number).encode(), length) if valid else None
    return (bytes([number]), length) if number <= 255 else None


def _unquote(literal: str) -> tuple[str | None, int]:
    """Go's ``strconv.Unquote``: the decoded string, or None and the offset of the fault.

    ``\\xNN`` and octal escapes are bytes, as in Go; bytes that are not UTF-8 become
    surrogate escapes, so comparisons stay byte-exact.
    """
    body = literal[1:-1]
    if literal[0] == "`":
        return body.replace("\r", ""), 0
    out = bytearray()
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\n":
            return None, index + 1
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            index += 1
            continue
        escaped = _escape(body, index)
        if escaped is None:
            return None, index + 1
        out += escaped[0]
        index += escaped[1]
    return bytes(out).decode("utf-8", "surrogateescape"), 0


def _base(digits: str) -> tuple[int, str]:
    """Go's base prefixes for base 0: 0b, 0o, 0x, and a bare leading 0 for octal."""
    if digits[0] != "0":
        return 10, digits
    prefix = digits[1:2].lower()
    if len(digits) >= 3 and prefix in ("b", "o", "x"):
        return {"b": 2, "o": 8, "x": 16}[prefix], digits[2:]
    return 8, digits[1:]


def _go_int64(text: str) -> int | None:
    """Go's ``strconv.ParseInt(text, 0, 64)``, which go-bexpr coerces literals with."""
    negative = text[:1] == "-"
    signless = text[1:] if text[:1] in ("+", "-") else text
    if not signless:
        return None
    base, digits = _base(signless)
    number = 0
    for char in digits.replace("_", ""):
        if _is_digit(char):
            digit = ord(char) - ord("0")
        elif _is_letter(char):
            digit = ord(char.lower()) - ord("a") + 10
        else:
            return None
        if digit >= base:
            return None
        number = number * base + digit
    if "_" in digits and not _underscores_ok(signless):
        return None
    if number > (2**63 if negative else 2**63 - 1):
        return None
    return -number if negative else number


def _underscores_ok(text: str) -> bool:
    """Go's ``underscoreOK``: underscores only between digits or after a base prefix."""
    saw = "^"
    index = 0
    hexadecimal = False
    if len(text) >= 2 and text[0] == "0" and text[1] in "bBoOxX":
        index, saw, hexadecimal = 2, "0", text[1] in "xX"
    for char in text[index:]:
        if _is_digit(char) or (hexadecimal and char in _HEX_DIGITS):
            saw = "0"
        elif char == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
    return saw != "_"


# ------------------------------------------------------------------------------ errors


def _found(text: str, pos: int) -> str:
    """What stands at ``pos``, for messages: a word, a string, an operator run, or a character."""
    if pos >= len(text):
        return "end of filter"
    end = pos + 1
    char = text[pos]
    if _is_name_char(char) or char in ".-":
        while end < len(text) and (_is_name_char(text[end]) or text[end] in ".-"):
            end += 1
    elif char in _OPERATOR_CHARS:
        while end < len(text) and text[end] in _OPERATOR_CHARS:
            end += 1
    elif char in '"`':
        closing = text.find(char, pos + 1)
        end = len(text) if closing < 0 else closing + 1
    shown = text[pos:end]
    return repr(shown if len(shown) <= 24 else shown[:21] + "...")


def _previous(text: str, pos: int) -> str:
    """The token before ``pos``, skipping blanks: a dotted name, an operator run, a character."""
    end = pos
    while end > 0 and _is_blank(text[end - 1]):
        end -= 1
    start = end - 1
    if start < 0:
        return ""

    def in_name(char: str) -> bool:
        return _is_name_char(char) or char == "."

    def in_operator(char: str) -> bool:
        return char in _OPERATOR_CHARS

    same = in_name if in_name(text[start]) else in_operator
    if not same(text[start]):
        return text[start]
    while start > 0 and same(text[start - 1]):
        start -= 1
    return text[start:end]


# After a word the grammar needs a blank and then this (when the filter ends there instead).
_NEXT = {
    "and": "a match expression",
    "or": "a match expression",
    "not": "'in', 'contains' or 'matches'",  # after a selector; see _after_not
    "in": "a selector",
    "contains": "a value",
    "matches": "a pattern",
    "is": "'empty', 'not empty', 'nil' or 'not nil'",
}


def _after_not(text: str, pos: int) -> str:
    """What may follow the 'not' before ``pos``: it negates a match, or it is 'not in' & co."""
    before = _previous(text, text.rfind("not", 0, pos))
    if before == "is":
        return "'empty' or 'nil'"
    if before in ("", "and", "or", "not", "("):
        return "a match expression"
    return "'in', 'contains' or 'matches'"


def _blank_wanted(text: str, pos: int, previous: str, found: str) -> FilterSyntaxError:
    """Only a blank would do here: go-bexpr needs blanks around its keywords."""
    if found in ("'and'", "'or'"):
        return FilterSyntaxError(f"{found} needs a blank on each side", pos)
    if found == "')'" and previous not in _NEXT:
        return FilterSyntaxError("unbalanced ')'", pos)
    if found != "end of filter" and not _is_blank(text[pos - 1]):
        return FilterSyntaxError(f"expected a blank after {previous!r} but found {found}", pos)
    wanted = _after_not(text, pos) if previous == "not" else _NEXT.get(previous, "more")
    if wanted == "'empty' or 'nil'":
        previous = "is not"
    return FilterSyntaxError(f"expected {wanted} after {previous!r} but found {found}", pos)


def _dash_hint(text: str, pos: int) -> str:
    """``metadata.model-version``: go-bexpr names cannot hold '-'; an index key can."""
    start = pos
    while start > 0 and (_is_name_char(text[start - 1]) or text[start - 1] == "."):
        start -= 1
    end = pos
    while end < len(text) and (_is_name_char(text[end]) or text[end] in ".-"):
        end += 1
    base, dot, key = text[start:end].rpartition(".")
    if not dot or not base:
        return " ('-' cannot be part of a name)"
    return f" ('-' cannot be part of a name: write {base}[\"{key}\"])"


_OPERATOR_CHARS = frozenset("=!<>~&|")
_OPERATORS = "'==', '!=', 'in', 'contains', 'matches' or 'is'"
_MATCH_START_WANTS = frozenset(
    {
        ("'not'", "NotExpression"),
        ("'('", "ParenthesizedExpression"),
        ("'any'", "CollectionOpAny"),
        ("'all'", "CollectionOpAll"),
    }
)
_OPERATOR_RULES = frozenset(
    {
        "MatchEqual",
        "MatchNotEqual",
        "MatchContains",
        "MatchMatches",
        "MatchIn",
        "MatchIsEmpty",
        "MatchIsNotEmpty",
        "MatchIsNil",
        "MatchIsNotNil",
        "MatchNotIn",
        "MatchNotContains",
        "MatchNotMatches",
    }
)


def _unknown_operator(text: str, pos: int) -> FilterSyntaxError | None:
    """``=~``, ``&&``, ``>``: one message naming the whole run of operator characters."""
    if pos >= len(text) or text[pos] not in _OPERATOR_CHARS:
        return None
    start = pos
    while start > 0 and text[start - 1] in _OPERATOR_CHARS:
        start -= 1
    end = pos
    while end < len(text) and text[end] in _OPERATOR_CHARS:
        end += 1
    run = text[start:end]
    if run in ("==", "!="):
        return None
    return FilterSyntaxError(
        f"unknown operator {run!r} (expected {_OPERATORS}, or 'and', 'or', 'not')", start
    )


def _no_match(state: _State) -> FilterSyntaxError:
    """The parse failed: describe what was expected where the parser got furthest."""
    text = state.text
    pos = max(state.fail_pos, 0)
    wants = {want for want, _, _ in state.expected}
    found = _found(text, pos)
    previous = _previous(text, pos)
    unknown = _unknown_operator(text, pos)
    if unknown is not None:
        return unknown
    if found == '"\'"':
        return FilterSyntaxError('unexpected "\'": strings use double quotes or backticks', pos)
    if wants <= {"whitespace"}:
        return _blank_wanted(text, pos, previous, found)
    return _expected(state, pos, found, previous)


def _expected(  # noqa: PLR0911  # one message per case, in order of precedence
    state: _State, pos: int, found: str, previous: str
) -> FilterSyntaxError:
    text = state.text
    rules = {rule for _, rule, _ in state.expected}
    wants = {want for want, _, _ in state.expected}
    value_wanted = any(value for _, _, value in state.expected)
    after = f" after {previous!r}" if previous else ""
    if previous == "not" and found == "'('" and not _is_blank(text[pos - 1]):
        return FilterSyntaxError("'not' needs a blank before '('", pos)
    if any((want, rule) in _MATCH_START_WANTS for want, rule, _ in state.expected):
        return FilterSyntaxError(f"expected a match expression{after} but found {found}", pos)
    if value_wanted:
        return FilterSyntaxError(f"expected a value{after} but found {found}", pos)
    if found == "')'" and "')'" not in wants:
        return FilterSyntaxError("unbalanced ')'", pos)
    if rules <= {"MatchIn", "MatchNotIn"}:
        return FilterSyntaxError(f"expected 'in' or 'not in' after a value but found {found}", pos)
    if previous == "is" and rules & _OPERATOR_RULES:
        return FilterSyntaxError(f"expected {_NEXT['is']} after 'is' but found {found}", pos)
    if previous == "not" and rules & _OPERATOR_RULES:
        return FilterSyntaxError(
            f"expected {_after_not(text, pos)} after 'not' but found {found}", pos
        )
    if "'=='" in wants:
        hint = _dash_hint(text, pos) if text[pos : pos + 1] == "-" else ""
        return FilterSyntaxError(
            f"expected an operator ({_OPERATORS}){after} but found {found}{hint}", pos
        )
    if text[pos - 1 : pos] == "." and "Identifier" in rules:
        return FilterSyntaxError(f"expected a name or a number after '.' but found {found}", pos)
    if "'and'" in wants or "'or'" in wants:
        closing = ", ')'" if "')'" in wants else ""
        return FilterSyntaxError(
            f"expected 'and', 'or'{closing} or end of filter but found {found}", pos
        )
    if "')'" in wants:
        return FilterSyntaxError(f"expected ')' but found {found}", pos)
    if wants <= {"'0'", "a digit", "whitespace"}:
        return FilterSyntaxError(f"expected a digit{after} but found {found}", pos)
    listed = ", ".join(sorted(want for want in wants if want != "whitespace"))
    return FilterSyntaxError(f"expected {listed}{after} but found {found}", pos)


def _number_fault(text: str, position: int) -> FilterSyntaxError:
    char = text[position]
    if not (_is_name_char(char) or char in ".-"):
        return FilterSyntaxError(f"unexpected character {char!r}", position)
    return FilterSyntaxError(
        f"malformed number: unexpected {char!r} (numbers are -?(0|[1-9][0-9]*)(.[0-9]+)? "
        "followed by a space or ')'; quote text that is not a number)",
        position,
    )


def _string_fault(text: str, position: int) -> FilterSyntaxError:
    """strconv.Unquote refused a double-quoted literal; ``position`` is the fault in it."""
    escape = text[position : position + 2]
    if escape == '\\"':
        return FilterSyntaxError(
            "a double-quoted string ends at the first '\"', even after a backslash: write "
            "\\x22 for a quote, or use a backtick string",
            position,
        )
    if escape[:1] == "\n":
        return FilterSyntaxError(
            "newline in a double-quoted string: write \\n, or use a backtick string", position
        )
    return FilterSyntaxError(
        f"unknown or malformed escape {escape!r} in string (use '\\\\' for a backslash, "
        "or a backtick string)",
        position,
    )


_FAULTS: dict[str, Callable[[str, int], FilterSyntaxError]] = {
    "unterminated string": lambda _text, at: FilterSyntaxError("unterminated string", at),
    "unbalanced '('": lambda _text, at: FilterSyntaxError("unbalanced '('", at),
    "invalid selector": lambda text, at: FilterSyntaxError(
        f"expected a selector after {_previous(text, at)!r} but found {_found(text, at)}", at
    ),
    "invalid index": lambda text, at: FilterSyntaxError(
        f"expected a quoted key after '[' but found {_found(text, at)}", at
    ),
    "unclosed index": lambda text, at: FilterSyntaxError(
        f"expected ']' but found {_found(text, at)}", at
    ),
    "number": _number_fault,
    "string": _string_fault,
}


# ------------------------------------------------------------------------------ parse


def _walk(expr: Expr) -> Iterator[Match]:
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Match):
            yield node
        elif isinstance(node, Not):
            stack.append(node.operand)
        else:
            stack += [node.right, node.left]


def _run(text: str, budget: int = MAX_PARSE_STEPS) -> tuple[_State, _Result]:
    state = _State(text, budget)
    try:
        result = _RULES["Input"].match(state, 0)
    except _TooDeep as deep:
        raise FilterSyntaxError(
            f"filter nests deeper than {MAX_DEPTH} levels of parentheses, 'not' and 'any'/'all'",
            deep.position,
        ) from None
    except _OverBudget:
        raise FilterSyntaxError(
            f"filter is too complex: go-bexpr gives up after {MAX_PARSE_STEPS:,} parser steps "
            "(nested parentheses multiply them: write 'not (a or b)' as 'not a and not b', "
            "or drop parentheses)",
            0,
        ) from None
    if result[2] > budget:
        raise FilterSyntaxError(
            f"filter is too complex: go-bexpr gives up after {MAX_PARSE_STEPS:,} parser steps",
            0,
        )
    return state, result


def parse_steps(text: str, *, budget: int = MAX_PARSE_STEPS) -> int:
    """The steps go-bexpr's parser takes over ``text`` (pigeon's ``ExprCnt``), for tests.

    Counted whether or not the text parses; over ``budget`` it is a FilterSyntaxError.
    """
    return _run(text, budget)[1][2]


def parse(text: str) -> Expr:
    """Parse a filter as go-bexpr does; every fault is a FilterSyntaxError with a position.

    Beyond go-bexpr, and deliberately: the length and depth limits, a pattern RE2 refuses,
    and ``any``/``all`` (see the module docstring).
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterSyntaxError(
            f"filter is {len(text)} characters long; the limit is {MAX_FILTER_LENGTH}",
            MAX_FILTER_LENGTH,
        )
    state, (end, value, _) = _run(text)
    if state.faults:
        position, kind, _ = min(state.faults)
        if kind == "unbalanced '('" and state.fail_pos < len(text):
            raise _no_match(state)  # "(a == 1 b == 2)": the 'b' is the news, not the '('
        raise _FAULTS[kind](text, position)
    if end == _FAIL:
        raise _no_match(state)
    if state.unsupported:
        raise FilterSyntaxError(
            "'any' and 'all' are not supported: no property is a list; test a metadata key "
            "with '\"KEY\" in metadata'",
            state.unsupported[0],
        )
    expr = cast(Expr, value)
    for match in _walk(expr):
        if match.operator in ("matches", "not matches") and match.value is not None:
            try:
                _compile(match.value.text)
            except FilterEvaluationError as error:
                position = state.patterns.get(id(match.value), 0)
                raise FilterSyntaxError(str(error), position, pattern=match.value.text) from None
    return expr


# ------------------------------------------------------------------------------ render


def _is_identifier(part: str) -> bool:
    return bool(part) and _is_letter(part[0]) and all(_is_name_char(c) for c in part)


def _is_pointer_text(text: str) -> bool:
    """Would ``"text"``, which starts with '/', parse as a JSON pointer ("/a/b")?"""
    segments = text.split("/")
    return segments[0] == "" and all(
        segment and all(_is_pointer_char(c) for c in segment) for segment in segments[1:]
    )


def _quote(text: str) -> str:
    """A Go string literal go-bexpr reads back as ``text`` (never a JSON pointer)."""
    out: list[str] = []
    for index, char in enumerate(text):
        if char == '"':
            out.append("\\x22")
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif "\udc80" <= char <= "\udcff":  # a byte that is not UTF-8 (see _unquote)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        elif index == 0 and char == "/" and _is_pointer_text(text):
            out.append("\\x2f")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _render_selector(parts: tuple[str, ...]) -> str:
    if parts == ("",):
        return '""'  # the JSON pointer with no segment: the key ""
    if not _is_identifier(parts[0]):
        return '"' + "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts) + '"'
    rendered = parts[0]
    for part in parts[1:]:
        if _is_identifier(part) or (part and all(_is_digit(c) for c in part)):
            rendered += "." + part
        else:
            rendered += f"[{_quote(part)}]"
    return rendered


def _render_value(value: Value) -> str:
    return _quote(value.text) if value.kind == "string" else value.text


def _render_match(match: Match) -> str:
    selector = _render_selector(match.selector)
    if match.value is None:
        return f"{selector} {match.operator}"
    value = _render_value(match.value)
    if match.operator in ("in", "not in"):
        return f"{value} {match.operator} {selector}"
    return f"{selector} {match.operator} {value}"


def _grouped(expr: Expr, *kinds: type) -> str:
    text = render(expr)
    return f"({text})" if isinstance(expr, kinds) else text


def render(expr: Expr) -> str:
    """The canonical text of ``expr``, parenthesised just enough that it parses back.

    go-bexpr groups ``and`` and ``or`` to the right, so a left operand of the same kind is
    parenthesised. ``not not x`` parses as ``x``, as in go-bexpr.
    """
    if isinstance(expr, Or):
        return f"{_grouped(expr.left, Or)} or {render(expr.right)}"
    if isinstance(expr, And):
        return f"{_grouped(expr.left, Or, And)} and {_grouped(expr.right, Or)}"
    if isinstance(expr, Not):
        return f"not {_grouped(expr.operand, Or, And)}"
    return _render_match(expr)


# ------------------------------------------------------------------------------ evaluate


class _Pattern(Protocol):
    def search(self, text: str) -> object: ...


_PATTERNS: dict[str, _Pattern] = {}


def _compile(pattern: str) -> _Pattern:
    """Compile with RE2 (Go's regexp syntax and linear-time matching), once per pattern.

    ``re2`` is imported here, on first use: runs whose filters never say ``matches`` never
    load it.
    """
    compiled = _PATTERNS.get(pattern)
    if compiled is not None:
        return compiled
    import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern on stderr
    options.never_capture = True  # only "does it match" is asked
    _go_refuses(pattern)
    try:
        compiled = cast(_Pattern, re2.compile(pattern, options))
    except (re2.error, UnicodeEncodeError) as error:
        # google-re2 carries RE2's message as bytes: decoded, it reads as Go's does.
        reason = error.args[0] if isinstance(error, re2.error) and error.args else error
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        message = text or "not accepted by RE2"
        raise FilterEvaluationError(f"invalid regular expression: {message}") from None
    if len(_PATTERNS) < 256:
        _PATTERNS[pattern] = compiled
    return compiled


def _skip_braces(pattern: str, index: int) -> int:
    """After ``\\p``, ``\\P`` or ``\\x`` at ``index``: the end of a ``{...}`` argument."""
    if pattern[index + 2 : index + 3] != "{":
        return index + 2
    end = pattern.find("}", index + 3)
    return len(pattern) if end < 0 else end + 1


def _escape_end(pattern: str, index: int) -> int:
    """Where the escape at ``pattern[index]`` (a backslash) ends; ``\\C`` raises."""
    following = pattern[index + 1 : index + 2]
    if following == "C":
        raise FilterEvaluationError(
            "invalid regular expression: invalid escape sequence: \\C (Go's regexp has no "
            "any-byte class)"
        )
    if following == "Q":  # \Q...\E is literal text
        end = pattern.find("\\E", index + 2)
        return len(pattern) if end < 0 else end + 2
    if following in ("p", "P", "x"):
        return _skip_braces(pattern, index)
    return index + 2


def _class_end(pattern: str, index: int) -> int:
    """Where the character class opened at ``pattern[index]`` ends."""
    at = index + 1
    at += pattern[at : at + 1] == "^"
    at += pattern[at : at + 1] == "]"  # a leading ] is literal
    while at < len(pattern) and pattern[at] != "]":
        if pattern[at] == "\\":
            at = _escape_end(pattern, at)
        elif pattern.startswith("[:", at) and pattern.find(":]", at + 2) >= 0:
            at = pattern.find(":]", at + 2) + 2
        else:
            at += 1
    return at + 1


def _leading_number(text: str) -> tuple[str | None, str]:
    """Go's regexp ``parseInt``: digits without a leading zero, and the rest."""
    if not text or not _is_digit(text[0]) or (text[0] == "0" and _is_digit(text[1:2] or "x")):
        return None, text
    end = 1
    while end < len(text) and _is_digit(text[end]):
        end += 1
    return text[:end], text[end:]


def _repeat_numbers(pattern: str, index: int) -> list[str]:
    """Go's ``parseRepeat`` at ``pattern[index]`` (a ``{``): its numbers; none if literal."""
    first, rest = _leading_number(pattern[index + 1 :])
    if first is None:
        return []
    numbers = [first]
    if rest[:1] == ",":
        rest = rest[1:]
        if rest[:1] != "}":
            second, rest = _leading_number(rest)
            if second is None:
                return []
            numbers.append(second)
    return numbers if rest[:1] == "}" else []


def _go_refuses(pattern: str) -> None:
    """What RE2 takes but Go's regexp refuses: ``\\C``, and repeat counts of ten digits.

    RE2 reads ``a{1234567890}`` as literal text; Go reports an invalid repeat count.
    """
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index = _escape_end(pattern, index)
        elif char == "[":
            index = _class_end(pattern, index)
        elif char == "{" and any(len(n) >= 10 for n in _repeat_numbers(pattern, index)):
            raise FilterEvaluationError(
                "invalid regular expression: invalid repeat count (more than 1000)"
            )
        else:
            index += 1


_ABSENT = object()
# go-bexpr's MatchOperator.NotPresentDisposition: the result for a missing key of a mapping.
_WHEN_ABSENT: dict[Operator, bool] = {
    "==": False,
    "!=": True,
    "in": False,
    "not in": True,
    "contains": False,
    "not contains": True,
    "matches": False,
    "not matches": True,
    "is empty": True,
    "is not empty": False,
    "is nil": True,
    "is not nil": False,
}
_NEGATED: dict[Operator, Operator] = {
    "!=": "==",
    "not in": "in",
    "not contains": "contains",
    "not matches": "matches",
    "is not empty": "is empty",
    "is not nil": "is nil",
}


def _type_name(found: object) -> str:
    if isinstance(found, Mapping):
        return "mapping"
    if isinstance(found, str):
        return "string"
    if isinstance(found, int) and not isinstance(found, bool):
        return "integer"
    return type(found).__name__


def _a(kind: str) -> str:
    """A kind with its article, for errors: "an integer", "a string", "a mapping"; no
    other kind that `_type_name` gives starts with a vowel."""
    return f"an {kind}" if kind == "integer" else f"a {kind}"


def _lookup(selector: tuple[str, ...], properties: Mapping[str, object]) -> object:
    """pointerstructure's ``Get`` and go-bexpr's "not present" rule for a missing map key."""
    found: object = properties
    for index, part in enumerate(selector):
        if not isinstance(found, Mapping):
            walked = ".".join(selector[:index])
            raise FilterEvaluationError(
                f"unknown selector {'.'.join(selector)!r}: {walked!r} is "
                f"{_a(_type_name(found))}, it has no fields"
            )
        if part not in found:
            if index == 0:
                raise FilterEvaluationError(
                    f"unknown selector {'.'.join(selector)!r}: no such property"
                )
            if index < len(selector) - 1:
                raise FilterEvaluationError(
                    f"unknown selector {'.'.join(selector)!r}: no key {part!r}"
                )
            return _ABSENT
        found = found[part]
    return found


def _integer(name: str, value: Value) -> int:
    number = _go_int64(value.text)
    if number is None:
        raise FilterEvaluationError(
            f"{name!r} is an integer property: {_render_value(value)} is not a 64-bit integer "
            "(Go's strconv.ParseInt with base 0)"
        )
    return number


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _equal(value: Value, found: object, name: str, kind: str) -> bool:
    if kind == "string":
        return found == value.text
    if kind == "integer":
        return found == _integer(name, value)
    raise FilterEvaluationError(f"{name!r} is {_a(kind)}: '==' and '!=' do not apply")


def _contains(value: Value, found: object, name: str, kind: str) -> bool:
    if kind == "integer":
        _integer(name, value)  # go-bexpr coerces the literal first, then refuses the type
    if kind == "mapping":
        return value.text in cast(Mapping[str, object], found)
    if kind == "string":  # bytes, as Go's strings.Contains
        return _utf8(value.text) in _utf8(cast(str, found))
    raise FilterEvaluationError(f"{name!r} is {_a(kind)}: 'in' and 'contains' do not apply")


def _matches(value: Value, found: object, name: str, kind: str) -> bool:
    if kind != "string":
        raise FilterEvaluationError(f"{name!r} is {_a(kind)}: 'matches' applies to strings")
    return _compile(value.text).search(cast(str, found)) is not None


def _empty(_value: Value | None, found: object, name: str, kind: str) -> bool:
    if kind in ("string", "mapping"):
        return len(cast(str, found)) == 0
    raise FilterEvaluationError(f"{name!r} is {_a(kind)}: 'is empty' does not apply")


def _nil(_value: Value | None, _found: object, name: str, kind: str) -> bool:
    if kind == "mapping":  # only a nil map, slice or pointer is nil; ours never are
        return False
    raise FilterEvaluationError(f"{name!r} is {_a(kind)}: 'is nil' does not apply")


_WITH_VALUE: dict[Operator, Callable[[Value, object, str, str], bool]] = {
    "==": _equal,
    "in": _contains,
    "contains": _contains,
    "matches": _matches,
}
_WITHOUT_VALUE: dict[Operator, Callable[[Value | None, object, str, str], bool]] = {
    "is empty": _empty,
    "is nil": _nil,
}


def _evaluate_match(match: Match, properties: Mapping[str, object]) -> bool:
    found = _lookup(match.selector, properties)
    if found is _ABSENT:
        return _WHEN_ABSENT[match.operator]
    operator = _NEGATED.get(match.operator, match.operator)
    name, kind = _render_selector(match.selector), _type_name(found)
    if match.value is not None:
        result = _WITH_VALUE[operator](match.value, found, name, kind)
    else:
        result = _WITHOUT_VALUE[operator](None, found, name, kind)
    return not result if operator != match.operator else result


def evaluate(expr: Expr, properties: Mapping[str, object]) -> bool:
    """Evaluate ``expr`` over an artifact's properties, as go-bexpr does.

    ``properties`` maps names to ``str`` or ``int`` values (kfp-operator hands go-bexpr MLMD
    string and int values as Go ``string`` and ``int64``), and ``"metadata"`` to a
    ``Mapping[str, str]`` (a ``map[string]any``), addressed as ``metadata.KEY``,
    ``metadata["KEY"]`` or ``"/metadata/KEY"``. ``and``/``or`` short-circuit from the left.

    Raises FilterEvaluationError, naming the selector, for a clause go-bexpr cannot evaluate:
    an unknown property (e.g. ``pushed_version``, which exists only in ML Metadata), a path
    through a value that is not a mapping, a literal an integer property cannot parse, or an
    operator that does not apply to the property's type. The error aborts the evaluation;
    the caller counts it as no match for that artifact, as kfp-operator does.
    """
    if isinstance(expr, Or):
        return evaluate(expr.left, properties) or evaluate(expr.right, properties)
    if isinstance(expr, And):
        return evaluate(expr.left, properties) and evaluate(expr.right, properties)
    if isinstance(expr, Not):
        return not evaluate(expr.operand, properties)
    return _evaluate_match(expr, properties)
