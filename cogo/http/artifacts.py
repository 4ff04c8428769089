"""``GET /api/artifacts/{taskId}/{path}``: a task's artifacts, served from the object store."""

from __future__ import annotations

import mimetypes

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cogo.errors import ArtifactKeyInvalid, ArtifactNotFound
from cogo.http.app import state_of
from cogo.streams.artifacts import ArtifactStore, artifact_key

# types a browser should render as text; everything unknown downloads as bytes
_TEXT_TYPES = {".json": "application/json", ".xml": "application/xml", ".log": "text/plain"}


def content_type(path: str) -> str:
    """The media type of an artifact, by its extension."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    guessed = _TEXT_TYPES.get(suffix) or mimetypes.guess_type(path)[0]
    return guessed or "application/octet-stream"


async def get_artifact(request: Request) -> Response:
    task_id: str = request.path_params["taskId"]
    path: str = request.path_params["path"]
    try:
        key = artifact_key(task_id, path)
    except ArtifactKeyInvalid as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        data = await ArtifactStore(state_of(request).js).get(key)
    except ArtifactNotFound:
        raise HTTPException(404, f"no artifact {path!r} for task {task_id!r}") from None
    media_type = content_type(path)
    if media_type.startswith("text/") or media_type in _TEXT_TYPES.values():
        media_type += "; charset=utf-8"
    # artifacts are data, never pages: a stored .html must not run in the facade's origin
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    return Response(data, media_type=media_type, headers=headers)


routes = [Route("/api/artifacts/{taskId}/{path:path}", get_artifact, methods=["GET"])]
