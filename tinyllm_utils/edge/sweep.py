"""Every checkpoint x quantized variant: quantize with llama.cpp, evaluate on the study's protocol, profile on this
machine, then the edge table and recommendation. The edge stage (stages/edge_profile.py) and
benchmarks/edge_profile.py both run it."""

from __future__ import annotations

from pathlib import Path

from tinyllm_utils.core.results import write_json_atomic
from tinyllm_utils.edge.profile import (
    profile_decoding,
    profile_grammars,
    profile_transformers,
    profile_variant,
    representative_prompts,
    saved_decoding,
    shared_prefix_prompts,
)
from tinyllm_utils.edge.quantize import gguf_file_type, quantize_variants
from tinyllm_utils.edge.table import edge_table, write_edge_outputs
from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate
from tinyllm_utils.models.embedded import embedded_hf_copy
from tinyllm_utils.models.registry import resolve_model

PREFIX_ENTRIES = 4  # simple_python entries for the prefix-reuse measurement
TRANSFORMERS_DTYPES = ("float32", "bfloat16")
TRANSFORMERS_THREADS = (2,)


def profile_checkpoints(checkpoints: dict[str, str], protocol: EvalConfig, out_dir: str | Path, *, types: list[str],
                        threads: list[int], threads_for: dict[str, list[int]] | None = None, runs: int = 3,
                        decode_tokens: int = 64, requantize=(), transformers_reference: dict[str, str] | None = None,
                        prefix_entries: int = PREFIX_ENTRIES, transformers_dtypes=TRANSFORMERS_DTYPES,
                        transformers_threads=TRANSFORMERS_THREADS, progress: bool = True) -> dict:
    """Quantize, evaluate and profile every checkpoint x variant; write the table, recommendation and figure.

    `checkpoints`: method -> its F16 GGUF (or, for a method in `requantize`, an already quantized GGUF such as the
    embedded base's Q4_K_M). Accuracy uses `protocol`'s entries and decoding (stage 01's). `threads_for` replaces
    `threads` for some variants; `transformers_reference`: method -> HF folder (or "embedded") for fp32 / bf16 rows.

    Layout: `<out>/<method>/variants/*.gguf` (+ variants.json), `<out>/<method>/eval/<quant>/` (evaluate()'s
    folder: predictions, metrics, run.json), `<out>/<method>/profile/<quant>-t<threads>.json`,
    `<out>/edge_table.csv`, `<out>/edge_recommendation.csv`, `<out>/edge_pareto.png|pdf`. Resumable: finished
    variants, evaluations (entry by entry) and profiles are kept.
    """
    out_dir = Path(out_dir)
    threads_for = threads_for or {}
    transformers_reference = transformers_reference or {}
    write_json_atomic(out_dir / "edge_config.json", {
        "checkpoints": checkpoints, "types": list(types), "requantize": list(requantize),
        "categories": protocol.categories, "limit": protocol.limit, "multi_turn_limit": protocol.multi_turn_limit,
        "seed": protocol.seed, "max_new_tokens": protocol.max_new_tokens,
        "stop_when_hopeless": protocol.stop_when_hopeless, "grammar": protocol.grammar, "threads": list(threads),
        "threads_for": threads_for, "runs": runs, "decode_tokens": decode_tokens, "prefix_entries": prefix_entries,
        "transformers_reference": transformers_reference, "transformers_dtypes": list(transformers_dtypes),
        "transformers_threads": list(transformers_threads)})
    prompts = representative_prompts(protocol.seed)
    prefix = shared_prefix_prompts(prefix_entries, seed=protocol.seed)
    # The profile's end-to-end seconds decode as stage 01's evaluation does (the grammar costs time per token).
    decoding = profile_decoding(protocol.stop_when_hopeless, protocol.grammar)
    grammars = profile_grammars(prefix_entries, protocol.seed) if protocol.grammar else {}
    records = []
    for method, gguf in checkpoints.items():
        method_dir = out_dir / method
        # The reference "F16": the export itself, or (base) its Q4_K_M de-quantized into F16.
        f16 = Path(gguf) if gguf_file_type(gguf) == "F16" else quantize_variants(
            gguf, method_dir / "variants", ["F16"], allow_requantize=method in requantize)[0]
        variants = [f16] + quantize_variants(f16, method_dir / "variants", [t for t in types if t != "F16"])
        for path in variants:
            quant = gguf_file_type(path)
            eval_dir = method_dir / "eval" / quant
            evaluate(EvalConfig(model=str(path), categories=protocol.categories, limit=protocol.limit,
                                multi_turn_limit=protocol.multi_turn_limit, seed=protocol.seed,
                                max_new_tokens=protocol.max_new_tokens,
                                stop_when_hopeless=protocol.stop_when_hopeless, grammar=protocol.grammar),
                     eval_dir, progress=progress)
            thread_counts = threads_for.get(quant, threads)
            if not thread_counts:  # accuracy only (still the reference for retention)
                records.append({"method": method, "quantization": quant, "eval_dir": eval_dir})
            for n_threads in thread_counts:
                profile_path = method_dir / "profile" / f"{quant}-t{n_threads}.json"
                if not profile_path.exists() or saved_decoding(profile_path) != decoding:
                    write_json_atomic(profile_path, profile_variant(
                        path, prompts, n_threads, runs, decode_tokens, protocol.max_new_tokens,
                        prefix_prompts=prefix, stop_when_hopeless=protocol.stop_when_hopeless, **grammars))
                records.append({"method": method, "quantization": quant, "eval_dir": eval_dir,
                                "profile": profile_path})
        source = transformers_reference.get(method)
        if source == "embedded":
            source = str(embedded_hf_copy(resolve_model("gemma-3-270m")))
        for dtype in transformers_dtypes if source else []:
            for n_threads in transformers_threads:
                profile_path = method_dir / "profile" / f"transformers-{dtype}-t{n_threads}.json"
                if not profile_path.exists():
                    write_json_atomic(profile_path, profile_transformers(
                        source, dtype, prompts, n_threads, runs, decode_tokens, protocol.max_new_tokens))
                records.append({"method": method, "quantization": f"hf-{dtype}", "profile": profile_path})
    return write_edge_outputs(edge_table(records), out_dir)
