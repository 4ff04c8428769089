"""The condition language of workflows, and ``${...}`` templates built on it.

Conditions (``Gate``, ``Wait``, ``when``, ``until``) are Python *syntax* parsed with
``ast`` and checked against a whitelist before anything runs; they are never handed to
``eval``. What is allowed:

- literals (strings, numbers, ``True``/``False``/``None`` or their JSON spellings
  ``true``/``false``/``null``, lists and tuples of them);
- names of the context (``params``, ``nodes``, ``run``, ``result``, ``event``);
- ``a.b`` and ``a["b"]`` / ``a[0]`` to read *data*: ``.b`` is a key lookup in a JSON
  object, never Python attribute access, and names starting with ``_`` are refused;
- comparisons (``== != < <= > >= in not in is is not``), ``and`` / ``or`` / ``not``,
  ``x if c else y``, arithmetic on numbers (``+ - * / // %``; ``+`` also joins strings
  and lists) and one function, ``len(x)``.

Reading a missing key is an error (``ExpressionEvalError``), not ``None``: a typo in a
Gate fails the gate loudly. Test for optional keys with ``"key" in x``.

Templates: in workflow definitions, ``"${params.repo}"`` (a whole string) becomes the
value itself, keeping its type; ``"run ${run.id} of ${params.repo}"`` is formatted text.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from cogo.errors import ExpressionEvalError, InvalidExpression

MAX_LENGTH = 2000
MAX_NODES = 300
TEMPLATE = re.compile(r"\$\{([^{}]*)\}")

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
}
_ARITHMETIC: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Compare,
    ast.IfExp,
    ast.Name,
    ast.Load,
    ast.Attribute,
    ast.Subscript,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Call,
    *_COMPARE,
    *_ARITHMETIC,
)
_FUNCTIONS = {"len"}
# JSON's spellings of the three constants: definitions are JSON, so conditions written
# there read ``x == true`` as naturally as ``x == True``
JSON_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


class Expression:
    """A parsed, checked condition; ``evaluate`` it against a context mapping."""

    __slots__ = ("text", "_tree", "names", "node_refs")

    def __init__(self, text: str, tree: ast.Expression) -> None:
        self.text = text
        self._tree = tree
        self.names: frozenset[str] = _root_names(tree)
        self.node_refs: frozenset[str] = _node_refs(tree)

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The value of the expression; ExpressionEvalError says what could not be read."""
        try:
            return _Evaluator(context).visit(self._tree.body)
        except ExpressionEvalError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError) as exc:
            raise ExpressionEvalError(f"{self.text!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@functools.lru_cache(maxsize=1024)
def parse(text: str, names: frozenset[str] | None = None) -> Expression:
    """Parse and check ``text``; InvalidExpression on syntax or anything not whitelisted.

    ``names``, when given, are the only root names the expression may use.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidExpression("expression is empty")
    if len(text) > MAX_LENGTH:
        raise InvalidExpression(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise InvalidExpression(f"{text!r} is not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise InvalidExpression(f"{text[:80]!r}... is too deeply nested") from None
    count = 0
    for node in ast.walk(tree):
        count += 1
        _check(node, text)
    if count > MAX_NODES:
        raise InvalidExpression(f"expression has more than {MAX_NODES} parts")
    expression = Expression(text, tree)
    if names is not None:
        unknown = expression.names - names
        if unknown:
            raise InvalidExpression(
                f"{text!r} uses unknown name(s) {', '.join(sorted(unknown))}; available: {', '.join(sorted(names))}"
            )
    return expression


def evaluate(text: str, context: Mapping[str, Any]) -> Any:
    """Parse (cached) and evaluate ``text`` against ``context``."""
    return parse(text).evaluate(context)


def _check(node: ast.AST, text: str) -> None:
    if not isinstance(node, _ALLOWED):
        raise InvalidExpression(f"{text!r}: {type(node).__name__} is not allowed in conditions")
    if isinstance(node, ast.Name) and node.id.startswith("_"):
        raise InvalidExpression(f"{text!r}: names starting with '_' are not allowed")
    if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
        raise InvalidExpression(f"{text!r}: fields starting with '_' are not allowed")
    if isinstance(node, ast.Constant) and not isinstance(node.value, str | int | float | bool | type(None)):
        raise InvalidExpression(f"{text!r}: {type(node.value).__name__} literals are not allowed")
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
            raise InvalidExpression(f"{text!r}: only len(...) may be called")
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise InvalidExpression(f"{text!r}: len() takes exactly one argument")
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Slice):
            raise InvalidExpression(f"{text!r}: slices are not allowed")
        key = node.slice.value if isinstance(node.slice, ast.Constant) else None
        if isinstance(key, str) and key.startswith("_"):
            raise InvalidExpression(f"{text!r}: keys starting with '_' are not allowed")


def _root_names(tree: ast.Expression) -> frozenset[str]:
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return frozenset(
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called and n.id not in JSON_LITERALS
    )


def _node_refs(tree: ast.Expression) -> frozenset[str]:
    """Node ids read as ``nodes.<id>`` or ``nodes["<id>"]``."""
    refs = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _is_name(n.value, "nodes"):
            refs.add(n.attr)
        elif (
            isinstance(n, ast.Subscript)
            and _is_name(n.value, "nodes")
            and isinstance(n.slice, ast.Constant)
            and isinstance(n.slice.value, str)
        ):
            refs.add(n.slice.value)
    return frozenset(refs)


def _is_name(node: ast.AST, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


class _Evaluator:
    """Walks a checked tree; every read goes through ``_lookup``."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        self.context = context

    def visit(self, node: ast.AST) -> Any:
        match node:
            case ast.Constant(value=value):
                return value
            case ast.Name(id=name) if name in JSON_LITERALS and name not in self.context:
                return JSON_LITERALS[name]
            case ast.Name(id=name):
                if name not in self.context:
                    raise ExpressionEvalError(f"unknown name {name!r}")
                return self.context[name]
            case ast.Attribute(value=inner, attr=attr):
                return _lookup(self.visit(inner), attr, inner)
            case ast.Subscript(value=inner, slice=index):
                return _lookup(self.visit(inner), self.visit(index), inner)
            case ast.List(elts=items) | ast.Tuple(elts=items):
                return [self.visit(item) for item in items]
            case ast.BoolOp(op=ast.And(), values=conjuncts):
                result: Any = True
                for term in conjuncts:
                    result = self.visit(term)
                    if not result:
                        return result
                return result
            case ast.BoolOp(op=ast.Or(), values=disjuncts):
                result = False
                for term in disjuncts:
                    result = self.visit(term)
                    if result:
                        return result
                return result
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                return not self.visit(operand)
            case ast.UnaryOp(op=op, operand=operand):
                value = _number(self.visit(operand), operand)
                return -value if isinstance(op, ast.USub) else +value
            case ast.BinOp(left=left, op=op, right=right):
                return _arithmetic(op, self.visit(left), self.visit(right), node)
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                current = self.visit(left)
                for cmp, comparator in zip(ops, comparators, strict=True):
                    other = self.visit(comparator)
                    if not _COMPARE[type(cmp)](current, other):
                        return False
                    current = other
                return True
            case ast.IfExp(test=test, body=body, orelse=orelse):
                return self.visit(body) if self.visit(test) else self.visit(orelse)
            case ast.Call(args=[arg]):
                value = self.visit(arg)
                if not isinstance(value, str | list | tuple | dict):
                    raise ExpressionEvalError(f"len() of {_kind(value)} at {ast.unparse(arg)!r} is undefined")
                return len(value)
        raise ExpressionEvalError(f"cannot evaluate {ast.unparse(node)!r}")  # pragma: no cover


def _lookup(container: Any, key: Any, where: ast.AST) -> Any:
    path = ast.unparse(where)
    if container is None:
        raise ExpressionEvalError(f"{path} is null; cannot read {key!r} from it")
    if isinstance(container, Mapping):
        if not isinstance(key, str) or key.startswith("_"):
            raise ExpressionEvalError(f"{path}: keys must be strings not starting with '_'")
        if key not in container:
            raise ExpressionEvalError(f"{path} has no key {key!r}")
        return container[key]
    if isinstance(container, Sequence) and not isinstance(container, str | bytes):
        if not isinstance(key, int) or isinstance(key, bool):
            raise ExpressionEvalError(f"{path} is a list; index it with an integer")
        if not -len(container) <= key < len(container):
            raise ExpressionEvalError(f"{path} has no item {key}")
        return container[key]
    raise ExpressionEvalError(f"{path} is {_kind(container)}; cannot read {key!r} from it")


def _number(value: Any, where: ast.AST) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpressionEvalError(f"{ast.unparse(where)} is {_kind(value)}, not a number")
    return value


def _arithmetic(op: ast.operator, left: Any, right: Any, node: ast.AST) -> Any:
    # `+` joins strings or lists (bounded by their sizes); everything else is numbers only,
    # so "x" * 10**9 cannot exhaust memory
    if isinstance(op, ast.Add):
        if isinstance(left, str) and isinstance(right, str):
            return left + right
        if isinstance(left, list) and isinstance(right, list):
            return left + right
    a = _number(left, node.left if isinstance(node, ast.BinOp) else node)
    b = _number(right, node.right if isinstance(node, ast.BinOp) else node)
    return _ARITHMETIC[type(op)](a, b)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# -- templates ---------------------------------------------------------------------------


def template_expressions(text: str) -> list[str]:
    """The expressions inside ``${...}`` in ``text``."""
    return [m.group(1).strip() for m in TEMPLATE.finditer(text)]


def render(value: Any, context: Mapping[str, Any], only: Collection[str] | None = None) -> Any:
    """Substitute every ``${expr}`` in ``value`` (recursively through dicts and lists).

    With ``only``, templates using any other root name are left as they are: plan time
    renders ``${params.*}`` and leaves ``${nodes.*}`` for when the node starts.
    """
    if isinstance(value, str):
        return _render_text(value, context, only)
    if isinstance(value, dict):
        return {k: render(v, context, only) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, only) for v in value]
    return value


def _render_text(text: str, context: Mapping[str, Any], only: Collection[str] | None) -> Any:
    if "${" not in text:
        return text

    def value_of(source: str) -> tuple[bool, Any]:
        expression = parse(source.strip())
        if only is not None and not expression.names <= set(only):
            return False, None
        return True, expression.evaluate(context)

    whole = TEMPLATE.fullmatch(text)
    if whole:
        done, value = value_of(whole.group(1))
        return value if done else text

    def substitute(match: re.Match[str]) -> str:
        done, value = value_of(match.group(1))
        if not done:
            return match.group(0)
        return "" if value is None else str(value)

    return TEMPLATE.sub(substitute, text)
