"""The projector as an in-process component of ``cogo up``.

``cogo up`` owns the DuckDB file through this component; HTTP handlers reach it as
``state_of(request).projector`` (SQL, metrics, replay), and so does
``cogo sql`` / ``cogo replay`` through the facade while ``cogo up`` runs.
"""

from __future__ import annotations

from typing import Any

from cogo.projections.projector import Projector


def projector_component(system: Any) -> Projector:
    """The projector of ``system`` (a ``cogo.runtime.system.System``), on its connection and data dir."""
    return Projector(system.nc, system.config, data_dir=system.data_dir)
