"""Model definitions; llama.py reads like the architecture."""
