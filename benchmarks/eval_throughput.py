"""Evaluation throughput on a fixed BFCL sample: llama.cpp vs transformers (batched and one-by-one).

    python benchmarks/eval_throughput.py [--entries 8] [--max-new-tokens 256] [--batch-size 8]

Each backend runs in its own process (so peak memory is its own) on the same prompts with the same decoding
rules (greedy, token cap, stop at end of turn; early stopping off, so every backend does the same work).
Prints entries/s, generated tokens/s, seconds per entry, peak resident memory, and the time the full
non-live single-turn set (1 240 entries) would take at that rate. Figures, not assertions: run it on the
machine you care about.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

NON_LIVE_ENTRIES = 1240


def sample_prompts(entries: int, seed: int) -> list[str]:
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.models.prompts import first_turn_messages, format_prompt

    half = entries // 2
    examples = load_category("simple_python", half, seed) + load_category("multiple", entries - half, seed)
    return [format_prompt(first_turn_messages(e.entry)[0], "gemma") for e in examples]


def measure(backend_name: str, batch_size: int, entries: int, max_new_tokens: int, seed: int,
            early_stop: bool) -> dict:
    from tinyllm_utils.backends.factory import make_backend
    from tinyllm_utils.core.results import peak_rss_mb
    from tinyllm_utils.models.registry import resolve_model

    prompts = sample_prompts(entries, seed)
    start = time.perf_counter()
    backend = make_backend(resolve_model("gemma-3-270m"), backend_name, max_new_tokens, seed, batch_size)
    load_seconds = time.perf_counter() - start
    backend.generate(prompts[:1])  # warm-up (allocations, first-call overheads)
    start = time.perf_counter()
    generations = backend.generate(prompts, stop_when_hopeless=early_stop)
    seconds = time.perf_counter() - start
    tokens = sum(g.completion_tokens for g in generations)
    return {"backend": backend_name, "batch_size": batch_size, "early_stop": early_stop, "entries": len(prompts),
            "load_s": round(load_seconds, 1), "seconds": round(seconds, 2),
            "entries_per_s": round(len(prompts) / seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "s_per_entry": round(seconds / len(prompts), 2), "generated_tokens": tokens,
            "peak_rss_mb": round(peak_rss_mb() or 0),
            "non_live_minutes": round(NON_LIVE_ENTRIES * seconds / len(prompts) / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        backend, batch, early = args.one.split(":")
        print(json.dumps(measure(backend, int(batch), args.entries, args.max_new_tokens, args.seed, early == "1")))
        return

    configurations = [("llama_cpp", 1, 0), ("transformers", args.batch_size, 0), ("transformers", 1, 0),
                      ("llama_cpp", 1, 1)]
    rows = []
    for backend, batch, early in configurations:
        label = f"{backend} batch={batch}" + (" early-stop" if early else "")
        print(f"measuring {label} ...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--one", f"{backend}:{batch}:{early}", "--entries",
                              str(args.entries), "--max-new-tokens", str(args.max_new_tokens), "--seed",
                              str(args.seed)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"label": label})

    print(f"\nBFCL sample: {args.entries} entries (simple_python + multiple), max_new_tokens={args.max_new_tokens}, "
          "greedy, gemma-3-270m\n")
    header = f"{'configuration':34} {'entries/s':>9} {'tok/s':>7} {'s/entry':>8} {'peak MB':>8} {'1240 non-live':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['label']:34} {r['entries_per_s']:9.3f} {r['tokens_per_s']:7.1f} {r['s_per_entry']:8.2f} "
              f"{r['peak_rss_mb']:8d} {r['non_live_minutes']:11.1f} min")
    one_by_one = next(r for r in rows if r["backend"] == "transformers" and r["batch_size"] == 1)
    llama = rows[0]
    print(f"\nllama.cpp vs transformers one-by-one: {llama['entries_per_s'] / one_by_one['entries_per_s']:.1f}x entries/s")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
