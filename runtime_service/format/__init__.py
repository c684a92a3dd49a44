"""The engine format on disk: config.json's dataclasses, the model's architecture, the
manifest and the folder layout. Pure Python, imported by every other part."""
