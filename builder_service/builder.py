"""The build use case, shared by the gRPC server and the batch CLI: resolve the source, derive the
engine key, and unless the store has it, build the engine folder and publish it.

A finished local build is kept under work/builds/<key> until its publish completes, so a builder
killed mid-publish resumes with the upload rather than the conversion.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.json_input import parse_json_object
from runtime_service.format.engine_config import EngineConfig
from runtime_service.format.engine_format import CONFIG, FORMAT_NAME, Manifest, verify_engine_folder
from runtime_service.errors import CorruptEngine, EngineNotFound
from runtime_service.store import Store

from builder_service.build_cache import BuildCache
from builder_service.calibration import CalibrationData, load_calibration
from builder_service.engine_key import engine_key
from builder_service.pipeline import BuildProgress, ProgressFn, build_engine_folder
from builder_service.settings import CALIBRATED_ALGOS, BuildSpec
from builder_service.sources import SourceResolver


@dataclass(frozen=True)
class EngineInfo:
    """A published engine as the store describes it."""

    engine_key: str
    uri: str
    name: str
    config: EngineConfig
    manifest: Manifest

    @property
    def size_bytes(self) -> int:
        return sum(entry.size_bytes for entry in self.manifest.files)


@dataclass(frozen=True)
class BuildOutcome:
    engine: EngineInfo
    cached: bool


class EngineBuilder:
    def __init__(self, store: Store, sources: SourceResolver, work_dir: Path):
        self.store = store
        self.sources = sources
        self.work_dir = Path(work_dir)
        self.cache = BuildCache(store, self.work_dir / "locks")

    def target_config(self, spec: BuildSpec, config: EngineConfig,
                      calibration: CalibrationData | None = None) -> EngineConfig:
        """The engine's config; a calibrated algorithm records its data's digest and amount."""
        spec.mapping.check_divides(config.model)
        quant = spec.quant
        if config.quant.algo != "NONE" and quant.algo == "NONE":
            # a pre-quantized source is built as it is quantized (never re-quantized)
            quant = dataclasses.replace(config.quant, kv_cache_dtype=quant.kv_cache_dtype)
        elif config.quant.algo != "NONE" and not quant.exclude_modules:
            # the same quantization asked for by name keeps the linears the source left plain
            quant = dataclasses.replace(quant, exclude_modules=config.quant.exclude_modules)
        elif quant.algo == "NONE" and quant.exclude_modules:
            # nothing is quantized, so nothing is excluded: one engine, one key
            quant = dataclasses.replace(quant, exclude_modules=())
        quant.check_fits(config.model, spec.mapping.tp_size)
        if calibration is not None:
            quant = dataclasses.replace(quant, calib_sha256=calibration.sha256,
                                        calib_num_samples=calibration.num_samples,
                                        calib_seq_len=calibration.seq_len)
        return EngineConfig(model=config.model, quant=quant, mapping=spec.mapping,
                            build=spec.build_config(config.model), target=spec.target,
                            format=FORMAT_NAME)

    def calibration(self, spec: BuildSpec) -> CalibrationData | None:
        """The calibration set of an activation-aware build (None for the others)."""
        if spec.quant.algo not in CALIBRATED_ALGOS:
            return None
        if spec.calib_data:
            self.sources.check_local_file(spec.calib_data)
        return load_calibration(spec.calib_data, spec.quant.calib_num_samples,
                                spec.quant.calib_seq_len, self.sources.s3_settings)

    def build(self, spec: BuildSpec, progress: ProgressFn = lambda _: None) -> BuildOutcome:
        progress(BuildProgress("resolve", 0, 1, "", spec.source))
        source = self.sources.resolve(spec.source, lambda done, total, message: progress(
            BuildProgress("pull", done, total, "bytes", message)))
        # a pre-quantized source is never calibrated again, whatever its algorithm
        calibration = self.calibration(spec) if source.config.quant.algo == "NONE" else None
        target = self.target_config(spec, source.config, calibration)
        progress(BuildProgress("resolve", 1, 1, "", f"{source.kind} model, "
                               f"{source.config.model.num_layers} layers"))
        progress(BuildProgress("digest", 0, 1, "", "hashing source files"))
        key = engine_key(self.sources.digest(source), target.build, target.quant, target.mapping,
                         target.target)
        progress(BuildProgress("digest", 1, 1, "", f"engine key {key}"))

        def build_and_publish():
            staged = self.work_dir / "builds" / key
            if not self._staged_is_complete(staged):
                build_engine_folder(source, target, key, staged, progress, calibration)
            progress(BuildProgress("publish", 0, 0, "bytes", f"to {self.store.uri}"))
            self.store.publish_engine(staged, lambda done, total, msg: progress(
                BuildProgress("publish", done, total, "bytes", msg)))
            shutil.rmtree(staged, ignore_errors=True)

        cached = self.cache.get_or_build(key, build_and_publish, lambda: progress(
            BuildProgress("wait", 0, 0, "", "an identical build is running; waiting for it")))
        if spec.name:
            self.store.set_name(spec.name, key)
        return BuildOutcome(self.describe(key), cached)

    @staticmethod
    def _staged_is_complete(staged: Path) -> bool:
        try:
            verify_engine_folder(staged)
            return True
        except (CorruptEngine, EngineNotFound, OSError, ValueError):
            return False

    def describe(self, key_or_name: str, names: dict[str, str] | None = None) -> EngineInfo:
        key = self.store.resolve(key_or_name)
        manifest = self.store.read_engine_manifest(key)
        raw = self.store.read_engine_file(key, CONFIG)
        if manifest is None or raw is None:
            raise EngineNotFound(f"engine {key_or_name} is incomplete")
        names = self.store.list_names() if names is None else names
        given = sorted(n for n, k in names.items() if k == key)
        return EngineInfo(key, self.store.engine_uri(key), given[0] if given else "",
                          EngineConfig.from_dict(parse_json_object(raw, f"engine {key}'s config.json")),
                          manifest)

    def list_engines(self) -> list[EngineInfo]:
        out = []
        names = self.store.list_names()
        for key in self.store.list_engine_keys():
            try:
                out.append(self.describe(key, names))
            except EngineNotFound:
                continue  # deleted between the listing and the read
        return out

    def delete(self, key_or_name: str) -> str:
        key = self.store.resolve(key_or_name)
        self.store.delete_engine(key)
        return key
