"""The edge stage's library: quantized GGUF variants, their accuracy kept vs F16, and a device profile.

    python -m tinyllm_utils.edge quantize model-F16.gguf outputs/edge/variants        # Q8_0 ... Q4_0
    python -m tinyllm_utils.edge profile  outputs/edge/variants/model-Q4_K_M.gguf --threads 2 --runs 3 [--grammar]

* `quantize_variants` runs llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python) on a
  checkpoint's F16 GGUF and checks that every file loads and generates and that its GGUF metadata
  (`general.file_type`) says what was asked for.
* `profile_variant` measures what a device owner decides by, in a fresh process per call (so the peak RSS
  is this model's alone): file size, load time, peak RSS, time to first token, prompt-processing and decode
  tokens/s, end-to-end seconds per BFCL entry under the evaluation's decoding rules, and what llama.cpp's
  prompt-prefix reuse saves across entries that share BFCL's system prompt. `profile_transformers` does
  the same for the transformers model (fp32 / bf16) as the reference point.
* `paired_retention`, `edge_table`, `mark_pareto`, `recommend` and `plot_edge_pareto` turn saved results
  into the accuracy / latency / memory table, its Pareto front, the recommended variant per checkpoint and
  the figure.

The offline base model exists only as Q4_K_M. Its "F16" is that Q4_K_M de-quantized and stored as F16
(`quantize_variants(..., allow_requantize=True)` from the Q4_K_M file): it carries no information beyond
Q4_K_M, so for the base, "accuracy kept vs F16" measures the loss from quantizing a second time, not from
quantizing the original bf16 weights. The trained checkpoints (exported from full precision) have a true F16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tinyllm_utils.data import expects_call
from tinyllm_utils.results import current_rss_mb, hardware, peak_rss_mb, read_jsonl, write_json_atomic

# pandas, matplotlib, torch are imported where used: a profiling process should hold only llama.cpp.
if TYPE_CHECKING:
    import pandas as pd

QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")
# GGUF `general.file_type` values (llama.cpp's LLAMA_FTYPE_MOSTLY_*); names as llama-quantize spells them.
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
              "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
              "Q5_K_M": 17, "Q6_K": 18, "BF16": 32}
FILE_TYPE_NAMES = {v: k for k, v in FILE_TYPES.items()}
CHECK_PROMPT = "<start_of_turn>user\nWhat is 2 + 2?<end_of_turn>\n<start_of_turn>model\n"


# ----------------------------------------------------------------------------------------------- quantization

def gguf_file_type(path: str | Path) -> str:
    """The quantization a GGUF file declares (`general.file_type`), e.g. 'Q4_K_M' (registry.gguf_metadata)."""
    from tinyllm_utils.registry import gguf_metadata

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


# -------------------------------------------------------------------------------------------- device profile

def _representative_examples(spec) -> dict:
    from tinyllm_utils.data import load_category
    from tinyllm_utils.prompts import entry_prompt

    def length(example):
        return len(entry_prompt(example.entry, spec))

    simple = min(load_category("simple_python"), key=length)
    multiple = max(load_category("multiple"), key=lambda e: (len(e.entry["function"]), length(e)))
    # The shortest first step: every multi-turn prompt carries whole API docs (23k-52k characters, ~5k tokens
    # and up), so even the shortest is long; a longer one would only multiply the profile's cost.
    multi_turn = min(load_category("multi_turn_base"), key=lambda e: (length(e), e.id))
    return {"short_simple": simple, "long_multiple": multiple, "multi_turn_step": multi_turn}


def representative_prompts(seed: int = 0, model: str = "gemma-3-270m") -> dict[str, str]:
    """The fixed profile set: the shortest simple_python prompt, the `multiple` prompt with the most functions,
    and one multi-turn step (the shortest multi_turn_base first turn), each as the evaluation prompts
    `model`. `seed` is kept for the signature's sake: the set is fixed."""
    from tinyllm_utils.prompts import entry_prompt
    from tinyllm_utils.registry import resolve_model

    spec = resolve_model(model)
    return {kind: entry_prompt(e.entry, spec) for kind, e in _representative_examples(spec).items()}


def representative_grammars(seed: int = 0, model: str = "gemma-3-270m") -> dict[str, str]:
    """The grammar evaluation would constrain each of `representative_prompts` with (`EvalConfig.grammar`):
    the entry's offered functions (a multi-turn first step offers the entry's own)."""
    from tinyllm_utils.grammar import call_list_grammar
    from tinyllm_utils.registry import resolve_model

    examples = _representative_examples(resolve_model(model))
    return {kind: call_list_grammar(e.entry["function"]) for kind, e in examples.items()}


def shared_prefix_prompts(n: int = 4, seed: int = 0, model: str = "gemma-3-270m") -> list[str]:
    """n simple_python prompts: consecutive BFCL entries that share the system prompt's opening."""
    from tinyllm_utils.data import load_category
    from tinyllm_utils.prompts import entry_prompt
    from tinyllm_utils.registry import resolve_model

    spec = resolve_model(model)
    return [entry_prompt(e.entry, spec) for e in load_category("simple_python", n, seed)]


def shared_prefix_grammars(n: int = 4, seed: int = 0) -> list[str]:
    """The grammars of `shared_prefix_prompts`' entries, in the same order."""
    from tinyllm_utils.data import load_category
    from tinyllm_utils.grammar import call_list_grammar

    return [call_list_grammar(e.entry["function"]) for e in load_category("simple_python", n, seed)]


def profile_grammars(prefix_entries: int = 4, seed: int = 0) -> dict:
    """`profile_variant`'s grammar arguments for the default prompt sets, as the evaluation would constrain them."""
    return {"grammars": representative_grammars(seed),
            "prefix_grammars": shared_prefix_grammars(prefix_entries, seed=seed)}


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "runs": len(values)}


def _profile_gguf_in_process(spec_fields: dict, prompts: dict[str, str], threads: int, runs: int,
                             decode_tokens: int, max_new_tokens: int, n_ctx: int, prefix_prompts: list[str],
                             stop_when_hopeless: bool = True, grammars: dict[str, str] | None = None,
                             prefix_grammars: list[str] | None = None) -> dict:
    from tinyllm_utils.backends import LlamaCppBackend
    from tinyllm_utils.registry import ModelSpec

    import llama_cpp

    spec = ModelSpec(**spec_fields)  # resolved by the parent: resolving a bare .gguf here would load its vocabulary
    baseline_rss = current_rss_mb()  # the interpreter and imports, before any model: subtract to compare
    rows: dict[str, dict[str, list]] = {k: {} for k in prompts}
    load, backend = [], None
    cold, warm = [], []
    for _ in range(runs):
        if backend is not None:
            backend.llm.close()
        start = time.perf_counter()
        backend = LlamaCppBackend(spec, max_new_tokens=max_new_tokens, n_ctx=n_ctx, n_threads=threads)
        # Prompt processing threads too (llama.cpp's n_threads_batch defaults to every core).
        llama_cpp.llama_set_n_threads(backend.llm.ctx, threads, threads)
        load.append(time.perf_counter() - start)
        llm = backend.llm
        for kind, text in prompts.items():
            tokens = backend.tokenize(text)
            # Prompt processing and decode speed, llama-bench style: a cold cache, then a fixed number of
            # greedy tokens (end of turn is not a stop here, so every variant decodes the same count).
            llm.reset()
            start = time.perf_counter()
            first = None
            for i, _token in enumerate(llm.generate(tokens, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)):
                if i == 0:
                    first = time.perf_counter()
                if i + 1 >= decode_tokens:
                    break
            end = time.perf_counter()
            record = rows[kind]
            record.setdefault("prompt_tokens", []).append(len(tokens))
            record.setdefault("ttft_s", []).append(first - start)
            record.setdefault("prompt_tokens_per_s", []).append(len(tokens) / (first - start))
            record.setdefault("decode_tokens_per_s", []).append((decode_tokens - 1) / (end - first))
            # One BFCL entry end to end, as the evaluation runs it: cold cache, stop at end of turn, the early
            # stop on single-turn Python prompts (never on a multi-turn step) and the grammar when it has one.
            llm.reset()
            generation = backend.generate([text], stop_when_hopeless and not kind.startswith("multi_turn"),
                                          grammars=[grammars[kind]] if grammars else None)[0]
            record.setdefault("e2e_s", []).append(generation.seconds)
            record.setdefault("completion_tokens", []).append(generation.completion_tokens)
        # Prefix reuse: the same entries one after another with the cache kept (what evaluation does) vs reset.
        for keep, bucket in ((False, cold), (True, warm)):
            llm.reset()
            total = 0.0
            for i, text in enumerate(prefix_prompts):
                if not keep:
                    llm.reset()
                total += backend.generate([text], stop_when_hopeless,
                                          grammars=[prefix_grammars[i]] if prefix_grammars else None)[0].seconds
            bucket.append(total / len(prefix_prompts))
    shared = _common_prefix_tokens([backend.tokenize(p) for p in prefix_prompts])
    backend.llm.close()
    return {"runtime": "llama.cpp", **backend.describe(), "n_threads_batch": threads, "load_s": _spread(load),
            "baseline_rss_mb": baseline_rss,
            "prompts": {k: {f: _spread(v) for f, v in r.items()} for k, r in rows.items()},
            "prefix_reuse": {"entries": len(prefix_prompts), "shared_prefix_tokens": shared,
                             "cold_s_per_entry": _spread(cold), "reuse_s_per_entry": _spread(warm),
                             "saved_fraction": round(1 - statistics.median(warm) / statistics.median(cold), 4)},
            "peak_rss_mb": peak_rss_mb()}


def _common_prefix_tokens(token_lists: list[list[int]]) -> int:
    first = token_lists[0]
    n = len(first)
    for other in token_lists[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], other)) if a != b), min(n, len(other)))
    return n


def _profile_transformers_in_process(source: str, dtype: str, prompts: dict[str, str], threads: int, runs: int,
                                     decode_tokens: int, max_new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    baseline_rss = current_rss_mb()
    rows: dict[str, dict[str, list]] = {k: {} for k in prompts}
    load = []
    for _ in range(runs):
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)).eval()
        load.append(time.perf_counter() - start)
        for kind, text in prompts.items():
            encoded = tokenizer(text, return_tensors="pt", add_special_tokens=True)
            n_prompt = encoded.input_ids.shape[1]
            with torch.inference_mode():
                start = time.perf_counter()
                model.generate(**encoded, max_new_tokens=1, do_sample=False)
                ttft = time.perf_counter() - start
                start = time.perf_counter()
                model.generate(**encoded, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False)
                total = time.perf_counter() - start
                start = time.perf_counter()
                out = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=[tokenizer.eos_token_id,
                                                   tokenizer.convert_tokens_to_ids("<end_of_turn>")])
                e2e = time.perf_counter() - start
            record = rows[kind]
            record.setdefault("prompt_tokens", []).append(n_prompt)
            record.setdefault("ttft_s", []).append(ttft)
            record.setdefault("prompt_tokens_per_s", []).append(n_prompt / ttft)
            record.setdefault("decode_tokens_per_s", []).append((decode_tokens - 1) / max(total - ttft, 1e-9))
            record.setdefault("e2e_s", []).append(e2e)
            record.setdefault("completion_tokens", []).append(out.shape[1] - n_prompt)
        weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        del model
    import transformers

    return {"runtime": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
            "source": source, "dtype": dtype, "n_threads": threads, "baseline_rss_mb": baseline_rss, "weights_mb": round(weights_mb, 1),
            "load_s": _spread(load), "prompts": {k: {f: _spread(v) for f, v in r.items()} for k, r in rows.items()},
            "peak_rss_mb": peak_rss_mb()}


def _run_profile_subprocess(job: dict, timeout_s: float | None) -> dict:
    """Each profile in its own process: peak RSS is then this model's alone, and nothing stays loaded."""
    out = subprocess.run([sys.executable, "-m", "tinyllm_utils.edge", "_profile_job"], input=json.dumps(job),
                         capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"profiling failed ({job.get('gguf') or job.get('source')}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile_variant(gguf: str | Path, prompts: dict[str, str] | None = None, threads: int = 2, runs: int = 3,
                    decode_tokens: int = 64, max_new_tokens: int = 256, n_ctx: int = 8192,
                    prefix_prompts: list[str] | None = None, timeout_s: float | None = 3600,
                    stop_when_hopeless: bool = True, grammars: dict[str, str] | None = None,
                    prefix_grammars: list[str] | None = None) -> dict:
    """Device profile of one GGUF at `threads` threads: every field, median / min / max over `runs`.

    Fields: quantization, file_size_mb, load_s, peak_rss_mb, and per prompt kind (default:
    `representative_prompts()`): prompt_tokens, ttft_s, prompt_tokens_per_s, decode_tokens_per_s (over
    `decode_tokens` greedy tokens, free), e2e_s and completion_tokens (one entry under the evaluation's rules:
    greedy, `max_new_tokens`, stop at end of turn, `stop_when_hopeless` except on a multi-turn step, cold
    cache, and with `grammars` (one per prompt kind, `representative_grammars`) the evaluation's grammar);
    prefix_reuse (seconds per entry over `prefix_prompts`, each with its `prefix_grammars` when given, with
    the cache reset before each entry vs kept); decoding (those rules); machine (results.hardware()).
    """
    gguf = Path(gguf)
    prompts = prompts if prompts is not None else representative_prompts()
    prefix_prompts = prefix_prompts if prefix_prompts is not None else shared_prefix_prompts()
    if (grammars is None) != (prefix_grammars is None):
        raise ValueError("grammars and prefix_grammars: both or neither (the profile decodes one way)")
    if grammars is not None and (set(grammars) != set(prompts) or len(prefix_grammars) != len(prefix_prompts)):
        raise ValueError("grammars: one per prompt kind, and prefix_grammars one per prefix prompt")
    from tinyllm_utils.registry import resolve_model

    job = {"kind": "gguf", "gguf": str(gguf), "spec": asdict(resolve_model(str(gguf))), "prompts": prompts,
           "threads": threads, "runs": runs,
           "decode_tokens": decode_tokens, "max_new_tokens": max_new_tokens, "n_ctx": n_ctx,
           "prefix_prompts": prefix_prompts, "stop_when_hopeless": stop_when_hopeless, "grammars": grammars,
           "prefix_grammars": prefix_grammars}
    result = _run_profile_subprocess(job, timeout_s)
    return {"file": gguf.name, "quantization": gguf_file_type(gguf), "file_size_mb": round(gguf.stat().st_size / 2**20, 2),
            "threads": threads, **result, "decoding": profile_decoding(stop_when_hopeless, grammars is not None),
            "machine": hardware()}


def profile_decoding(stop_when_hopeless: bool, grammar: bool) -> dict:
    """How a profile's e2e_s decoded, as saved with it: a profile made under other rules is not reused."""
    from tinyllm_utils.grammar import GRAMMAR_VERSION

    return {"stop_when_hopeless": stop_when_hopeless, "grammar": GRAMMAR_VERSION if grammar else False}


def profile_transformers(source: str | Path, dtype: str = "float32", prompts: dict[str, str] | None = None,
                         threads: int = 2, runs: int = 3, decode_tokens: int = 64, max_new_tokens: int = 256,
                         timeout_s: float | None = 3600) -> dict:
    """The same profile for a transformers checkpoint folder in `dtype` (float32 / bfloat16); its e2e_s runs
    without the early stop and without a grammar (the transformers backend has neither), and there is no
    prefix-reuse measurement."""
    prompts = prompts if prompts is not None else representative_prompts()
    job = {"kind": "transformers", "source": str(source), "dtype": dtype, "prompts": prompts, "threads": threads,
           "runs": runs, "decode_tokens": decode_tokens, "max_new_tokens": max_new_tokens}
    result = _run_profile_subprocess(job, timeout_s)
    size = sum(p.stat().st_size for p in Path(source).glob("*.safetensors"))
    return {"file": Path(source).name, "quantization": {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype),
            "file_size_mb": round(size / 2**20, 2), "threads": threads, **result, "machine": hardware()}


# -------------------------------------------------------------------------------- accuracy, tables, figure

def paired_retention(reference: list[dict], variant: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy of a variant relative to its reference (F16) on the same BFCL entries.

    Rows are saved predictions (`id`, `category`, `valid`); only entries present in both count. Returns both
    accuracies, retained = variant / reference with a paired bootstrap 95 % interval (entries resampled
    together), the discordant counts and McNemar's exact p-value (the analysis stage's test).
    """
    import numpy as np

    from tinyllm_utils.analysis import mcnemar_exact

    ref = {(r["category"], r["id"]): bool(r["valid"]) for r in reference}
    var = {(r["category"], r["id"]): bool(r["valid"]) for r in variant}
    keys = sorted(ref.keys() & var.keys())
    if not keys:
        raise ValueError("no entries in common: the variant was not evaluated on the reference's entries")
    a = np.array([ref[k] for k in keys], dtype=float)
    b = np.array([var[k] for k in keys], dtype=float)
    only_ref, only_var = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    retained = b.mean() / a.mean() if a.mean() > 0 else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    ref_boot, var_boot = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = ref_boot > 0
    ratios = var_boot[ok] / ref_boot[ok]
    low, high = (np.percentile(ratios, [2.5, 97.5]).tolist() if ok.any() else (None, None))
    p_value = mcnemar_exact(a, b) if only_ref + only_var else 1.0
    return {"n": len(keys), "reference_accuracy": float(a.mean()), "accuracy": float(b.mean()),
            "retained": None if retained is None else float(retained), "retained_ci95": [low, high],
            "only_reference_correct": only_ref, "only_variant_correct": only_var, "mcnemar_p": float(p_value)}


def _predictions(eval_dir: Path) -> list[dict]:
    """Saved predictions of the entries this evaluation selected (metrics.json's selected_ids when present: a
    folder reused with other categories or limits holds more rows than it scored)."""
    metrics_path = eval_dir / "metrics.json"
    selected = json.loads(metrics_path.read_text()).get("selected_ids") if metrics_path.exists() else None
    rows = []
    for path in sorted((eval_dir / "predictions").glob("*.jsonl")):
        if selected is not None and path.stem not in selected:
            continue
        keep = set(selected[path.stem]) if selected is not None else None
        rows += [r for r in read_jsonl(path) if keep is None or r["id"] in keep]
    return rows


def _share_valid(rows: list[dict]) -> float:
    return sum(bool(r["valid"]) for r in rows) / len(rows)


def _expecting_a_call(rows: list[dict]) -> list[dict]:
    """The rows of categories that expect a call; all rows when none do (e.g. an irrelevance-only check)."""
    calls = [r for r in rows if expects_call(r["category"])]
    return calls or rows


def edge_table(records: list[dict], reference: str = "F16") -> pd.DataFrame:
    """One row per checkpoint x variant from saved results.

    Each record: {"method": "base" | "sft" | ..., "quantization": "Q4_K_M", "eval_dir": evaluate() output folder
    (optional), "profile": a profile_variant / profile_transformers result or the path of its JSON (optional)}.
    `accuracy` (and the retention against the same method's `reference` quantization, paired on the same
    entries) counts the entries that expect a call; `irrelevance_accuracy` and `accuracy_all_entries` sit beside
    it. Pooled with irrelevance, a variant that stops calling altogether would look like it kept its accuracy.
    """
    import pandas as pd

    rows, predictions = [], {}
    for record in records:
        key = (record["method"], record["quantization"])
        if record.get("eval_dir"):
            predictions[key] = _predictions(Path(record["eval_dir"]))
    for record in records:
        method, quant = record["method"], record["quantization"]
        profile = record.get("profile")
        if isinstance(profile, (str, Path)):
            profile = json.loads(Path(profile).read_text())
        row = {"method": method, "quantization": quant}
        if profile:
            decode = [p["decode_tokens_per_s"]["median"] for p in profile["prompts"].values()]
            e2e = [p["e2e_s"]["median"] for p in profile["prompts"].values()]
            ttft = [p["ttft_s"]["median"] for p in profile["prompts"].values()]
            row |= {"runtime": profile.get("runtime"), "threads": profile.get("threads"),
                    "size_mb": profile.get("file_size_mb"), "peak_rss_mb": profile.get("peak_rss_mb"),
                    "load_s": profile["load_s"]["median"], "ttft_s": statistics.median(ttft),
                    "decode_tokens_per_s": statistics.median(decode),
                    "decode_ms_per_token": 1000 / statistics.median(decode),
                    "e2e_s_per_entry": statistics.mean(e2e)}
        mine, ref = predictions.get((method, quant)), predictions.get((method, reference))
        if mine:
            abstain = [r for r in mine if not expects_call(r["category"])]
            row["accuracy_all_entries"] = _share_valid(mine)
            row["irrelevance_accuracy"] = _share_valid(abstain) if abstain else None
            mine, ref = _expecting_a_call(mine), _expecting_a_call(ref or [])
            row["accuracy"], row["n"] = _share_valid(mine), len(mine)
        if mine and ref:
            paired = paired_retention(ref, mine)
            row |= {"retained": paired["retained"], "retained_ci_low": paired["retained_ci95"][0],
                    "retained_ci_high": paired["retained_ci95"][1], "mcnemar_p": paired["mcnemar_p"],
                    "n_paired": paired["n"]}
        rows.append(row)
    return pd.DataFrame(rows)


def mark_pareto(table: pd.DataFrame, maximize=("accuracy",), minimize=("decode_ms_per_token", "peak_rss_mb"),
                by: str | None = None) -> pd.DataFrame:
    """Add a boolean `pareto` column: no other row is at least as good on every axis and better on one.
    With `by` (e.g. "method") the front is computed within each group."""
    import pandas as pd

    table = table.copy()
    cols = list(maximize) + list(minimize)
    if not set(cols) <= set(table.columns):  # nothing profiled or nothing evaluated yet: no front
        table["pareto"] = False
        return table
    usable = table[cols].notna().all(axis=1)
    score = table[cols].copy()
    for col in minimize:
        score[col] = -score[col]  # everything "larger is better"
    front = pd.Series(False, index=table.index)
    groups = table.groupby(by).groups.values() if by else [table.index]
    for index in groups:
        candidates = [i for i in index if usable[i]]
        for i in candidates:
            dominated = any((score.loc[j] >= score.loc[i]).all() and (score.loc[j] > score.loc[i]).any()
                            for j in candidates if j != i)
            front[i] = not dominated
    table["pareto"] = front
    return table


def recommend(table: pd.DataFrame, keep: float = 0.95, size_col: str = "size_mb") -> pd.DataFrame:
    """Per method, the smallest variant whose accuracy is >= `keep` x its F16 accuracy (point estimate;
    the paired interval is shown next to it). A method whose F16 scores 0 has no recommendation."""
    import pandas as pd

    rows = []
    for method, group in table.groupby("method", sort=False):
        complete = "retained" in group and size_col in group
        ok = group[(group["retained"] >= keep) & group[size_col].notna()] if complete else group.iloc[:0]
        if ok.empty:
            rows.append({"method": method, "quantization": None, "reason": f"no variant keeps >= {keep:.0%}"})
            continue
        best = ok.sort_values(size_col).iloc[0]
        rows.append({"method": method, "quantization": best["quantization"],
                     **{c: best.get(c) for c in ("size_mb", "peak_rss_mb", "decode_tokens_per_s", "e2e_s_per_entry",
                                                 "accuracy", "irrelevance_accuracy", "retained", "retained_ci_low",
                                                 "retained_ci_high")},
                     "reason": f"smallest file keeping >= {keep:.0%} of F16 accuracy"})
    return pd.DataFrame(rows)


def plot_edge_pareto(table: pd.DataFrame, out_stem: str | Path | None = None):
    """Accuracy vs decode latency (ms/token), marker area = peak RSS, Pareto front marked; saves
    `<out_stem>.png` and `.pdf` when given. Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    missing = [c for c in ("accuracy", "decode_ms_per_token", "peak_rss_mb") if c not in table]
    table = table.reindex(columns=[*table.columns, *missing])  # partial results: an empty plot, not an error
    data = table.dropna(subset=["accuracy", "decode_ms_per_token"]).copy()
    data["accuracy %"] = 100 * data["accuracy"]
    if "pareto" not in data:
        data = mark_pareto(data)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=data, x="decode_ms_per_token", y="accuracy %", hue="method", style="quantization",
                    size="peak_rss_mb", sizes=(40, 400), ax=ax, alpha=0.8)
    front = data[data["pareto"]].sort_values("decode_ms_per_token")
    ax.plot(front["decode_ms_per_token"], front["accuracy %"], "k--", lw=1, label="Pareto front")
    ax.scatter(front["decode_ms_per_token"], front["accuracy %"], s=160, facecolors="none", edgecolors="k")
    for _, row in data.iterrows():
        ax.annotate(row["quantization"], (row["decode_ms_per_token"], row["accuracy %"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("decode latency (ms / token, lower is better)")
    ax.set_ylabel("BFCL accuracy, categories that expect a call (%)")
    n = sorted({int(v) for v in data["n"].dropna()}) if "n" in data else []
    threads = sorted({int(v) for v in data["threads"].dropna()}) if "threads" in data else []
    ax.set_title("Quantized variants: BFCL accuracy vs llama.cpp decode latency"
                 + (f" at {'/'.join(map(str, threads))} threads" if threads else "")
                 + (f"\n(n = {'/'.join(map(str, n))} entries per variant; marker area = peak RSS)" if n else ""),
                 fontsize=9)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7)
    fig.tight_layout()
    if out_stem is not None:
        from tinyllm_utils.figures import save_figure

        out_stem = Path(out_stem)
        out_stem.parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, out_stem.parent, out_stem.name)
    plt.close(fig)
    return fig


# ---------------------------------------------------------------------------------------------- the stage

@dataclass
class EdgeConfig:
    """What the edge stage does for each checkpoint (method -> its F16 GGUF, or the base's Q4_K_M)."""
    checkpoints: dict[str, str] = field(default_factory=dict)
    types: list[str] = field(default_factory=lambda: list(QUANT_TYPES))
    requantize: list[str] = field(default_factory=list)  # methods whose GGUF is already quantized (the base)
    categories: list[str] = field(default_factory=lambda: ["simple_python", "multiple", "irrelevance"])
    limit: int | None = 20  # entries per category, the same seeded sample as the evaluation stage
    multi_turn_limit: int | None = 0
    seed: int = 0
    max_new_tokens: int = 256
    stop_when_hopeless: bool = True  # these two: stage 01's decoding (evaluate.EvalConfig)
    grammar: bool = False
    threads: list[int] = field(default_factory=lambda: [1, 2])
    threads_for: dict[str, list[int]] = field(default_factory=dict)  # per quantization, replaces `threads`
    runs: int = 3
    decode_tokens: int = 64
    prefix_entries: int = 4  # simple_python entries for the prefix-reuse measurement
    transformers_reference: dict[str, str] = field(default_factory=dict)  # method -> HF folder (fp32 / bf16 row)
    transformers_dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16"])
    transformers_threads: list[int] = field(default_factory=lambda: [2])


def run_edge_stage(config: EdgeConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Quantize, evaluate and profile every checkpoint x variant; write the table, recommendation and figure.

    Layout: `<out>/<method>/variants/*.gguf` (+ variants.json), `<out>/<method>/eval/<quant>/` (evaluate()'s
    folder: predictions, metrics, run.json), `<out>/<method>/profile/<quant>-t<threads>.json`,
    `<out>/edge_table.csv`, `<out>/edge_recommendation.csv`, `<out>/edge_pareto.png|pdf`. Resumable: finished
    variants, evaluations (entry by entry) and profiles are kept.
    """
    from tinyllm_utils.backends import _embedded_hf_copy
    from tinyllm_utils.evaluate import EvalConfig, evaluate
    from tinyllm_utils.registry import resolve_model

    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "edge_config.json", asdict(config))
    prompts = representative_prompts(config.seed)
    prefix = shared_prefix_prompts(config.prefix_entries, seed=config.seed)
    # The profile's end-to-end seconds decode as stage 01's evaluation does (the grammar costs time per token).
    decoding = profile_decoding(config.stop_when_hopeless, config.grammar)
    grammars = profile_grammars(config.prefix_entries, config.seed) if config.grammar else {}
    records = []
    for method, gguf in config.checkpoints.items():
        method_dir = out_dir / method
        requantize = method in config.requantize
        # The reference "F16": the export itself, or (base) its Q4_K_M de-quantized into F16.
        f16 = Path(gguf) if gguf_file_type(gguf) == "F16" else quantize_variants(
            gguf, method_dir / "variants", ["F16"], allow_requantize=requantize)[0]
        variants = [f16] + quantize_variants(f16, method_dir / "variants", [t for t in config.types if t != "F16"])
        for path in variants:
            quant = gguf_file_type(path)
            eval_dir = method_dir / "eval" / quant
            evaluate(EvalConfig(model=str(path), categories=config.categories, limit=config.limit,
                                multi_turn_limit=config.multi_turn_limit, seed=config.seed,
                                max_new_tokens=config.max_new_tokens, stop_when_hopeless=config.stop_when_hopeless,
                                grammar=config.grammar), eval_dir, progress=progress)
            thread_counts = config.threads_for.get(quant, config.threads)
            if not thread_counts:  # accuracy only (still the reference for retention)
                records.append({"method": method, "quantization": quant, "eval_dir": eval_dir})
            for threads in thread_counts:
                profile_path = method_dir / "profile" / f"{quant}-t{threads}.json"
                if not profile_path.exists() or _saved_decoding(profile_path) != decoding:
                    write_json_atomic(profile_path, profile_variant(
                        path, prompts, threads, config.runs, config.decode_tokens, config.max_new_tokens,
                        prefix_prompts=prefix, stop_when_hopeless=config.stop_when_hopeless, **grammars))
                records.append({"method": method, "quantization": quant, "eval_dir": eval_dir,
                                "profile": profile_path})
        source = config.transformers_reference.get(method)
        if source == "embedded":
            source = str(_embedded_hf_copy(resolve_model("gemma-3-270m")))
        for dtype in config.transformers_dtypes if source else []:
            for threads in config.transformers_threads:
                profile_path = method_dir / "profile" / f"transformers-{dtype}-t{threads}.json"
                if not profile_path.exists():
                    write_json_atomic(profile_path, profile_transformers(
                        source, dtype, prompts, threads, config.runs, config.decode_tokens, config.max_new_tokens))
                records.append({"method": method, "quantization": f"hf-{dtype}", "profile": profile_path})
    table = edge_table(records)
    return write_edge_outputs(table, out_dir)


def _saved_decoding(profile_path: Path) -> dict:
    # Profiles saved before the field existed decoded with the early stop and no grammar.
    return json.loads(profile_path.read_text()).get("decoding", profile_decoding(True, False))


def write_edge_outputs(table: pd.DataFrame, out_dir: str | Path, threads: int = 2, keep: float = 0.95) -> dict:
    """From the long table (every thread count): the Pareto-marked table at `threads`, the recommendation
    per method, the figure; all three saved under `out_dir`. Returns the two tables and the figure paths."""
    from tinyllm_utils.results import write_text_atomic

    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "edge_table_all_threads.csv", table.to_csv(index=False))
    if "threads" in table:
        # Rows profiled at `threads`; an accuracy-only row (no profile) is kept for the table but not plotted.
        table = table[(table["threads"] == threads) | table["threads"].isna()]
    at = mark_pareto(table.reset_index(drop=True))
    chosen = recommend(at[at["runtime"] == "llama.cpp"] if "runtime" in at else at, keep=keep)
    write_text_atomic(out_dir / "edge_table.csv", at.to_csv(index=False))
    write_text_atomic(out_dir / "edge_recommendation.csv", chosen.to_csv(index=False))
    plot_edge_pareto(at, out_dir / "edge_pareto")
    return {"table": at, "recommendation": chosen,
            "figures": [out_dir / "edge_pareto.png", out_dir / "edge_pareto.pdf"]}


# ------------------------------------------------------------------------------------------------------- CLI

def _profile_job(job: dict) -> dict:
    if job["kind"] == "gguf":
        return _profile_gguf_in_process(job["spec"], job["prompts"], job["threads"], job["runs"],
                                        job["decode_tokens"], job["max_new_tokens"], job["n_ctx"],
                                        job["prefix_prompts"], job["stop_when_hopeless"], job["grammars"],
                                        job["prefix_grammars"])
    return _profile_transformers_in_process(job["source"], job["dtype"], job["prompts"], job["threads"],
                                            job["runs"], job["decode_tokens"], job["max_new_tokens"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="F16 GGUF -> quantized variants")
    q.add_argument("f16_gguf")
    q.add_argument("out_dir")
    q.add_argument("--types", nargs="+", default=list(QUANT_TYPES))
    q.add_argument("--allow-requantize", action="store_true", help="accept an already quantized input")
    p = sub.add_parser("profile", help="device profile of one GGUF (JSON on stdout)")
    p.add_argument("gguf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--grammar", action="store_true", help="e2e_s decodes under the evaluation's grammar")
    sub.add_parser("_profile_job")  # internal: one profile (JSON job on stdin) in this process, JSON on stdout
    args = parser.parse_args(argv)
    if args.command == "quantize":
        for path in quantize_variants(args.f16_gguf, args.out_dir, args.types, args.allow_requantize):
            print(path)
    elif args.command == "profile":
        grammars = profile_grammars() if args.grammar else {}
        print(json.dumps(profile_variant(args.gguf, threads=args.threads, runs=args.runs, **grammars), indent=2))
    else:
        print(json.dumps(_profile_job(json.loads(sys.stdin.read()))))


if __name__ == "__main__":
    main()
