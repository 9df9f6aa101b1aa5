"""Entries/s through an OpenAI-compatible server at concurrency 1, 2, 4 vs the in-process llama.cpp backend.

    python benchmarks/server_throughput.py [--entries 12] [--max-new-tokens 256] [--threads 2]
    python benchmarks/server_throughput.py --base-url http://gpu-box:8000/v1 --model google/gemma-3-270m

Without --base-url it starts llama-cpp-python's own server on 127.0.0.1 with the embedded gemma-3-270m GGUF
(same file, same thread count as the in-process run) and kills it at the end. Same prompts (simple_python +
multiple, seeded), greedy, the same token cap, early stop off everywhere (a server cannot do it), so every
configuration does the same work; the predictions are also compared with the in-process ones. Figures, not
assertions: llama-cpp-python's server runs one request at a time, so concurrency mostly hides round trips
there; servers with continuous batching (vLLM, SGLang, TGI) are where concurrency pays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sample_prompts(entries: int, seed: int) -> list[str]:
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.models.families import entry_prompt
    from tinyllm_utils.models.registry import resolve_model

    half = entries // 2
    examples = load_category("simple_python", half, seed) + load_category("multiple", entries - half, seed)
    return [entry_prompt(e.entry, resolve_model("gemma-3-270m")) for e in examples]


def timed(backend, prompts: list[str], what: str) -> tuple[float, list]:
    backend.generate(prompts[:1])  # warm-up (first-call allocations, connection)
    start = time.perf_counter()
    generations = backend.generate(prompts)
    seconds = time.perf_counter() - start
    # each configuration as it finishes: every one generates up to max_new_tokens per entry (minutes on 2 cores)
    print(f"{what}: {len(prompts)} entries in {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds, generations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-url", help="an already running server instead of a local llama.cpp one")
    parser.add_argument("--model", help="the model name the server serves (with --base-url)")
    args = parser.parse_args()

    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.backends.server import LocalLlamaServer, OpenAICompatBackend
    from tinyllm_utils.core.results import hardware
    from tinyllm_utils.models.registry import resolve_model

    spec = resolve_model("gemma-3-270m")
    prompts = sample_prompts(args.entries, args.seed)
    rows = []
    local = LlamaCppBackend(spec, max_new_tokens=args.max_new_tokens, n_ctx=4096, n_threads=args.threads)
    configuration = f"in-process llama.cpp ({args.threads} threads)"
    seconds, reference = timed(local, prompts, configuration)
    rows.append({"configuration": configuration, "seconds": seconds,
                 "tokens": sum(g.completion_tokens for g in reference), "identical": "-"})
    local.llm.close()

    server = None
    if args.base_url:
        base_url = args.base_url
    else:
        log = Path(tempfile.mkdtemp()) / "llama_server.log"
        server = LocalLlamaServer(spec.gguf_path(), log, n_ctx=4096, threads=args.threads)
        base_url = server.url
    try:
        for concurrency in args.concurrency:
            backend = OpenAICompatBackend(spec, max_new_tokens=args.max_new_tokens, base_url=base_url,
                                          model=args.model, concurrency=concurrency)
            configuration = f"server, concurrency {concurrency}"
            seconds, generations = timed(backend, prompts, configuration)
            same = sum(a.text == b.text for a, b in zip(generations, reference))
            rows.append({"configuration": configuration, "seconds": seconds,
                         "tokens": sum(g.completion_tokens for g in generations),
                         "identical": f"{same}/{len(prompts)}", "retries": backend.retries_used})
            backend.close()
    finally:
        if server is not None:
            server.close()

    where = args.base_url or f"llama-cpp-python server on 127.0.0.1 ({args.threads} threads)"
    print(f"\n{len(prompts)} BFCL entries (simple_python + multiple), greedy, max_new_tokens={args.max_new_tokens}, "
          f"early stop off; server: {where}; machine: {hardware()}\n")
    header = f"{'configuration':36} {'entries/s':>9} {'tok/s':>7} {'s/entry':>8} {'same text as in-process':>24}"
    print(header)
    print("-" * len(header))
    for r in rows:
        r["entries_per_s"] = len(prompts) / r["seconds"]
        print(f"{r['configuration']:36} {r['entries_per_s']:9.3f} {r['tokens'] / r['seconds']:7.1f} "
              f"{r['seconds'] / len(prompts):8.2f} {r['identical']:>24}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
