"""Kiln builder: sources, conversion, sharding, build cache, publishing and the Builder server."""

__version__ = "0.1.0"
BUILDER_VERSION = f"kiln-builder/{__version__}"
