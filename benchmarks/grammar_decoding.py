"""What grammar-constrained decoding costs on llama.cpp: the same BFCL prompts decoded free and with the
call-list grammar (tinyllm_utils.bfcl.grammar), one model, one process.

    python benchmarks/grammar_decoding.py [--model gemma-3-270m] [--entries 16] [--threads 2]
    python benchmarks/grammar_decoding.py --model outputs/quick/04_sft/sft-lora/gguf/gemma-3-270m-sft-lora-F16.gguf

Greedy, 256 new tokens at most, no early stop (both configurations run to end of turn or the cap). Prints,
per configuration, seconds per entry, generated tokens per second (prompt processing included, the same work
in both), and the seconds spent building the grammars. The answers differ (that is the point), so compare
the per-token rate, not the totals. Figures, not assertions: run it on the machine you care about.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="registry name or .gguf (llama.cpp)")
    parser.add_argument("--entries", type=int, default=16, help="half simple_python, half multiple")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.bfcl.grammar import call_list_grammar
    from tinyllm_utils.models.families import entry_prompt
    from tinyllm_utils.models.registry import resolve_model

    spec = resolve_model(args.model)
    half = args.entries // 2
    examples = (load_category("simple_python", half, args.seed)
                + load_category("multiple", args.entries - half, args.seed))
    backend = LlamaCppBackend(spec, max_new_tokens=256, seed=args.seed, n_threads=args.threads)
    prompts = [entry_prompt(e.entry, spec) for e in examples]
    start = time.perf_counter()
    grammars = [call_list_grammar(e.entry["function"]) for e in examples]
    build_seconds = time.perf_counter() - start
    backend.generate(prompts[:1])  # warm-up (allocations, first-call overheads)

    rows = []
    for label, constrained in (("free", None), ("grammar", grammars)):
        start = time.perf_counter()
        generations = backend.generate(prompts, grammars=constrained)
        seconds = time.perf_counter() - start
        tokens = sum(g.completion_tokens for g in generations)
        rows.append({"configuration": label, "entries": len(prompts), "seconds": round(seconds, 2),
                     "s_per_entry": round(seconds / len(prompts), 2), "generated_tokens": tokens,
                     "tokens_per_s": round(tokens / seconds, 1),
                     "call_lists": sum(g.text.lstrip().startswith("[") for g in generations)})
    print(f"\n{spec.name}, {len(prompts)} entries (simple_python + multiple), llama.cpp "
          f"{backend.llm.n_threads} threads, greedy, 256 new tokens, no early stop; grammars built in "
          f"{build_seconds * 1000:.0f} ms\n")
    header = f"{'configuration':14} {'s/entry':>8} {'tokens':>7} {'tok/s':>7} {'answers starting with [':>24}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['configuration']:14} {r['s_per_entry']:8.2f} {r['generated_tokens']:7d} {r['tokens_per_s']:7.1f} "
              f"{r['call_lists']:24d}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
