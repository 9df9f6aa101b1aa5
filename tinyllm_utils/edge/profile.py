"""The device profile of a GGUF (and of the transformers model as a reference), each in a fresh process.

    python -m tinyllm_utils.edge.profile quantize model-F16.gguf outputs/edge/variants        # Q8_0 ... Q4_0
    python -m tinyllm_utils.edge.profile profile  outputs/edge/variants/model-Q4_K_M.gguf --threads 2 --runs 3 [--grammar]

* `quantize_variants` runs llama.cpp's own quantizer (`llama_model_quantize` in llama-cpp-python) on a
  checkpoint's F16 GGUF and checks that every file loads and generates and that its GGUF metadata
  (`general.file_type`) says what was asked for.
* `profile_variant` measures what a device owner decides by, in a fresh process per call (so the peak RSS
  is this model's alone): file size, load time, peak RSS, time to first token, prompt-processing and decode
  tokens/s, end-to-end seconds per BFCL entry under the evaluation's decoding rules, and what llama.cpp's
  prompt-prefix reuse saves across entries that share BFCL's system prompt. `profile_transformers` does
  the same for the transformers model (fp32 / bf16) as the reference point.
* `edge.quantize` makes the variants, `edge.table` turns saved results into the accuracy / latency / memory
  table, and `edge.sweep` runs all of it for every checkpoint x variant.

The offline base model exists only as Q4_K_M. Its "F16" is that Q4_K_M de-quantized and stored as F16
(`quantize_variants(..., allow_requantize=True)` from the Q4_K_M file): it carries no information beyond
Q4_K_M, so for the base, "accuracy kept vs F16" measures the loss from quantizing a second time, not from
quantizing the original bf16 weights. The trained checkpoints (exported from full precision) have a true F16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tinyllm_utils.core.results import current_rss_mb, hardware, peak_rss_mb
from tinyllm_utils.edge.quantize import QUANT_TYPES, gguf_file_type, quantize_variants

# pandas, matplotlib, torch are imported where used: a profiling process should hold only llama.cpp.

# -------------------------------------------------------------------------------------------- device profile

def _representative_examples(spec) -> dict:
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.models.families import entry_prompt

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
    from tinyllm_utils.models.families import entry_prompt
    from tinyllm_utils.models.registry import resolve_model

    spec = resolve_model(model)
    return {kind: entry_prompt(e.entry, spec) for kind, e in _representative_examples(spec).items()}


def representative_grammars(seed: int = 0, model: str = "gemma-3-270m") -> dict[str, str]:
    """The grammar evaluation would constrain each of `representative_prompts` with (`EvalConfig.grammar`):
    the entry's offered functions (a multi-turn first step offers the entry's own)."""
    from tinyllm_utils.bfcl.grammar import call_list_grammar
    from tinyllm_utils.models.registry import resolve_model

    examples = _representative_examples(resolve_model(model))
    return {kind: call_list_grammar(e.entry["function"]) for kind, e in examples.items()}


def shared_prefix_prompts(n: int = 4, seed: int = 0, model: str = "gemma-3-270m") -> list[str]:
    """n simple_python prompts: consecutive BFCL entries that share the system prompt's opening."""
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.models.families import entry_prompt
    from tinyllm_utils.models.registry import resolve_model

    spec = resolve_model(model)
    return [entry_prompt(e.entry, spec) for e in load_category("simple_python", n, seed)]


def shared_prefix_grammars(n: int = 4, seed: int = 0) -> list[str]:
    """The grammars of `shared_prefix_prompts`' entries, in the same order."""
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.bfcl.grammar import call_list_grammar

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
    import llama_cpp

    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.models.registry import ModelSpec

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
    out = subprocess.run([sys.executable, "-m", "tinyllm_utils.edge.profile", "_profile_job"], input=json.dumps(job),
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
    from tinyllm_utils.models.registry import resolve_model

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
    from tinyllm_utils.bfcl.grammar import GRAMMAR_VERSION

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


def saved_decoding(profile_path: Path) -> dict:
    # Profiles saved before the field existed decoded with the early stop and no grammar.
    return json.loads(profile_path.read_text()).get("decoding", profile_decoding(True, False))


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
