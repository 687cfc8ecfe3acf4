"""Metric names a PromQL expression reads, found with Prometheus' own grammar.

Grafana's variables are replaced first ($__rate_interval by a duration, other
$vars by a regex), then ``promql_parser`` (PromQL's parser, from PyPI) builds
the tree, and every vector selector's name (or ``__name__`` matcher) is taken.
"""

from __future__ import annotations

import re
from typing import Any

GRAFANA_DURATIONS = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)
GRAFANA_VARS = re.compile(r"\$\{[A-Za-z0-9_]+(?::[A-Za-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*")
LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<selector>[^,]+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$"
)
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def substitute_grafana(expr: str) -> str:
    return GRAFANA_VARS.sub(".*", GRAFANA_DURATIONS.sub("5m", expr))


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` selects (raises ValueError if it does not parse)."""
    import promql_parser

    tree = promql_parser.parse(substitute_grafana(expr))
    names: set[str] = set()
    _walk(tree, names)
    return names


def _walk(node: Any, names: set[str]) -> None:
    if node is None or isinstance(node, str | int | float):
        return
    if isinstance(node, list):
        for item in node:
            _walk(item, names)
        return
    kind = type(node).__name__
    if kind == "VectorSelector":
        if node.name:
            names.add(node.name)
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                names.add(matcher.value)
        return
    if kind == "MatrixSelector":
        _walk(node.vector_selector, names)
        return
    for attr in ("expr", "lhs", "rhs", "args", "param"):
        if hasattr(node, attr):
            _walk(getattr(node, attr), names)


def variable_query_names(query: str) -> set[str]:
    """Metrics a Grafana ``label_values(<selector>, <label>)`` query reads."""
    match = LABEL_VALUES.match(query)
    if not match:
        raise ValueError(f"not a label_values(<metric>, <label>) query: {query!r}")
    return metric_names(match["selector"])


def exported_name(name: str, families: dict[str, str]) -> str | None:
    """The registered family a queried series name belongs to, or None.

    ``families`` maps each exposition name (counters with ``_total``) to its
    type; a histogram's ``_bucket``, ``_sum`` and ``_count`` belong to it.
    """
    if name in families:
        return name
    for suffix in HISTOGRAM_PARTS:
        base = name.removesuffix(suffix)
        if base != name and families.get(base) in ("histogram", "summary"):
            return base
    return None
