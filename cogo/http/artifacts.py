"""``GET /api/artifacts/{taskId}/{path}``: a task's artifacts, served from the object store."""

from __future__ import annotations

import mimetypes

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cogo.errors import ArtifactKeyInvalid, ArtifactNotFound
from cogo.http.endpoint import Success, endpoint
from cogo.http.state import state_of
from cogo.streams.artifacts import ArtifactStore, artifact_key

# What artifact_key accepts, as a pattern for the document: segments without '/', '\' or
# NUL that are not '.' or '..' (the rule itself is artifact_key's, run by ArtifactPath).
_SEGMENT = r"(?:[^/\\\x00.]|\.[^/\\\x00.]|\.\.[^/\\\x00])[^/\\\x00]*"


class ArtifactPath(pydantic.BaseModel):
    """``/api/artifacts/{taskId}/{path}``: a task id and a relative path inside its folder."""

    taskId: str = pydantic.Field(  # noqa: N815 - the path parameter's name
        json_schema_extra={"pattern": f"^{_SEGMENT}$", "maxLength": 200}
    )
    path: str = pydantic.Field(json_schema_extra={"pattern": f"^{_SEGMENT}(?:/{_SEGMENT})*$", "maxLength": 800})

    @pydantic.model_validator(mode="after")
    def _safe(self) -> ArtifactPath:
        artifact_key(self.taskId, self.path)  # ArtifactKeyInvalid (400) propagates as it is
        return self


# types a browser should render as text; everything unknown downloads as bytes
_TEXT_TYPES = {".json": "application/json", ".xml": "application/xml", ".log": "text/plain"}


def content_type(path: str) -> str:
    """The media type of an artifact, by its extension."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    guessed = _TEXT_TYPES.get(suffix) or mimetypes.guess_type(path)[0]
    return guessed or "application/octet-stream"


@endpoint(
    path=ArtifactPath,
    ok={200: Success("the artifact's bytes, typed by its extension", media_type="*/*")},
    errors=(ArtifactKeyInvalid, ArtifactNotFound),
)
async def get_artifact(request: Request, path: ArtifactPath) -> Response:
    """One artifact of a task, from the object store."""
    task_id = path.taskId
    key = artifact_key(task_id, path.path)
    try:
        data = await ArtifactStore(state_of(request).js).get(key)
    except ArtifactNotFound:
        raise ArtifactNotFound(f"no artifact {path.path!r} for task {task_id!r}") from None
    media_type = content_type(path.path)
    if media_type.startswith("text/") or media_type in _TEXT_TYPES.values():
        media_type += "; charset=utf-8"
    # artifacts are data, never pages: a stored .html must not run in the facade's origin
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    return Response(data, media_type=media_type, headers=headers)


routes = [Route("/api/artifacts/{taskId}/{path:path}", get_artifact, methods=["GET"])]
