"""Kiln runtime: engine format, model, KV cache, scheduler, sampler, executor and gRPC server."""

__version__ = "0.1.0"
