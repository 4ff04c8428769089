"""Codegen -> build/test on the sample repository, through the dispatcher on a real
nats-server, with real subprocesses: pass, fail, timeout, bad paths, missing inputs."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nats.js.client import JetStreamContext

from cogo.streams.artifacts import ArtifactStore
from cogo.streams.events import Event
from tests.code_pipeline import BUILD_TEST, CODEGEN, EXAMPLES, pipeline
from tests.helpers import EventReader, run_task, submit


def example(name: str, repo: Path) -> dict[str, Any]:
    """An examples/*.json parameters file, pointed at ``repo``."""
    params = json.loads((EXAMPLES / name).read_text())
    params["repo"] = str(repo)
    return params


async def codegen_then_build(js: JetStreamContext, params: dict[str, Any]) -> tuple[Event, Event]:
    """What the codeBuildTest workflow does: generate edits, then build and test them."""
    gen = await run_task(js, CODEGEN, {"repo": params["repo"], "change": params["change"]})
    assert gen.type == "execute_done", gen
    build = await run_task(
        js,
        BUILD_TEST,
        {
            "repo": params["repo"],
            "edits_task_id": gen.task_id,
            "build_cmd": params["build_cmd"],
            "test_cmd": params["test_cmd"],
        },
    )
    return gen, build


async def test_fix_passes_and_artifacts_are_stored(nats_server, js, config, data_dir, repo):
    async with pipeline(nats_server.url, config, data_dir):
        gen, build = await codegen_then_build(js, example("fix.json", repo))
    assert gen.data["result"]["edits_count"] == 1
    assert gen.data["result"]["artifacts"] == [f"{gen.task_id}/edits.json"]
    assert build.type == "execute_done", build
    result = build.data["result"]
    assert result["verdict"] == "pass"
    assert result["report"]["counts"] == {
        "passed": 3,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "total": 3,
    }
    key = f"{build.task_id}/build-test/report.json"
    assert result["artifacts"] == [key]
    # the object store holds it, the writer's data dir mirrors it byte for byte
    stored = await ArtifactStore(js).get(key)
    report = json.loads(stored)
    assert report["verdict"] == "pass" and report["exit_code"] == 0
    assert report["paths"] == ["calc/ops.py"] and report["build"]["exit_code"] == 0
    assert (data_dir / "artifacts" / build.task_id / "build-test" / "report.json").read_bytes() == stored
    edits = json.loads((data_dir / "artifacts" / gen.task_id / "edits.json").read_text())
    assert edits[0]["op"] == "search_replace"
    # the original repository is untouched: the edits went into a copy
    assert "return a - b" in (repo / "calc" / "ops.py").read_text()
    reader = EventReader(js, "events.artifact_stored.>")
    await reader.poll()
    stored_events = {e.data["name"]: e for e in reader.events}
    assert stored_events[key].task_id == build.task_id
    assert stored_events[key].correlation_id == build.task_id
    assert stored_events[key].data["size"] == len(stored)
    assert f"{gen.task_id}/edits.json" in stored_events


async def test_bad_fix_fails_and_names_the_failing_test(nats_server, js, config, data_dir, repo):
    async with pipeline(nats_server.url, config, data_dir):
        _, build = await codegen_then_build(js, example("bad-fix.json", repo))
    # a failing verdict is a successful task: the worker did its job
    assert build.type == "execute_done", build
    result = build.data["result"]
    assert result["verdict"] == "fail"
    assert "tests.test_ops::test_add" in result["report"]["failures"]
    assert result["report"]["counts"]["failed"] == 2
    report = json.loads(await ArtifactStore(js).get(result["artifacts"][0]))
    failure = next(f for f in report["failures"] if f["name"] == "tests.test_ops::test_add")
    assert "assert 6 == 5" in failure["message"]
    assert report["exit_code"] == 1 and "2 failed" in report["stdout_tail"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, merely unreaped


async def test_hanging_tests_are_killed_at_the_timeout(nats_server, js, config, data_dir, repo, tmp_path):
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    payload = {
        "repo": str(repo),
        "build_cmd": "",  # blank: the default build (workflows pass "" for "unset")
        "test_cmd": f"{sys.executable} -c {shlex.quote(script)}",
        "__assignment": {"timeout_ms": 3000, "max_attempts": 1},
    }
    async with pipeline(nats_server.url, config, data_dir):
        event = await run_task(js, BUILD_TEST, payload)
    assert event.type == "execute_done", event
    assert event.data["result"]["verdict"] == "timeout"
    report = json.loads(await ArtifactStore(js).get(event.data["result"]["artifacts"][0]))
    assert report["test"]["timed_out"] and report["exit_code"] is None
    assert report["test"]["duration_ms"] < 60_000  # killed, not run to its 60 s sleep
    # the command and the child it started are gone: the whole process group was killed
    for pid in map(int, pids.read_text().split()):
        for _ in range(60):  # SIGKILL is immediate; reaping an orphan may take a moment
            if not _alive(pid):
                break
            await asyncio.sleep(0.05)
        assert not _alive(pid), f"pid {pid} survived the timeout"


async def test_build_failure_is_an_error_verdict(nats_server, js, config, data_dir, repo):
    payload = {"repo": str(repo), "build_cmd": "python -c 'import sys; sys.exit(3)'"}
    async with pipeline(nats_server.url, config, data_dir):
        event = await run_task(js, BUILD_TEST, payload)
    assert event.type == "execute_done", event
    result = event.data["result"]
    assert result["verdict"] == "error" and result["report"]["exit_code"] == 3
    report = json.loads(await ArtifactStore(js).get(result["artifacts"][0]))
    assert report["test"] is None  # a broken build runs no tests


async def test_bad_edit_paths_are_rejected_without_retry(nats_server, js, config, data_dir, repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "escape").symlink_to(outside)
    bad = ["../x", "/etc/passwd", "calc/../../x", "escape/evil.txt"]
    async with pipeline(nats_server.url, config, data_dir):
        tasks: dict[str, str] = {}
        for path in bad:
            edits = [{"op": "create", "path": path, "content": "pwned\n"}]
            tasks[await submit(js, BUILD_TEST, {"repo": str(repo), "edits": edits})] = path
            change = {"generator": "edits", "edits": edits}
            tasks[await submit(js, CODEGEN, {"repo": str(repo), "change": change})] = path
        reader = EventReader(js)
        done = await reader.wait_terminal(tasks, timeout=25)
    for task_id, path in tasks.items():
        event = done[task_id]
        assert event.type == "execute_failed", (path, event)
        assert event.error_code == "edit.path_invalid", (path, event.error)
        assert event.attempt == 1
        assert "execute_retry" not in [e.type for e in reader.of(task_id)]
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "x").exists()


async def test_missing_inputs_fail_with_codes(nats_server, js, config, data_dir, repo, tmp_path):
    cases = {
        "build.repo_missing": (BUILD_TEST, {"repo": str(tmp_path / "nope")}),
        "artifact.not_found": (BUILD_TEST, {"repo": str(repo), "edits_task_id": "never-ran"}),
        "payload.invalid": (BUILD_TEST, {"repo": str(repo), "test_cmd": "pytest 'unclosed"}),
        "edit.conflict": (
            CODEGEN,
            {
                "repo": str(repo),
                "change": {
                    "edits": [
                        {
                            "op": "search_replace",
                            "path": "calc/ops.py",
                            "search": "no such",
                            "replace": "",
                        }
                    ]
                },
            },
        ),
        "build.repo_missing ": (CODEGEN, {"repo": str(tmp_path / "nope"), "change": {}}),
    }
    async with pipeline(nats_server.url, config, data_dir):
        ids = {await submit(js, route, payload): code for code, (route, payload) in cases.items()}
        done = await EventReader(js).wait_terminal(ids, timeout=25)
    for task_id, code in ids.items():
        assert done[task_id].type == "execute_failed"
        assert done[task_id].error_code == code.strip(), done[task_id].error
        assert done[task_id].attempt == 1


def test_junit_from_an_untrusted_repository_cannot_blow_up_the_worker(tmp_path):
    """A report with entity expansion (billion laughs) or an external entity is refused."""
    from cogo.agents.build_test import parse_junit

    lol = "".join(f'<!ENTITY l{i} "&l{i - 1};&l{i - 1};&l{i - 1};&l{i - 1};">' for i in range(1, 9))
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        f'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY l0 "lol">{lol}]>'
        '<testsuite><testcase name="a"><failure message="&l8;"/></testcase>'
        "</testsuite>"
    )
    external = tmp_path / "external.xml"
    external.write_text(
        '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<testsuite><testcase name="b"><error message="&x;"/></testcase>'
        "</testsuite>"
    )
    plain = tmp_path / "plain.xml"
    plain.write_text(
        '<testsuite><testcase classname="t" name="c"><failure message="m">d</failure></testcase></testsuite>'
    )
    assert parse_junit(bomb) is None
    assert parse_junit(external) is None
    assert parse_junit(plain) == [{"name": "t::c", "outcome": "failure", "message": "m", "detail": "d"}]
