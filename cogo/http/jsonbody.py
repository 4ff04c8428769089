"""Request bodies as JSON, with limits: strict syntax, nesting depth, number range.

``json.loads`` answered a body nested 1,000 deep with RecursionError and a 5,000-digit
integer with ValueError (Python's int-from-string limit), both 500s. Here the body is
decoded by msgspec (strict JSON: no NaN/Infinity literals, no lone surrogates), then
walked once, iteratively: deeper than ``MAX_DEPTH`` or an integer of more than
``MAX_INT_DIGITS`` digits is a 400 with its own code. Big integers below that are valid
JSON and travel as they are (msgspec encodes them; DuckDB keeps them in the ``raw`` JSON);
the bound keeps int parsing linear and well under Python's 4,300-digit conversion limit.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cogo.errors import InvalidJson, JsonNumberOutOfRange, JsonTooDeep

MAX_DEPTH = 64
MAX_INT_DIGITS = 1000
_MAX_INT = 10**MAX_INT_DIGITS

_decoder = msgspec.json.Decoder()


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``body`` as a JSON value, or InvalidJson / JsonTooDeep / JsonNumberOutOfRange (400s)."""
    if not body.strip():
        raise InvalidJson("request body is empty; expected JSON")
    try:
        value = _decoder.decode(body)
    except RecursionError:
        raise JsonTooDeep(f"request body is nested deeper than {max_depth} levels") from None
    except msgspec.ValidationError as exc:  # msgspec's own range check (huge numbers)
        raise JsonNumberOutOfRange(f"request body holds a number out of range: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"request body is not valid JSON: {exc}") from None
    check_limits(value, max_depth=max_depth)
    return value


def check_limits(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise JsonTooDeep or JsonNumberOutOfRange if a decoded value breaks a limit."""
    # bools are ints too, and within range: no special case needed
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise JsonTooDeep(f"request body is nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | int))
        elif isinstance(item, int) and not -_MAX_INT < item < _MAX_INT:
            raise JsonNumberOutOfRange(f"request body holds an integer of more than {MAX_INT_DIGITS} digits")
