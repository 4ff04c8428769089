"""Latency distributions that merge across minutes: fixed log-scale bins, 1% relative error.

A value ``v`` (milliseconds) above ``FLOOR_MS`` falls in bin ``i = ceil(ln(v / FLOOR_MS) /
ln(GAMMA))``, the interval ``(FLOOR_MS * GAMMA**(i-1), FLOOR_MS * GAMMA**i]``; values at or
below ``FLOOR_MS`` (zero, and negative ones from clock skew) fall in bin 0. A bin stands
for ``2 * FLOOR_MS * GAMMA**i / (GAMMA + 1)``, which is within ``RELATIVE_ERROR`` of every
value in it when ``GAMMA = (1 + e) / (1 - e)`` (the DDSketch construction; Masson et al.,
VLDB 2019). Bin 0 stands for 0, an absolute error of at most ``FLOOR_MS`` (1 µs).

Why this and not DuckDB's own: ``quantile_cont`` needs every value, ``approx_quantile``'s
T-Digest state cannot be stored or merged from SQL, and ``histogram()`` keeps one entry
per distinct value. Fixed bins need nothing but ``(bin, count)`` rows: merging minutes,
routes or hours is ``sum(count) GROUP BY bin``, exactly, in any order, so a rollup built
batch by batch equals one built at once (``cogo replay``), and removing old events
subtracts exactly. The bin count is bounded by the value range (ln(1 h / 1 µs) / ln(GAMMA)
~ 1,100 bins from 1 µs to an hour), not by the number of values.

Quantiles follow ``quantile_cont`` (linear interpolation between the closest ranks): the
two ranks are located by cumulative counts and each replaced by its bin's value; both are
within ``RELATIVE_ERROR`` of the true ones and so is any point between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

RELATIVE_ERROR = 0.02
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LN_GAMMA = math.log(GAMMA)
FLOOR_MS = 0.001
# ~ FLOOR_MS * GAMMA**32000: past any real duration; infinities and NaN land here
MAX_BIN = 32_000


def bin_sql(value: str) -> str:
    """The SQL expression of ``value``'s bin (a SMALLINT; NULL stays NULL)."""
    # DuckDB orders NaN above every number: NaN and +inf both land in MAX_BIN
    return (
        f"(CASE WHEN {value} > {FLOOR_MS!r} "
        f"THEN least(ceil(ln({value} / {FLOOR_MS!r}) / {LN_GAMMA!r}), {MAX_BIN}) "
        f"WHEN {value} IS NOT NULL THEN 0 END)::SMALLINT"
    )


def bin_of(value: float) -> int:
    """``bin_sql`` in Python (tests, and callers that bin values themselves)."""
    if math.isnan(value) or value == math.inf:
        return MAX_BIN
    if value <= FLOOR_MS:
        return 0
    return min(math.ceil(math.log(value / FLOOR_MS) / LN_GAMMA), MAX_BIN)


def bin_value(index: int) -> float:
    """The value a bin stands for: within ``RELATIVE_ERROR`` of everything in it."""
    if index <= 0:
        return 0.0
    return 2.0 * FLOOR_MS * GAMMA**index / (GAMMA + 1.0)


def value_sql(index: str) -> str:
    """``bin_value`` as a SQL expression of a bin column."""
    return f"(CASE WHEN {index} <= 0 THEN 0.0 ELSE {2.0 * FLOOR_MS!r} * pow({GAMMA!r}, {index}) / {GAMMA + 1.0!r} END)"


def quantiles_sql(merged: str, groups: Sequence[str], qs: Sequence[float]) -> str:
    """A query for ``quantile_cont`` of each group's histogram, at each of ``qs``.

    ``merged`` is a relation of ``(groups..., bin, n)`` with one row per group and bin; the
    query returns ``(groups..., values)``, ``values`` a list in the order of ``qs``. The two
    ranks around ``(total - 1) * q`` are found by cumulative counts (the first bin whose
    running count passes the rank holds it) and interpolated between their bins' values.
    """
    keys = ", ".join(groups)
    qs_list = "[" + ", ".join(repr(float(q)) for q in qs) + "]"
    return f"""
    WITH cum AS (
        SELECT {keys}, bin, n,
               sum(n) OVER (PARTITION BY {keys} ORDER BY bin ROWS UNBOUNDED PRECEDING) AS upto,
               sum(n) OVER (PARTITION BY {keys}) AS total
        FROM {merged} WHERE n > 0
    ), ranked AS (
        SELECT *, (total - 1) * q AS position, floor((total - 1) * q) AS low_rank,
               least(floor((total - 1) * q) + 1, total - 1) AS high_rank
        FROM cum, (SELECT unnest({qs_list}) AS q)
    ), picks AS (
        SELECT {keys}, q, position,
               min(bin) FILTER (upto > low_rank) AS low, min(bin) FILTER (upto > high_rank) AS high
        FROM ranked GROUP BY {keys}, q, position
    )
    SELECT {keys},
           list({value_sql("low")} + ({value_sql("high")} - {value_sql("low")})
                * (position - floor(position)) ORDER BY q) AS values
    FROM picks GROUP BY {keys}
    """


def quantiles(bins: Iterable[tuple[int, int]], qs: Sequence[float]) -> list[float | None]:
    """``quantiles_sql`` in Python, for a histogram already in memory (tests use it)."""
    merged: dict[int, int] = {}
    for index, count in bins:
        merged[index] = merged.get(index, 0) + count
    ordered = sorted((i, n) for i, n in merged.items() if n > 0)
    total = sum(n for _, n in ordered)
    if total == 0:
        return [None for _ in qs]

    def at_rank(rank: int) -> float:
        seen = 0
        for index, count in ordered:
            seen += count
            if rank < seen:
                return bin_value(index)
        return bin_value(ordered[-1][0])

    out: list[float | None] = []
    for q in qs:
        position = (total - 1) * q
        low = math.floor(position)
        high = min(low + 1, total - 1)
        low_value, high_value = at_rank(low), at_rank(high)
        out.append(low_value + (high_value - low_value) * (position - low))
    return out
