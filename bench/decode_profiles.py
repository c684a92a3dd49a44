"""bench_decode's profiles: a kernel-time table of decode steps at a given batch (prefill kept
out of its window), one of a batch's prefill alone, and a cProfile of the step loop's host time
while one prompt prefills.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from decode_common import fixed_length, kiln_generate_timed, log, prompts
from runtime_service.engine.executor import Executor
from runtime_service.engine.request import Request
from runtime_service.model import kernels

# A decode profile's window, and the steps its requests have to get every prefill done first.
PROFILE_STEPS = 24
PROFILE_PREFILL_STEPS = 64


def profile_decode(executor: Executor, vocab: int, batch: int, path: Path,
                   steps: int = PROFILE_STEPS, prompt_len: int = 128) -> None:
    """Kernel time table of `steps` decode steps with `batch` sequences of `prompt_len`-token
    prompts running (CUDA graph nodes included). The window opens once every request has its
    first token, so no prefill kernel lands in it: at 256 streams the prefill's GEMMs would
    otherwise share names and rows with the decode's. The table's first line gives the steps,
    the kernel time and the wall time per step.

    With programmatic dependent launch on (kernels/pdl.py), a kernel may start before the one
    ahead has finished and wait for it, and the profiler counts that wait as the kernel's own
    time: with KILN_PDL_TRIGGER=start the whole tail of the kernel ahead (at 64 rows a 3 us
    activation kernel showed 72 us, bench/NOTES.md run 26a), with the default exit trigger only
    its last writes. The kernels' sum then overstates the step, and the first line says so.
    KILN_PDL=0 gives per-kernel times."""
    from torch.profiler import ProfilerActivity, profile

    requests = [Request(f"profile-{batch}-{i}", p, fixed_length(steps + PROFILE_PREFILL_STEPS))
                for i, p in enumerate(prompts(batch, prompt_len, vocab, 50))]
    streams = [executor.submit(r) for r in requests]
    outputs = [iter(stream) for stream in streams]
    for output in outputs:
        next(output)                       # its first token: the request's prefill is done
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    first = executor.num_steps
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        while executor.num_steps < first + steps:
            time.sleep(0.001)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        last = executor.num_steps
        wall_ms = (time.perf_counter() - started) * 1e3
    for stream in streams:
        for _ in stream:                   # the rest of each request, outside the window
            pass
    averages = prof.key_averages()
    kernel_ms = sum(event.self_device_time_total for event in averages) / 1e3
    head = (f"{last - first} decode steps at batch {batch} after {prompt_len}-token prompts: "
            f"kernels {kernel_ms / (last - first):.3f} ms per step, wall "
            f"{wall_ms / (last - first):.3f} ms per step")
    if _pdl_on():
        head += (f"\n(PDL on, {_pdl_trigger()} trigger: each kernel's time includes its wait "
                 "for the kernel ahead, so the kernels' sum overstates the step; KILN_PDL=0 "
                 "for per-kernel times)")
    text = head + "\n" + averages.table(sort_by="cuda_time_total", row_limit=25)
    path.write_text(text)
    log(f"profile at batch {batch}: " + "\n".join(text.splitlines()[:20]))


def profile_prefill(executor: Executor, vocab: int, batch: int, path: Path,
                    prompt_len: int = 128) -> None:
    """Kernel time table of `batch` fresh `prompt_len`-token prompts prefilled together (one
    output token each): at 256 x 128 the prefill is a third of the load's wall (bench/NOTES.md,
    run 28a), and its chunks' GEMMs, quantizations and attention are what this splits."""
    from torch.profiler import ProfilerActivity, profile

    requests = [Request(f"profile-prefill-{batch}-{i}", p, fixed_length(1))
                for i, p in enumerate(prompts(batch, prompt_len, vocab, 51))]
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    first = executor.num_steps
    with profile(activities=activities) as prof:
        wall, _ = kiln_generate_timed(executor, requests)
    steps = executor.num_steps - first
    averages = prof.key_averages()
    kernel_ms = sum(event.self_device_time_total for event in averages) / 1e3
    head = (f"prefill of {batch} x {prompt_len}-token prompts in {steps} steps: kernels "
            f"{kernel_ms:.1f} ms, wall {wall * 1e3:.1f} ms (under the profiler)")
    if _pdl_on():
        head += (f"\n(PDL on, {_pdl_trigger()} trigger: kernel times include waits for the "
                 "kernel ahead; KILN_PDL=0)")
    text = head + "\n" + averages.table(sort_by="cuda_time_total", row_limit=30)
    path.write_text(text)
    log(f"prefill profile at batch {batch}: " + "\n".join(text.splitlines()[:24]))


def write_kernel_tables(executor: Executor, vocab: int, stem: Path, batches: tuple[int, ...],
                        prompt_len: int) -> None:
    """`<stem>_b<batch>.txt` for each decode batch and `<stem>_prefill_b<largest>.txt`; a
    failed profile is logged and ends nothing (the loads still run)."""
    for batch in batches:
        try:
            profile_decode(executor, vocab, batch, stem.with_name(f"{stem.name}_b{batch}.txt"),
                           prompt_len=prompt_len)
        except Exception as exc:  # noqa: BLE001 - a failed profile ends nothing
            log(f"profiling decode at batch {batch} failed: {exc!r}")
    batch = max(batches)
    try:
        profile_prefill(executor, vocab, batch,
                        stem.with_name(f"{stem.name}_prefill_b{batch}.txt"), prompt_len)
    except Exception as exc:  # noqa: BLE001
        log(f"profiling the prefill at batch {batch} failed: {exc!r}")


def _pdl_on() -> bool:
    """Whether the kernels launch with programmatic dependent launch (kernels/pdl.py; it
    imports triton, so asked only where the kernels can run)."""
    if not (torch.cuda.is_available() and kernels.triton_installed()):
        return False
    from runtime_service.model.kernels import pdl
    return pdl.ENABLED


def _pdl_trigger() -> str:
    from runtime_service.model.kernels import pdl
    return pdl.TRIGGER


def profile_prefill_host(executor: Executor, vocab: int, length: int, path: Path) -> None:
    """Where the step loop's host time goes while one `length`-token prompt is prefilled (TTFT
    at short prompts is host time, not GPU time): cProfile of its steps, by cumulative time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    step = executor.step
    executor.step = lambda: profiler.runcall(step)      # the loop calls self.step()
    try:
        request = Request(f"host-profile-{length}", prompts(1, length, vocab, 77)[0],
                          fixed_length(1))
        wall, _ = kiln_generate_timed(executor, [request])
    finally:
        del executor.step
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(50)
    path.write_text(f"TTFT {length} under cProfile: {wall * 1e3:.1f} ms\n" + text.getvalue())
    log(f"host profile of a {length}-token prefill written to {path}")
