"""How generate / generate_async read their inputs, as the HLAPI allows them: one prompt or a
batch (strings or token-id lists), one SamplingConfig or one per prompt, and stop / bad words as
one word (a flat id list) or a list of words. Pure; no I/O.
"""

from __future__ import annotations

from kiln.errors import InvalidArgument
from kiln.sampling import SamplingConfig

MAX_BATCH = 4096


def is_token_ids(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def is_one_prompt(value) -> bool:
    return isinstance(value, str) or (is_token_ids(value) and len(value) > 0)


def batch(prompts) -> list:
    """A list of prompts from one prompt or an iterable of them."""
    if is_one_prompt(prompts):
        return [prompts]
    if isinstance(prompts, (bytes, dict)) or not hasattr(prompts, "__iter__"):
        raise InvalidArgument(f"prompts must be a string, token ids or a list of either, got "
                              f"{type(prompts).__name__}")
    prompts = list(prompts)
    if not prompts or len(prompts) > MAX_BATCH:
        raise InvalidArgument(f"generate takes 1 to {MAX_BATCH} prompts, got {len(prompts)}")
    return prompts


def pair_configs(prompts: list, sampling_config) -> list[tuple]:
    """(prompt, config) pairs: one config for all, one per prompt, or, for a single prompt,
    one request per config."""
    if not isinstance(sampling_config, (list, tuple)):
        check_config(sampling_config)
        return [(p, sampling_config) for p in prompts]
    configs = list(sampling_config)
    for config in configs:
        check_config(config)
    if len(prompts) == 1 and configs:
        return [(prompts[0], c) for c in configs]
    if len(configs) != len(prompts):
        raise InvalidArgument(f"give one sampling_config, or one per prompt: {len(configs)} "
                              f"configs for {len(prompts)} prompts")
    return list(zip(prompts, configs))


def check_config(config) -> None:
    if config is not None and not isinstance(config, SamplingConfig):
        raise InvalidArgument(f"sampling_config must be a SamplingConfig (or a list of them), "
                              f"got {type(config).__name__}; streaming is generate_async's "
                              f"fourth parameter")


def words(value, name: str) -> list | None:
    """A list of words from one word (token ids) or a list of words (strings or id lists)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if is_token_ids(value) and value:
        return [list(value)]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InvalidArgument(f"{name} must be token ids, a string or a list of either, got "
                          f"{type(value).__name__}")
