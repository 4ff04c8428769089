"""Requests the HTTP facade cannot take as sent."""

from __future__ import annotations

from cogo.errors.base import CogoError


class RequestError(CogoError):
    """Raised when the HTTP facade cannot take a request as sent."""

    code = "request.error"


class InvalidJson(RequestError):
    """Raised when a request body is empty or not JSON."""

    code = "request.invalid_json"


class JsonTooDeep(RequestError):
    """Raised when a JSON body nests arrays and objects deeper than the limit."""

    code = "request.json_too_deep"


class JsonNumberOutOfRange(RequestError):
    """Raised when a JSON body holds an integer past 64 bits or a float beyond double range."""

    code = "request.number_out_of_range"


class RequestInvalid(RequestError):
    """Raised when fields of a request are wrong; ``detail`` lists them (``loc``, ``msg``, ``type``)."""

    code = "request.invalid"


class BodyTooLarge(RequestError):
    """Raised when a request body is larger than the limit."""

    code = "request.too_large"


class RequestTimeout(RequestError):
    """Raised when a request body does not arrive within the time limit."""

    code = "request.timeout"


class Unauthorized(RequestError):
    """Raised when the bearer token is missing or wrong."""

    code = "auth.unauthorized"


class NotFound(RequestError):
    """Raised when no route serves the path."""

    code = "http.not_found"


class MethodNotAllowed(RequestError):
    """Raised when the path is served, but not for that method."""

    code = "http.method_not_allowed"
