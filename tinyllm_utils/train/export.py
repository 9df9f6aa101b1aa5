"""Export a trained Gemma 3 checkpoint (Hugging Face folder, LoRA already merged) to a GGUF file for llama.cpp,
so every checkpoint is evaluated exactly like the baseline (LlamaCppBackend, same prompts, same decoding).

Written with the `gguf` package's own writer and tensor-name map (GGUFWriter, TensorNameMap for
MODEL_ARCH.GEMMA3, SpecialVocab), following what llama.cpp's convert_hf_to_gguf.py does for
Gemma3ForCausalLM: the same metadata keys as the published gemma-3 GGUFs, RMSNorm weights stored as
(1 + w) because llama.cpp's Gemma norm multiplies by the weight itself, the tied output head left out, 2-D
weights in F16 (`outtype="f16"`) or F32, norms in F32. The vocabulary is SentencePiece's (`tokenizer.model`
when the checkpoint has one, else rebuilt from tokenizer.json); tests/test_export.py checks that llama.cpp
then tokenizes BFCL prompts to the same ids as the Hugging Face tokenizer and generates the same greedy text.

    .venv/bin/python -m tinyllm_utils.train.export CHECKPOINT_DIR OUT.gguf [--outtype f16|f32]

Beside the GGUF it writes `model_spec.json` (prompt_format gemma, the checkpoint's lineage), the file
`registry.resolve_model` reads for a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

OUTTYPES = ("f16", "f32")
_SPACE = "\u2581"  # SentencePiece's word-boundary mark


def _config(checkpoint: Path) -> dict:
    config = json.loads((checkpoint / "config.json").read_text())
    config = config.get("text_config", config)  # Gemma3ForConditionalGeneration keeps the LM config inside
    architectures = json.loads((checkpoint / "config.json").read_text()).get("architectures") or []
    if not any(a in ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration") for a in architectures):
        raise ValueError(f"{checkpoint}: export_gguf converts Gemma 3 checkpoints; found {architectures}")
    return config


def _rope(config: dict) -> tuple[dict, dict]:
    """(global, local) rope parameters: transformers 5 keeps them per layer type, 4.x as flat keys."""
    params = config.get("rope_parameters") or {}
    if "full_attention" in params:
        return params["full_attention"], params.get("sliding_attention", {})
    flat = {"rope_theta": config.get("rope_theta", 1_000_000.0), **(config.get("rope_scaling") or {})}
    return flat, {"rope_theta": config.get("rope_local_base_freq", 10_000.0)}


def _check_layer_pattern(config: dict) -> None:
    """llama.cpp's gemma3 graph uses one full-attention layer after every five sliding ones."""
    layer_types = config.get("layer_types")
    expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                for i in range(config["num_hidden_layers"])]
    if layer_types and list(layer_types) != expected:
        raise NotImplementedError(f"layer_types {layer_types} differ from gemma3's 5 sliding : 1 full pattern")


def _vocab(checkpoint: Path) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and token types of the SentencePiece vocabulary llama.cpp's `llama` tokenizer needs."""
    import gguf

    if (checkpoint / "tokenizer.model").exists():
        vocab = gguf.vocab.SentencePieceVocab(checkpoint)  # the original model: exact scores and types
        tokens, scores, types = zip(*vocab.all_tokens())
        return list(tokens), list(scores), [int(t) for t in types]
    # tokenizer.json (e.g. made by transformers from a GGUF): a BPE with byte fallback over SentencePiece
    # pieces, merges ranked by piece score. SentencePiece scores normal pieces by rank, so -rank restores
    # the order llama.cpp merges in (only the order matters there). Runs of spaces are user-defined pieces
    # in Gemma's SentencePiece model, which tokenizer.json stores as runs of the space mark.
    data = json.loads((checkpoint / "tokenizer.json").read_text())
    model = data["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise ValueError(f"{checkpoint}/tokenizer.json is not a SentencePiece-style BPE; add tokenizer.model")
    by_id = {i: piece for piece, i in model["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    for i, token in added.items():
        by_id.setdefault(i, token["content"])
    tokens, scores, types, rank = [], [], [], 0
    for i in range(max(by_id) + 1):
        piece = by_id.get(i, f"[PAD{i}]")
        if i not in by_id:
            kind, score = gguf.TokenType.UNUSED, -1000.0
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED
            score = -1000.0
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            kind, score = gguf.TokenType.BYTE, 0.0
        elif len(piece) > 1 and set(piece) == {_SPACE}:
            kind, score, piece = gguf.TokenType.USER_DEFINED, -1000.0, " " * len(piece)
        else:
            kind, score = gguf.TokenType.NORMAL, -float(rank)
            rank += 1
        tokens.append(piece.encode("utf-8"))
        scores.append(score)
        types.append(int(kind))
    return tokens, scores, types


def _tensors(checkpoint: Path):
    """(name, float32 array) for every tensor of the checkpoint's safetensors files, one at a time."""
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no *.safetensors weights (save the merged model first)")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


def _metadata(writer, config: dict, name: str, outtype: str) -> None:
    import gguf

    global_rope, local_rope = _rope(config)
    writer.add_name(name)
    writer.add_context_length(config.get("max_position_embeddings", 131072))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config.get("num_attention_heads", 8))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_key_length(config.get("head_dim", 256))
    writer.add_value_length(config.get("head_dim", 256))
    writer.add_rope_freq_base(global_rope.get("rope_theta", 1_000_000.0))
    if local_rope.get("rope_theta", 10_000.0) != 10_000.0:  # llama.cpp's default for sliding layers
        writer.add_rope_freq_base_swa(local_rope["rope_theta"])
    if global_rope.get("rope_type", "default") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(global_rope["factor"])
    elif global_rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"rope type {global_rope['rope_type']!r} is not exported")
    if config.get("attn_logit_softcapping") is not None or config.get("final_logit_softcapping") is not None:
        raise NotImplementedError("logit soft-capping is not part of llama.cpp's gemma3 graph")
    writer.add_sliding_window(config["sliding_window"])
    writer.add_head_count_kv(config.get("num_key_value_heads", 4))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _tokenizer_metadata(writer, checkpoint: Path) -> int:
    import gguf

    tokens, scores, types = _vocab(checkpoint)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(checkpoint, load_merges=False, n_vocab=len(tokens))
    special.add_special_token.setdefault("bos", True)  # Gemma prompts start with <bos>; the backends add it
    special.add_special_token.setdefault("eos", False)
    special.add_special_token.setdefault("sep", False)
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)
    return len(tokens)


def export_gguf(checkpoint_dir: str | Path, out_path: str | Path, outtype: str = "f16") -> Path:
    """Convert a Gemma 3 Hugging Face checkpoint folder to `out_path` (.gguf) and write model_spec.json beside
    it. The file appears whole (written under a temporary name, then renamed). Returns the GGUF path."""
    import gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: expected one of {OUTTYPES}")
    checkpoint, out_path = Path(checkpoint_dir), Path(out_path)
    config = _config(checkpoint)
    _check_layer_pattern(config)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    _metadata(writer, config, config.get("_model_name_or_path") or checkpoint.name, outtype)
    n_vocab = _tokenizer_metadata(writer, checkpoint)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.GEMMA3, config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", True)
    for name, data in _tensors(checkpoint):
        name = name.replace("language_model.", "")
        if name.startswith(("vision_tower.", "multi_modal_projector.")) or (tied and name == "lm_head.weight"):
            continue  # vision parts belong to the mmproj file; a tied head is the embedding itself
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"no GGUF name for tensor {name!r}")
        if name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3RMSNorm computes x * (1 + w); llama.cpp multiplies by the stored weight
        if name.endswith("embed_tokens.weight"):
            data = data[:n_vocab]  # rows past the vocabulary are padding
        dtype = np.float16 if outtype == "f16" and data.ndim > 1 else np.float32
        writer.add_tensor(target, np.ascontiguousarray(data.astype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    os.replace(partial, out_path)
    write_model_spec(checkpoint, out_path)
    return out_path


def write_model_spec(checkpoint: Path, gguf_path: Path) -> Path:
    """model_spec.json beside the GGUF: a local gemma-format model at that file, with the checkpoint's lineage
    (base_model, method, parent, ... from the checkpoint's own model_spec.json when it has one)."""
    from tinyllm_utils.core.results import write_json_atomic
    from tinyllm_utils.models.registry import ModelSpec

    known = {f.name for f in fields(ModelSpec)}
    lineage = {}
    if (checkpoint / "model_spec.json").exists():
        lineage = {k: v for k, v in json.loads((checkpoint / "model_spec.json").read_text()).items() if k in known}
    spec = ModelSpec(**{**lineage, "name": lineage.get("name") or gguf_path.stem, "source": "local",
                        "prompt_format": "gemma", "path": str(gguf_path.resolve()), "gguf_package": None,
                        "hf_id": None, **({"family": "gemma"} if "family" in known else {})})
    target = gguf_path.parent / "model_spec.json"
    write_json_atomic(target, asdict(spec))
    return target


def greedy_parity(checkpoint_dir: str | Path, gguf_path: str | Path, prompts: list[str],
                  max_new_tokens: int = 48, n_threads: int | None = None) -> list[dict]:
    """Greedy text of the exported GGUF (LlamaCppBackend, the evaluation's decoding) against the checkpoint's
    own greedy text (transformers), per prompt. Where the texts differ, both greedy paths are replayed as
    token ids: `ids_equal` says whether the tokens agree (then only detokenization differs), and otherwise
    `gap` is the transformers model's logit margin between its token and llama.cpp's at the first differing
    position: a near-tie (small gap, F16 rounding) is benign, a large one means the export is wrong."""
    import torch

    from tinyllm_utils.backends.hf import TransformersBackend
    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.models.registry import ModelSpec

    local = ModelSpec(name="export-check", source="local", prompt_format="gemma", path=str(checkpoint_dir))
    exported = ModelSpec(name="export-check-gguf", source="local", prompt_format="gemma", path=str(gguf_path))
    reference = TransformersBackend(local, max_new_tokens=max_new_tokens, batch_size=1)
    llama = LlamaCppBackend(exported, max_new_tokens=max_new_tokens, n_ctx=4096, n_threads=n_threads)
    results = []
    for prompt in prompts:
        hf_text = reference.generate([prompt])[0].text
        cpp_text = llama.generate([prompt])[0].text
        row = {"prompt_tokens_equal": reference.tokenize(prompt) == llama.tokenize(prompt),
               "equal": hf_text == cpp_text, "transformers": hf_text, "llama_cpp": cpp_text,
               "ids_equal": None, "first_difference": None, "gap": None}
        if not row["equal"]:  # replay both greedy paths as token ids and find where they part
            ids = reference.tokenize(prompt)
            with torch.inference_mode():  # as TransformersBackend calls it (with an attention mask)
                hf_ids = reference.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                  dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
                                                  pad_token_id=reference.tokenizer.pad_token_id)[0, len(ids):].tolist()
            cpp_ids = []
            for token in llama.llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                            reset=True):
                cpp_ids.append(token)
                if len(cpp_ids) >= len(hf_ids) or token != hf_ids[len(cpp_ids) - 1]:
                    break
            k = next((i for i, (a, b) in enumerate(zip(hf_ids, cpp_ids)) if a != b), None)
            # same ids, different text: the two libraries detokenize differently (llama-cpp-python returns
            # nothing for a token whose text is longer than 32 bytes), the model itself agrees
            row["ids_equal"] = k is None
            if k is not None:
                prefix = torch.tensor([ids + hf_ids[:k]])
                with torch.inference_mode():
                    logits = reference.model(prefix, attention_mask=torch.ones_like(prefix)).logits[0, -1].float()
                row.update(first_difference=k, gap=float(logits[hf_ids[k]] - logits[cpp_ids[k]]))
        results.append(row)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16")
    args = parser.parse_args(argv)
    print(export_gguf(args.checkpoint, args.out, args.outtype))


if __name__ == "__main__":
    main()
