"""What the model's kernels learn at start-up, as data a pod can keep and hand back.

Only the decode GEMV tunes (kernels/gemv.py). Off CUDA, or without Triton, nothing tunes: the
totals stay at zero and there is nothing to export or import. This is the one door to the
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


def _gemv(device: torch.device):
    if torch.device(device).type != "cuda":
        return None
    try:
        from runtime_service.model.kernels import gemv
    except ImportError:
        return None
    return gemv


def software_version() -> str:
    """What the records depend on besides the GPU: the tuner's candidates live in this Kiln,
    and the kernels' speed in torch and Triton."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return f"gemv-1 torch-{torch.__version__} triton-{triton_version}"


def gpu_model(device: torch.device) -> str:
    """The GPU's model name with its compute capability ("NVIDIA H200 sm90")."""
    device = torch.device(device)
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"


def tuning_totals(device: torch.device) -> tuple[int, float]:
    """(shapes tuned, seconds spent tuning) in this process so far."""
    gemv = _gemv(device)
    return gemv.tuning_totals() if gemv else (0, 0.0)


def export_tuning(device: torch.device) -> list[dict]:
    gemv = _gemv(device)
    return gemv.export_tuned(_concrete(device)) if gemv else []


def import_tuning(device: torch.device, records: list[dict]) -> int:
    """Takes records from `export_tuning` as this process's choices; ValueError if any is not
    one."""
    gemv = _gemv(device)
    return gemv.import_tuned(_concrete(device), records) if gemv else 0
