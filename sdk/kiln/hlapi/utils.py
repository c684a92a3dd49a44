"""`kiln.hlapi.utils`: the HLAPI's config records and small helpers.

SamplingConfig, OutputConfig and GenerationOutput live in kiln.sampling and kiln.output; this
module gives them the HLAPI's import path. The GPU queries ask nvidia-smi (and answer "none"
without it), so the SDK never needs torch.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

from kiln.output import GenerationOutput, OutputConfig
from kiln.sampling import SamplingConfig

__all__ = ["SamplingConfig", "OutputConfig", "GenerationOutput", "print_colored",
           "file_with_glob_exists", "file_with_suffix_exists", "get_device_count", "GpuArch"]

_COLORS = {"grey": "\x1b[38;20m", "yellow": "\x1b[33;20m", "red": "\x1b[31;20m",
           "bold_red": "\x1b[31;1m", "bold_green": "\033[1;32m", "green": "\033[0;32m"}


def print_colored(message: str, color: str | None = None, writer: io.TextIOBase = sys.stderr):
    """Writes `message` (no newline added) in one of _COLORS' names, or plain."""
    if color is not None and color not in _COLORS:
        raise ValueError(f"color must be one of {', '.join(_COLORS)}, got {color!r}")
    writer.write(f"{_COLORS[color]}{message}\x1b[0m" if color else message)


def file_with_glob_exists(directory, glob: str) -> bool:
    return any(path.is_file() for path in Path(directory).glob(glob))


def file_with_suffix_exists(directory, suffix: str) -> bool:
    return file_with_glob_exists(directory, f"*{suffix}")


def _compute_capabilities() -> list[float]:
    """Each local NVIDIA GPU's compute capability, from nvidia-smi; [] without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [float(line) for line in done.stdout.split() if line.strip()]


def get_device_count() -> int:
    """NVIDIA GPUs on this machine (0 without any)."""
    return len(_compute_capabilities())


class GpuArch:
    """The local GPU's compute-capability major version; the is_post_* checks say False on a
    machine without one."""

    @staticmethod
    def get_arch(device: int = 0) -> int:
        capabilities = _compute_capabilities()
        if device >= len(capabilities):
            raise RuntimeError(f"no NVIDIA GPU {device} on this machine "
                               f"({len(capabilities)} found)")
        return int(capabilities[device])

    @staticmethod
    def _at_least(major: int) -> bool:
        return bool(_compute_capabilities()) and GpuArch.get_arch() >= major

    @staticmethod
    def is_post_hopper() -> bool:
        return GpuArch._at_least(9)

    @staticmethod
    def is_post_ampere() -> bool:
        return GpuArch._at_least(8)

    @staticmethod
    def is_post_volta() -> bool:
        return GpuArch._at_least(7)
