"""One tensor-parallel rank: loads its shard of an engine, runs a prefill, writes its logits.

Run as `python tp_worker.py ENGINE RANK WORLD PORT OUT` by test_sharded_engine_logits.py.
"""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from runtime_service.model.parallel import ParallelContext
from runtime_service.model.layers.attention import AttentionMetadata
from runtime_service.model.loader import load_model

TOKENS = [5, 17, 99, 3, 250, 8, 9]


def prefill_metadata(num_tokens: int, block_size: int = 4) -> AttentionMetadata:
    num_blocks = -(-num_tokens // block_size)
    return AttentionMetadata(
        positions=torch.arange(num_tokens), slot_mapping=torch.arange(num_tokens),
        query_start=torch.tensor([0, num_tokens]), seq_lens=torch.tensor([num_tokens]),
        block_tables=torch.tensor([list(range(num_blocks))]),
        token_seq_lens=torch.full((num_tokens,), num_tokens), query_lens_host=[num_tokens],
        seq_lens_host=[num_tokens], block_size=block_size)


def kv_caches(model, num_tokens: int, block_size: int = 4):
    args = model.args
    heads = args.kv_heads_per_rank(model.parallel.tp_size)
    blocks = -(-num_tokens // block_size) + 1
    return [(torch.zeros(blocks, block_size, heads, args.head_dim),
             torch.zeros(blocks, block_size, heads, args.head_dim)) for _ in model.layer_ids]


def main(engine: str, rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        parallel = ParallelContext(tp_rank=rank, tp_size=world, tp_group=dist.group.WORLD)
        model = load_model(engine, parallel=parallel, rank=rank).model
        ids = torch.tensor(TOKENS)
        with torch.no_grad():
            hidden = model(ids, prefill_metadata(len(TOKENS)), kv_caches(model, len(TOKENS)))
            logits = model.compute_logits(hidden)
        save_file({"logits": logits.contiguous()}, out)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
