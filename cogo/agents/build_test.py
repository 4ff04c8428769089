"""The build/test worker on ``code.build-test.0``: apply edits in a copy, build, test, judge.

Payload::

    {"repo": "/path/to/repo",
     "edits_task_id": "<codegen task id>",   # or "edits": [...] inline; neither = baseline
     "build_cmd": "python -m compileall -q .",  # absent, null or "" = this default
     "test_cmd": "python -m pytest -q"}         # likewise

The repository is copied into a fresh workspace (without ``.git``, virtualenvs and caches),
every edit path is checked to stay inside it (no absolute paths, no ``..``, no symlink
escape), the edits are applied, then the build and test commands run as subprocesses:

- in their own session, so a timeout kills the whole process group (``killpg``);
- with a scrubbed environment (``PATH``, ``HOME`` = the workspace, ``LANG``, ``TMPDIR``,
  ``PYTHONDONTWRITEBYTECODE``); ``python`` resolves to the worker's own interpreter first;
- under resource limits (CPU seconds, address space, file size, processes, open files) set
  by a tiny launcher that ``exec``s the command: ``preexec_fn`` is unsafe with the threads
  the worker uses for file I/O;
- until the attempt's deadline minus a margin, so the report is stored before the worker
  base's own timeout fires.

The workspace is an isolation of files, not a security sandbox: commands run as the
worker's user. ``<taskId>/build-test/report.json`` records the verdict (``pass``, ``fail``,
``error``, ``timeout``), counts from the JUnit XML, failing tests and output tails. A ``fail``
verdict is a successful task (the verdict is data); only problems around the run (repo
missing, bad edits, unknown artifact) fail the task, with their error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as defused
import msgspec
from defusedxml import DefusedXmlException

from cogo.agents.edits import EDITS_ARTIFACT, Edit, apply_edits, decode_edits
from cogo.config import Config
from cogo.errors import InvalidPayload, RepoMissing
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.worker import Worker
from cogo.streams.artifacts import ArtifactStore, artifact_key
from cogo.streams.envelope import WorkOrder

DEFAULT_BUILD_CMD = "python -m compileall -q ."
DEFAULT_TEST_CMD = "python -m pytest -q"
REPORT_ARTIFACT = "build-test/report.json"
JUNIT_NAME = ".cogo-junit.xml"
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".tox",
    ".cogo",
    JUNIT_NAME,
)
CAPTURE_BYTES = 256 * 1024  # output kept per stream while a command runs (the tail)
TAIL_CHARS = 4000  # output tail per stream in the report
MAX_FAILURES = 50  # failing tests listed in the report
KILL_GRACE_S = 2.0  # wait for pipes to close after the group is killed


class Limits(msgspec.Struct, frozen=True):
    """Resource limits of build and test commands (``setrlimit``, soft = hard)."""

    address_space_bytes: int = 2 * 1024**3
    file_size_bytes: int = 512 * 1024**2
    processes: int = 1024
    open_files: int = 1024


# sets the limits, then becomes the command; a missing command exits 127 like a shell
_LAUNCHER = """\
import os, resource, sys
names = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_NOFILE")
for name, value in zip(names, map(int, sys.argv[1:6])):
    which = getattr(resource, name)
    hard = resource.getrlimit(which)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))
try:
    os.execvp(sys.argv[6], sys.argv[6:])
except OSError as exc:
    print(f"cogo: cannot run {sys.argv[6]!r}: {exc}", file=sys.stderr)
    sys.exit(127)
"""


class BuildTestRequest(msgspec.Struct, frozen=True):
    """The payload of ``code.build-test.0`` (``__assignment`` and unknown keys ignored)."""

    repo: str
    edits_task_id: str | None = None
    edits: list[Any] | None = None
    build_cmd: str | None = None  # blank = DEFAULT_BUILD_CMD (workflows pass "" for "unset")
    test_cmd: str | None = None  # blank = DEFAULT_TEST_CMD


class CommandRun(msgspec.Struct):
    """One build or test command as it ran."""

    cmd: str
    exit_code: int | None
    duration_ms: float
    timed_out: bool = False
    stdout_tail: str = ""
    stderr_tail: str = ""


class BuildTestActor(Worker):
    """Applies a change in an isolated copy of the repo, builds, tests, reports a verdict."""

    kind = "build_test"
    route = "code.build-test.0"
    needs_data_dir = True
    limits = Limits()

    def __init__(
        self,
        nc: Any,
        config: Config,
        *,
        concurrency: int | None = None,
        version: str | None = None,
        data_dir: Path | None = None,
    ) -> None:
        # builds are CPU-bound: one per CPU unless told otherwise
        concurrency = concurrency or os.cpu_count() or 1
        super().__init__(nc, config, concurrency=concurrency, version=version)
        self.artifacts = ArtifactStore(self.js, data_dir, self.events)

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        request = _decode_request(order.payload)
        repo = Path(request.repo)
        if not await asyncio.to_thread(repo.is_dir):
            raise RepoMissing(f"repository {request.repo!r} is not a directory")
        build_argv = _split(request.build_cmd or DEFAULT_BUILD_CMD, "build_cmd")
        test_argv = _split(request.test_cmd or DEFAULT_TEST_CMD, "test_cmd")
        edits = await self._edits(request)
        timeout_s = order.assignment.timeout_ms / 1000.0
        # leave time to store the report before the base's timeout cancels the attempt
        deadline = ctx.deadline - min(5.0, max(1.0, 0.1 * timeout_s))
        scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="cogo-build-"))
        try:
            report = await self._build_and_test(order, repo, scratch, edits, build_argv, test_argv, deadline)
            data = json.dumps(report, indent=2).encode()
            ref = await self.artifacts.put(order, REPORT_ARTIFACT, data, actor=self.name)
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        summary = {key: report[key] for key in ("verdict", "counts", "duration_ms", "exit_code")}
        summary["failures"] = [f["name"] for f in report["failures"]]
        return Outcome(result={"verdict": report["verdict"], "report": summary, "artifacts": [ref.name]})

    async def _edits(self, request: BuildTestRequest) -> list[Edit]:
        if request.edits is not None and request.edits_task_id is not None:
            raise InvalidPayload("give either `edits` or `edits_task_id`, not both")
        if request.edits_task_id is not None:
            key = artifact_key(request.edits_task_id, EDITS_ARTIFACT)
            raw = await self.artifacts.get(key)  # ArtifactNotFound: not retryable
            try:
                return decode_edits(json.loads(raw))
            except ValueError:
                raise InvalidPayload(f"artifact {key!r} is not JSON") from None
        return decode_edits(request.edits) if request.edits is not None else []

    async def _build_and_test(
        self,
        order: WorkOrder,
        repo: Path,
        scratch: Path,
        edits: list[Edit],
        build_argv: list[str],
        test_argv: list[str],
        deadline: float,
    ) -> dict[str, Any]:
        started = time.time()
        workspace = scratch / "workspace"
        await asyncio.to_thread(_copy_repo, repo, workspace)
        touched = await asyncio.to_thread(apply_edits, workspace, edits)  # EditError: no retry
        (scratch / "tmp").mkdir()
        env = _scrubbed_env(workspace, scratch / "tmp")
        junit = workspace / JUNIT_NAME
        if _is_pytest(test_argv):
            test_argv = [*test_argv, f"--junitxml={junit}"]
        test: CommandRun | None = None
        build = await self._run(build_argv, workspace, env, deadline)
        if build.exit_code == 0 and not build.timed_out:
            test = await self._run(test_argv, workspace, env, deadline)
        cases = await asyncio.to_thread(parse_junit, junit) if test else None
        verdict = judge(build, test, cases)
        last = test or build
        counts, failures = _count(cases)
        return {
            "task_id": order.task_id,
            "verdict": verdict,
            "repo": str(repo),
            "edits_applied": len(edits),
            "paths": touched,
            "counts": counts,
            "duration_ms": round((time.time() - started) * 1000.0, 3),
            "exit_code": last.exit_code,
            "failures": failures,
            "build": msgspec.to_builtins(build),
            "test": msgspec.to_builtins(test) if test else None,
            "stdout_tail": last.stdout_tail,
            "stderr_tail": last.stderr_tail,
        }

    async def _run(self, argv: list[str], cwd: Path, env: dict[str, str], deadline: float) -> CommandRun:
        timeout = max(0.0, deadline - time.time())
        if timeout <= 0:
            return CommandRun(cmd=shlex.join(argv), exit_code=None, duration_ms=0, timed_out=True)
        return await run_command(argv, cwd=cwd, env=env, timeout=timeout, limits=self.limits)


async def run_command(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float, limits: Limits) -> CommandRun:
    """Run ``argv`` in its own process group under ``limits``; kill the group at ``timeout``."""
    cpu_s = math.ceil(timeout) + 5  # a backstop; the wall-clock timeout normally fires first
    launcher = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _LAUNCHER,
        str(cpu_s),
        str(limits.address_space_bytes),
        str(limits.file_size_bytes),
        str(limits.processes),
        str(limits.open_files),
        *argv,
    ]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *launcher,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: one killpg reaches every child
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Tail(), _Tail()
    readers = [asyncio.create_task(out.drain(proc.stdout)), asyncio.create_task(err.drain(proc.stderr))]
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        timed_out = True
    finally:
        # always: a timeout, a cancelled attempt, or children the command left running
        _kill_group(proc.pid)
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), KILL_GRACE_S)
        # a grandchild that escaped the group could hold the pipes open forever
        _, pending = await asyncio.wait(readers, timeout=KILL_GRACE_S)
        for reader in pending:
            reader.cancel()
    return CommandRun(
        cmd=shlex.join(argv),
        exit_code=None if timed_out else proc.returncode,
        duration_ms=round((time.monotonic() - started) * 1000.0, 3),
        timed_out=timed_out,
        stdout_tail=out.text(),
        stderr_tail=err.text(),
    )


class _Tail:
    """Keeps the last CAPTURE_BYTES of a stream."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.buffer += chunk
            if len(self.buffer) > 2 * CAPTURE_BYTES:
                del self.buffer[:-CAPTURE_BYTES]

    def text(self) -> str:
        return self.buffer.decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def judge(build: CommandRun, test: CommandRun | None, cases: list[dict[str, Any]] | None) -> str:
    """The verdict: ``timeout``, ``error`` (build broke / tests could not run), ``fail``, ``pass``."""
    if build.timed_out or (test and test.timed_out):
        return "timeout"
    if test is None or test.exit_code is None:
        return "error"
    if test.exit_code == 0:
        return "pass"
    if cases is None:  # not pytest: any non-zero exit is a failing suite
        return "error" if test.exit_code == 127 else "fail"
    # pytest: 1 = tests failed; collection errors fail the change too; 2-5 = no real run
    broken = any(c["outcome"] in ("failure", "error") for c in cases)
    return "fail" if test.exit_code == 1 or broken else "error"


def parse_junit(path: Path) -> list[dict[str, Any]] | None:
    """Every ``<testcase>`` of a JUnit XML file as name/outcome/message (None if no file, or
    not a report we can trust).

    The file is written by the repository's own test run: untrusted input. defusedxml
    refuses entity expansion (billion laughs), external entities and DTD tricks that the
    standard library's parser would follow.
    """
    try:
        root = defused.parse(path).getroot()
    except (OSError, defused.ParseError, DefusedXmlException):
        return None
    if root is None:
        return None
    cases = []
    for case in root.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        outcome, message, detail = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                message = child.get("message", "")
                detail = (child.text or "")[-2000:]
                break
        full = f"{classname}::{name}" if classname else name
        cases.append({"name": full, "outcome": outcome, "message": message, "detail": detail})
    return cases


def _count(cases: list[dict[str, Any]] | None) -> tuple[dict[str, int], list[dict[str, Any]]]:
    cases = cases or []
    tally = {"passed": 0, "failure": 0, "error": 0, "skipped": 0}
    for case in cases:
        tally[case["outcome"]] += 1
    counts = {
        "passed": tally["passed"],
        "failed": tally["failure"],
        "errors": tally["error"],
        "skipped": tally["skipped"],
        "total": len(cases),
    }
    failures = [
        {"name": c["name"], "kind": c["outcome"], "message": c["message"][:500], "detail": c["detail"]}
        for c in cases
        if c["outcome"] in ("failure", "error")
    ][:MAX_FAILURES]
    return counts, failures


def _decode_request(payload: dict[str, Any]) -> BuildTestRequest:
    try:
        return msgspec.convert(payload, BuildTestRequest)
    except msgspec.ValidationError as exc:
        raise InvalidPayload(f"invalid build-test payload: {exc}", detail=str(exc)) from None


def _split(command: str, field: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise InvalidPayload(f"{field} cannot be parsed: {exc}") from None
    if not argv:
        raise InvalidPayload(f"{field} holds no command")
    return argv


def _is_pytest(argv: list[str]) -> bool:
    if not argv:
        return False
    program = Path(argv[0]).name
    return program in ("pytest", "py.test") or (program.startswith("python") and argv[1:3] == ["-m", "pytest"])


def _copy_repo(repo: Path, workspace: Path) -> None:
    # symlinks stay links, so a link pointing outside is caught by the edit path check
    shutil.copytree(repo, workspace, symlinks=True, ignore=COPY_IGNORE)


def _scrubbed_env(workspace: Path, tmp: Path) -> dict[str, str]:
    # the worker's interpreter first: `python -m pytest` means the Python the worker runs on
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
    return {
        "PATH": path,
        "HOME": str(workspace),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "TMPDIR": str(tmp),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
