"""Targets: the models bbzo queries (local transformers, OpenAI-compatible APIs, classifiers)."""
