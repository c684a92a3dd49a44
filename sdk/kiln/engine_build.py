"""Building the engine an LLM serves: refuse what the runtime could never serve, turn the
ModelConfig into BuildSettings, upload a local folder when the builder is remote, and stream the
build's progress to the terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kiln.client import BuilderClient
from kiln.errors import FailedPrecondition, InvalidArgument
from kiln.local_folder import folder_config, json_object
from kiln.model_config import ModelConfig
from kiln.v1 import builder_pb2, engine_pb2, runtime_pb2


def local_engine_key(model_dir: str) -> str | None:
    """The engine key of a complete Kiln engine folder on this machine, else None."""
    config = folder_config(model_dir)
    manifest = json_object(Path(model_dir) / "manifest.json")
    if config is None or manifest is None or config.get("format") != "kiln-engine":
        return None
    key = manifest.get("engine_key")
    return key if isinstance(key, str) and key else None


def check_saved_engine_quant(config: ModelConfig) -> None:
    """A saved engine is served as it was built: a quant_config that asks for another weight
    or KV cache quantization is refused (InvalidArgument) rather than silently ignored. Unset
    fields (None) ask for nothing and take the engine's."""
    built = (folder_config(config.model_dir) or {}).get("quant")
    built = built if isinstance(built, dict) else {}
    quant = config.quant_config
    asked = {"quant_algo": (quant.quant_algo, quant.builder_algo, built.get("algo", "NONE")),
             "kv_cache_quant_algo": (quant.kv_cache_quant_algo, quant.builder_kv_cache_dtype,
                                     built.get("kv_cache_dtype", "auto"))}
    for field, (value, wanted, engine) in asked.items():
        if value is not None and wanted != engine:
            raise InvalidArgument(
                f"quant_config.{field} is {getattr(value, 'name', value)} but the engine in "
                f"{config.model_dir} was built with {engine}: leave it unset to serve the "
                "engine as built, or build from the model for another quantization")


def check_int4_flags(quant) -> None:
    """has_zero_point and pre_quant_scale describe what Kiln's int4 engines already are: every
    int4 group stores a zero point, and AWQ's activation scales are applied (folded into the
    norm or linear before, which computes the same function as scaling the input). So they
    are accepted where they hold and refused where they cannot."""
    name = quant.quant_algo.name if quant.quant_algo is not None else "no quant_algo"
    if quant.has_zero_point and name not in ("W4A16", "W4A16_AWQ"):
        raise FailedPrecondition(
            f"QuantConfig.has_zero_point applies to the int4 algorithms (W4A16, W4A16_AWQ), "
            f"whose groups always store one; {name} has no zero points")
    if quant.pre_quant_scale and name != "W4A16_AWQ":
        raise FailedPrecondition(
            "QuantConfig.pre_quant_scale applies to W4A16_AWQ, whose activation scales Kiln "
            f"folds into the preceding norm or linear; {name} has none")


def check_quant_request(config: ModelConfig) -> None:
    """Refuses, before any service starts, quantization Kiln never builds: another weight or KV
    cache algorithm (named with what Kiln builds), int4 flags that cannot hold, SmoothQuant."""
    quant = config.quant_config
    for name in ("builder_algo", "builder_kv_cache_dtype"):
        getattr(quant, name)                # FailedPrecondition naming what Kiln builds
    check_int4_flags(quant)
    if quant.smoothquant_val is not None:
        raise FailedPrecondition("QuantConfig.smoothquant_val is not available yet: Kiln builds "
                                 "no SmoothQuant algorithm")


def check_capabilities(config: ModelConfig, info: runtime_pb2.ServerInfo) -> None:
    """Refuses, before any build, what the runtime could never serve."""
    check_quant_request(config)
    quant = config.quant_config
    algo, kv_dtype = quant.builder_algo, quant.builder_kv_cache_dtype
    if algo not in info.quant_algos:
        raise FailedPrecondition(
            f"quantization {algo} is not available: this runtime loads "
            f"{', '.join(a for a in info.quant_algos if not a.startswith('kv_'))} engines only")
    if kv_dtype != "auto" and f"kv_{kv_dtype}" not in info.quant_algos:
        raise FailedPrecondition(
            f"a {kv_dtype} KV cache is not available in this runtime")
    parallel = config.parallel_config
    if parallel.auto_parallel:
        raise FailedPrecondition(
            "auto_parallel is not available yet; set parallel_config.tp_size and pp_size")
    if parallel.world_size > info.max_world_size:
        raise FailedPrecondition(
            f"tp_size={parallel.tp_size} x pp_size={parallel.pp_size} needs "
            f"{parallel.world_size} ranks; this runtime runs at most {info.max_world_size} "
            f"(parallel ranks are not available yet)")


def local_calib_file(config: ModelConfig) -> Path | None:
    """quant_config.calib_data as an absolute path when it names a file on this machine (None
    for no data, the default corpus, or an s3:// URI); InvalidArgument when no such file exists.
    A relative path is this process's, as the peer reads it, not the builder's."""
    data = config.quant_config.calib_data
    if not data or data.startswith("s3://"):
        return None
    path = Path(data.removeprefix("file://")).expanduser().resolve()
    if not path.is_file():
        raise InvalidArgument(f"quant_config.calib_data {data} is not a file")
    return path


def build_settings(config: ModelConfig, info: runtime_pb2.ServerInfo,
                   local_builder: bool = True) -> engine_pb2.BuildSettings:
    """The build request's settings. A local calibration file goes by its absolute path to a
    builder on this machine; a remote builder cannot read it, so it is refused here rather
    than read there as some other machine's path."""
    build = config.build_config
    quant = config.quant_config
    calib_file = local_calib_file(config)
    if calib_file is not None and not local_builder:
        raise InvalidArgument(
            f"quant_config.calib_data {quant.calib_data} is a file on this machine and the "
            "builder is remote: give it as an s3:// URI the builder can read")
    dtype = build.dtype or ("float32" if info.device == "cpu" else "bfloat16")
    return engine_pb2.BuildSettings(
        dtype=dtype, max_batch_size=build.max_batch_size or 0,
        max_input_len=build.max_input_len or 0, max_seq_len=build.seq_len_limit or 0,
        max_num_tokens=build.max_num_tokens or 0, max_beam_width=config.beam_width_limit,
        quant=engine_pb2.QuantSettings(algo=quant.builder_algo, group_size=quant.group_size,
                                       kv_cache_dtype=quant.builder_kv_cache_dtype,
                                       calib_data=str(calib_file or quant.calib_data or ""),
                                       calib_num_samples=quant.calib_num_samples,
                                       calib_seq_len=quant.calib_seq_len,
                                       exclude_modules=quant.exclude_modules or ()),
        parallel=engine_pb2.ParallelSettings(tp_size=config.parallel_config.tp_size,
                                             pp_size=config.parallel_config.pp_size),
        target=engine_pb2.TargetSettings(device=info.device or "any"))


class BuildProgressPrinter:
    """One stderr line per stage, and one when a stage completes."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._last_stage = None

    def __call__(self, progress) -> None:
        stage_changed = progress.stage != self._last_stage
        self._last_stage = progress.stage
        complete = progress.total and progress.done == progress.total
        if self.enabled and (stage_changed or complete):
            total = f"/{progress.total}" if progress.total else ""
            print(f"kiln build: {progress.stage} {progress.done}{total} {progress.unit} "
                  f"{progress.message}".rstrip(), file=sys.stderr, flush=True)


def build_engine(config: ModelConfig, builder: BuilderClient, info: runtime_pb2.ServerInfo,
                 local_builder: bool, show_progress: bool = True) -> builder_pb2.BuildResult:
    """Builds (or finds) the engine for `config`. A local folder is passed by path to a builder
    on this machine and uploaded, content-addressed, to a remote one."""
    source = config.model_dir
    if not source.startswith("s3://"):
        folder = Path(source).resolve()
        if not folder.is_dir():
            raise InvalidArgument(f"model_dir {source} is not a folder")
        source = str(folder) if local_builder else builder.upload_folder(folder).uri
    request = builder_pb2.BuildRequest(source=source,
                                       settings=build_settings(config, info, local_builder))
    return builder.build(request, BuildProgressPrinter(show_progress))
