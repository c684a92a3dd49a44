"""Kiln SDK: the LLM / ModelConfig surface over gRPC. Never imports torch."""

__version__ = "0.1.0"
