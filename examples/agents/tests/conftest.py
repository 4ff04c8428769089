"""Run the lexicon app's agents against a real nats-server (cogo.testing's cogo_env)."""

import pytest
from lexicon.agents import app


@pytest.fixture
def cogo_apps():
    return [app]


@pytest.fixture(autouse=True)
def llm_endpoint(chat_server, monkeypatch):
    """Point the summariser at cogo.testing's scripted OpenAI-compatible endpoint."""
    monkeypatch.setenv("COGO_LLM_BASE_URL", chat_server.url)
    monkeypatch.setenv("COGO_LLM_API_KEY", "test-key")
    return chat_server
