"""Start-up results kept per engine and GPU model, so the next pod on that GPU model skips them.

What a start computes that does not change between starts of the same engine on the same GPU
model: the GEMV configs the tuner times (kernels/gemv.py). The records go to
`<cache_dir>/startup/<engine_id>/<gpu>.json` and, when the pod shares them, beside the engine in
its store (`startup/<gpu>.json`, written only if absent, so pods never race to overwrite each
other); a pod that finds none locally takes the store's copy. Triton's compiled kernels travel
the same way (kernel_cache.py).

A file made by other software (another Kiln tuning format, torch or Triton version) is ignored:
kernels and their best configs change with them. So is a file that does not parse: the start
then tunes as if there were none and writes a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.json_input import parse_json_object

log = logging.getLogger("kiln.startup")

FORMAT = "kiln-startup-cache/1"
STORE_FOLDER = "startup"


def gpu_file_name(gpu_model: str) -> str:
    """A file name for a GPU model: "NVIDIA H200" -> "nvidia-h200.json"."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_model.lower()).strip("-")
    if not slug:
        raise ValueError(f"gpu_model must name a GPU, got {gpu_model!r}")
    return f"{slug}.json"


def engine_id_for(folder: Path, engine_key: str) -> str:
    """The engine key; for a folder served in place without one (an HF model or checkpoint in
    development), a digest of its resolved path."""
    if engine_key:
        return engine_key
    return "path-" + hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class TuningCache:
    """One engine's tuning records for one GPU model. `store` is the engine's Store (opened at
    the engine's own prefix) when the pod shares its cache there, else None. `software` names
    what produced the records; records from other software are never used."""

    cache_dir: Path
    engine_id: str
    gpu_model: str
    software: str
    store: object = None

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", self.engine_id):
            raise ValueError(f"engine_id must be 1-128 of A-Z a-z 0-9 _ -, got {self.engine_id!r}")
        gpu_file_name(self.gpu_model)

    @property
    def path(self) -> Path:
        return Path(self.cache_dir) / STORE_FOLDER / self.engine_id / gpu_file_name(self.gpu_model)

    @property
    def store_key(self) -> str:
        return f"{STORE_FOLDER}/{gpu_file_name(self.gpu_model)}"

    def load(self) -> tuple[list[dict], str]:
        """(records, where from: "local" or "store"), or ([], "") when neither holds usable ones."""
        if self.path.is_file():
            records = self._parse(self.path.read_bytes(), str(self.path))
            if records is not None:
                return records, "local"
        if self.store is not None:
            try:
                data = self.store.read_bytes(self.store_key)
            except Exception as exc:  # noqa: BLE001 - a store without the file is not a failure
                log.warning("cannot read the shared tuning cache %s: %r", self.store_key, exc)
                data = None
            records = self._parse(data, self.store_key) if data is not None else None
            if records is not None:
                self._write_local(data)
                return records, "store"
        return [], ""

    def save(self, records: list[dict]) -> None:
        """Writes the records locally (replacing what was there) and, when shared, to the store
        if it holds none yet."""
        data = json.dumps({"format": FORMAT, "engine_id": self.engine_id,
                           "gpu_model": self.gpu_model, "software": self.software,
                           "gemv": records}, indent=1, sort_keys=True).encode()
        self._write_local(data)
        if self.store is not None:
            try:
                self.store.put_bytes_if_absent(self.store_key, data)
            except Exception as exc:  # noqa: BLE001 - sharing is best effort; the pod serves on
                log.warning("cannot share the tuning cache at %s: %r", self.store_key, exc)

    def _parse(self, data: bytes, where: str) -> list[dict] | None:
        try:
            content = parse_json_object(data, f"tuning cache {where}")
            if content.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT}")
            if (content.get("gpu_model"), content.get("engine_id")) != (self.gpu_model,
                                                                        self.engine_id):
                raise ValueError("made for another engine or GPU model")
            if content.get("software") != self.software:
                log.info("tuning cache %s was made by %r, this pod runs %r: tuning again", where,
                         content.get("software"), self.software)
                return None
            records = content["gemv"]
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("gemv is not a list of records")
            return records
        except (ValueError, KeyError) as exc:
            log.warning("ignoring tuning cache %s: %s", where, exc)
            return None

    def _write_local(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tuning-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
