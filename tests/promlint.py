"""A strict check of Prometheus text exposition, with the naming rules ``promtool check
metrics`` applies (client_golang's ``promlint``), for machines without promtool.

The samples go through ``prometheus_client``'s own text parser (a malformed line raises);
the families are read from their ``# HELP`` / ``# TYPE`` lines, as promtool's parser does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
CAMEL = re.compile(r"[a-z][A-Z]")
BASE_UNITS = {"amperes", "bytes", "celsius", "grams", "joules", "kelvin", "meters", "metres", "seconds", "volts"}
NON_BASE_UNITS = {
    "minutes": "seconds",
    "hours": "seconds",
    "days": "seconds",
    "weeks": "seconds",
    "kelvins": "kelvin",
    "fahrenheit": "celsius",
    "rankine": "celsius",
    "inches": "meters",
    "yards": "meters",
    "miles": "meters",
    "bits": "bytes",
    "calories": "joules",
    "pounds": "grams",
    "ounces": "grams",
}
PREFIXES = (
    "pico",
    "nano",
    "micro",
    "milli",
    "centi",
    "deci",
    "deca",
    "hecto",
    "kilo",
    "kibi",
    "mega",
    "mibi",
    "giga",
    "gibi",
    "tera",
    "tebi",
    "peta",
    "pebi",
)
ABBREVIATIONS = ("s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d")
TYPES = ("counter", "gauge", "summary", "histogram", "gaugehistogram", "stateset", "info", "untyped", "unknown")


@dataclass
class Family:
    name: str
    kind: str = ""
    help: str = ""
    labels: set[str] = field(default_factory=set)


def _unit(name: str) -> tuple[str, str] | None:
    for part in name.split("_"):
        if part in BASE_UNITS:
            return part, part
        if part in NON_BASE_UNITS:
            return part, NON_BASE_UNITS[part]
        for prefix in PREFIXES:
            rest = part[len(prefix) :]
            if part.startswith(prefix) and (rest in BASE_UNITS or rest in NON_BASE_UNITS):
                return part, NON_BASE_UNITS.get(rest, rest)
    return None


def lint(text: str) -> list[str]:
    """Every problem promtool would report for ``text``, plus format errors; [] if clean."""
    problems: list[str] = []
    families: dict[str, Family] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _, what, name, *rest = line.split(" ", 3)
            family = families.setdefault(name, Family(name))
            if what == "HELP":
                family.help = rest[0] if rest else ""
            else:
                family.kind = rest[0] if rest else ""
                if family.kind not in TYPES:
                    problems.append(f"{name}: unknown type {family.kind!r}")
    # raises ValueError on any malformed sample line
    for parsed in text_string_to_metric_families(text):
        for sample in parsed.samples:
            owner = next((f for n, f in families.items() if sample.name in _series_names(n, f.kind)), None)
            if owner is None:
                problems.append(f"{sample.name}: sample without a # TYPE line")
                continue
            owner.labels |= set(sample.labels)
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for parsed in text_string_to_metric_families(text):
        for sample in parsed.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in seen:
                problems.append(f"{sample.name}{dict(key[1])}: duplicate series")
            seen.add(key)
    for name, family in families.items():
        problems += [f"{name}: {p}" for p in _name_problems(family)]
    return problems


def _series_names(name: str, kind: str) -> set[str]:
    if kind in ("summary", "histogram"):
        return {name, f"{name}_sum", f"{name}_count", f"{name}_bucket", f"{name}_created"}
    return {name, f"{name}_created"}


def _name_problems(family: Family) -> list[str]:
    name, kind, lower = family.name, family.kind, family.name.lower()
    problems = []
    if not NAME.match(name):
        problems.append("invalid metric name")
    if not family.help:
        problems.append("no help text")
    unit = _unit(name)
    if unit and unit[0] != unit[1]:
        problems.append(f'use base unit "{unit[1]}" instead of "{unit[0]}"')
    if kind == "counter" and not name.endswith("_total"):
        problems.append('counter metrics should have "_total" suffix')
    if kind != "counter" and name.endswith("_total"):
        problems.append('non-counter metrics should not have "_total" suffix')
    if kind != "histogram" and name.endswith("_bucket"):
        problems.append('non-histogram metrics should not have "_bucket" suffix')
    if kind not in ("histogram", "summary") and name.endswith(("_count", "_sum")):
        problems.append('non-histogram and non-summary metrics should not have "_count"/"_sum"')
    if kind != "histogram" and "le" in family.labels:
        problems.append('non-histogram metrics should not have "le" label')
    if kind != "summary" and "quantile" in family.labels:
        problems.append('non-summary metrics should not have "quantile" label')
    if kind not in ("gauge", "untyped", "") and name.endswith("_timestamp_seconds"):
        problems.append('non-gauge metrics should not have "_timestamp_seconds" suffix')
    for typename in ("counter", "gauge", "summary", "histogram"):
        if f"_{typename}_" in lower or lower.endswith(f"_{typename}"):
            problems.append(f"metric name should not include type '{typename}'")
    if ":" in name:
        problems.append("metric names should not contain ':'")
    if CAMEL.search(name) or any(CAMEL.search(label) for label in family.labels):
        problems.append("metric and label names should be written in 'snake_case'")
    for abbreviation in ABBREVIATIONS:
        if f"_{abbreviation}_" in lower or lower.endswith(f"_{abbreviation}"):
            problems.append("metric names should not contain abbreviated units")
    return problems
