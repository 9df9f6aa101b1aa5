"""GGUF export (tinyllm_utils.train.export): a trained Gemma 3 checkpoint becomes a GGUF that llama.cpp runs like
the baseline. The tiny random Gemma 3 (tests/tiny_model.py, real gemma-3-270m tokenizer) is exported and
compared with the embedded gemma-3-270m GGUF's metadata and vocabulary, with the Hugging Face tokenizer on
BFCL prompts, and with transformers' greedy output. The same check on the real 270M (de-quantized) is marked
`slow` (minutes on 2 cores): `make test-all` and CI run it, `make test` does not.
"""

import json

import numpy as np
import pytest

from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.models.prompts import first_turn_messages, format_prompt
from tinyllm_utils.models.registry import resolve_model
from tinyllm_utils.train.export import export_gguf, greedy_parity

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple"]
# Descriptive keys of the published file that a trained checkpoint has no value for.
DESCRIPTIVE = {"general.basename", "general.license", "general.size_label", "general.tags", "general.type",
               "general.file_type", "GGUF.kv_count", "tokenizer.ggml.mask_token_id"}


def _prompts(per_category: int = 1) -> list[str]:
    return [format_prompt(first_turn_messages(e.entry)[0], "gemma")
            for c in CATEGORIES for e in load_category(c, limit=per_category, seed=2)]


def _fields(path):
    """GGUF metadata (arrays as lists / numpy, read directly: GGUFReader.contents() is slow on 262k tokens)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for name, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 1000:
            parts = [field.parts[i] for i in field.data]
            out[name] = [bytes(p) for p in parts] if field.types[-1] == gguf.GGUFValueType.STRING \
                else np.concatenate(parts)
        else:
            out[name] = field.contents()
    return out, {t.name: t for t in reader.tensors}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_model import build_tiny_model

    # six layers: five sliding-window layers then a full-attention one, gemma3's pattern; a 64-token window
    # is shorter than every BFCL prompt, so sliding attention is exercised
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "checkpoint", num_hidden_layers=6,
                              layer_types=["sliding_attention"] * 5 + ["full_attention"])
    return folder


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    return export_gguf(tiny, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", outtype="f32")


@pytest.fixture(scope="module")
def exported_fields(exported):
    return _fields(exported)  # parsed once: reading 262k tokens takes a while


def test_metadata_and_vocabulary_match_the_published_gemma3_file(exported_fields):
    ours, tensors = exported_fields
    reference, _ = _fields(resolve_model("gemma-3-270m").gguf_path())
    assert ours["general.architecture"] == "gemma3"
    assert set(reference) - DESCRIPTIVE <= set(ours)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.model",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_space_prefix"):
        assert np.array_equal(ours[key], reference[key]) if isinstance(ours[key], np.ndarray) \
            else ours[key] == reference[key], key
    # SentencePiece merges by score order only: the order must be the published one
    ours_order = np.argsort(-np.array(ours["tokenizer.ggml.scores"]), kind="stable")
    assert (ours_order == np.argsort(-np.array(reference["tokenizer.ggml.scores"]), kind="stable")).all()
    assert ours["gemma3.block_count"] == 6 and ours["gemma3.attention.sliding_window"] == 64
    assert "output.weight" not in tensors  # tied head


def test_norms_are_stored_plus_one_and_weights_unchanged(tiny, exported_fields):
    from safetensors.numpy import load_file

    weights = load_file(str(tiny / "model.safetensors"))
    _, tensors = exported_fields
    np.testing.assert_array_equal(np.array(tensors["blk.0.attn_norm.weight"].data),
                                  weights["model.layers.0.input_layernorm.weight"] + 1)
    np.testing.assert_array_equal(np.array(tensors["blk.5.attn_q.weight"].data),
                                  weights["model.layers.5.self_attn.q_proj.weight"])


def test_model_spec_beside_the_gguf(exported):
    spec = json.loads((exported.parent / "model_spec.json").read_text())
    assert spec["prompt_format"] == "gemma" and spec["path"] == str(exported.resolve())
    assert resolve_model(str(exported)).prompt_format == "gemma"


def test_f16_outtype(tiny, tmp_path):
    import gguf

    path = export_gguf(tiny, tmp_path / "tiny-f16.gguf")
    tensors = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    assert tensors["token_embd.weight"].tensor_type.name == "F16"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert not (tmp_path / "tiny-f16.gguf.partial").exists()


@pytest.mark.slow
def test_tokenizer_round_trips_on_bfcl_prompts(tiny, exported):
    """Exactly the published GGUF's tokenization (what evaluation uses), and the Hugging Face tokenizer's except
    on runs of 32+ spaces: llama.cpp takes Gemma's user-defined 31-space piece, transformers 16 + 16."""
    import re

    from llama_cpp import Llama
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny))
    cpp = Llama(model_path=str(exported), vocab_only=True, verbose=False)
    published = Llama(model_path=str(resolve_model("gemma-3-270m").gguf_path()), vocab_only=True, verbose=False)
    prompts = _prompts(3) + ["  two spaces,\ttab\n\nnewlines <start_of_turn>model\n[f(a='é€😀')]<end_of_turn>",
                             "a" + " " * 40 + "b"]
    for prompt in prompts:
        ids = cpp.tokenize(prompt.encode(), add_bos=True, special=True)
        assert ids == published.tokenize(prompt.encode(), add_bos=True, special=True)
        if not re.search(" {32}", prompt):
            assert ids == hf(prompt).input_ids


def test_greedy_output_matches_transformers(tiny, exported):
    rows = greedy_parity(tiny, exported, _prompts(1)[:4], max_new_tokens=8)
    assert all(r["prompt_tokens_equal"] for r in rows)
    # F32: the token ids agree (texts may still differ where llama-cpp-python drops a token longer than 32
    # bytes), or part at a float-order near-tie
    assert all(r["equal"] or r["ids_equal"] or abs(r["gap"]) < 0.01 for r in rows), rows


def test_refuses_other_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="Gemma 3"):
        export_gguf(tmp_path, tmp_path / "x.gguf")


@pytest.mark.slow
def test_real_gemma_270m_parity(tmp_path):
    """The de-quantized embedded gemma-3-270m, exported to F16: greedy text equals transformers' (F32) or
    first differs at a near-tie (logit gap below 0.5)."""
    from tinyllm_utils.models.embedded import embedded_hf_copy

    checkpoint = embedded_hf_copy(resolve_model("gemma-3-270m"))
    path = export_gguf(checkpoint, tmp_path / "gemma-3-270m-f16.gguf")
    rows = greedy_parity(checkpoint, path, _prompts(1), max_new_tokens=32)
    assert all(r["equal"] or r["ids_equal"] or abs(r["gap"]) < 0.5 for r in rows), rows
