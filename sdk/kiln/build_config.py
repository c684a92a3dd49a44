"""`BuildConfig` and `PluginConfig`: the engine's serving limits, with the HLAPI's field names.

Kiln builds with PyTorch, not TensorRT, so the fields split three ways, each listed below once:
limits the Builder honours (None takes its default), TensorRT compiler knobs that have no effect
in Kiln (accepted; a warning names each one set away from its default), and features that would
change results and are not built (refused with InvalidArgument).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import KW_ONLY, dataclass, field

from kiln._checks import Checked, boolean, instance, integer
from kiln.errors import InvalidArgument

DTYPES = ("float32", "float16", "bfloat16")


class NoEffectWarning(UserWarning):
    """A TensorRT-only option was set; Kiln accepts it and it changes nothing."""


def warn_no_effect(owner: str, names) -> None:
    for name in names:
        warnings.warn(f"{owner}.{name} tunes TensorRT's compiler and has no effect in Kiln",
                      NoEffectWarning, stacklevel=3)


@dataclass(slots=True)
class PluginConfig(Checked):
    """TensorRT plugin switches. `streamingllm` turns StreamingLLM on (as LLM(streaming_llm=True)
    does); Kiln always runs paged KV, paged context attention and no input padding, so turning
    those off is refused; the rest pick TensorRT kernels and only warn."""

    gpt_attention_plugin: str | None = "auto"
    gemm_plugin: str | None = None
    lookup_plugin: str | None = None
    lora_plugin: str | None = None
    moe_plugin: str | None = "auto"
    context_fmha: bool = True
    context_fmha_fp32_acc: bool = False
    paged_kv_cache: bool = True
    remove_input_padding: bool = True
    use_custom_all_reduce: bool = True
    multi_block_mode: bool = False
    enable_xqa: bool = True
    tokens_per_block: int = 64
    use_paged_context_fmha: bool = False
    use_fp8_context_fmha: bool = False
    use_context_fmha_for_generation: bool = False
    multiple_profiles: bool = False
    paged_state: bool = True
    streamingllm: bool = False

    def check(self) -> None:
        """Refuses what Kiln cannot honour and warns for each TensorRT-only switch changed."""
        for name in ("paged_kv_cache", "remove_input_padding"):
            if not getattr(self, name):
                raise InvalidArgument(f"PluginConfig.{name}=False is not available: Kiln "
                                      f"always runs a paged KV cache without input padding")
        defaults = PluginConfig()
        warn_no_effect("PluginConfig", [
            f.name for f in dataclasses.fields(self)
            if f.name != "streamingllm" and getattr(self, f.name) != getattr(defaults, f.name)])


PluginConfig._checks = {"tokens_per_block": integer(1, 1 << 16), "streamingllm": boolean,
                        "paged_kv_cache": boolean, "remove_input_padding": boolean}


def _dtype(name: str, value):
    if value is not None and value not in DTYPES:
        raise InvalidArgument(f"{name} must be one of {', '.join(DTYPES)} or None, got {value!r}")
    return value


@dataclass(slots=True)
class BuildConfig(Checked):
    """The engine's limits; None takes the Builder's default."""

    max_input_len: int | None = None
    max_output_len: int | None = None
    max_batch_size: int | None = None
    max_beam_width: int | None = None
    max_num_tokens: int | None = None
    opt_num_tokens: int | None = None
    max_prompt_embedding_table_size: int = 0
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    strongly_typed: bool = False
    builder_opt: int | None = None
    profiling_verbosity: str = "layer_names_only"
    enable_debug_output: bool = False
    max_draft_len: int = 0
    use_refit: bool = False
    input_timing_cache: str | None = None
    output_timing_cache: str | None = None
    lora_config: object = None
    auto_parallel_config: object = None
    weight_sparsity: bool = False
    plugin_config: PluginConfig = field(default_factory=PluginConfig)
    max_encoder_input_len: int = 1024
    use_fused_mlp: bool = False
    dry_run: bool = False
    visualize_network: bool = False
    max_seq_len: int | None = None
    _: KW_ONLY
    dtype: str | None = None

    @classmethod
    def from_dict(cls, config: dict, plugin_config: PluginConfig | None = None) -> "BuildConfig":
        """A BuildConfig from a dict of its fields (an engine's build section); unknown keys
        are refused rather than dropped."""
        config = dict(config)
        plugins = config.pop("plugin_config", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise InvalidArgument(f"BuildConfig has no field(s) {', '.join(unknown)}")
        build = cls(**config)
        if plugin_config is not None:
            build.plugin_config = plugin_config
        elif isinstance(plugins, dict):
            build.plugin_config = PluginConfig(**plugins)
        return build

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["plugin_config"] = dataclasses.asdict(self.plugin_config)
        return data

    @property
    def seq_len_limit(self) -> int | None:
        """max_seq_len, or max_input_len + max_output_len in the older spelling."""
        if self.max_seq_len is not None:
            return self.max_seq_len
        if self.max_output_len is not None:
            return (self.max_input_len or 0) + self.max_output_len
        return None

    def check(self) -> None:
        """Refuses features that are not built and warns for each compiler-only knob set."""
        refused = [(name, why) for name, value, why in (
            ("max_prompt_embedding_table_size", self.max_prompt_embedding_table_size,
             "prompt tuning"),
            ("max_draft_len", self.max_draft_len, "speculative decoding"),
            ("lora_config", self.lora_config, "LoRA adapters"),
            ("dry_run", self.dry_run, "a build without weights")) if value]
        if refused:
            name, why = refused[0]
            raise InvalidArgument(f"BuildConfig.{name}: {why} is not available in Kiln; "
                                  f"leave it at its default")
        defaults = BuildConfig()
        warn_no_effect("BuildConfig", [
            name for name in ("opt_num_tokens", "strongly_typed", "builder_opt",
                              "profiling_verbosity", "enable_debug_output", "use_refit",
                              "input_timing_cache", "output_timing_cache", "weight_sparsity",
                              "max_encoder_input_len", "use_fused_mlp", "visualize_network",
                              "auto_parallel_config", "gather_context_logits",
                              "gather_generation_logits")
            if getattr(self, name) != getattr(defaults, name)])
        self.plugin_config.check()


_limit = integer(1, 1 << 20, optional=True)
BuildConfig._checks = {
    "dtype": _dtype, "max_input_len": _limit, "max_output_len": _limit,
    "max_batch_size": _limit, "max_beam_width": integer(1, 64, optional=True),
    "max_num_tokens": _limit, "max_seq_len": _limit,
    "max_prompt_embedding_table_size": integer(0, 1 << 30), "max_draft_len": integer(0, 1 << 10),
    "gather_context_logits": boolean, "gather_generation_logits": boolean,
    "strongly_typed": boolean, "dry_run": boolean,
    "plugin_config": instance(PluginConfig),
}
