"""The built-in code agents: edits, builds and the artifact store."""

from __future__ import annotations

from cogo.errors.base import CogoError


class EditError(CogoError):
    """Raised when a code edit cannot be accepted or applied; retrying does not change it."""

    code = "edit.error"


class InvalidEdit(EditError):
    """Raised when an edit has an unknown ``op`` or missing / mistyped fields."""

    code = "edit.invalid"


class EditPathInvalid(EditError):
    """Raised when an edit path is absolute, holds ``..`` or resolves outside the workspace."""

    code = "edit.path_invalid"


class EditConflict(EditError):
    """Raised when an edit does not apply to the file as it is (search text or hunk missing)."""

    code = "edit.conflict"


class BuildError(CogoError):
    """Raised when a build/test run cannot start for reasons outside the change."""

    code = "build.error"


class RepoMissing(BuildError):
    """Raised when the repository to generate for or build is not a directory."""

    code = "build.repo_missing"


class ArtifactError(CogoError):
    """Raised when an artifact cannot be named, stored or found."""

    code = "artifact.error"


class ArtifactKeyInvalid(ArtifactError):
    """Raised when an artifact key is empty, absolute or has ``.`` / ``..`` segments."""

    code = "artifact.key_invalid"


class ArtifactNotFound(ArtifactError):
    """Raised when the ``artifacts`` bucket holds no object under the key."""

    code = "artifact.not_found"
