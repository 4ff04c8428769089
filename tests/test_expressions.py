"""The workflow condition language: what it evaluates, and what it refuses to."""

from __future__ import annotations

from typing import Any

import pytest

from cogo.errors import ExpressionEvalError, InvalidExpression
from cogo.workflows.expressions import evaluate, parse, render

CONTEXT: dict[str, Any] = {
    "params": {"n": 2, "tags": ["a", "b"], "url": None, "name": "repo"},
    "nodes": {
        "build_test": {"status": "succeeded", "result": {"verdict": "pass", "report": {"failed": 0}}},
        "skipped": {"status": "skipped", "result": None},
        "index": {"result": {"files": 12, "items": [1, 2, 3]}},
    },
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nodes.build_test.result.verdict == 'pass'", True),
        ('nodes.build_test.result.verdict == "fail"', False),
        ("nodes.build_test.result['report']['failed'] == 0", True),
        ("nodes.index.result.files > 0 and len(nodes.index.result.items) == 3", True),
        ("1 < nodes.index.result.files <= 12", True),
        ("'a' in params.tags and 'z' not in params.tags", True),
        ("params.url is None", True),
        ("not params.url", True),
        ("params.url or 'default'", "default"),
        ("nodes.index.result.items[-1] * 2 + params.n", 8),
        ("nodes.index.result.files // 5 % 2", 0),
        ("'big' if nodes.index.result.files > 10 else 'small'", "big"),
        ("params.name + '-x'", "repo-x"),
        ("[1, 2] + params.tags", [1, 2, "a", "b"]),
        ("len(params.name)", 4),
        ("-params.n", -2),
        ("'status' in nodes.skipped", True),
    ],
)
def test_evaluates(text, expected):
    assert evaluate(text, CONTEXT) == expected


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "eval('1')",
        "params.__class__",
        "params.tags.__len__()",
        "nodes['__class__']",
        "_secret",
        "params.name.upper()",
        "(lambda: 1)()",
        "[x for x in params.tags]",
        "{'a': 1}",
        "{1, 2}",
        "f'{params.n}'",
        "(y := 1)",
        "2 ** 10",
        "params.tags[0:1]",
        "len(params.tags, 1)",
        "len(*params.tags)",
        "len(x=params.tags)",
        "b'bytes'",
        "...",
        "import os",
        "params.n; params.n",
        "",
        "[" * 400 + "]" * 400,
        "1 + " * 1000 + "1",
    ],
)
def test_rejects_unsafe_or_invalid(text):
    with pytest.raises(InvalidExpression):
        parse(text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nodes.build_test.result.nope == 1", "has no key 'nope'"),
        ("nodes.skipped.result.verdict", "is null"),
        ("params.tags.first", "is a list"),
        ("params.name * 1000000000", "not a number"),
        ("params.tags[5]", "has no item 5"),
        ("len(params.n)", r"len\(\) of int"),
        ("params.n / 0", "division by zero"),
        ("params.n < 'a'", "not supported"),
        ("unknown_name", "unknown name"),
    ],
)
def test_evaluation_errors_are_explicit(text, fragment):
    with pytest.raises(ExpressionEvalError, match=fragment):
        evaluate(text, CONTEXT)


def test_names_can_be_restricted():
    assert parse("params.n > 1", frozenset({"params"})).names == {"params"}
    with pytest.raises(InvalidExpression, match="unknown name"):
        parse("nodes.a.result", frozenset({"params"}))
    assert parse("nodes.a.result.x and nodes['b'].status").node_refs == {"a", "b"}


def test_templates_keep_types_and_defer_what_is_not_known_yet():
    value = {
        "count": "${params.n}",
        "text": "n=${params.n}, tags=${len(params.tags)}",
        "later": "${nodes.index.result.files}",
        "mixed": "${params.name}/${nodes.x.task_id}",
        "list": ["${params.tags}"],
        "none": "${params.url}",
    }
    planned = render(value, CONTEXT, only={"params"})
    assert planned == {
        "count": 2,
        "text": "n=2, tags=2",
        "later": "${nodes.index.result.files}",
        "mixed": "repo/${nodes.x.task_id}",
        "list": [["a", "b"]],
        "none": None,
    }
    assert render(planned["later"], CONTEXT) == 12
    with pytest.raises(InvalidExpression):
        render("${params.__class__}", CONTEXT)
