"""The edge stage on one checkpoint: quantized variants, BFCL accuracy kept vs F16, device profile, Pareto
table, recommended variant and figure.

    python benchmarks/edge_profile.py [--out outputs/edge_bench] [--limit 10] [--runs 3] [--threads 1 2]
    python benchmarks/edge_profile.py --gguf outputs/run/04_sft/model-F16.gguf --method sft

Default checkpoint: the embedded base gemma-3-270m, which exists only as Q4_K_M, so its "F16" is that file
de-quantized into F16 and every variant is a re-quantization of Q4_K_M weights (see tinyllm_utils.edge.profile).
Resumable (rerun the same command); writes under --out and prints the tables. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="the checkpoint's F16 GGUF (default: the embedded base Q4_K_M)")
    parser.add_argument("--method", default="base")
    parser.add_argument("--out", default="outputs/edge_bench")
    parser.add_argument("--categories", nargs="+", default=["simple_python", "multiple", "irrelevance"])
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads-for", nargs="*", default=[], metavar="QUANT=T1,T2",
                        help="other thread counts for some variants, e.g. Q4_K_M=1,2 or F16= (none)")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--prefix-entries", type=int, default=4)
    parser.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"], help="transformers rows")
    parser.add_argument("--types", nargs="+", default=None)
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers fp32/bf16 rows")
    args = parser.parse_args()

    import pandas as pd

    from tinyllm_utils.core.results import hardware
    from tinyllm_utils.edge import quantize
    from tinyllm_utils.edge.sweep import profile_checkpoints
    from tinyllm_utils.evaluation.evaluate import EvalConfig
    from tinyllm_utils.models.registry import resolve_model

    gguf = args.gguf or str(resolve_model("gemma-3-270m").gguf_path())
    protocol = EvalConfig(model=gguf, categories=args.categories, limit=args.limit, multi_turn_limit=0)
    start = time.perf_counter()
    result = profile_checkpoints(
        {args.method: gguf}, protocol, args.out, types=args.types or list(quantize.QUANT_TYPES),
        requantize=[args.method] if quantize.gguf_file_type(gguf) not in ("F16", "F32", "BF16") else [],
        threads=args.threads, runs=args.runs,
        threads_for={q: [int(t) for t in ts.split(",") if t] for q, ts in (x.split("=") for x in args.threads_for)},
        decode_tokens=args.decode_tokens, prefix_entries=args.prefix_entries, transformers_dtypes=args.dtypes,
        transformers_reference={} if args.no_transformers or args.gguf else {args.method: "embedded"})
    table = pd.read_csv(Path(args.out) / "edge_table_all_threads.csv")

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print(f"\nmachine: {hardware()}\nwall time: {time.perf_counter() - start:.0f} s (resumed work not counted)\n")
    print(f"accuracy: {args.categories} x {args.limit} entries each (seeded), llama.cpp backend\n")
    cols = ["method", "quantization", "threads", "size_mb", "peak_rss_mb", "load_s", "ttft_s", "decode_tokens_per_s",
            "e2e_s_per_entry", "accuracy", "retained", "retained_ci_low", "retained_ci_high", "mcnemar_p"]
    print(table[[c for c in cols if c in table]].round(3).to_string(index=False))
    print("\nPareto front at 2 threads (accuracy up, decode ms/token and peak RSS down):")
    at = result["table"]
    print(at[at["pareto"]][["method", "quantization", "accuracy", "decode_ms_per_token", "peak_rss_mb"]]
          .round(3).to_string(index=False))
    print("\nrecommended variant (smallest keeping >= 95 % of F16 accuracy):")
    print(result["recommendation"].round(3).to_string(index=False))
    print("\nprefix reuse (entries sharing BFCL's system prompt, cache kept vs reset), per profile:")
    for path in sorted(Path(args.out).glob(f"{args.method}/profile/Q*-t*.json")) + sorted(
            Path(args.out).glob(f"{args.method}/profile/F16-t*.json")):
        reuse = pd.read_json(path, typ="series")["prefix_reuse"]
        print(f"  {path.stem:12} shared prefix {reuse['shared_prefix_tokens']} tokens: "
              f"{reuse['cold_s_per_entry']['median']:.2f} s -> {reuse['reuse_s_per_entry']['median']:.2f} s "
              f"per entry (saves {100 * reuse['saved_fraction']:.0f} %)")
    print(f"\nfigure: {', '.join(str(p) for p in result['figures'])}")


if __name__ == "__main__":
    main()
