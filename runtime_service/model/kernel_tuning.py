"""What the model's kernels learn at start-up, as data a pod can keep and hand back.

The decode GEMVs tune: the bf16 one (kernels/gemv.py) and the quantized ones
(kernels/quant_tuning.py), whose records carry their weight `kind`. Off CUDA, or without Triton,
nothing tunes: the totals stay at zero and there is nothing to export or import. This is the one door to the
tuner for code above the model, which must not import kernels itself.
"""

from __future__ import annotations

import torch


def _concrete(device) -> torch.device:
    """The device as the tuner keys it (a CUDA device always with its index)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _tuners(device: torch.device) -> tuple:
    """(gemv, quant_tuning), or () off CUDA or without Triton."""
    if torch.device(device).type != "cuda":
        return ()
    try:
        from runtime_service.model.kernels import gemv, quant_tuning
    except ImportError:
        return ()
    return gemv, quant_tuning


def software_version() -> str:
    """What the records depend on besides the GPU: the tuner's candidates live in this Kiln,
    and the kernels' speed in torch and Triton. The leading tag changes with the candidate
    lists, so caches made from older lists tune again (gemv-3: run 17's int4 and fp8 tiles;
    gemv-4: the fp8 one-row tiles with their split sums fused)."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return f"gemv-4 torch-{torch.__version__} triton-{triton_version}"


def gpu_model(device: torch.device) -> str:
    """The GPU's model name with its compute capability ("NVIDIA H200 sm90")."""
    device = torch.device(device)
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"


def tuning_totals(device: torch.device) -> tuple[int, float]:
    """(shapes tuned, seconds spent tuning) in this process so far."""
    totals = [tuner.tuning_totals() for tuner in _tuners(device)]
    return sum(n for n, _ in totals), sum(s for _, s in totals)


def export_tuning(device: torch.device) -> list[dict]:
    return [record for tuner in _tuners(device)
            for record in tuner.export_tuned(_concrete(device))]


def import_tuning(device: torch.device, records: list[dict]) -> int:
    """Takes records from `export_tuning` as this process's choices; ValueError if any is not
    one."""
    tuners = _tuners(device)
    if not tuners:
        return 0
    gemv, quant_tuning = tuners
    quantized = [r for r in records if isinstance(r, dict) and "kind" in r]
    plain = [r for r in records if not (isinstance(r, dict) and "kind" in r)]
    return (gemv.import_tuned(_concrete(device), plain)
            + quant_tuning.import_tuned(_concrete(device), quantized))


def start_compile_workers(device) -> int:
    """Starts worker processes that compile Triton kernels side by side (kernels/compile_pool.py)
    for a start whose kernel cache is empty; returns how many run (0: none). Call once
    TRITON_CACHE_DIR is set and before the first kernel compiles; `stop_compile_workers` when
    the start is done."""
    if torch.device(device).type != "cuda":
        return 0
    try:
        from runtime_service.model.kernels import compile_pool
    except ImportError:
        return 0
    pool = compile_pool.start_early()
    return 0 if pool is None else pool.workers


def stop_compile_workers() -> None:
    try:
        from runtime_service.model.kernels import compile_pool
    except ImportError:
        return
    compile_pool.close_shared()
