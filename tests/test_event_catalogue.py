"""The event catalogue (cogo.streams.catalogue) as a contract.

1. Every JSON path the SQL views, rollups, gates and task queries read from an event's
   ``data`` exists in the catalogue struct of the event type(s) that query reads, and every
   event type a query names is catalogued: a view that reads a key no producer writes fails.
2. ``make_event`` refuses unknown types, misspelled or missing fields and missing event
   fields, so a producer's mistake fails where the event is built.
3. Every event of a real run (tasks that succeed, retry and fail, a malformed message, a
   workflow with a signal, a map, a gate and a child run) decodes against its struct.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

import cogo
from cogo.agents.echo import EchoActor
from cogo.projections import store
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.workflow_engine import SignalRun, StartRun, WorkflowEngine, send_command
from cogo.streams import catalogue
from cogo.streams.catalogue import (
    CATALOGUE,
    EXECUTE_DONE,
    EXECUTE_FAILED,
    EXECUTE_RETRY,
    WORKFLOW_STARTED,
    ExecuteDone,
    ParentRun,
    UnknownEventType,
    WorkflowStarted,
    data_of,
)
from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID
from cogo.streams.events import Event, make_event
from tests.helpers import EventReader, running, submit
from tests.workflow_support import APPROVAL, catalog_plan, start_run, wait_run

ROOT = Path(cogo.__file__).parent
# raw JSON read from something that is not an event (the DLQ table's message body)
NOT_EVENTS = {"data"}

# `x->>'$.p'`, `x->'$.p'`, `json_each(x, '$.p') AS a`, `json_array_length(x, '$.p')`
_ARROW = re.compile(r"([A-Za-z_][\w.]*)\s*->>?\s*'\$\.([^']*)'")
_EACH = re.compile(r"json_each\(\s*([A-Za-z_][\w.]*)\s*,\s*'\$\.([^']*)'\s*\)\s+AS\s+(\w+)", re.I)
_LENGTH = re.compile(r"json_array_length\(\s*([A-Za-z_][\w.]*)\s*,\s*'\$\.([^']*)'\s*\)", re.I)
_ALIAS = re.compile(r"\b(\w+)\.value\s+AS\s+(\w+)", re.I)
_TYPE_EQ = re.compile(r"\btype\s*(?:=|<>)\s*'([a-z_]+)'")
_TYPE_IN = re.compile(r"\btype\s+(?:NOT\s+)?IN\s*\(([^)]*)\)", re.I)
_TYPE_LIKE = re.compile(r"\btype\s+LIKE\s+'([a-z_%]+)'", re.I)
_TYPE_NAMED = re.compile(r"\btype\s+(?:NOT\s+)?IN\s*\{(?:\w+\.)?_in\((?:tuple\()?(\w+)\)?\)\}")
_TYPE_VAR = re.compile(r"\btype\s+IN\s*\{(\w+)\}")
_CASE_TYPE = re.compile(r"CASE\s+WHEN\s+(?:\w+\.)?type\s*=\s*'([a-z_]+)'")


@dataclass(frozen=True)
class Read:
    """One JSON path a query reads from event data, and the types it can come from."""

    where: str
    path: tuple[str, ...]  # below data; "[]" steps into a list's items
    types: frozenset[str] | None  # None: the query is not filtered by type


def _sql_sources() -> list[tuple[str, str, dict[str, Any]]]:
    """(name, text, module namespace) of every SQL file and every Python module that reads
    raw event JSON."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for path in sorted((ROOT / "projections" / "sql").glob("*.sql")):
        out.append((path.name, path.read_text(), {}))
    for path in sorted(ROOT.rglob("*.py")):
        text = path.read_text()
        if "'$." not in text:
            continue
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        module = __import__(name, fromlist=["_"])
        out.append((str(path.relative_to(ROOT.parent)), text, vars(module)))
    return out


def _statements(text: str) -> list[str]:
    """SQL statements: ``;``-separated in .sql text, each string literal in Python."""
    if '"""' in text or 'f"' in text:
        return re.findall(r'(?s)"""(.*?)"""', text) + re.findall(r'"((?:[^"\\\n]|\\.)*)"', text)
    return text.split(";")


def _types_in(block: str, names: dict[str, Any]) -> set[str]:
    found = set(_TYPE_EQ.findall(block))
    for group in _TYPE_IN.findall(block):
        found |= set(re.findall(r"'([a-z_]+)'", group))
    for pattern in _TYPE_LIKE.findall(block):
        prefix = pattern.rstrip("%")
        found |= {t for t in CATALOGUE if t.startswith(prefix)}
    for var in _TYPE_NAMED.findall(block) + _TYPE_VAR.findall(block):
        value = names.get(var)
        if isinstance(value, str):  # a preformatted "('a', 'b')"
            found |= set(re.findall(r"'([a-z_]+)'", value))
        elif value is not None:
            found |= set(value)
    return found


def reads_of(where: str, text: str, names: dict[str, Any] | None = None) -> list[Read]:
    """Every event-data path ``text`` reads, with the event types it is filtered to: the
    ``CASE WHEN type = ...`` around it, else its SELECT block's type filter, else its
    statement's; ``AssertionError`` on a JSON base this test does not know."""
    names = names or {}
    out: list[Read] = []
    # comments are prose ("query the raw event with raw->>'$.data.some_key'")
    statements = [re.sub(r"--[^\n]*", "", s) for s in _statements(text)]
    # json_each aliases, and the view columns holding their values (a later view reads
    # them), -> the path they stand for
    roots: dict[str, tuple[str, ...]] = {}
    for statement in statements:
        for base, path, alias in _EACH.findall(statement):
            parent = _root(base, roots)
            if parent is not None:
                roots[f"{alias}.value"] = (*parent, *path.split("."), "[]")
        for alias, column in _ALIAS.findall(statement):
            if f"{alias}.value" in roots:
                roots[column] = roots[f"{alias}.value"]
    for statement in statements:
        if "'$." not in statement:
            continue
        blocks = re.split(r"(?i)\bSELECT\b", statement)
        whole = _types_in(statement, names)
        for block in blocks:
            for match in [*_ARROW.finditer(block), *_EACH.finditer(block), *_LENGTH.finditer(block)]:
                base, path = match.group(1), match.group(2)
                root = _root(base, roots)
                if root is None:
                    assert base in NOT_EVENTS, f"{where}: JSON read from unknown base {base!r}"
                    continue
                full = (*root, *path.split("."))
                if full[:1] != ("data",):
                    assert full[0] in Event.__struct_fields__, f"{where}: $.{path} on an event"
                    continue
                head = block[: match.start()]
                at = head.rfind("CASE")
                case = _CASE_TYPE.match(head[at:]) if at >= 0 and "END" not in head[at:] else None
                types = {case.group(1)} if case else _types_in(block, names) or whole
                out.append(Read(where, full[1:], frozenset(types) if types else None))
    return out


def _root(base: str, roots: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    if base.split(".")[-1] == "raw":
        return ()
    if base in roots:
        return roots[base]
    short = base.split(".")[-1]
    return roots.get(short)


def _has(cls: Any, path: tuple[str, ...]) -> bool:
    """Whether ``path`` exists in ``cls`` (a field typed Any/dict ends the check: free-form)."""
    info: Any = msgspec.inspect.type_info(cls)
    for step in path:
        while isinstance(info, msgspec.inspect.UnionType):
            kinds = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(kinds) != 1:
                return True
            info = kinds[0]
        if isinstance(info, msgspec.inspect.AnyType | msgspec.inspect.DictType):
            return True
        if step == "[]":
            if not isinstance(info, msgspec.inspect.ListType):
                return False
            info = info.item_type
            continue
        if not isinstance(info, msgspec.inspect.StructType):
            return False
        field = next((f for f in info.fields if f.encode_name == step), None)
        if field is None:
            return False
        info = field.type
    return True


def problems(reads: list[Read]) -> list[str]:
    """What the reads get wrong: unknown types, paths no struct of their types has."""
    out = []
    for read in reads:
        types = read.types if read.types is not None else frozenset(CATALOGUE)
        unknown = sorted(t for t in types if t not in CATALOGUE)
        if unknown:
            out.append(f"{read.where}: filters on uncatalogued type(s) {unknown}")
            continue
        if not any(_has(CATALOGUE[t], read.path) for t in types):
            out.append(f"{read.where}: reads data.{'.'.join(read.path)}, which no struct of {sorted(types)} has")
    return out


def test_every_path_the_views_read_is_in_the_catalogue() -> None:
    reads = [r for where, text, names in _sql_sources() for r in reads_of(where, text, names)]
    # the forms the views use today are all found (a regex gone blind would pass anything)
    paths = {(r.path, r.types) for r in reads}
    assert (("limit",), frozenset({"execute_failed"})) in paths
    assert (("result", "verdict"), frozenset({"execute_done"})) in paths
    # (workflow runs are folded in Python, cogo.workflows.record: no view reads their events)
    assert any(r.path == ("files", "[]", "symbols", "[]", "kind") for r in reads)
    assert any(r.path == ("model",) and r.types == {"llm_call"} for r in reads)
    assert len(reads) >= 35
    assert problems(reads) == []


def test_the_projected_columns_from_data_are_in_the_catalogue() -> None:
    shape = json.loads(store._EVENT_SHAPE)
    assert set(shape) - {"data", "usage"} <= set(Event.__struct_fields__)
    for key in shape["data"]:
        assert any(_has(cls, (key,)) for cls in CATALOGUE.values()), key


def test_the_contract_check_fails_on_a_key_no_producer_writes() -> None:
    sql = """
    CREATE VIEW v AS SELECT raw->>'$.data.limit' AS a, raw->>'$.data.held_ms' AS b
    FROM bus_events WHERE type = 'execute_throttled';
    CREATE VIEW w AS SELECT f.value->>'$.langauge' FROM bus_events AS e,
        json_each(e.raw, '$.data.files') AS f WHERE e.type = 'code_file_indexed';
    CREATE VIEW x AS SELECT raw->>'$.data.x' FROM bus_events WHERE type = 'execute_donee'
    """
    assert problems(reads_of("test", sql)) == [
        "test: reads data.held_ms, which no struct of ['execute_throttled'] has",
        "test: reads data.files.[].langauge, which no struct of ['code_file_indexed'] has",
        "test: filters on uncatalogued type(s) ['execute_donee']",
    ]
    # a CASE WHEN type = ... narrows the read to that type
    case = (
        "SELECT CASE WHEN type = 'node_started' THEN raw->>'$.data.verdict' END FROM b "
        "WHERE type IN ('gate_passed', 'node_started')"
    )
    assert problems(reads_of("t", case)) == ["t: reads data.verdict, which no struct of ['node_started'] has"]


def test_every_type_has_a_struct_and_every_constant_is_catalogued() -> None:
    names = {v for k, v in vars(catalogue).items() if k.isupper() and isinstance(v, str)}
    assert names == set(CATALOGUE)
    assert all(issubclass(cls, catalogue.EventData) for cls in CATALOGUE.values())


def test_make_event_checks_the_catalogue() -> None:
    timing = {"claimed_at": "2026-01-01T00:00:00.000000Z", "submitted_at": "x"}
    with pytest.raises(UnknownEventType):
        make_event("execute_donee", task_id="t", attempt=1)
    with pytest.raises(TypeError, match="no field"):  # misspelled
        make_event(EXECUTE_DONE, task_id="t", attempt=1, data={**timing, "reslt": 1})
    with pytest.raises(msgspec.ValidationError, match="result"):  # missing
        make_event(EXECUTE_DONE, task_id="t", attempt=1, data=timing)
    with pytest.raises(msgspec.ValidationError):  # wrong type
        make_event(EXECUTE_DONE, task_id="t", attempt=1, data={**timing, "claimed_at": 3, "result": 1})
    with pytest.raises(TypeError, match="need data"):
        make_event(EXECUTE_DONE, task_id="t", attempt=1)
    with pytest.raises(TypeError, match="error_code"):  # an event field docs/design.md §4 requires
        make_event(EXECUTE_FAILED, task_id="t", error="boom")
    with pytest.raises(TypeError, match="ExecuteDone"):  # another type's struct
        make_event(
            EXECUTE_RETRY,
            task_id="t",
            attempt=1,
            backoff_ms=1,
            next_attempt_at="x",
            error_code="c",
            error="e",
            data=ExecuteDone(**timing, result=None),
        )
    done = make_event(EXECUTE_DONE, task_id="t", attempt=1, data=ExecuteDone(**timing, result=None))
    # a struct encodes to the JSON a dict did (a null result is written, not left out)
    wire = msgspec.json.decode(msgspec.json.encode(done))
    assert wire["data"] == {**timing, "result": None}
    assert data_of(msgspec.json.decode(msgspec.json.encode(done), type=Event), ExecuteDone) == (done.data)


def test_old_events_read_through_their_struct() -> None:
    # a workflow_started as an older producer wrote it: no run_id, a parent without nodeId,
    # a key no struct has
    old = Event(
        event_id="e",
        type=WORKFLOW_STARTED,
        at="x",
        correlation_id="r",
        data={"plan": {}, "parent": {"runId": "p"}, "gone": 1},
    )
    with pytest.raises(msgspec.ValidationError, match="missing required field"):
        data_of(old, WorkflowStarted)
    started = data_of(old, WorkflowStarted, lenient=True)  # a fold over the whole log
    assert started.run_id == "" and started.workflow_id is None
    assert started.parent == ParentRun(runId="p", nodeId="")
    wrong = Event(event_id="e", type=WORKFLOW_STARTED, at="x", data={"plan": 3})
    with pytest.raises(msgspec.ValidationError, match="plan"):  # a wrong type still fails
        data_of(wrong, WorkflowStarted, lenient=True)


@pytest.mark.usefixtures("workflows_dir")
async def test_every_event_of_a_real_run_decodes_against_its_struct(nats_server, js, config):
    async with running(nats_server.url, config, ExecutorDispatcher, EchoActor, WorkflowEngine):
        ok = await submit(js, payload={"result": {"x": 1}})
        retried = await submit(js, payload={"fail_times": 1, "result": "second"})
        failed = await submit(js, payload={"fail_always": True})
        unknown = await submit(js, route="nobody.here.0")
        await js.publish(EXECUTE_SUBJECT, b"{not json", headers={MSG_ID: "malformed-1"})
        signalled = await start_run(js, config, APPROVAL)
        await send_command(
            js, SignalRun(run_id=signalled, name="approve", signal_id="s1", data={"approved": True, "by": "ada"})
        )
        parent = catalog_plan(config, "parent")  # child runs (workflow and map nodes)
        await send_command(js, StartRun(run_id="parent-1", plan=parent.to_json()))
        reader = EventReader(js)
        await reader.wait_terminal([ok, retried, failed, unknown])
        assert (await wait_run(js, signalled, timeout=60)).status == "succeeded"
        assert (await wait_run(js, "parent-1", timeout=60)).status == "succeeded"
    await reader.poll()
    seen: dict[str, int] = {}
    for event in reader.events:
        cls = CATALOGUE[event.type]  # KeyError: an uncatalogued type reached the stream
        data_of(event, cls)  # ValidationError: its data does not fit its struct
        for name in catalogue.REQUIRED.get(event.type, ()):
            assert getattr(event, name) is not None, (event.type, name)
        seen[event.type] = seen.get(event.type, 0) + 1
    expected = {
        "execute_enqueued",
        "execute_done",
        "execute_retry",
        "execute_failed",
        "workflow_started",
        "node_started",
        "node_succeeded",
        "node_skipped",
        "workflow_signaled",
        "gate_passed",
        "map_item_started",
        "map_item_succeeded",
        "workflow_succeeded",
    }
    assert expected <= set(seen), sorted(seen)
    assert any(e.error_code == "route.unknown" for e in reader.events)
