"""kiln.v1 messages <-> the builder's dataclasses, in one place.

Proto3 has no "unset" for scalars, so 0 and "" mean "the default" on the way in.
"""

from __future__ import annotations

from kiln.v1 import builder_pb2, engine_pb2

from runtime_service.format.engine_config import (DEFAULT_GROUP_SIZE, BuildConfig, Mapping,
                                                  QuantConfig, Target)

from builder_service.builder import BuildOutcome, EngineInfo
from builder_service.pipeline import BuildProgress
from builder_service.settings import BuildSpec
from builder_service.uploads import SourceFileEntry


def spec_from_request(request: builder_pb2.BuildRequest) -> BuildSpec:
    s = request.settings
    quant = QuantConfig(algo=s.quant.algo or "NONE",
                        group_size=s.quant.group_size or DEFAULT_GROUP_SIZE,
                        kv_cache_dtype=s.quant.kv_cache_dtype or "auto",
                        calib_num_samples=s.quant.calib_num_samples,
                        calib_seq_len=s.quant.calib_seq_len,
                        exclude_modules=tuple(s.quant.exclude_modules))
    return BuildSpec(
        source=request.source, name=request.name, dtype=s.dtype or "bfloat16",
        max_batch_size=s.max_batch_size or None, max_input_len=s.max_input_len or None,
        max_seq_len=s.max_seq_len or None, max_num_tokens=s.max_num_tokens or None,
        max_beam_width=s.max_beam_width or None, quant=quant,
        mapping=Mapping(s.parallel.tp_size or 1, s.parallel.pp_size or 1),
        target=Target(device=s.target.device or "any", capability=s.target.capability),
        calib_data=s.quant.calib_data)


def request_from_spec(spec: BuildSpec) -> builder_pb2.BuildRequest:
    return builder_pb2.BuildRequest(
        source=spec.source, name=spec.name, settings=engine_pb2.BuildSettings(
            dtype=spec.dtype, max_batch_size=spec.max_batch_size or 0,
            max_input_len=spec.max_input_len or 0, max_seq_len=spec.max_seq_len or 0,
            max_num_tokens=spec.max_num_tokens or 0, max_beam_width=spec.max_beam_width or 0,
            quant=_quant(spec.quant, spec.calib_data), parallel=_parallel(spec.mapping),
            target=engine_pb2.TargetSettings(device=spec.target.device,
                                             capability=spec.target.capability)))


def _quant(quant: QuantConfig, calib_data: str = "") -> engine_pb2.QuantSettings:
    return engine_pb2.QuantSettings(algo=quant.algo, group_size=quant.group_size,
                                    kv_cache_dtype=quant.kv_cache_dtype, calib_data=calib_data,
                                    calib_num_samples=quant.calib_num_samples,
                                    calib_seq_len=quant.calib_seq_len,
                                    calib_sha256=quant.calib_sha256,
                                    exclude_modules=quant.exclude_modules)


def _parallel(mapping: Mapping) -> engine_pb2.ParallelSettings:
    return engine_pb2.ParallelSettings(tp_size=mapping.tp_size, pp_size=mapping.pp_size)


def _settings(build: BuildConfig, quant: QuantConfig, mapping: Mapping,
              target: Target | None) -> engine_pb2.BuildSettings:
    return engine_pb2.BuildSettings(
        dtype=build.dtype, max_batch_size=build.max_batch_size, max_input_len=build.max_input_len,
        max_seq_len=build.max_seq_len, max_num_tokens=build.max_num_tokens,
        max_beam_width=build.max_beam_width, quant=_quant(quant), parallel=_parallel(mapping),
        target=engine_pb2.TargetSettings(device=target.device, capability=target.capability)
        if target else None)


def engine_summary(info: EngineInfo) -> engine_pb2.EngineSummary:
    config = info.config
    return engine_pb2.EngineSummary(
        ref=engine_pb2.EngineRef(engine_key=info.engine_key, uri=info.uri, name=info.name),
        settings=_settings(config.build, config.quant, config.mapping, config.target)
        if config.build else None,
        architecture=config.model.architecture, size_bytes=info.size_bytes,
        num_files=len(info.manifest.files), builder_version=info.manifest.builder_version,
        format_version=info.manifest.format_version)


def progress_event(progress: BuildProgress) -> builder_pb2.BuildEvent:
    return builder_pb2.BuildEvent(progress=builder_pb2.BuildProgress(
        stage=progress.stage, done=progress.done, total=progress.total, unit=progress.unit,
        message=progress.message))


def result_event(outcome: BuildOutcome) -> builder_pb2.BuildEvent:
    return builder_pb2.BuildEvent(result=builder_pb2.BuildResult(
        engine=engine_summary(outcome.engine), cached=outcome.cached))


def file_list(message: builder_pb2.SourceFileList) -> list[SourceFileEntry]:
    return [SourceFileEntry(f.path, f.sha256, f.size_bytes) for f in message.files]
