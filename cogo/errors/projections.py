"""The DuckDB projection and the SQL run on it."""

from __future__ import annotations

from cogo.errors.base import CogoError


class ProjectionError(CogoError):
    """Raised when the DuckDB projection cannot be opened, migrated or rebuilt."""

    code = "projection.error"


class ProjectionBusy(ProjectionError):
    """Raised when another process owns the projection file, or a replay is running."""

    code = "projection.busy"


class ReplayRunning(ProjectionBusy):
    """Raised when a replay is asked for while one is running."""

    code = "projection.replay_running"


class SqlError(CogoError):
    """Raised when an ad-hoc SQL query cannot be run."""

    code = "sql.error"


class SqlRejected(SqlError):
    """Raised when a query is not read-only or reaches for files, network or extensions."""

    code = "sql.rejected"


class SqlInvalid(SqlError):
    """Raised when DuckDB cannot parse, bind or execute a query."""

    code = "sql.invalid"


class SqlTimeout(SqlError):
    """Raised when a query runs past its time limit and is interrupted."""

    code = "sql.timeout"
