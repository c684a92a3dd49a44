"""SmolLM2's HF folder is made once even when two runs make it at the same time."""

from __future__ import annotations

from pathlib import Path

import transformers

from runtime_service import sample_model


class _FakeSaver:
    """Stands in for the model and tokenizer: writes the files save_pretrained would."""

    def __init__(self, rival_dest=None):
        self.rival_dest = rival_dest
        self.config = type("Config", (), {})()

    def save_pretrained(self, folder, **_):
        if self.rival_dest is not None:       # another run finishes first, mid-save
            self.rival_dest.mkdir(parents=True)
            (self.rival_dest / "config.json").write_text("{\"rival\": true}")
            (self.rival_dest / "model.safetensors").write_bytes(b"rival")
            self.rival_dest = None
        folder = Path(folder)
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"mine")


def test_a_rival_that_finished_first_is_kept_and_nothing_partial_remains(tmp_path, monkeypatch):
    dest = tmp_path / "models" / "SmolLM2"
    model = _FakeSaver(rival_dest=dest)
    monkeypatch.setattr(sample_model, "gguf_path", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: _FakeSaver())

    assert sample_model.smollm2_folder(dest) == dest
    assert (dest / "model.safetensors").read_bytes() == b"rival"
    assert [p.name for p in dest.parent.iterdir()] == ["SmolLM2"]
