"""Edits: validation, path checks (lexical and through symlinks), applying, unified diffs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cogo.agents.build_test import CommandRun, judge, parse_junit
from cogo.agents.edits import (
    Create,
    SearchReplace,
    apply_edits,
    apply_patch,
    decode_edits,
    encode_edits,
    plan_edits,
)
from cogo.errors import EditConflict, EditPathInvalid, InvalidEdit


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "..", "", ".", "a\\b", "~/x", ".git/config"])
def test_bad_paths_are_rejected(path: str) -> None:
    with pytest.raises(EditPathInvalid) as info:
        decode_edits([{"op": "create", "path": path, "content": "x"}])
    assert info.value.code == "edit.path_invalid"


@pytest.mark.parametrize(
    "raw",
    [
        "not a list",
        [{"op": "rename", "path": "a"}],
        [{"op": "create", "path": "a"}],
        [{"op": "create", "path": "a", "content": 1}],
        [{"op": "search_replace", "path": "a", "search": "", "replace": "b"}],
        [{"op": "delete", "path": "a", "extra": True}],
    ],
)
def test_malformed_edits_are_rejected(raw: object) -> None:
    with pytest.raises(InvalidEdit) as info:
        decode_edits(raw)
    assert info.value.code == "edit.invalid"


def test_round_trip_and_apply_every_op(tmp_path: Path) -> None:
    (tmp_path / "keep.py").write_text("a = 1\nb = 2\n")
    (tmp_path / "gone.py").write_text("x\n")
    (tmp_path / "whole.py").write_text("old\n")
    raw = [
        {"op": "create", "path": "pkg/new.py", "content": "NEW\n"},
        {"op": "search_replace", "path": "keep.py", "search": "b = 2", "replace": "b = 3"},
        {
            "op": "patch",
            "path": "keep.py",
            "diff": "--- a/keep.py\n+++ b/keep.py\n@@ -1,2 +1,3 @@\n a = 1\n+c = 4\n b = 3\n",
        },
        {"op": "delete", "path": "gone.py"},
        {"op": "replace", "path": "whole.py", "content": "new\n"},
    ]
    edits = decode_edits(raw)
    assert decode_edits(json.loads(encode_edits(edits))) == edits
    touched = apply_edits(tmp_path, edits)
    assert touched == ["gone.py", "keep.py", "pkg/new.py", "whole.py"]
    assert (tmp_path / "pkg/new.py").read_text() == "NEW\n"
    assert (tmp_path / "keep.py").read_text() == "a = 1\nc = 4\nb = 3\n"
    assert not (tmp_path / "gone.py").exists()
    assert (tmp_path / "whole.py").read_text() == "new\n"


def test_conflicts_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    edits = [
        Create(path="b.py", content="B"),
        SearchReplace(path="a.py", search="x = 1", replace="x = 2"),  # two matches
    ]
    with pytest.raises(EditConflict, match="2 times"):
        apply_edits(tmp_path, edits)
    assert not (tmp_path / "b.py").exists()  # all-or-nothing
    with pytest.raises(EditConflict, match="not found"):
        plan_edits(tmp_path, [SearchReplace(path="a.py", search="nope", replace="")])
    with pytest.raises(EditConflict, match="already exists"):
        plan_edits(tmp_path, [Create(path="a.py", content="")])


def test_symlink_escape_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "inner").mkdir()
    (root / "ok").symlink_to(root / "inner")
    with pytest.raises(EditPathInvalid, match="outside the workspace"):
        apply_edits(root, [Create(path="link/evil.txt", content="x")])
    assert list(outside.iterdir()) == []
    apply_edits(root, [Create(path="ok/fine.txt", content="x")])  # a link that stays inside
    assert (root / "inner/fine.txt").read_text() == "x"


def test_patch_offsets_no_newline_and_conflicts() -> None:
    text = "".join(f"line{i}\n" for i in range(1, 11))
    # the header says line 2, the context sits at line 6: applied at an offset
    moved = apply_patch(text, "@@ -2,2 +2,2 @@\n line6\n-line7\n+LINE7\n", "f")
    assert "line6\nLINE7\nline8" in moved
    assert apply_patch("a\nb", "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+B\n", "f") == "a\nB\n"
    assert apply_patch("", "--- /dev/null\n+++ b/f\n@@ -0,0 +1,2 @@\n+x\n+y\n", "f") == "x\ny\n"
    with pytest.raises(EditConflict, match="hunk 1"):
        apply_patch(text, "@@ -1,1 +1,1 @@\n-nope\n+yes\n", "f")
    with pytest.raises(InvalidEdit, match="no @@ hunks"):
        apply_patch(text, "just words", "f")
    with pytest.raises(InvalidEdit, match="several files"):
        apply_patch(text, "@@ -1 +1 @@\n-line1\n+x\n--- a/g\n+++ b/g\n@@ -1 +1 @@\n-a\n+b\n", "f")


def test_junit_parsing_and_verdicts(tmp_path: Path) -> None:
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_ops" name="test_add">'
        '<failure message="assert -1 == 5">trace</failure></testcase>'
        '<testcase classname="tests.test_ops" name="test_mul"/>'
        '<testcase classname="tests.test_ops" name="test_skip"><skipped message="s"/></testcase>'
        "</testsuite></testsuites>"
    )
    cases = parse_junit(junit)
    assert cases is not None
    assert [(c["name"], c["outcome"]) for c in cases] == [
        ("tests.test_ops::test_add", "failure"),
        ("tests.test_ops::test_mul", "passed"),
        ("tests.test_ops::test_skip", "skipped"),
    ]
    assert parse_junit(tmp_path / "missing.xml") is None
    ok = CommandRun(cmd="t", exit_code=0, duration_ms=1)
    failed = CommandRun(cmd="t", exit_code=1, duration_ms=1)
    timed_out = CommandRun(cmd="t", exit_code=None, duration_ms=1, timed_out=True)
    assert judge(ok, ok, []) == "pass"
    assert judge(ok, failed, cases) == "fail"
    assert judge(ok, failed, None) == "fail"  # not pytest: no JUnit file
    assert judge(failed, None, None) == "error"
    assert judge(ok, timed_out, None) == "timeout"
    assert judge(ok, CommandRun(cmd="t", exit_code=5, duration_ms=1), []) == "error"
