"""Quantized GGUF variants made with llama.cpp's own quantizer (`llama_model_quantize`), each checked to load and
generate; a GGUF's file type read from its metadata.

The offline base model exists only as Q4_K_M: its "F16" is that file de-quantized (`allow_requantize=True`), so
its variants are re-quantizations of Q4_K_M weights.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tinyllm_utils.core.results import write_json_atomic

QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")
# GGUF `general.file_type` values (llama.cpp's LLAMA_FTYPE_MOSTLY_*); names as llama-quantize spells them.
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
              "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
              "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}
FILE_TYPE_NAMES = {v: k for k, v in FILE_TYPES.items()}
CHECK_PROMPT = "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"



def gguf_file_type(path: str | Path) -> str:
    """The quantization a GGUF file declares (`general.file_type`), e.g. 'Q4_K_M' (registry.gguf_metadata)."""
    from tinyllm_utils.models.registry import gguf_metadata

    value = (gguf_metadata(str(path)) or {}).get("general.file_type")
    if value is None:
        return "unknown"
    return FILE_TYPE_NAMES.get(int(value), str(value))


def check_loads_and_generates(path: str | Path, n_tokens: int = 8) -> str:
    """Load a GGUF with llama.cpp and generate a few greedy tokens; raise if nothing comes out."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        out = llm.create_completion(CHECK_PROMPT, max_tokens=n_tokens, temperature=0.0, top_k=1,
                                    repeat_penalty=1.0)
    finally:
        llm.close()
    if out["usage"]["completion_tokens"] < 1:
        raise RuntimeError(f"{path} loads but generates nothing")
    return out["choices"][0]["text"]


def _stem(path: Path) -> str:
    """The model's name without a quantization suffix: `gemma-3-270m-q4_k_m` -> `gemma-3-270m`, so that a
    variant's file name carries one quantization only (the analysis stage reads it from the name)."""
    stem = path.stem
    for name in sorted(FILE_TYPES, key=len, reverse=True):
        for sep in "-_.":
            if stem.lower().endswith((sep + name).lower()):
                return stem[: -len(name) - 1]
    return stem


def quantize_variants(f16_gguf: str | Path, out_dir: str | Path, types=QUANT_TYPES, allow_requantize: bool = False,
                      nthread: int | None = None, check: bool = True) -> list[Path]:
    """Quantize `f16_gguf` into `out_dir/<stem>-<TYPE>.gguf` for each type with llama.cpp's quantizer.

    Resumable: a file already there whose metadata names the right type is kept. Each new file is written
    under a temporary name and renamed when complete, then checked (loads, generates, declares its type).
    `allow_requantize` lets an already quantized input through (the base model's Q4_K_M: see the module
    docstring). Returns the paths in the order of `types`; `out_dir/variants.json` lists them.
    """
    import llama_cpp

    source, out_dir = Path(f16_gguf), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unknown = [name for name in types if name not in FILE_TYPES]
    if unknown:
        raise ValueError(f"unknown quantization {unknown}; known: {', '.join(FILE_TYPES)}")
    source_type = gguf_file_type(source)
    if source_type not in ("F32", "F16", "BF16") and not allow_requantize:
        # llama.cpp would refuse too, but only after minutes of work: say it at once.
        raise ValueError(f"{source} is already quantized ({source_type}): pass allow_requantize=True to "
                         "quantize it again (every variant then inherits its loss)")
    paths, records = [], []
    for name in types:
        target = out_dir / f"{_stem(source)}-{name}.gguf"
        if not (target.exists() and gguf_file_type(target) == name):
            partial = target.with_name(target.name + ".partial")
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = FILE_TYPES[name]
            params.allow_requantize = allow_requantize
            params.nthread = nthread or os.cpu_count() or 1
            start = time.perf_counter()
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
            if status != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"llama_model_quantize {source} -> {name} failed with status {status}")
            partial.rename(target)
            seconds = round(time.perf_counter() - start, 2)
        else:
            seconds = None  # kept from an earlier run
        declared = gguf_file_type(target)
        if declared != name:
            raise RuntimeError(f"{target} declares {declared}, expected {name}")
        sample = check_loads_and_generates(target) if check else None
        paths.append(target)
        records.append({"quantization": name, "path": target.name, "size_mb": round(target.stat().st_size / 2**20, 2),
                        "source": str(source), "source_type": source_type,
                        "requantized": source_type not in ("F32", "F16", "BF16"),
                        "quantize_s": seconds, "check_output": sample})
    # One manifest per folder: records of other types (e.g. the F16 made from the base's Q4_K_M) are kept.
    manifest_path = out_dir / "variants.json"
    earlier = json.loads(manifest_path.read_text()).get("variants", []) if manifest_path.exists() else []
    kept = [r for r in earlier if r["quantization"] not in {x["quantization"] for x in records}]
    write_json_atomic(manifest_path, {"variants": kept + records})
    return paths
