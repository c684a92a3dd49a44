"""The build use case, shared by the gRPC server and the batch CLI: resolve the source, derive the
engine key, and unless the store has it, build the engine folder and publish it.

A finished local build is kept under work/builds/<key> until its publish completes, so a builder
killed mid-publish resumes with the upload rather than the conversion.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime_service.format.json_input import parse_json_object
from runtime_service.format.engine_config import (DEFAULT_GROUP_SIZE, INT4_ALGOS, EngineConfig,
                                                  QuantConfig)
from runtime_service.format.linear_names import matching_no_linear
from runtime_service.format.engine_format import CONFIG, FORMAT_NAME, Manifest, verify_engine_folder
from runtime_service.errors import CorruptEngine, EngineNotFound, InvalidRequest
from runtime_service.store import Store

from builder_service.build_cache import BuildCache
from builder_service.calibration import CalibrationData, load_calibration
from builder_service.engine_key import engine_key
from builder_service.pipeline import (BuildProgress, ProgressFn, build_engine_folder,
                                      check_same_quant)
from builder_service.settings import CALIBRATED_ALGOS, BuildSpec
from builder_service.sources import SourceResolver

log = logging.getLogger("kiln.builder")

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
        """The engine's config; a calibrated algorithm records its data's digest and amount.
        Settings that cannot change the engine's bytes are left out of it (and so out of its
        key): one engine, one key."""
        spec.mapping.check_divides(config.model)
        if config.quant.algo != "NONE":
            quant = self._prequantized_quant(spec, config)
        else:
            quant = _effective_quant(spec.quant, config.model.num_layers)
        quant.check_fits(config.model, spec.mapping.tp_size)
        if calibration is not None:
            quant = dataclasses.replace(quant, calib_sha256=calibration.sha256,
                                        calib_num_samples=calibration.num_samples,
                                        calib_seq_len=calibration.seq_len)
        return EngineConfig(model=config.model, quant=quant, mapping=spec.mapping,
                            build=spec.build_config(config.model), target=spec.target,
                            format=FORMAT_NAME)

    @staticmethod
    def _prequantized_quant(spec: BuildSpec, config: EngineConfig) -> QuantConfig:
        """A pre-quantized source is built as it is quantized, never quantized or calibrated
        again: a request may repeat its quantization (and name the linears it left plain) or
        leave it out, and chooses only the KV cache's dtype."""
        source, asked = config.quant, _ungrouped(spec.quant)
        if spec.calib_data or asked.calib_num_samples or asked.calib_seq_len:
            raise InvalidRequest(
                f"the source is already quantized ({source.algo}) and is not calibrated again; "
                "leave out calib_data, calib_num_samples and calib_seq_len")
        if asked.algo == "NONE":
            asked = dataclasses.replace(source, exclude_modules=asked.exclude_modules)
        if not asked.exclude_modules:
            asked = dataclasses.replace(asked, exclude_modules=source.exclude_modules)
        check_same_quant(source, asked, config.model)
        return dataclasses.replace(source, kv_cache_dtype=spec.quant.kv_cache_dtype)

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


def _effective_quant(quant: QuantConfig, num_layers: int) -> QuantConfig:
    """The quantization of a float source, without what cannot change the engine: the group
    size of an algorithm without groups, and exclusions where nothing is quantized. Patterns
    that match no decoder linear (a typo, or the peer's usual list of routers and embeddings)
    stay in the config, as the peer records them, and are named in a warning."""
    quant = _ungrouped(quant)
    if quant.algo == "NONE":
        return dataclasses.replace(quant, exclude_modules=())
    unmatched = matching_no_linear(quant.exclude_modules, num_layers)
    if unmatched:
        log.warning("exclude_modules %s match no decoder linear of this model (q/k/v/o, "
                    "gate/up and down are quantized; lm_head and embeddings never are)",
                    ", ".join(map(repr, unmatched[:8])))
    return quant


def _ungrouped(quant: QuantConfig) -> QuantConfig:
    """The default group size for an algorithm without groups (any other would only change
    the key of the same engine)."""
    if quant.algo in INT4_ALGOS:
        return quant
    return dataclasses.replace(quant, group_size=DEFAULT_GROUP_SIZE)
