"""Generated gRPC code of the kiln.v1 protos (protos/generate.py writes it)."""
