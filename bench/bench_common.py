"""What every benchmark here records beside its figures (where it ran from, on which commit), and
the launch-shape sweep the kernel benchmarks share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (str(REPO), str(REPO / "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)


def git_commit() -> str:
    """The short HEAD commit, marked when the engine has uncommitted changes."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "runtime_service"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    return done.stdout.strip() + ("+uncommitted runtime_service changes" if dirty else "")


def device_name(device: str) -> str:
    """The GPU's name (a benchmark's figures belong to one card), or the device as given."""
    if device != "cuda":
        return device
    import torch
    return torch.cuda.get_device_name()


def sweep_into(result: dict, points, time_us, log) -> None:
    """Times `time_us(point)` for each (name, point) of `points` into result["sweep_us"],
    fastest first, and names the fastest (`kiln_best_config`, `kiln_best_us`); a point this
    GPU cannot run is logged and left out."""
    timings = {}
    for name, point in points:
        try:
            timings[name] = time_us(point)
        except Exception as exc:  # noqa: BLE001 - a config this GPU cannot run is reported
            log(f"  {name} failed: {exc!r}"[:200])
    ranked = sorted(timings.items(), key=lambda item: item[1])
    result["sweep_us"] = dict(ranked)
    result["kiln_best_config"], result["kiln_best_us"] = ranked[0]


def aligned_rows(rows) -> list[str]:
    """Rows of cells (the header first) as lines with every column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]


def save_synthetic_tokenizer(folder: Path, vocab_size: int, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer of `vocab_size` tokens (random merges, no download), saved as
    tokenizer.json + tokenizer_config.json in `folder`: what a real engine carries, at the size
    that matters for a start. At 128,000 tokens its tokenizer.json is 11 MB (Llama-3's: 9 MB)
    and it loads in about 0.5 s after transformers' 1.7 s import (this CPU)."""
    import json
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    rng = random.Random(seed)
    vocab = {symbol: index for index, symbol in
             enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokens, merges = list(vocab), []
    while len(vocab) < vocab_size:
        first = tokens[rng.randrange(len(tokens))]
        second = tokens[rng.randrange(min(len(tokens), 4000))]
        merged = first + second
        if len(merged) <= 12 and merged not in vocab:
            vocab[merged] = len(vocab)
            tokens.append(merged)
            merges.append((first, second))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder
