"""Snap-back of a re-quantized fine-tune (tinyllm_utils.edge.snapback) on tiny synthetic GGUFs, and the PEFT LoRA ->
GGUF adapter (tinyllm_utils.edge.lora_adapter): names, shapes and metadata as llama.cpp's loader checks them, and
on the tiny random Gemma 3 (tests/tiny_model.py) base + adapter computing what the merged model computes.
"""

import json

import numpy as np
import pytest

from tinyllm_utils.edge.lora_adapter import adapter_tensors, export_deployment, export_lora_adapter
from tinyllm_utils.edge.snapback import block_steps, snapback_report

ROWS, COLS = 8, 64  # two 32-weight blocks per row


def _write(path, tensors: dict, qtype):
    """A GGUF holding `tensors` (name -> float32 (rows, cols)) quantized to `qtype` with gguf's quantizer."""
    import gguf
    from gguf.quants import quantize

    writer = gguf.GGUFWriter(str(path), "gemma3")
    for name, data in tensors.items():
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(name, quantize(data, qtype))
        else:
            writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return path


def _on_grid(qtype, seed=0):
    """Base weights lying exactly on `qtype`'s grid (quantized, then de-quantized), like the embedded base."""
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(seed).normal(0, 0.02, (ROWS, COLS)).astype(np.float32)
    return dequantize(quantize(w, qtype), qtype).astype(np.float32)


def _steps(w, qtype):
    from gguf.quants import quantize

    blocks = quantize(w, qtype).reshape(-1, 34)  # Q8_0: 2-byte scale + 32 int8
    return block_steps(blocks, qtype).reshape(w.shape)


def _delta(w, steps, size):
    """A delta of `size` quantization steps towards zero on every weight but each block's largest, which sets the
    block's scale (moving it, or past it, would re-scale the whole block: not the effect under test)."""
    delta = -np.sign(w) * size * steps
    blocks = np.abs(w).reshape(-1, 32)
    keep = (blocks == blocks.max(axis=1, keepdims=True)).reshape(w.shape)
    delta[keep] = 0
    return delta.astype(np.float32)


def _report(tmp_path, base, finetuned, qtype):
    import gguf

    f32 = gguf.GGMLQuantizationType.F32
    paths = [_write(tmp_path / f"{n}.gguf", {"blk.0.attn_q.weight": w}, t) for n, w, t in
             (("base_q", base, qtype), ("ft", finetuned, f32), ("ft_q", finetuned, qtype))]
    return snapback_report(*paths)


def test_block_steps_are_the_grid_spacing():
    """De-quantized Q8_0 / Q4_0 values are whole multiples of the step block_steps reports."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(1).normal(0, 0.02, (ROWS, COLS)).astype(np.float32)
    for qtype, size in ((T.Q8_0, 34), (T.Q4_0, 18)):
        blocks = quantize(w, qtype).reshape(-1, size)
        values = dequantize(blocks, qtype).reshape(-1, 32)
        ratio = values / block_steps(blocks, qtype)
        assert np.allclose(ratio, np.round(ratio), atol=1e-3)


def test_delta_under_half_a_step_snaps_back(tmp_path):
    from gguf import GGMLQuantizationType as T

    base = _on_grid(T.Q8_0)
    finetuned = base + _delta(base, _steps(base, T.Q8_0), 0.3)
    overall = _report(tmp_path, base, finetuned, T.Q8_0)["overall"]
    assert overall["identical_bytes"] == 1.0 and overall["identical_blocks"] == 1.0
    assert overall["survival"] == 0.0 and overall["kept"] == 0.0 and overall["changed_weights"] == 0.0
    assert overall["over_half_step"] == 0.0 and 0.25 < overall["delta_steps_rms"] < 0.3


def test_delta_over_a_step_survives(tmp_path):
    from gguf import GGMLQuantizationType as T

    base = _on_grid(T.Q8_0)
    finetuned = base + _delta(base, _steps(base, T.Q8_0), 2.2)  # rounds to 2 steps
    overall = _report(tmp_path, base, finetuned, T.Q8_0)["overall"]
    assert overall["identical_blocks"] == 0.0
    assert overall["kept"] == pytest.approx(2 / 2.2, abs=0.02)
    assert overall["survival"] == pytest.approx(2 / 2.2, abs=0.02)
    assert overall["over_half_step"] > 0.9


def _kept(base, delta, qtype):
    """`kept` and `survival` (snapback's definitions) of quantizing base + delta against quantizing base."""
    from gguf.quants import dequantize, quantize

    moved = dequantize(quantize(base + delta, qtype), qtype) - dequantize(quantize(base, qtype), qtype)
    return float((moved * delta).sum() / (delta * delta).sum()), float(np.linalg.norm(moved) / np.linalg.norm(delta))


def _random_delta(w, steps, size, seed=1):
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], w.shape)
    return _delta(w, steps, size) * -np.sign(w) * signs  # random signs, each block's largest weight untouched


def test_off_grid_base_keeps_the_delta_on_average():
    """A base that is not on the grid (trained in full precision): a delta of 0.3 steps moves rounding decisions
    in proportion to its size, so the quantized change carries it on average (kept ~ 1), plus rounding noise."""
    from gguf import GGMLQuantizationType as T

    w = np.random.default_rng(0).normal(0, 0.02, (64, 4096)).astype(np.float32)
    kept, survival = _kept(w, _random_delta(w, _steps(w, T.Q8_0), 0.3), T.Q8_0)
    assert kept == pytest.approx(1.0, abs=0.1) and survival > 1.2


def test_q5_0_grid_to_q4_0_amplifies_the_delta():
    """Where the base is on the Q5_0 grid, the Q4_0 grid is every other Q5_0 point (same block maximum, scale
    / -8 instead of / -16): half the weights sit on a rounding tie that any delta, however small, decides in its
    own direction by a whole 4-bit step."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    w = np.random.default_rng(0).normal(0, 0.02, (64, 4096)).astype(np.float32)
    w5 = dequantize(quantize(w, T.Q5_0), T.Q5_0).astype(np.float32)
    steps4 = block_steps(quantize(w5, T.Q4_0).reshape(-1, 18), T.Q4_0).reshape(w.shape)
    ratio = w5 / steps4
    assert np.isclose(np.abs(ratio - np.floor(ratio) - 0.5), 0, atol=1e-4).mean() > 0.4  # ties
    kept, survival = _kept(w5, _random_delta(w5, steps4, 0.05), T.Q4_0)
    assert kept > 3 and survival > 5


# --------------------------------------------------------------------------------------------- the adapter


def _peft_folder(folder, hidden=64, inter=128, r=4, rslora=False, token_ids=(106,)):
    """A PEFT LoRA folder for a 2-layer Gemma 3 (q_proj and down_proj adapted, embedding rows trained)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(2):
        for module, (n_in, n_out) in {"self_attn.q_proj": (hidden, hidden), "mlp.down_proj": (inter, hidden)}.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(size=(r, n_in)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(size=(n_out, r)).astype(np.float32)
    tensors["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"] = \
        rng.normal(size=(len(token_ids), hidden)).astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 8, "use_rslora": rslora, "use_dora": False,
        "target_modules": ["q_proj", "down_proj"], "trainable_token_indices": list(token_ids)}))
    return folder, tensors


def test_adapter_names_shapes_and_metadata(tmp_path):
    """llama.cpp's loader: general.type adapter, adapter.type lora, adapter.lora.alpha; per weight
    `<base name>.lora_a` with ggml ne [in, r] and `.lora_b` with ne [r, out] (ne[0] of the base weight is its
    input size); embedding rows are not in the adapter (llama.cpp aborts on them with a tied head)."""
    import gguf

    folder, tensors = _peft_folder(tmp_path / "adapter")
    path = export_lora_adapter(folder, tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0 and fields["general.architecture"] == "gemma3"
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    assert set(shapes) == {f"blk.{i}.{m}.weight.lora_{ab}" for i in range(2) for m in ("attn_q", "ffn_down")
                           for ab in "ab"}
    assert shapes["blk.0.ffn_down.weight.lora_a"] == [128, 4]  # base ffn_down ne [128, 64]
    assert shapes["blk.0.ffn_down.weight.lora_b"] == [4, 64]
    data = {t.name: np.asarray(t.data, np.float32) for t in reader.tensors}
    source = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    assert np.allclose(data["blk.1.attn_q.weight.lora_b"], source, atol=1e-2)


def test_rslora_scale_is_folded_into_lora_b(tmp_path):
    folder, tensors = _peft_folder(tmp_path / "adapter", rslora=True)
    exported = dict(adapter_tensors(folder)[0])
    source = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert np.allclose(exported["blk.0.attn_q.weight.lora_b"], source * 2.0)  # (8 / sqrt 4) / (8 / 4)


def test_base_plus_adapter_computes_the_merged_model(tmp_path):
    """Tiny Gemma 3 with a random LoRA (every linear layer) and a trained <end_of_turn> row: llama.cpp's logits
    for base GGUF (row patched) + GGUF adapter match the merged model's GGUF."""
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model
    from tiny_model import build_tiny_model
    from transformers import AutoModelForCausalLM

    from tinyllm_utils.train.export import export_gguf

    # gemma3's layer pattern (five sliding-window layers, then a full-attention one), as export_gguf requires
    base_dir = build_tiny_model(tmp_path / "base", num_hidden_layers=6,
                                layer_types=["sliding_attention"] * 5 + ["full_attention"])
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False, trainable_token_indices=[106],
                                                  ensure_weight_tying=True))
    with torch.no_grad():
        layer = peft_model.base_model.model.model.embed_tokens
        layer.token_adapter.trainable_tokens_delta["default"].add_(torch.randn(1, 64))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(str(tmp_path / "merged"))
    for file in base_dir.iterdir():  # the tokenizer's files
        if file.name not in ("config.json", "model.safetensors", "generation_config.json"):
            (tmp_path / "merged" / file.name).write_bytes(file.read_bytes())
    base_gguf = export_gguf(base_dir, tmp_path / "base.gguf", outtype="f32")
    merged_gguf = export_gguf(tmp_path / "merged", tmp_path / "merged.gguf", outtype="f32")
    deployment = export_deployment(tmp_path / "adapter", base_gguf, tmp_path / "deploy", outtype="f32")
    assert deployment["base"] != base_gguf  # the <end_of_turn> row went into a copy of the base

    prompt = "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"  # <end_of_turn> inside

    def logits(**kwargs):
        llm = Llama(n_ctx=64, n_threads=1, logits_all=True, verbose=False, **kwargs)
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        assert 106 in tokens
        llm.eval(tokens)
        out = np.array(llm.scores[: len(tokens)])
        llm.close()
        return out, tokens

    reference, tokens = logits(model_path=str(merged_gguf))
    adapted, _ = logits(model_path=str(deployment["base"]), lora_path=str(deployment["adapter"]))
    plain, _ = logits(model_path=str(base_gguf))
    assert np.abs(adapted - reference).max() < 1e-2 * np.abs(reference).max()
    assert np.abs(plain - reference).max() > 10 * np.abs(adapted - reference).max()  # the adapter did something
    assert adapted[:, 106].tolist() == pytest.approx(reference[:, 106].tolist(), abs=1e-2 * np.abs(reference).max())
