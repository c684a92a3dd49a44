"""Full tensors from a checkpoint's or engine's rank files, so either can be rebuilt with another
split, dtype or set of limits. The inverse of the split in runtime_service.model.layers.linear: column
shards are rejoined section by section, row shards along the input features."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from runtime_service.format.engine_config import EngineConfig, Mapping
from runtime_service.format.engine_format import rank_file
from runtime_service.errors import InvalidRequest
from runtime_service.model.hf_convert import shard_for_rank
from runtime_service.model.layers.linear import local_rows, rank_rows
from runtime_service.model.llama import layer_index, sharding_rule
from runtime_service.format.model_config import ModelArgs


class KilnShards:
    """Read access to the unsplit Kiln tensors of a checkpoint or engine folder."""

    def __init__(self, folder: Path, config: EngineConfig):
        self.folder = Path(folder)
        self.args = config.model
        self.mapping = config.mapping
        self._ranks_of: dict[str, list[int]] = {}
        for rank in range(self.mapping.world_size):
            path = self.folder / rank_file(rank)
            if not path.is_file():
                raise InvalidRequest(f"{self.folder} is missing the weights of rank {rank} "
                                     f"({path.name})")
            try:
                with safe_open(path, framework="pt") as handle:
                    for name in handle.keys():
                        self._ranks_of.setdefault(name, []).append(rank)
            except SafetensorError as exc:
                raise InvalidRequest(f"corrupt weights file {path.name}: {exc}") from exc

    def names(self) -> set[str]:
        return set(self._ranks_of)

    def _read(self, rank: int, name: str) -> torch.Tensor:
        with safe_open(self.folder / rank_file(rank), framework="pt") as handle:
            return handle.get_tensor(name)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._ranks_of:
            raise InvalidRequest(f"weights are missing tensor {name!r}")
        holders = self._ranks_of[name]
        stage = min(self.mapping.pp_rank(r) for r in holders)
        ranks = sorted((r for r in holders if self.mapping.pp_rank(r) == stage),
                       key=self.mapping.tp_rank)
        rule, sections, units = sharding_rule(name, self.args)
        tp = self.mapping.tp_size
        if rule == "replicate" or tp == 1:
            return self._read(ranks[0], name)
        if len(ranks) != tp:
            raise InvalidRequest(f"tensor {name!r} is held by {len(ranks)} of {tp} tp ranks")
        shards = [self._read(r, name) for r in ranks]
        if rule == "row":
            # per-output-channel scales of a quantized row layer are whole on every rank
            return shards[0] if shards[0].dim() == 1 else torch.cat(shards, dim=1)
        local = [local_rows(s, tp, u) for s, u in zip(sections, units)]
        pieces = [shard.split(local, dim=0) for shard in shards]
        joined = []
        for i, (size, unit) in enumerate(zip(sections, units)):
            # each rank's rows of the section once (repeated KV heads: the first rank holding
            # each), less the zero rows that padded it (layers/linear.py local_rows)
            starts = {rank_rows(size, tp, r, unit)[0]: r for r in reversed(range(tp))}
            joined.append(torch.cat([pieces[starts[start]][i] for start in sorted(starts)],
                                    dim=0)[:size])
        return torch.cat(joined, dim=0)


def kiln_rank_tensors(source: KilnShards, args: ModelArgs, mapping: Mapping,
                      rank: int, transform=None) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (name, shard) rank `rank` of the new split loads; mirrors hf_convert.rank_tensors
    (and its `transform`)."""
    pp_rank = mapping.pp_rank(rank)
    layers = set(mapping.layer_range(args, rank))
    names = source.names()
    wanted = []
    if pp_rank == 0:
        wanted.append("embed_tokens.weight")
    wanted += sorted((n for n in names if layer_index(n) in layers),
                     key=lambda n: (layer_index(n), n))
    if pp_rank == mapping.pp_size - 1:
        wanted.append("norm.weight")
        if not (args.tie_word_embeddings and mapping.world_size == 1):
            wanted.append("lm_head.weight")
    for name in wanted:
        if name == "lm_head.weight" and name not in names:
            full = source.get("embed_tokens.weight")
        else:
            full = source.get(name)
        for out_name, out in (transform(name, full) if transform else ((name, full),)):
            yield out_name, shard_for_rank(out_name, out, args, mapping, rank)
