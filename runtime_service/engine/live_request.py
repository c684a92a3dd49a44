"""The executor's state for one live request: its sequence, the stream its outputs go to, its
detokenizer and, for beam search, its beams. Whether its steps may overlap (executor.py's
overlapped scheduling) is decided here, once, from its sampling settings.
"""

from __future__ import annotations

from runtime_service.engine.beam_group import BeamGroup
from runtime_service.engine.detokenizer import IncrementalDetokenizer
from runtime_service.engine.request_stream import RequestStream
from runtime_service.engine.sequence import Sequence


def samples_without_history(seq: Sequence) -> bool:
    """True when picking this request's next token needs none of its earlier tokens on the
    host, so its steps may overlap (min_new_tokens needs only their count)."""
    p = seq.sampling
    return (p.beam_width == 1 and not p.bad_token_ids and p.repetition_penalty == 1.0
            and not p.presence_penalty and not p.frequency_penalty)


class LiveRequest:
    """Executor-side state of one request: its sequence, stream and detokenizer."""

    def __init__(self, seq: Sequence, stream: RequestStream, detok: IncrementalDetokenizer | None,
                 beams: BeamGroup | None):
        self.seq = seq
        self.stream = stream
        self.detok = detok
        self.beams = beams
        self.emitted_tokens = 0
        self.blocks_overlap = not samples_without_history(seq)

    @property
    def sequences(self) -> list[Sequence]:
        return self.beams.seqs if self.beams else [self.seq]
