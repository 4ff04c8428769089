"""The error tree (``cogo.errors``): one stable code per class, each class exported from
the package, named in its docstring's tree and listed on the generated reference page."""

from __future__ import annotations

import inspect
import sys
from collections import Counter
from pathlib import Path

import pytest

from cogo import errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import gen_reference  # noqa: E402


def _classes() -> list[type[errors.CogoError]]:
    """Every CogoError class defined in a module of the package."""
    found = [errors.CogoError]
    for domain in errors.DOMAINS:
        found += [
            cls
            for _, cls in inspect.getmembers(domain, inspect.isclass)
            if issubclass(cls, errors.CogoError) and cls.__module__ == domain.__name__
        ]
    return found


def test_every_domain_module_is_listed():
    package = Path(errors.__file__).parent
    modules = {p.stem for p in package.glob("*.py")} - {"__init__", "base"}
    assert modules == {d.__name__.rsplit(".", 1)[-1] for d in errors.DOMAINS}


def test_every_class_has_a_code_of_its_own_and_no_code_is_used_twice():
    classes = _classes()
    assert len(classes) > 100
    without = [cls.__name__ for cls in classes if "code" not in vars(cls)]
    assert without == []
    twice = [code for code, n in Counter(cls.code for cls in classes).items() if n > 1]
    assert twice == []


def test_every_class_is_importable_from_the_package():
    for cls in _classes():
        assert getattr(errors, cls.__name__) is cls
        assert cls.__name__ in errors.__all__
    assert len(errors.__all__) == len(_classes())


def test_the_docstring_tree_names_every_class_with_its_code():
    tree = errors.__doc__ or ""
    lines = {line.split("── ")[-1].split()[0]: line for line in tree.splitlines() if "── " in line}
    for cls in _classes()[1:]:
        assert cls.__name__ in lines, f"{cls.__name__} is missing from the tree"
        assert f" {cls.code}" in lines[cls.__name__], cls.__name__


@pytest.mark.parametrize("cls", _classes(), ids=lambda c: c.__name__)
def test_the_reference_page_lists_every_class(cls):
    page = gen_reference.errors_page()
    assert f"`{cls.__name__}` | `{cls.code}` |" in page
