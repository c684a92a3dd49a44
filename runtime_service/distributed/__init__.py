"""The ranks of a tp x pp engine: where they sit, their processes, the runner that
broadcasts each step from rank 0."""
