"""The indexer: this repository into code_files / code_symbols (through the real
projector), incremental re-indexing, the light extractors, and the indexing workflow."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from cogo.agents.indexer import IndexerActor
from cogo.indexing.files import list_files
from cogo.indexing.symbols import go_symbols, javascript_symbols, python_symbols, rust_symbols
from cogo.projections.projector import Projector
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.workflow_engine import WorkflowEngine
from cogo.streams.connection import connect
from cogo.workflows.definition import Catalog
from tests.helpers import EventReader, running, submit
from tests.workflow_support import start_run, wait_run

REPO = Path(__file__).resolve().parents[1]


async def _index(js: Any, repo: Path, **payload: Any) -> dict[str, Any]:
    task_id = await submit(js, "indexing.index.0", {"repo": str(repo), **payload})
    done = await EventReader(js).wait_terminal([task_id], timeout=25)
    event = done[task_id]
    assert event.type == "execute_done", event
    return (event.data or {})["result"]  # type: ignore[no-any-return]


async def _query(nats_server: Any, config: Any, data_dir: Path, sql: str) -> list[tuple]:
    nc = await connect(nats_server.url, "test-projector")
    projector = Projector(nc, config, data_dir=data_dir)
    await projector.start()
    try:
        await projector.wait_caught_up(timeout=15)
        return await projector.store.read(lambda con: con.execute(sql).fetchall())
    finally:
        await projector.stop()
        await nc.close()


async def test_index_this_repository(nats_server, js, config, data_dir):
    async with running(nats_server.url, config, ExecutorDispatcher, IndexerActor):
        result = await _index(js, REPO)
    assert result["files"] > 20 and result["indexed"] == result["files"]
    assert result["languages"]["python"] > 10
    source = (REPO / "cogo/runtime/dispatcher.py").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if text.startswith("class ExecutorDispatcher"))
    rows = await _query(
        nats_server,
        config,
        data_dir,
        "SELECT path, kind, line, parent FROM code_symbols WHERE name = 'ExecutorDispatcher'"
        f" AND kind = 'class' AND repo = '{REPO}'",
    )
    assert rows == [("cogo/runtime/dispatcher.py", "class", line, None)]
    files = await _query(
        nats_server,
        config,
        data_dir,
        f"SELECT language, lines FROM code_files WHERE repo = '{REPO}' AND path = 'cogo/runtime/dispatcher.py'",
    )
    assert files == [("python", len(source))]
    # nothing from the virtualenv or git internals
    assert not [p for p in list_files(REPO) if p.startswith((".venv/", ".git/"))]


async def test_reindex_is_incremental(nats_server, js, config, data_dir, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(
        REPO,
        repo,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".git",
            ".cogo",
            ".tools",
            "__pycache__",
            "*.egg-info",
            ".*_cache",
            "test-artifacts",
        ),
    )
    (repo / "build").mkdir(exist_ok=True)
    (repo / "build" / "generated.py").write_text("class Generated: ...\n")
    (repo / "blob.bin").write_bytes(b"\x00\x01binary")
    async with running(nats_server.url, config, ExecutorDispatcher, IndexerActor):
        first = await _index(js, repo)
        second = await _index(js, repo)
        (repo / "cogo/agents/echo.py").write_text("class Echoed:\n    pass\n")
        (repo / "cogo/runtime/reclaim.py").unlink()
        third = await _index(js, repo)
    assert first["indexed"] == first["files"] > 20
    assert first["skipped_binary"] == 1
    assert second["indexed"] == 0 and second["removed"] == 0
    assert second["skipped"] == second["files"] == first["files"]
    assert second["events"] == 0
    assert (third["indexed"], third["removed"]) == (1, 1)
    assert third["files"] == first["files"] - 1
    rows = await _query(
        nats_server,
        config,
        data_dir,
        f"SELECT path, name FROM code_symbols WHERE repo = '{repo}' AND kind = 'class'"
        " AND path IN ('cogo/agents/echo.py', 'cogo/runtime/reclaim.py', 'build/generated.py')",
    )
    assert rows == [("cogo/agents/echo.py", "Echoed")]
    count = await _query(nats_server, config, data_dir, f"SELECT count(*) FROM code_files WHERE repo = '{repo}'")
    assert count == [(third["files"],)]


def test_python_symbols_with_parents_and_imports():
    symbols = python_symbols(
        "import os.path as p\nfrom . import sibling\nfrom ..pkg.mod import thing\n"
        "class A:\n    class B:\n        def m(self): ...\n    async def n(self): ...\n"
        "def f():\n    def inner(): ...\nif True:\n    def g(): ...\n"
    )
    assert [(s["kind"], s["name"], s["line"], s["parent"]) for s in symbols] == [
        ("import", "os.path", 1, None),
        ("import", ".sibling", 2, None),
        ("import", "..pkg.mod.thing", 3, None),
        ("class", "A", 4, None),
        ("class", "B", 5, "A"),
        ("method", "m", 6, "A.B"),
        ("method", "n", 7, "A"),
        ("function", "f", 8, None),
        ("function", "inner", 9, "f"),
        ("function", "g", 11, None),
    ]
    assert python_symbols("def broken(:\n") == []


def test_light_extractors():
    js = javascript_symbols(
        "import x from './x';\nexport class Foo extends Bar {\n  constructor(a) {\n"
        "    if (a) { this.a = a; }\n  }\n  async run() {}\n}\nexport const f = async (a) => a;\n"
        "interface Props { a: string }\n"
    )
    assert {(s["kind"], s["name"], s["parent"]) for s in js} == {
        ("import", "./x", None),
        ("class", "Foo", None),
        ("method", "constructor", "Foo"),
        ("method", "run", "Foo"),
        ("function", "f", None),
        ("interface", "Props", None),
    }
    go = go_symbols('package x\nimport (\n  "fmt"\n)\ntype S struct {}\nfunc (s *S) Run() error {\n}\nfunc main() {}\n')
    assert {(s["kind"], s["name"], s["line"], s["parent"]) for s in go} == {
        ("import", "fmt", 3, None),
        ("struct", "S", 5, None),
        ("method", "Run", 6, "S"),
        ("function", "main", 8, None),
    }
    rust = rust_symbols(
        "use std::fmt;\npub struct P;\nimpl fmt::Display for P {\n    fn fmt(&self) {}\n}\npub fn top() {}\n"
    )
    assert {(s["kind"], s["name"], s["parent"]) for s in rust} == {
        ("import", "std::fmt", None),
        ("struct", "P", None),
        ("impl", "P", None),
        ("method", "fmt", "P"),
        ("function", "top", None),
    }


def test_walk_honours_gitignore_and_skips_virtualenvs(tmp_path):
    (tmp_path / ".gitignore").write_text("*.log\n/out/\nsecret*\n!secret_ok.txt\n")
    for path in [
        "a.py",
        "x.log",
        "out/o.py",
        "sub/out/kept.py",
        "secret.txt",
        "secret_ok.txt",
        "env1/lib/site.py",
        "node_modules/m.js",
        "sub/.gitignore",
        "sub/y.tmp",
    ]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("tmp\n" if path == "sub/.gitignore" else "x\n")
    (tmp_path / "sub/.gitignore").write_text("*.tmp\n")
    (tmp_path / "env1/pyvenv.cfg").write_text("home = /usr\n")
    assert list_files(tmp_path) == [".gitignore", "a.py", "secret_ok.txt", "sub/.gitignore", "sub/out/kept.py"]


async def test_indexing_workflow(nats_server, js, config, tmp_path):
    repo = tmp_path / "small"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "core.py").write_text("class Core:\n    def go(self): ...\n")
    (repo / "main.go").write_text("package main\nfunc main() {}\n")
    definition = Catalog().get("indexing")
    async with running(nats_server.url, config, ExecutorDispatcher, IndexerActor, WorkflowEngine):
        run_id = await start_run(js, config, definition, path=str(repo))
        state = await wait_run(js, run_id, timeout=25)
        empty = tmp_path / "empty"
        empty.mkdir()
        empty_run = await start_run(js, config, definition, path=str(empty))
        empty_state = await wait_run(js, empty_run, timeout=25)
    assert state.status == "succeeded", state.view()
    assert state.nodes["indexed"].result["data"]["result"]["files"] == 2
    assert state.nodes["has_files"].verdict == "passed"
    assert state.nodes["notify"].status == "skipped"  # no webhook_url given
    assert empty_state.status == "failed"
    assert empty_state.nodes["has_files"].verdict == "failed"
    assert re.match(r"^workflow\.", empty_state.error_code or "")


def test_the_walk_ignores_exactly_what_git_ignores(tmp_path):
    """The walk (used when there is no git work tree) against git itself on one tree."""
    import subprocess

    from cogo.indexing.files import _walk

    rules = {
        ".gitignore": "doc/*.txt\n!doc/keep.txt\n**/cache/\n*.o\nbuild\n/top.md\n",
        "src/.gitignore": "*.gen.py\n!keep.gen.py\n",
        "src/deep/.gitignore": "!*.o\n",
    }
    files = [
        "doc/x.txt",
        "doc/keep.txt",
        "doc/sub/y.txt",
        "a/cache/c.py",
        "cache/d.py",
        "m.o",
        "src/deep/n.o",
        "build",
        "src/build/z.py",
        "top.md",
        "src/top.md",
        "src/a.gen.py",
        "src/keep.gen.py",
        "src/ok.py",
    ]
    for path, text in [*rules.items(), *((f, "x\n") for f in files)]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(tmp_path), "ls-files", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    walked = [p for p in _walk(tmp_path) if not p.startswith(".git/")]
    assert sorted(walked) == sorted(listed)
    assert "doc/sub/y.txt" in walked and "doc/x.txt" not in walked  # git's rule, not fnmatch's
