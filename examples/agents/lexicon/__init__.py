"""Lexicon: an example app of agents for Cogo (see examples/agents/README.md)."""
