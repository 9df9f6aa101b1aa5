"""Batched vs sequential llama.cpp decoding on the same BFCL entries: speed and parity, per weight type.

    python benchmarks/batched_parity.py --model gemma-3-270m --categories simple_python irrelevance --limit 16 \
        --parallel 8 [--model-file other.gguf ...]

For each GGUF it answers the same seeded entries twice with the evaluation's own prompts and greedy rules
(stop_when_hopeless on the Python categories, as `evaluate` does): once one answer at a time (`parallel=1`), once
`--parallel` answers per decode call. It prints entries/s of each pass, the speed-up, how many answers differ
(the flip rate) and each category's score both ways, scored by bfcl's checkers. Figures, not assertions: the
results log keeps the measured ones.
"""

from __future__ import annotations

import argparse
import json
import time


def run_pass(spec, examples, parallel: int, threads: int, max_new_tokens: int) -> tuple[list, float]:
    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.bfcl.data import language_of
    from tinyllm_utils.models.families import entry_prompt

    backend = LlamaCppBackend(spec, max_new_tokens=max_new_tokens, n_threads=threads, parallel=parallel)
    backend.generate([entry_prompt(examples[0].entry, spec, None)])  # warm-up: allocations, first-call costs
    start = time.perf_counter()
    generations = []
    for hopeless in (True, False):  # the evaluation stops hopeless answers on Python categories only
        group = [e for e in examples if (language_of(e.category) == "python") == hopeless]
        out = backend.generate([entry_prompt(e.entry, spec, None) for e in group], stop_when_hopeless=hopeless)
        generations += list(zip(group, out))
    seconds = time.perf_counter() - start
    backend.close()
    order = {id(e): i for i, e in enumerate(examples)}
    return [g for _, g in sorted(generations, key=lambda pair: order[id(pair[0])])], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="registry name or .gguf path")
    parser.add_argument("--categories", nargs="+", default=["simple_python", "multiple", "irrelevance"])
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.bfcl.scoring import score_example
    from tinyllm_utils.models import families
    from tinyllm_utils.models.registry import resolve_model

    spec = resolve_model(args.model)
    parse = families.parser_for(spec)
    examples = [e for c in args.categories for e in load_category(c, args.limit, args.seed)]
    sequential, seq_s = run_pass(spec, examples, 1, args.threads, args.max_new_tokens)
    batched, bat_s = run_pass(spec, examples, args.parallel, args.threads, args.max_new_tokens)
    flips = [e.id for e, a, b in zip(examples, sequential, batched) if a.text != b.text]
    scores = {}
    for name, gens in (("sequential", sequential), ("batched", batched)):
        for e, g in zip(examples, gens):
            scores.setdefault(e.category, {}).setdefault(name, []).append(score_example(e, g.text, parse)["valid"])
    tokens = sum(g.completion_tokens for g in batched)
    report = {
        "model_file": str(spec.gguf_path()), "entries": len(examples), "parallel": args.parallel,
        "threads": args.threads, "sequential_s": round(seq_s, 1), "batched_s": round(bat_s, 1),
        "sequential_entries_per_s": round(len(examples) / seq_s, 3),
        "batched_entries_per_s": round(len(examples) / bat_s, 3), "speed_up": round(seq_s / bat_s, 2),
        "generated_tokens": tokens, "flips": len(flips), "flip_rate": round(len(flips) / len(examples), 3),
        "flipped_ids": flips[:20],
        "accuracy": {c: {k: f"{sum(v)}/{len(v)}" for k, v in s.items()} for c, s in scores.items()},
        "any_category_score_differs": any(sum(s["sequential"]) != sum(s["batched"]) for s in scores.values()),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
