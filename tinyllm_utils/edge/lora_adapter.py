"""A PEFT LoRA adapter as a GGUF LoRA adapter for llama.cpp, so a 4-bit base can run with the fine-tune kept in F16
and applied at run time (`Llama(model_path=BASE.gguf, lora_path=ADAPTER.gguf)`), instead of merging the fine-tune
into the weights and quantizing the sum.

    .venv/bin/python -m tinyllm_utils.edge.lora_adapter ADAPTER_DIR OUT_DIR --base BASE.gguf [--outtype f16|f32]

`ADAPTER_DIR` holds PEFT's `adapter_config.json` and `adapter_model.safetensors` (a TRL checkpoint folder of a
LoRA run). The file follows llama.cpp's convert_lora_to_gguf.py: `general.type` "adapter", `adapter.type` "lora",
`adapter.lora.alpha`, and per adapted weight the tensors `<base GGUF name>.lora_a` (PEFT's lora_A, (r, in)) and
`.lora_b` (lora_B, (out, r)), the base names from gguf's TensorNameMap for GEMMA3 as train/export.py maps them.
llama.cpp scales each pair by alpha / r with r read from lora_b; where PEFT's own scale differs (rsLoRA, rank or
alpha patterns) the factor is folded into lora_b, so the product is what PEFT merges.

Rows trained with PEFT's `trainable_token_indices` (the study trains `<end_of_turn>`'s embedding row:
trainers.train_end_token) are no LoRA: PEFT stores the rows' new values. llama.cpp cannot take them as an adapter
on a model whose output head is the tied embedding (Gemma 3): it applies a `token_embd.weight` pair to the output
projection too, with the embedding's flipped layout, and aborts on the shapes (`GGML_ASSERT(ggml_can_mul_mat(a,
b))` in build_lora_mm). So `patch_token_rows` writes those rows into a copy of the base GGUF instead (quantized to
the embedding's own type, Q8_0 in the embedded Q4_K_M): the deployment is that base, k rows of its 262k-row
embedding changed, plus the F16 adapter (`export_deployment` makes both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

OUTTYPES = ("f16", "f32")
_PEFT_PREFIX = "base_model.model."
_TOKEN_ROWS = "model.embed_tokens.token_adapter.trainable_tokens_delta"


def _base_name(names, hf_name: str) -> str:
    """The GGUF name of a Hugging Face weight (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`)."""
    hf_name = hf_name.replace("language_model.", "")  # Gemma3ForConditionalGeneration nests the text model
    target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if target is None:
        raise ValueError(f"no GGUF name for adapted weight {hf_name!r}")
    return target


def _peft_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one adapted module: alpha / r, or alpha / sqrt(r) with rsLoRA; pattern overrides by
    the module's name suffix, as PEFT matches them."""
    alpha = config["lora_alpha"]
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _token_indices(config: dict) -> list[int]:
    indices = config.get("trainable_token_indices") or []
    if isinstance(indices, dict):  # {module name: ids}; the study trains the (tied) embedding only
        indices = indices.get("embed_tokens") or next(iter(indices.values()), [])
    return [int(i) for i in indices]


def adapter_tensors(adapter_dir: str | Path, n_layers: int = 64):
    """What a PEFT adapter folder holds, in llama.cpp's terms: ([(GGUF name, float32 array)] of the `.lora_a` /
    `.lora_b` tensors, the alpha to declare, {token id: trained embedding row} of trainable token rows)."""
    import gguf
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise NotImplementedError(f"{adapter_dir}: only plain LoRA adapters convert (llama.cpp has no DoRA)")
    if config.get("modules_to_save"):
        raise NotImplementedError(f"{adapter_dir}: modules_to_save {config['modules_to_save']} are full weights, "
                                  "not an adapter")
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.GEMMA3, n_layers)
    alpha = float(config["lora_alpha"])
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        weights = {key.removeprefix(_PEFT_PREFIX): handle.get_tensor(key).float().numpy() for key in handle.keys()}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    token_rows: dict[int, np.ndarray] = {}
    for key, value in weights.items():
        if key.endswith(_TOKEN_ROWS):
            indices = _token_indices(config)
            if len(indices) != value.shape[0]:
                raise ValueError(f"{key}: {value.shape[0]} rows for token ids {indices}")
            token_rows.update(zip(indices, value))
        elif ".lora_A." in key or ".lora_B." in key:
            pairs.setdefault(key.split(".lora_")[0], {})["a" if ".lora_A." in key else "b"] = value
        else:
            raise ValueError(f"unexpected adapter tensor {key!r}: not lora_A / lora_B / trainable token rows")
    tensors = []
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"a", "b"}:
            raise ValueError(f"{module}: lora_A or lora_B missing")
        rank = pair["a"].shape[0]
        for pattern, value in (config.get("rank_pattern") or {}).items():
            if module.endswith(pattern) and value != rank:
                raise ValueError(f"{module}: rank {rank} in the weights, {value} in rank_pattern")
        name = _base_name(names, module + ".weight")
        fold = _peft_scale(config, module, rank) / (alpha / rank)  # 1 for plain LoRA
        # lora_a (r, in) is ggml ne [in, r], lora_b (out, r) ne [r, out]: what llama.cpp's loader checks
        tensors += [(name + ".lora_a", pair["a"]), (name + ".lora_b", pair["b"] * fold)]
    return tensors, alpha, token_rows


def export_lora_adapter(adapter_dir: str | Path, out_path: str | Path, outtype: str = "f16",
                        name: str | None = None) -> Path:
    """Write the GGUF LoRA adapter of a PEFT adapter folder to `out_path` (whole, by rename); returns the path.
    Trainable token rows are not in it (the module docstring says why): `patch_token_rows` carries them."""
    import gguf

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}: expected one of {OUTTYPES}")
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    tensors, alpha, _ = adapter_tensors(adapter_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name or adapter_dir.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.ALL_F32)
    dtype = np.float16 if outtype == "f16" else np.float32
    for tensor_name, data in tensors:
        writer.add_tensor(tensor_name, np.ascontiguousarray(data.astype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    os.replace(partial, out_path)
    return out_path


def patch_token_rows(base_gguf: str | Path, rows: dict[int, np.ndarray], out_path: str | Path) -> Path:
    """A copy of `base_gguf` whose `token_embd.weight` rows `rows` hold the given values, quantized to the
    tensor's own type with gguf's quantizer (every other byte unchanged). Returns `out_path` (written whole)."""
    import gguf
    from gguf.quants import quantize

    base_gguf, out_path = Path(base_gguf), Path(out_path)
    reader = gguf.GGUFReader(str(base_gguf))
    tensor = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if tensor is None:
        raise ValueError(f"{base_gguf}: no token_embd.weight")
    encoded = {i: quantize(np.asarray(row, np.float32).reshape(1, -1), tensor.tensor_type).view(np.uint8).reshape(-1)
               for i, row in rows.items()}
    row_bytes = tensor.data.reshape(tensor.data.shape[0], -1).view(np.uint8).shape[1]
    del reader  # the copy below must not race a memory map of the same file
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    shutil.copyfile(base_gguf, partial)
    with open(partial, "r+b") as handle:
        for i, data in encoded.items():
            if data.size != row_bytes:
                raise ValueError(f"row {i}: {data.size} bytes encoded, the tensor's rows have {row_bytes}")
            handle.seek(tensor.data_offset + i * row_bytes)
            handle.write(data.tobytes())
    os.replace(partial, out_path)
    return out_path


def export_deployment(adapter_dir: str | Path, base_gguf: str | Path, out_dir: str | Path,
                      outtype: str = "f16") -> dict[str, Path]:
    """The run-time-adapter deployment of a LoRA run: `out_dir/<adapter>-lora-<OUTTYPE>.gguf` and the base to
    load it on: `base_gguf` itself, or, when the run trained embedding rows, `out_dir/<base stem>-rows.gguf`
    (patch_token_rows). Returns {"base": path, "adapter": path}."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    adapter = export_lora_adapter(adapter_dir, out_dir / f"{adapter_dir.name}-lora-{outtype.upper()}.gguf", outtype)
    _, _, rows = adapter_tensors(adapter_dir)
    base = patch_token_rows(base_gguf, rows, out_dir / f"{Path(base_gguf).stem}-rows.gguf") if rows else Path(base_gguf)
    return {"base": base, "adapter": adapter}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--base", required=True, help="the base GGUF the adapter will run on (e.g. its Q4_K_M)")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16")
    args = parser.parse_args(argv)
    print(json.dumps({k: str(v) for k, v in export_deployment(args.adapter_dir, args.base, args.out_dir,
                                                              args.outtype).items()}))


if __name__ == "__main__":
    main()
