"""Builds a rank's LlamaModel from a folder holding an HF model, a Kiln checkpoint or an engine.

The model is built on the meta device (no memory, no initialisation) and each parameter becomes
the loaded tensor itself: an engine's weights go from the mapped file to the target device in one
copy (weights_file.py), already in the serving dtype, with no host-side model in between.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from runtime_service.model.parallel import SINGLE_RANK, ParallelContext
from runtime_service.format.engine_config import BuildConfig, EngineConfig, Mapping
from runtime_service.format.engine_format import (TOKENIZER_DIR, detect_model_kind, rank_file,
                                           read_engine_config)
from runtime_service.errors import FailedPrecondition, InvalidRequest
from runtime_service.model.hf_convert import (SafetensorsFolder, check_layer_count, rank_tensors,
                                              read_hf_config)
from runtime_service.model.layers.quantized_linear import WeightQuant, pack_for_device
from runtime_service.model.llama import LlamaModel
from runtime_service.model.prequantized import (check_zero_points, quant_config_of,
                                                stored_unquantized)
from runtime_service.model.weights_file import read_tensors
from runtime_service.format.model_config import ModelArgs

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    model: LlamaModel
    config: EngineConfig
    kind: str                  # "hf", "checkpoint" or "engine"
    tokenizer_dir: Path | None
    dtype: torch.dtype


def config_for_folder(folder: str | Path) -> tuple[str, EngineConfig]:
    """The folder's kind and its EngineConfig (an HF folder gets an unsplit, unquantized one)."""
    kind = detect_model_kind(folder)
    if kind == "hf":
        hf = read_hf_config(Path(folder))
        args = ModelArgs.from_hf_config(hf)
        quant = quant_config_of(hf)
        names = SafetensorsFolder(Path(folder)).names()
        check_layer_count(names, args.num_layers)
        if quant is None:
            return kind, EngineConfig(model=args)
        check_zero_points(hf, names)
        kept = stored_unquantized(names, args.num_layers)
        return kind, EngineConfig(model=args, quant=dataclasses.replace(
            quant, exclude_modules=kept))
    return kind, read_engine_config(folder)


def tokenizer_dir_for(folder: Path, kind: str) -> Path | None:
    candidate = folder if kind == "hf" else folder / TOKENIZER_DIR
    has_files = any((candidate / name).is_file()
                    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    return candidate if has_files else None


def load_model(folder: str | Path, device: str | torch.device = "cpu", dtype: str | None = None,
               parallel: ParallelContext = SINGLE_RANK, rank: int = 0,
               attention_backend=None) -> LoadedModel:
    """Loads rank `rank`'s weights into a model on `device`; dtype defaults to the build dtype."""
    folder = Path(folder)
    kind, config = config_for_folder(folder)
    mapping = config.mapping
    if parallel.tp_size * parallel.pp_size != mapping.world_size and kind != "hf":
        raise FailedPrecondition(
            f"{folder} was split for {mapping.world_size} ranks (tp {mapping.tp_size}, pp "
            f"{mapping.pp_size}); the runtime started {parallel.tp_size * parallel.pp_size}")
    if kind == "hf":
        mapping = Mapping(parallel.tp_size, parallel.pp_size)
        mapping.check_divides(config.model)
        config = EngineConfig(model=config.model, quant=config.quant, mapping=mapping)
    dtype_name = dtype or (config.build.dtype if config.build else None)
    args = config.model
    quant = WeightQuant.for_algo(config.quant.algo, config.quant.group_size)
    device = _concrete(torch.device(device))
    with torch.device("meta"):
        model = LlamaModel(args, mapping.layer_range(args, rank), parallel, attention_backend,
                           quant, config.quant.unquantized_linears(args))
    tensors = _read_rank_tensors(folder, kind, config, mapping, rank, device)
    target_dtype = DTYPES[dtype_name] if dtype_name else _stored_dtype(tensors)
    model.kv_cache_dtype = config.quant.kv_cache_dtype
    _assign(model, tensors, target_dtype)
    model.tie_weights_if_needed()
    _materialize_buffers(model, device, target_dtype)
    if quant is not None:
        for module in model.modules():
            if getattr(module, "quant", None) is not None:
                pack_for_device(module, quant)
    model.eval()
    return LoadedModel(model, config, kind, tokenizer_dir_for(folder, kind), target_dtype)


def _concrete(device: torch.device) -> torch.device:
    """cuda -> cuda:<current>, so tensors and the model agree on one index."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _read_rank_tensors(folder: Path, kind: str, config: EngineConfig, mapping: Mapping,
                       rank: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The rank's tensors on `device` as stored. An HF folder is converted on the host first
    (development only); an engine's file is mapped and copied once."""
    if kind == "hf":
        return {name: tensor.to(device) for name, tensor in rank_tensors(
            SafetensorsFolder(folder), config.model, mapping, rank, quant=config.quant)}
    path = folder / rank_file(rank)
    if not path.is_file():
        raise InvalidRequest(f"{folder} has no weights for rank {rank} ({path.name})")
    tensors = dict(read_tensors(path, device))
    if not tensors:
        raise InvalidRequest(f"{path.name} holds no tensors")
    return tensors


def _materialize_buffers(model: LlamaModel, device: torch.device, dtype: torch.dtype) -> None:
    """Moves the buffers the meta-device build made on the host (rotary's inverse frequencies)
    to the device, floating ones cast to the model's dtype as `Module.to` would cast them."""
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                raise RuntimeError(f"the loader cannot materialize buffer {name!r} of "
                                   f"{type(module).__name__}")
            setattr(module, name, buffer.to(device=device, dtype=dtype if buffer.is_floating_point()
                                            else buffer.dtype))


def _stored_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """The folder's float dtype, read off a norm (every stage has them; codes may come first)."""
    return next(t.dtype for n, t in tensors.items() if n.endswith("norm.weight"))


def _assign(model: LlamaModel, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Makes each given tensor the parameter of its name, cast to the engine `dtype`; every
    parameter must be given, with its shape. Quantized codes and per-channel scales
    (`keeps_dtype`) are not cast: their stored dtype must be the one the model expects."""
    params = dict(model.named_parameters())
    tied = model.args.tie_word_embeddings and "lm_head.weight" not in tensors
    for name, param in params.items():
        if name == "lm_head.weight" and tied:
            continue
        if name not in tensors:
            raise InvalidRequest(f"weights are missing tensor {name!r}")
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise InvalidRequest(
                f"tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(param.shape)}")
        if getattr(param, "keeps_dtype", False):
            if tensor.dtype != param.dtype:
                raise InvalidRequest(f"tensor {name!r} is {tensor.dtype}, the quantized model "
                                     f"expects {param.dtype}")
        else:
            tensor = tensor.to(dtype)
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        loaded = nn.Parameter(tensor, requires_grad=False)
        loaded.keeps_dtype = getattr(param, "keeps_dtype", False)
        setattr(owner, leaf, loaded)
    extra = set(tensors) - set(params)
    if extra:
        raise InvalidRequest(f"weights hold unexpected tensors: {sorted(extra)[:5]}")


def default_build_config(config: EngineConfig) -> BuildConfig:
    """Serving limits for a folder that carries none (an HF model or a checkpoint)."""
    if config.build is not None:
        return config.build
    model = config.model
    reach = model.max_position_embeddings
    if model.rope_scaling.rope_type == "dynamic":
        reach = int(reach * model.rope_scaling.factor)   # dynamic NTK exists to extrapolate
    max_seq = min(reach, 4096)
    return BuildConfig(dtype="float32", max_seq_len=max_seq, max_input_len=max_seq,
                       max_num_tokens=max(max_seq, 2048), max_beam_width=UNBUILT_MAX_BEAM_WIDTH)


UNBUILT_MAX_BEAM_WIDTH = 4   # an unbuilt folder has no build limit; this bounds beam memory
