"""`OutputConfig` (what a request returns beyond its tokens) and `GenerationOutput` (the HLAPI's
plain output record, which GenerationResult extends), plus the one decoder of wire logits.

Logits travel only when asked for, as one float32 byte string per matrix (runtime.proto
`Logits`), and arrive as numpy float32 arrays (`torch.from_numpy` makes them tensors without a
copy; the SDK never imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln._checks import Checked, boolean


@dataclass(slots=True)
class OutputConfig(Checked):
    return_log_probs: bool = False
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True


OutputConfig._checks = {name: boolean for name in (
    "return_log_probs", "return_context_logits", "return_generation_logits",
    "exclude_input_from_output")}


@dataclass
class GenerationOutput:
    text: str = ""
    token_ids: list = field(default_factory=list)
    log_probs: list | None = None
    context_logits: object = None
    generation_logits: object = None


def decode_logits(message):
    """A runtime.proto Logits as a [rows, cols] float32 numpy array; None when empty."""
    if not message.rows:
        return None
    import numpy as np
    return np.frombuffer(message.data, dtype="<f4").reshape(message.rows, message.cols)
