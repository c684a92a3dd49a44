"""The model runner of a tp x pp engine: the same step on every rank, scheduled on rank 0 alone.

Rank 0 lays the step out (`ModelRunner.layout`), broadcasts it, and every rank runs
`run_step`: its pipeline stage's forward on its tensor-parallel shard. The last stage computes
the logits of the rows that need them (prompt rows scored for logprobs, then the rows sampled)
and, when it is not rank 0, sends them there; rank 0 scores and samples as a single rank does.
"""

from __future__ import annotations

import torch

from runtime_service.model.model_runner import ModelRunner, PendingStep, StepInputs, prompt_spans
from runtime_service.distributed.ranks import KEEPALIVE, RankGroup
from runtime_service.engine.scheduler import SchedulerOutput


class RankedModelRunner(ModelRunner):
    # The other ranks get each step's inputs as host lists, so a token still on rank 0's
    # device cannot join the next step without waiting for it: steps run one at a time.
    supports_overlap = False

    def __init__(self, group: RankGroup, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group

    @torch.inference_mode()
    def launch(self, batch: SchedulerOutput) -> PendingStep:
        """Rank 0's step: broadcast, forward on every rank, then score and sample here."""
        self.faults.before_step()
        finishing = [item.seq for item in batch.scheduled if item.completes]
        spans = prompt_spans(batch)
        inputs = self.layout(batch)
        prompt_rows = [row for span in spans
                       for row in range(span.rows.start, span.rows.stop)]
        inputs.logit_rows = prompt_rows + inputs.sample_rows
        self.group.broadcast(inputs)
        logits = self.run_step(inputs)
        offset = 0
        for span in spans:
            count = span.last - span.first
            self.record_prompt_logprobs(span, logits[offset:offset + count])
            offset += count
        if not finishing:
            return PendingStep()
        return self.sample_tokens(finishing, logits[offset:])

    @torch.inference_mode()
    def run_step(self, inputs: StepInputs) -> torch.Tensor | None:
        """This rank's part of a step; rank 0 gets the logits of `inputs.logit_rows`."""
        self.rotate_blocks(inputs.block_rotations)
        self.copy_blocks(inputs.block_copies)
        input_ids, meta = self.to_device(inputs)
        parallel = self.model.parallel
        if parallel.is_first_stage:
            x = input_ids
        else:
            x = self.group.receive_from_previous_stage(
                (len(inputs.token_ids), self.model.args.hidden_size), self.kv_caches[0][0].dtype)
        hidden = self.model(x, meta, self.kv_caches)
        if not parallel.is_last_stage:
            self.group.send_to_next_stage(hidden)
        logits = None
        if parallel.is_last_stage and inputs.logit_rows:
            rows = torch.tensor(inputs.logit_rows, device=self.device)
            logits = self.model.compute_logits(hidden[rows])
        if parallel.pp_size > 1 and inputs.logit_rows:
            logits = self._logits_to_rank0(logits, len(inputs.logit_rows))
        return logits

    def _logits_to_rank0(self, logits: torch.Tensor | None, num_rows: int):
        import torch.distributed as dist
        sender = self.group.logits_rank
        if self.group.rank == sender:
            dist.send(logits.contiguous(), dst=0)
            return None
        if self.group.rank == 0:
            received = torch.empty((num_rows, self.model.args.vocab_size), dtype=torch.float32,
                                   device=self.device)
            dist.recv(received, src=sender)
            return received
        return None

    def serve_steps(self) -> None:
        """A rank other than 0: runs every broadcast step until rank 0 says stop."""
        while True:
            message = self.group.broadcast()
            if message == KEEPALIVE:
                continue
            if not isinstance(message, StepInputs):    # STOP
                return
            self.faults.before_step()
            self.run_step(message)
