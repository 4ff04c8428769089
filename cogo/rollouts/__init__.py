"""Rollouts: moving a route's traffic from one worker version to the next behind gates.

- ``split``: the per-route traffic split in KV (``RouteSplit``, ``SplitWatch``, gates' shape);
- ``canary``: the dispatcher's side, which sends a task to the baseline or the canary;
- ``gates``: the checks a step must pass (error rate, latency, ... read from DuckDB);
- ``controller``: the rollout controller that walks the steps (10% -> 100%);
- ``http``: ``/api/rollouts``.
"""
