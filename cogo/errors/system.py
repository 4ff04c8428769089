"""The bus, the configuration and starting a system or an app."""

from __future__ import annotations

from cogo.errors.base import CogoError


class MessageError(CogoError):
    """Raised when a message on the bus cannot be decoded."""

    code = "message.error"


class MalformedMessage(MessageError):
    """Raised when a message is not JSON, has wrong types or misses a required field."""

    code = "message.malformed"


class MessageTooLarge(MalformedMessage):
    """Raised when a task message on the bus is larger than a submission may be."""

    code = "message.too_large"


class BackpressureError(CogoError):
    """Raised when the bus refuses a write (stream full); the caller should retry later."""

    code = "bus.backpressure"
    retryable = True


class Unavailable(CogoError):
    """Raised when what a request needs (the projector, the rollout controller) does not run here."""

    code = "service.unavailable"
    retryable = True


class BusUnavailable(Unavailable):
    """Raised when NATS does not answer a request in time, or refuses a write."""

    code = "bus.unavailable"


class ConfigError(CogoError):
    """Raised when a configuration file or value is wrong."""

    code = "config.invalid"


class StartupError(CogoError):
    """Raised when ``cogo up`` cannot start; everything it had started is stopped again."""

    code = "startup.failed"


class PortInUse(StartupError):
    """Raised when the NATS or HTTP port ``cogo up`` was to listen on is taken."""

    code = "startup.port_in_use"


class StoreInUse(StartupError):
    """Raised when another live process owns the JetStream store directory."""

    code = "startup.store_in_use"


class ForeignServer(StartupError):
    """Raised when the server answering on the port is not the one just started."""

    code = "startup.foreign_server"


class AppError(CogoError):
    """Raised when an app cannot be loaded or declared."""

    code = "app.error"


class AppNotFound(AppError):
    """Raised when ``module:attr`` does not import or is not a ``cogo.App``."""

    code = "app.not_found"


class AgentNotFound(AppError):
    """Raised when an app has no agent of the requested name."""

    code = "app.agent_not_found"
