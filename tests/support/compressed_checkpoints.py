"""Pre-quantized checkpoints made locally with compressed-tensors' own API (nothing can be
downloaded): the peer's format for Kiln's pre-quantized loading tests and quality benchmark."""

from __future__ import annotations

from pathlib import Path


def compressed_fp8_checkpoint(source: Path, out: Path, weight_strategy: str = "channel",
                              quantize_head: bool = False) -> Path:
    """`source` (an HF folder) quantized to compressed-tensors' FP8_DYNAMIC scheme (E4M3 weights
    with per-channel scales, dynamic per-token E4M3 activations; lm_head left out) and saved
    float-quantized, as llmcompressor saves it. Weight scales come from compressed-tensors'
    calculate_qparams over each row's range (the job llmcompressor's observers do).
    `weight_strategy="tensor"`: one weight scale per linear, over its whole range;
    `quantize_head`: lm_head quantized too (not left out)."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, apply_quantization_config,
                                                 preset_name_to_scheme)
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32).eval()
    scheme = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    scheme.weights.strategy = weight_strategy
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": scheme}, ignore=[] if quantize_head else ["lm_head"]))
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None:
            w = module.weight.data
            if weight_strategy == "channel":
                low, high = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
            else:
                low, high = w.amin().reshape(1), w.amax().reshape(1)
            scale, _ = calculate_qparams(low, high, scheme.weights)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
    compressor = ModelCompressor.from_pretrained_model(model, "float-quantized")
    compressor.compress_model(model)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    return Path(out)
