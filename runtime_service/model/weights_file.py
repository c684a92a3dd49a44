"""A rank's safetensors file, read straight into tensors on the target device.

The usual path (`safe_open(...).get_tensor`) copies each tensor out of the page cache into a new
host tensor, and `model.to(device)` copies it again to the GPU: an 8B engine crosses host memory
twice. Here the file is memory-mapped copy-on-write and each tensor is a view of its bytes; on a
GPU the view is copied once to the device, on the CPU it is used in place (pages load when first
touched and are private if ever written). The format is safetensors' own: an 8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets}}, then the bytes. Every header
entry is checked against the file before any tensor is made, so a damaged file is an
InvalidRequest, never a crash.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from runtime_service.format.json_input import parse_json_object
from runtime_service.errors import InvalidRequest

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_MAX_HEADER_BYTES = 100 << 20


def _header(path: Path, data: mmap.mmap) -> tuple[dict, int]:
    if len(data) < 8:
        raise InvalidRequest(f"{path.name} is not a safetensors file (shorter than 8 bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if not 0 < length <= min(_MAX_HEADER_BYTES, len(data) - 8):
        raise InvalidRequest(f"{path.name} has a safetensors header of {length} bytes, which "
                             f"does not fit the file")
    header = parse_json_object(bytes(data[8:8 + length]), f"{path.name}'s safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + length


def _check_entry(path: Path, name: str, entry,
                 body_bytes: int) -> tuple[torch.dtype, list, int, int]:
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        start, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"{path.name}: tensor {name!r} has a malformed header entry "
                             f"({exc!r})") from exc
    numel = 1
    for dim in shape:
        if dim < 0:
            raise InvalidRequest(f"{path.name}: tensor {name!r} has a negative dimension")
        numel *= dim
    size = numel * torch.empty((), dtype=dtype).element_size()
    if not 0 <= start <= end <= body_bytes or end - start != size:
        raise InvalidRequest(f"{path.name}: tensor {name!r} spans bytes {start}..{end} of "
                             f"{body_bytes}; its shape {shape} needs {size}")
    return dtype, shape, start, end


def read_tensors(path: str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) for every tensor in the file, on `device`, cast to `dtype` if given
    (the cast runs on the device, after the one copy)."""
    path = Path(path)
    device = torch.device(device)
    try:
        with path.open("rb") as handle:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot map weights file {path.name}: {exc}") from exc
    header, body = _header(path, data)
    entries = {name: _check_entry(path, name, entry, len(data) - body)
               for name, entry in header.items()}
    for name, (tensor_dtype, shape, start, end) in entries.items():
        if start == end:
            tensor = torch.empty(shape, dtype=tensor_dtype)
        else:
            tensor = torch.frombuffer(data, dtype=tensor_dtype, count=(end - start) //
                                      torch.empty((), dtype=tensor_dtype).element_size(),
                                      offset=body + start).view(shape)
        yield name, tensor.to(device=device, dtype=dtype or tensor_dtype)
