"""`kiln.hlapi.utils`: the HLAPI's config records and small helpers.

SamplingConfig, OutputConfig and GenerationOutput live in kiln.sampling and kiln.output; this
module gives them the HLAPI's import path. The GPU queries ask nvidia-smi (and answer "none"
without it), so the SDK never needs torch.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

from kiln.output import GenerationOutput, OutputConfig
from kiln.sampling import SamplingConfig

__all__ = ["SamplingConfig", "OutputConfig", "GenerationOutput", "print_colored",
           "file_with_glob_exists", "file_with_suffix_exists", "get_device_count", "GpuArch",
           "ContextManager", "print_traceback_on_error", "suppress_runtime_log"]

_COLORS = {"grey": "\x1b[38;20m", "yellow": "\x1b[33;20m", "red": "\x1b[31;20m",
           "bold_red": "\x1b[31;1m", "bold_green": "\033[1;32m", "green": "\033[0;32m"}


def print_colored(message: str, color: str | None = None, writer: io.TextIOBase = sys.stderr):
    """Writes `message` (no newline added) in one of _COLORS' names, or plain."""
    if color is not None and color not in _COLORS:
        raise ValueError(f"color must be one of {', '.join(_COLORS)}, got {color!r}")
    writer.write(f"{_COLORS[color]}{message}\x1b[0m" if color else message)


def print_traceback_on_error(func):
    """Prints the traceback of an exception escaping `func` (where a caller would otherwise
    swallow it, as worker threads do), then re-raises it."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception:
            traceback.print_exc()
            raise
    return wrapper


class ContextManager:
    """Enters and exits a resource that is itself a context manager."""

    def __init__(self, resource):
        self.resource = resource

    def __enter__(self):
        return self.resource.__enter__()

    def __exit__(self, exc_type, exc_value, tb):
        return self.resource.__exit__(exc_type, exc_value, tb)


def suppress_runtime_log() -> None:
    """Keeps the SDK's informational log lines quiet (warnings and errors still show)."""
    logging.getLogger("kiln").setLevel(logging.WARNING)


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
