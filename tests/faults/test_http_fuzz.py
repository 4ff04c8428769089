"""Property-based fuzz of the HTTP facade from its own /openapi.json: never a 5xx.

Runs against a real `cogo up` (subprocess, real NATS, real DuckDB) over a socket, with
bodies generated from each operation's JSON schema and from arbitrary JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SUITE_CONFIG
from tests.upsystem import cogo_up_blocking, stop

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def from_schema(schema: dict, defs: dict) -> st.SearchStrategy:
    """Values that mostly satisfy a JSON schema (enough of it for pydantic models)."""
    if "$ref" in schema:
        return st.deferred(lambda: from_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs))
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, defs) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        fixed = {k: from_schema(v, defs) for k, v in props.items() if k in required}
        optional = {k: from_schema(v, defs) for k, v in props.items() if k not in required}
        return st.fixed_dictionaries(fixed, optional=optional)
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), defs), max_size=4)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda v: len(v) <= schema.get("maxLength", 10**6)
            )
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30))
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


segment = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P")), min_size=1, max_size=16)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fuzz")
    config = data_dir / "cogo.toml"
    config.write_text(SUITE_CONFIG)
    proc, info = cogo_up_blocking(data_dir)
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    with httpx.Client(base_url=info["http_url"], headers=headers, timeout=30) as client:
        spec = client.get("/openapi.json").json()
        yield client, spec
    stop(proc)


def _operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, ops in sorted(spec["paths"].items()) for method, op in sorted(ops.items())]


def test_openapi_matches_routes(system):
    client, spec = system
    ops = {(p, m) for p, m, _ in _operations(spec)}
    assert ("/api/tasks", "post") in ops and ("/healthz", "get") in ops
    for path, method, _ in _operations(spec):
        url = path.replace("{", "").replace("}", "")  # a concrete value for each param
        r = client.request(method.upper(), url)
        assert r.status_code not in (404, 405) or "{" in path, (method, path, r.status_code)


def test_fuzz_never_5xx(system):
    client, spec = system
    ops = _operations(spec)
    schemas = spec["components"]["schemas"]
    seen: dict[str, int] = {}

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        path, method, op = data.draw(st.sampled_from(ops))
        url = path
        for param in op.get("parameters", []):
            value = data.draw(segment)
            if param["in"] == "path":
                url = url.replace("{" + param["name"] + "}", value)
        query = {p["name"]: data.draw(segment) for p in op.get("parameters", []) if p["in"] == "query"}
        kwargs: dict = {"params": query}
        body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if body_schema is not None:
            body = data.draw(from_schema(body_schema, schemas) | json_values)
            kwargs["content"] = json.dumps(body)
        r = client.request(method.upper(), url, **kwargs)
        key = f"{method.upper()} {path} -> {r.status_code}"
        seen[key] = seen.get(key, 0) + 1
        assert r.status_code < 500, f"{method.upper()} {url} {kwargs} -> {r.status_code} {r.text[:300]}"

    run()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "http-fuzz.json").write_text(json.dumps(seen, indent=2, sort_keys=True))
