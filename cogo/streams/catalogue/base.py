"""The base of every event's ``data`` struct."""

from __future__ import annotations

import msgspec


class EventData(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The base of every event's ``data``."""
