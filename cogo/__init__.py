"""Cogo: an event-sourced actor system for AI-agent work on NATS JetStream."""

__version__ = "0.1.0"
