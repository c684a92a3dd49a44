"""Load -> convert -> shard -> write: a source folder becomes a checkpoint or an engine folder.

Conversion (fused QKV and gate/up) and the per-rank split are the runtime's own
(`hf_convert.rank_tensors`, `layers.linear`), so the shards are exactly what its parallel layers
load. Tensors stream one group at a time; a rank's file is written once its tensors are ready,
cast to the build dtype on the way. Everything is written into a `.partial-` folder and renamed
into place, and an engine's manifest is written last.

An engine build holds an exclusive flock on its partial folder while it fills it
(`store.atomic_folder`), so the partial folder a killed build leaves behind (SIGKILL, OOM) is
told apart from a live build's and removed when the same engine is next built.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from runtime_service.format.engine_config import EngineConfig, Mapping, QuantConfig
from runtime_service.format.linear_names import LINEARS
from runtime_service.format.model_config import ModelArgs
from runtime_service.format.engine_format import (CHECKPOINT_FORMAT_NAME, CONFIG, FORMAT_NAME,
                                           TOKENIZER_DIR, Manifest, build_manifest, rank_file,
                                           write_manifest)
from runtime_service.engine.token_decoder import DECODER_FILE, save_decoder
from runtime_service.engine.tokenizer_load import load_tokenizer
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.model.hf_convert import SafetensorsFolder, rank_tensors
from runtime_service.model.llama import layer_index
from runtime_service.model.loader import DTYPES
from runtime_service.store.atomic_folder import fill_then_rename, remove_abandoned_partials

from builder_service import BUILDER_VERSION
from builder_service.reshard import KilnShards, kiln_rank_tensors
from builder_service.calibration import CalibrationData, load_calibration
from builder_service.quantizer import quantizing
from builder_service.settings import check_quant_supported
from builder_service.sources import TOKENIZER_FILES, ResolvedSource

log = logging.getLogger("kiln.builder")


@dataclass(frozen=True)
class BuildProgress:
    stage: str
    done: int = 0
    total: int = 0
    unit: str = ""
    message: str = ""


ProgressFn = Callable[[BuildProgress], None]


def _ignore(_: BuildProgress) -> None:
    pass


def _source_rank_tensors(source: ResolvedSource, target: EngineConfig, dtype: torch.dtype | None,
                         calibration: CalibrationData | None, progress: ProgressFn):
    """A function rank -> iterator of (name, shard) for the target split, whatever the source,
    quantized as the target asks (calibrating first, for AWQ)."""
    args, mapping = target.model, target.mapping
    transform = None
    if source.config.quant.algo != "NONE":
        check_same_quant(source.config.quant, target.quant, args)
    else:
        unquantized = target.quant.unquantized_linears(args)
        replaced = None
        if target.quant.algo == "W4A16_AWQ":
            from builder_service.awq import awq_rewrite
            replaced = awq_rewrite(
                source.folder, source.kind, target.quant, calibration or load_calibration(),
                lambda done, total, message: progress(
                    BuildProgress("calibrate", done, total, "layers", message)), unquantized)
        transform = quantizing(target.quant, dtype or torch.float32, replaced, unquantized)
    if source.kind == "hf":
        weights = SafetensorsFolder(source.folder)
        return lambda rank: rank_tensors(weights, args, mapping, rank, transform,
                                         source.config.quant)
    shards = KilnShards(source.folder, source.config)
    return lambda rank: kiln_rank_tensors(shards, args, mapping, rank, transform)


def check_same_quant(have: QuantConfig, want: QuantConfig, args: ModelArgs) -> None:
    """An already quantized source is re-split or re-limited, never quantized again."""
    if (have.algo, have.group_size) != (want.algo, want.group_size):
        raise FailedPrecondition(
            f"the source is already quantized ({have.algo}, group_size {have.group_size}); "
            f"build it with that quantization, or from the unquantized model for {want.algo}")
    kept, wanted = have.unquantized_linears(args), want.unquantized_linears(args)
    if kept != wanted:
        raise FailedPrecondition(
            f"the source is already quantized with {len(kept)} linear(s) left unquantized "
            f"({', '.join(sorted(kept)[:4]) or 'none'}); the build asks for {len(wanted)} "
            f"({', '.join(sorted(wanted)[:4]) or 'none'}). Build it with the source's "
            "exclude_modules, or from the unquantized model")


def _kept_message(unquantized: frozenset[str], args: ModelArgs) -> str:
    total = args.num_layers * len(LINEARS)
    listed = sorted(unquantized, key=lambda n: (layer_index(n), n))
    shown = ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")
    return f"exclude_modules keeps {len(unquantized)} of {total} linears unquantized: {shown}"


def _write_rank(tensors: Iterator[tuple[str, torch.Tensor]], path: Path, dtype: torch.dtype | None,
                on_layer: Callable[[], None]) -> None:
    out: dict[str, torch.Tensor] = {}
    seen_storage = set()
    last_layer = None
    try:
        for name, tensor in tensors:
            if dtype is not None and name.endswith((".weight", ".bias")):
                tensor = tensor.to(dtype)     # quantized codes and scales keep their own dtype
            tensor = tensor.contiguous()
            if tensor.untyped_storage().data_ptr() in seen_storage:
                tensor = tensor.clone()  # safetensors refuses tensors that share memory
            seen_storage.add(tensor.untyped_storage().data_ptr())
            out[name] = tensor
            index = layer_index(name)
            if index is not None and index != last_layer:
                if last_layer is not None:
                    on_layer()
                last_layer = index
    except SafetensorError as exc:
        raise InvalidRequest(f"corrupt source weights: {exc}") from exc
    if last_layer is not None:
        on_layer()
    save_file(out, str(path), metadata={"format": "pt"})


def _copy_tokenizer(source: ResolvedSource, out: Path) -> str:
    """Copies the source's tokenizer files into `out/tokenizer` and saves the engine core's
    decoder beside them (engine/token_decoder.py); returns what it did, for the progress line.
    Files transformers cannot read are copied as before, without a decoder: an engine may be
    served on token ids alone, and a pod that needs text says what is wrong as it starts."""
    src = source.folder if source.kind == "hf" else source.folder / TOKENIZER_DIR
    names = ([n for n in TOKENIZER_FILES if (src / n).is_file()] if source.kind == "hf"
             else sorted(p.name for p in src.glob("*")
                         if p.is_file() and p.name != DECODER_FILE) if src.is_dir() else [])
    if not names:
        return "no tokenizer"
    (out / TOKENIZER_DIR).mkdir()
    for name in names:
        shutil.copyfile(src / name, out / TOKENIZER_DIR / name)
    try:
        why_not = save_decoder(load_tokenizer(out / TOKENIZER_DIR), out / TOKENIZER_DIR)
    except InvalidRequest as exc:   # it names the build's folder; the user knows the source
        why_not = str(exc).replace(str(out / TOKENIZER_DIR), str(src))
    if why_not:
        log.warning("no decoder saved for the engine core (it will load transformers): %s",
                    why_not)
    return f"{len(names)} tokenizer file(s)" + (" and the core's decoder" if not why_not else "")


def write_model_folder(source: ResolvedSource, target: EngineConfig, out: Path,
                       dtype: str | None, progress: ProgressFn = _ignore,
                       calibration: CalibrationData | None = None) -> None:
    """Writes config.json, rank{r}.safetensors and tokenizer/ for `target` into `out`;
    `calibration` feeds AWQ (the default corpus when None)."""
    args, mapping = target.model, target.mapping
    mapping.check_divides(args)
    target.quant.check_fits(args, mapping.tp_size)
    torch_dtype = DTYPES[dtype] if dtype else None
    tensors_for = _source_rank_tensors(source, target, torch_dtype, calibration, progress)
    per_rank = len(mapping.layer_range(args, 0))
    total = per_rank * mapping.world_size
    done = 0
    kept = target.quant.unquantized_linears(args)
    progress(BuildProgress("convert", 0, total, "layers", "fusing QKV and gate/up, splitting"
                           + (f"; {_kept_message(kept, args)}" if kept else "")))
    for rank in range(mapping.world_size):
        def on_layer():
            nonlocal done
            done += 1
            progress(BuildProgress("convert", done, total, "layers", f"rank {rank}"))
        _write_rank(tensors_for(rank), out / rank_file(rank), torch_dtype, on_layer)
    copied = _copy_tokenizer(source, out)
    progress(BuildProgress("write", 1, 1, "", f"config.json and {copied}"))
    (out / CONFIG).write_text(target.to_json())


def convert_checkpoint(source: ResolvedSource, out: Path, tp_size: int = 1, pp_size: int = 1,
                       dtype: str | None = None, progress: ProgressFn = _ignore) -> EngineConfig:
    """`kiln convert`: a Kiln checkpoint (no build limits, no manifest) in folder `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InvalidRequest(f"output folder {out} exists and is not empty")
    target = EngineConfig(model=source.config.model, quant=source.config.quant,
                          mapping=Mapping(tp_size, pp_size), format=CHECKPOINT_FORMAT_NAME)

    def fill(partial: Path) -> None:
        write_model_folder(source, target, partial, dtype, progress)
        if out.exists():
            out.rmdir()                 # empty, checked above

    fill_then_rename(out, fill, finished=lambda _: False)   # a folder that appeared meanwhile: error
    return target


def build_engine_folder(source: ResolvedSource, target: EngineConfig, engine_key: str,
                        out: Path, progress: ProgressFn = _ignore,
                        calibration: CalibrationData | None = None) -> Manifest:
    """An engine (manifest last) in folder `out`, replacing anything there. The partial folders
    of earlier builds of `out` that died are removed first."""
    if target.build is None or target.target is None or target.format != FORMAT_NAME:
        raise InvalidRequest("an engine config needs build limits, a target and format "
                             f"{FORMAT_NAME!r}")
    check_quant_supported(target.quant)
    out = Path(out)
    # a build of this engine that died (SIGKILL, OOM) left its partial folder unlocked; the
    # caller holds the engine key's lock, so no live build of it is touched
    remove_abandoned_partials(out.parent, out.name)
    manifest = None

    def fill(partial: Path) -> None:
        nonlocal manifest
        write_model_folder(source, target, partial, target.build.dtype, progress, calibration)
        progress(BuildProgress("manifest", 0, 1, "", "hashing engine files"))
        manifest = build_manifest(partial, engine_key, BUILDER_VERSION)
        write_manifest(partial, manifest)
        progress(BuildProgress("manifest", 1, 1, "", f"{len(manifest.files)} files"))
        if out.exists():
            shutil.rmtree(out)          # an older folder is replaced only by a complete one

    fill_then_rename(out, fill)
    return manifest


__all__ = ["BuildProgress", "ProgressFn", "write_model_folder", "convert_checkpoint",
           "build_engine_folder"]
