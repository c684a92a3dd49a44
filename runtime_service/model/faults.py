"""Deliberate step failures, for the fault tests and bench/bench_reliability.py.

`KILN_INJECT_STEP_FAULT` holds comma-separated `RANK:STEP[:KIND]` items: that rank's model runner
raises before its STEP-th step (counted from 1, warm-up steps included). `STEP+` raises at every
step from STEP on (a fault the engine cannot recover from). KIND is `error` (a RuntimeError, the
default) or `oom` (torch.OutOfMemoryError). Unset, nothing is injected and the check costs one
attribute read per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

ENV = "KILN_INJECT_STEP_FAULT"


class InjectedFault(RuntimeError):
    """Raised where KILN_INJECT_STEP_FAULT asks for an error."""


@dataclass(frozen=True)
class _Fault:
    step: int
    every_step_after: bool
    kind: str


class StepFaults:
    def __init__(self, rank: int, faults: tuple[_Fault, ...] = ()):
        self.rank = rank
        self.faults = faults
        self.num_steps = 0

    @classmethod
    def from_env(cls, rank: int, env: dict | None = None) -> "StepFaults":
        spec = (os.environ if env is None else env).get(ENV, "")
        faults = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            fields = item.split(":")
            if len(fields) not in (2, 3) or fields[2:] not in ([], ["error"], ["oom"]):
                raise ValueError(f"{ENV} item {item!r} must be RANK:STEP[+][:error|oom]")
            step = fields[1]
            if int(fields[0]) == rank:
                faults.append(_Fault(int(step.rstrip("+")), step.endswith("+"),
                                     fields[2] if len(fields) == 3 else "error"))
        return cls(rank, tuple(faults))

    def before_step(self) -> None:
        if not self.faults:
            return
        self.num_steps += 1
        for fault in self.faults:
            if self.num_steps == fault.step or (fault.every_step_after
                                                and self.num_steps >= fault.step):
                message = f"injected fault on rank {self.rank} at step {self.num_steps}"
                if fault.kind == "oom":
                    raise torch.OutOfMemoryError(message)
                raise InjectedFault(message)
