"""Configuration: the built-in ``defaults.toml`` merged with a user file.

Route policies here are only the *seed*: at runtime the dispatcher reads them from the
JetStream KV bucket ``policies`` (see ``cogo.streams.policies``), so they change without
a restart.
"""

from __future__ import annotations

import math
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, overload

import msgspec

from cogo.errors import ConfigError

DEFAULT_DATA_DIR = ".cogo"


def exponential_delay(initial: float, failures: int, *, cap: float, multiplier: float = 2.0) -> float:
    """``initial * multiplier**(failures - 1)``, at most ``cap``: the one backoff formula
    (task attempts, Retry nodes, NAKs of a failed handler, restarts, LLM retries)."""
    return min(initial * multiplier ** max(0, failures - 1), cap)


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exponential backoff between attempts: ``initial_ms * multiplier**n``, capped."""

    initial_ms: int = 500
    multiplier: float = 2.0
    max_ms: int = 30000

    def delay_ms(self, failed_attempts: int) -> int:
        """Delay before the attempt that follows ``failed_attempts`` failures (>= 1)."""
        return int(exponential_delay(self.initial_ms, failed_attempts, cap=self.max_ms, multiplier=self.multiplier))


class Ceilings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The most an assignment on a route may ask for."""

    allowed_models: list[str] = msgspec.field(default_factory=list)
    max_tokens: int = 200000
    max_cost_usd: float = 10.0
    max_attempts: int = 10
    max_timeout_ms: int = 3600000
    max_ttl_ms: int = 86400000


# the most a flow limit may say: past these a value is a typo, not a limit (docs/design.md §14)
MAX_FLOW_CONCURRENCY = 100_000
MAX_FLOW_RATE_S = 100_000.0
MAX_FLOW_BURST = 100_000


class FlowPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Flow control of one route, held across every dispatcher (``cogo.runtime.flow.admission``).

    ``None`` is "no limit". At most ``concurrency`` attempts of the route run at once, at most
    ``concurrency_per_key`` of one ``__assignment.key``, and a key starts at most
    ``rate_per_key_s`` attempts per second (a token bucket of ``burst``, default
    ``ceil(rate_per_key_s)``). Tasks without a key share one key, ``""``.
    """

    concurrency: int | None = None
    concurrency_per_key: int | None = None
    rate_per_key_s: float | None = None
    burst: int | None = None

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (the route's tasks then pass through admission)."""
        return self.concurrency is not None or self.concurrency_per_key is not None or self.rate_per_key_s is not None

    @property
    def bucket(self) -> int:
        """The token bucket's size: ``burst``, else ``ceil(rate_per_key_s)`` (at least 1)."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate_per_key_s or 1.0))


def flow_problems(flow: FlowPolicy) -> list[str]:
    """What is wrong with a flow policy, one line per field (empty: nothing)."""
    problems = []
    for name, value, ceiling in (
        ("concurrency", flow.concurrency, MAX_FLOW_CONCURRENCY),
        ("concurrency_per_key", flow.concurrency_per_key, MAX_FLOW_CONCURRENCY),
        ("burst", flow.burst, MAX_FLOW_BURST),
    ):
        if value is not None and not 1 <= value <= ceiling:
            problems.append(f"flow.{name}={value} must be between 1 and {ceiling:,} (leave it out for no limit)")
    rate = flow.rate_per_key_s
    if rate is not None and not (math.isfinite(rate) and 0 < rate <= MAX_FLOW_RATE_S):
        problems.append(
            f"flow.rate_per_key_s={rate} must be above 0 and at most {MAX_FLOW_RATE_S:,.0f} "
            "(starts per second per key; leave it out for no limit)"
        )
    if flow.burst is not None and rate is None:
        problems.append("flow.burst needs flow.rate_per_key_s (the bucket of what rate?)")
    return problems


class RoutePolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Defaults for absent ``__assignment`` keys, the ceilings and the flow limits of one route."""

    model: str = "gpt-4o-mini"
    max_tokens: int = 4000
    max_cost_usd: float = 0.5
    timeout_ms: int = 30000
    ttl_ms: int = 600000
    max_attempts: int = 3
    backoff: Backoff = Backoff()
    ceilings: Ceilings = Ceilings()
    flow: FlowPolicy = FlowPolicy()


class BusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # a dead worker's attempts come back after this; live ones heartbeat every third of it
    ack_wait_s: float = 2.0
    max_deliver: int = 5
    duplicate_window_s: float = 1200.0
    replicas: int = 1
    max_ack_pending: int = 20_000
    # leases (which orchestrator drives which runs, which dispatcher admits which route):
    # a dead holder's share moves after this; a live one renews every third of it
    lease_ttl_s: float = 10.0
    # RESULTS keeps an unread worker report at most this long (a backstop: the dispatcher
    # purges what it has handled every few seconds); it must outlast any dispatcher outage
    results_max_age_s: float = 7 * 86400.0


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_age_s: float = 2592000.0
    max_bytes: int = 10 * 1024**3


class ActorsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    concurrency: int = 64
    batch: int = 64
    # the dispatcher's handlers per route: each only waits for stream acks (no user code),
    # and with `sync_interval: always` that wait is the fsync queue, so more in flight keeps
    # the disk busy (a --concurrency on `cogo run dispatcher` still wins)
    dispatcher_concurrency: int = 256
    # an attempt still running this long after its claim gets an `execute_started` event
    # (negative: never)
    started_event_after_ms: int = 500
    # the largest result (encoded) a worker may report; bigger output belongs in artifacts
    max_result_bytes: int = 512 * 1024


class DuckdbConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits of the DuckDB instance behind the projections.

    Ingest and ad-hoc SQL share one instance per file (DuckDB opens a file once per process),
    so these bound both together; DuckDB's own default is 80% of RAM and every core.
    """

    memory_limit: str = "2GB"
    # 0: DuckDB's default (one thread per core)
    threads: int = 2
    # what a query may spill to <data-dir>/cogo.duckdb.tmp once it is past memory_limit
    max_temp_directory_size: str = "4GB"


class SqlConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Ad-hoc SQL (``cogo sql``, ``POST /api/sql``): the most an answer may hold."""

    max_result_bytes: int = 16 * 1024 * 1024


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    default: dict[str, Any] = msgspec.field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    # who may lift ceilings with __assignment.bypass (cogo.rollouts.canary.BypassGrant):
    # authenticated submitters by name ("http" is the HTTP API token's holder), and the
    # canary cohort of a route under rollout
    bypass_principals: list[str] = msgspec.field(default_factory=list)
    bypass_for_canary: bool = True


class AppsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which apps ``cogo up`` loads besides Cogo's own and those named with ``--app``."""

    load: list[str] = msgspec.field(default_factory=list)  # "pkg.module:app" references
    entry_points: bool = True  # also every installed app (entry-point group `cogo.apps`)


class ModelPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """USD per 1,000 prompt (``input``) and completion (``output``) tokens of one model."""

    input: float = 0.0
    output: float = 0.0

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1000.0


class LlmConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``ctx.llm``: the OpenAI-compatible endpoint and how calls are metered and retried."""

    # e.g. "https://api.openai.com/v1"; COGO_LLM_BASE_URL overrides it; the key is only ever
    # read from COGO_LLM_API_KEY (never from a file of the repository)
    base_url: str = ""
    # retries inside one attempt (429, 5xx, connection refused), while its deadline allows
    max_retries: int = 3
    retry_initial_ms: int = 250
    retry_max_ms: int = 4000
    # below this many completion tokens left in the budget a call is not made at all
    min_completion_tokens: int = 16
    # the prompt estimate: characters per token (OpenAI's rule of thumb for English)
    chars_per_token: float = 4.0
    # no honest tokenizer averages more characters per token than this: what came back,
    # divided by it, is the least a reply is charged, whatever its endpoint reports
    max_chars_per_token: float = 8.0


class RuntimeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Durable steps and streamed output (``ctx.step``, ``ctx.emit``)."""

    # a step result larger than this (JSON) goes to the object store; the journal keeps a
    # reference
    step_inline_max_bytes: int = 64 * 1024
    # the largest chunk ctx.emit takes (JSON-encoded)
    max_chunk_bytes: int = 256 * 1024
    # durable agents: how long a handler waits in its process for a call's result, a timer
    # or a signal before it suspends (gives back its worker); 0 suspends at once
    suspend_after_ms: int = 200
    # ctx.call nests at most this deep (a root task's children are at depth 1)
    max_call_depth: int = 8
    # a wake-up that finds no suspended run (the task still runs, or has ended) is noted in
    # the task's record; a note no run suspends into within this time is dropped
    arrival_ttl_s: float = 7 * 86400.0


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration of one Cogo deployment."""

    bus: BusConfig = BusConfig()
    events: LimitsConfig = LimitsConfig()
    dlq: LimitsConfig = LimitsConfig(max_bytes=1024**3)
    # tasks' streamed output (ctx.emit): a bounded buffer, oldest dropped first
    outputs: LimitsConfig = LimitsConfig(max_age_s=7 * 86400.0, max_bytes=1024**3)
    llm: LlmConfig = LlmConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    actors: ActorsConfig = ActorsConfig()
    duckdb: DuckdbConfig = DuckdbConfig()
    sql: SqlConfig = SqlConfig()
    policy: PolicyConfig = PolicyConfig()
    apps: AppsConfig = AppsConfig()
    # model -> price; workers turn reported tokens into cost with it (budget max_cost_usd)
    pricing: dict[str, ModelPrice] = msgspec.field(default_factory=dict)
    # a project's cogo.toml: its data dir, relative to that file (see resolve_data_dir)
    data_dir: str = DEFAULT_DATA_DIR

    def route_policy(self, route: str, declared: dict[str, Any] | None = None) -> RoutePolicy:
        """The configured policy of ``route``: ``[policy.default]``, then what the agent
        declared (``policy=``), then the route's own table in the configuration."""
        merged = deep_merge(deep_merge(self.policy.default, declared or {}), self.policy.routes.get(route, {}))
        try:
            policy = msgspec.convert(merged, RoutePolicy)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"policy for {route!r}: {exc}", detail=str(exc)) from exc
        check_policy(policy, route)
        return policy


def check_policy(policy: RoutePolicy, route: str) -> RoutePolicy:
    """``policy`` if its defaults fit its own ceilings; ConfigError naming the field otherwise.

    A default above a ceiling would make every task that relies on it a violation, so such a
    policy is refused when it is configured or changed, not discovered task by task.
    """
    c = policy.ceilings
    problems = []
    if c.allowed_models and policy.model not in c.allowed_models:
        problems.append(f"model={policy.model!r} is not in ceilings.allowed_models {c.allowed_models}")
    for name, value, ceiling in (
        ("max_tokens", policy.max_tokens, c.max_tokens),
        ("max_cost_usd", policy.max_cost_usd, c.max_cost_usd),
        ("max_attempts", policy.max_attempts, c.max_attempts),
        ("timeout_ms", policy.timeout_ms, c.max_timeout_ms),
        ("ttl_ms", policy.ttl_ms, c.max_ttl_ms),
    ):
        if value > ceiling:
            problems.append(f"{name}={value} is above its ceiling {ceiling}")
    for name, value in (
        ("max_tokens", policy.max_tokens),
        ("timeout_ms", policy.timeout_ms),
        ("ttl_ms", policy.ttl_ms),
        ("max_attempts", policy.max_attempts),
    ):
        if value <= 0:
            problems.append(f"{name}={value} must be > 0")
    if policy.max_cost_usd < 0:
        problems.append(f"max_cost_usd={policy.max_cost_usd} must be >= 0")
    b = policy.backoff
    if b.initial_ms < 0 or b.max_ms < 0 or b.multiplier < 1.0:
        problems.append("backoff needs initial_ms >= 0, max_ms >= 0 and multiplier >= 1.0")
    hint = " (change the default and the ceiling together)" if problems else ""
    problems.extend(flow_problems(policy.flow))
    if problems:
        raise ConfigError(f"policy of {route!r}: " + "; ".join(problems) + hint, detail=problems)
    return policy


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid over ``base``, table by table (nested dicts merge, the rest replaces)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: Path | None = None, data_dir: Path | None = None) -> Config:
    """Load ``defaults.toml`` and merge the user's file over it: ``path``, else
    ``<data_dir>/cogo.toml``, else the project's ``cogo.toml`` (``find_project_file``)."""
    raw = tomllib.loads(resources.files("cogo").joinpath("defaults.toml").read_text())
    if path is None and data_dir is not None and (Path(data_dir) / CONFIG_FILE).exists():
        path = Path(data_dir) / CONFIG_FILE
    if path is None:
        path = find_project_file()
    if path is not None:
        try:
            raw = deep_merge(raw, tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    for route in config.policy.routes:
        config.route_policy(route)  # fail early on a bad policy table
    return config


# -- where a project's files are -------------------------------------------------------
# Every command and ``cogo.Client()`` find the data dir and the configuration this one way,
# so a project of one's own needs no ``--data-dir`` anywhere.

CONFIG_FILE = "cogo.toml"


def find_project_file(start: Path | None = None) -> Path | None:
    """The nearest ``cogo.toml`` in ``start`` (default: the working directory) or above it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_data_dir(given: str | Path | None = None, *, start: Path | None = None) -> Path:
    """The data dir: ``given`` (``--data-dir``, ``Client(data_dir=)``), else
    ``COGO_DATA_DIR``, else the ``data_dir`` of the project's ``cogo.toml`` (relative to that
    file, default ``.cogo`` beside it), else ``./.cogo``."""
    if given:
        return Path(given)
    from_env = env(DATA_DIR_ENV)
    if from_env:
        return Path(from_env)
    project = find_project_file(start)
    if project is None:
        return Path(DEFAULT_DATA_DIR)
    try:
        declared = tomllib.loads(project.read_text()).get("data_dir", DEFAULT_DATA_DIR)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {project}: {exc}") from exc
    if not isinstance(declared, str) or not declared:
        raise ConfigError(f"{project}: data_dir must be a non-empty string, not {declared!r}")
    return project.parent / declared


# -- the environment -------------------------------------------------------------------
# Every COGO_* variable is read here and nowhere else (a test checks), and each is listed
# in defaults.toml's header. Read at call time: a test or a parent process may set them.

DATA_DIR_ENV = "COGO_DATA_DIR"
NATS_URL_ENV = "COGO_NATS_URL"
HTTP_URL_ENV = "COGO_HTTP_URL"
NATS_USER_ENV = "COGO_NATS_USER"
NATS_PASSWORD_ENV = "COGO_NATS_PASSWORD"  # + _<USER>: a user's password for `cogo up --auth`
NATS_CA_ENV = "COGO_NATS_CA"  # the CA a TLS cluster's certificates are signed by
API_TOKEN_ENV = "COGO_API_TOKEN"
SEAL_KEY_ENV = "COGO_SEAL_KEY"  # the dispatcher's key under --auth (cogo.streams.seal)
OUTPUT_KEY_ENV = "COGO_OUTPUT_KEY"  # what output readers verify MACs with
CORS_ORIGINS_ENV = "COGO_CORS_ORIGINS"
LLM_BASE_URL_ENV = "COGO_LLM_BASE_URL"
LLM_API_KEY_ENV = "COGO_LLM_API_KEY"
WEBHOOK_SECRET_ENV = "COGO_WEBHOOK_SECRET"
WEBHOOK_ALLOWED_HOSTS_ENV = "COGO_WEBHOOK_ALLOWED_HOSTS"
WORKFLOWS_DIR_ENV = "COGO_WORKFLOWS_DIR"
PROJECTOR_BATCH_ENV = "COGO_PROJECTOR_BATCH"
PROJECTOR_CONSUMER_ENV = "COGO_PROJECTOR_CONSUMER"
ECHO_FAIL_RATE_ENV = "COGO_ECHO_FAIL_RATE"
ECHO_FAIL_AFTER_ENV = "COGO_ECHO_FAIL_AFTER"
ECHO_ALLOW_EXIT_ENV = "COGO_ECHO_ALLOW_EXIT"


@overload
def env(name: str, default: str, *, keep_empty: bool = False) -> str: ...
@overload
def env(name: str, default: None = None, *, keep_empty: bool = False) -> str | None: ...
def env(name: str, default: str | None = None, *, keep_empty: bool = False) -> str | None:
    """The value of ``COGO_<...>`` variable ``name`` (an ``*_ENV`` constant); empty counts as
    unset unless ``keep_empty`` (``COGO_WEBHOOK_ALLOWED_HOSTS=""``: no host at all)."""
    value = os.environ.get(name)
    if value is None or (value == "" and not keep_empty):
        return default
    return value


def env_list(name: str, sep: str = ",") -> list[str]:
    """A list variable (``COGO_CORS_ORIGINS``: commas; ``COGO_WORKFLOWS_DIR``: os.pathsep)."""
    return [item.strip() for item in (env(name) or "").split(sep) if item.strip()]


def nats_password_env(user: str) -> str:
    """``COGO_NATS_PASSWORD_<USER>``: the variable that sets ``user``'s password."""
    return f"{NATS_PASSWORD_ENV}_{user.upper().replace('-', '_')}"
