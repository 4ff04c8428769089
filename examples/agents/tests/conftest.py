"""Run the lexicon app's agents against a real nats-server (cogo.testing's cogo_env)."""

import pytest
from lexicon.agents import app


@pytest.fixture
def cogo_apps():
    return [app]


@pytest.fixture(autouse=True)
def llm_key(monkeypatch):
    """A key for the endpoint (cogo_env already points ctx.llm at chat_server): the tests
    check that it reaches the endpoint as a bearer token."""
    monkeypatch.setenv("COGO_LLM_API_KEY", "test-key")
