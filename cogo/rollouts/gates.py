"""Rollout gates: candidate vs baseline figures from DuckDB, and the verdicts on them.

Figures are per cohort (``canary`` / ``baseline``) over one stage's samples: tasks of the
route whose first attempt was enqueued inside the stage's window (or, for the synthetic
Dev E2E and smoke stages, tasks of that stage's correlation id) and that finished.

A task is **accepted** when it succeeded and nothing judged it bad: its result carries no
``verdict`` other than ``pass`` (build/test reports one) and no workflow gate of its run
failed. **Decision quality** is accepted / finished.

Gates compare proportions with a sample-size-aware tolerance: one-sided 95% Wilson score
bounds. The candidate regresses on failures only when the lower bound of its failure rate
is above the upper bound of the baseline's; on decision quality only when the upper bound
of its quality is below the lower bound of the baseline's. With few samples the bounds
are wide (a handful of tasks cannot prove a regression); with hundreds they are tight.
A baseline without samples counts as perfect (zero failures, all accepted).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

import duckdb

from cogo.rollouts.split import Gate

Z_ONE_SIDED_95 = 1.645
EPSILON = 1e-9  # float noise at the bounds of 0% and 100%
TERMINAL = ("execute_done", "execute_failed")

# One row per cohort: finished tasks, failures, accepted, end-to-end latency percentiles.
_FIGURES = """
WITH ev AS (
    SELECT task_id, type, cohort, version, attempt, correlation_id, submitted_at, "at", seq,
           CASE WHEN type = 'execute_done' THEN raw->>'$.data.result.verdict' END AS verdict
    FROM bus_events
    WHERE route = $route
      AND type IN ('execute_enqueued', 'execute_done', 'execute_failed')
      AND "at" >= $since AND ($until IS NULL OR "at" < $until)
      AND ($correlation IS NULL OR correlation_id = $correlation)
), tasks AS (
    SELECT task_id,
           max(cohort)                                                   AS cohort,
           max(correlation_id)                                           AS correlation_id,
           bool_or(type = 'execute_enqueued' AND attempt = 1)            AS enqueued,
           bool_or(type = 'execute_done')                                AS done,
           bool_or(type = 'execute_failed')                              AS failed,
           arg_max(verdict, seq) FILTER (type = 'execute_done')          AS verdict,
           date_diff('microsecond', min(submitted_at),
                     max("at") FILTER (type IN ('execute_done', 'execute_failed'))) / 1000.0
                                                                         AS latency_ms
    FROM ev GROUP BY task_id
), rejected AS (
    SELECT DISTINCT correlation_id FROM bus_events
    WHERE type = 'gate_failed' AND correlation_id IS NOT NULL
)
SELECT coalesce(cohort, 'baseline')                                      AS cohort,
       count(*)                                                          AS finished,
       count(*) FILTER (NOT done)                                        AS failures,
       count(*) FILTER (done AND coalesce(verdict, 'pass') = 'pass'
                        AND r.correlation_id IS NULL)                    AS accepted,
       quantile_cont(latency_ms, 0.5)                                    AS p50_ms,
       quantile_cont(latency_ms, 0.9)                                    AS p90_ms
FROM tasks t LEFT JOIN rejected r ON r.correlation_id = t.correlation_id
WHERE enqueued AND (done OR failed)
GROUP BY ALL
"""


@dataclass
class Figures:
    """One cohort's figures over a stage's samples."""

    finished: int = 0
    failures: int = 0
    accepted: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.finished if self.finished else None

    @property
    def quality(self) -> float | None:
        return self.accepted / self.finished if self.finished else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "failure_rate": _round(self.failure_rate),
            "decision_quality": _round(self.quality),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Figures:
        raw = raw or {}
        return cls(**{k: raw[k] for k in ("finished", "failures", "accepted", "p50_ms", "p90_ms") if k in raw})


def cohort_figures(
    cur: duckdb.DuckDBPyConnection,
    *,
    route: str,
    since: dt.datetime,
    until: dt.datetime | None = None,
    correlation_id: str | None = None,
) -> dict[str, Figures]:
    """``{"canary": Figures, "baseline": Figures}`` over the window (naive UTC datetimes)."""
    rows = cur.execute(
        _FIGURES,
        {"route": route, "since": since, "until": until, "correlation": correlation_id},
    ).fetchall()
    out = {"canary": Figures(), "baseline": Figures()}
    for cohort, finished, failures, accepted, p50, p90 in rows:
        out[cohort] = Figures(finished, failures, accepted, _round(p50), _round(p90))
    return out


def wilson(successes: int, n: int, z: float = Z_ONE_SIDED_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion, ``(low, high)``; ``(0, 1)`` with no data."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(
    candidate: Figures,
    baseline: Figures,
    *,
    min_samples: int,
    slo_p90_ms: float | None,
) -> list[Gate]:
    """The gates of one stage: samples, failure rate, p90 latency, decision quality."""
    gates = [
        Gate(
            name="samples",
            passed=candidate.finished >= min_samples,
            detail=f"{candidate.finished} finished candidate task(s), {min_samples} required",
            candidate=candidate.finished,
            limit=min_samples,
        )
    ]
    gates.append(failure_gate(candidate, baseline))
    if slo_p90_ms is None:
        gates.append(Gate(name="latency_p90", passed=True, detail="no SLO set", candidate=candidate.p90_ms))
    else:
        within = candidate.p90_ms is not None and candidate.p90_ms <= slo_p90_ms
        gates.append(
            Gate(
                name="latency_p90",
                passed=within,
                detail=f"candidate p90 {_fmt_ms(candidate.p90_ms)} vs SLO {slo_p90_ms:g} ms",
                candidate=candidate.p90_ms,
                baseline=baseline.p90_ms,
                limit=slo_p90_ms,
            )
        )
    cand_high = wilson(candidate.accepted, candidate.finished)[1]
    base_low = wilson(baseline.accepted, baseline.finished)[0] if baseline.finished else 1.0
    if not candidate.finished:
        cand_high = 1.0 if min_samples == 0 else 0.0  # a skipped stage / no evidence at all
    gates.append(
        Gate(
            name="decision_quality",
            passed=cand_high + EPSILON >= base_low,
            detail=(
                f"candidate {_pct(candidate.quality)} (upper bound {_pct(cand_high)}) vs "
                f"baseline {_pct(baseline.quality)} (lower bound {_pct(base_low)})"
            ),
            candidate=_round(candidate.quality),
            baseline=_round(baseline.quality),
            limit=_round(base_low),
        )
    )
    return gates


def failure_gate(candidate: Figures, baseline: Figures) -> Gate:
    """Candidate failure rate not above the baseline's, beyond sampling noise."""
    cand_low = wilson(candidate.failures, candidate.finished)[0]
    base_high = wilson(baseline.failures, baseline.finished)[1] if baseline.finished else 0.0
    return Gate(
        name="failure_rate",
        passed=cand_low <= base_high + EPSILON,
        detail=(
            f"candidate {_pct(candidate.failure_rate)} (lower bound {_pct(cand_low)}) vs "
            f"baseline {_pct(baseline.failure_rate)} (upper bound {_pct(base_high)})"
        ),
        candidate=_round(candidate.failure_rate),
        baseline=_round(baseline.failure_rate),
        limit=_round(base_high),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _fmt_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"
