"""Does re-quantizing a fine-tuned copy of the embedded base to 4 bits undo the fine-tune? (issue 34, item 6)

    .venv/bin/python -m tinyllm_utils.pipeline --profile quick --run-id q4dev --stages 02_data_filtering
    .venv/bin/python benchmarks/quant_snapback.py train --run outputs/q4dev       # quick's LoRA SFT, 1 thread
    .venv/bin/python benchmarks/quant_snapback.py measure --run outputs/q4dev     # export, quantize, snap-back
    .venv/bin/python benchmarks/quant_snapback.py evaluate --run outputs/q4dev --limit 50

`train` runs stage 04's LoRA SFT with quick's parameters (400 seeded rows of stage 02, lr 2e-4, 1 epoch, batch
2 x 4) into `<run>/04_sft/sft-lora`, without the stage's evaluation. `measure` exports the merged model to F16
(train.export), the LoRA adapter to a GGUF adapter (edge.lora_adapter), quantizes the F16 export and the
embedded base's F16 to Q4_K_M and Q4_0 with llama.cpp's quantizer, and writes the snap-back report of each
(edge.snapback) to `<run>/q4_snapback/`. `evaluate` runs stage 01's protocol on the same seeded entries for the
merged F16, merged Q4_K_M, merged Q4_0 and the embedded Q4_K_M base with the F16 adapter applied at run time,
one model at a time, and prints the accuracy table. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

# quick's 04_sft block (configs/profiles.yaml); the seed and row count are the stage's.
QUICK_LORA_SFT = {"num_train_epochs": 1, "learning_rate": 2.0e-4, "lr_scheduler_type": "cosine",
                  "warmup_steps": 0.03, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4,
                  "save_steps": 10, "max_length": 1024}
QUICK_TRAIN_ROWS = 400
SEED = 0


def train(run: Path, rows: int, threads: int, label: str) -> dict:
    """Stage 04's LoRA SFT (stages/sft.py's loop body) with quick's block; resumable (trainers' work folder)."""
    import torch

    torch.set_num_threads(threads)
    from tinyllm_utils.stages.common import load_stage02, sample_rows, tokens_seen
    from tinyllm_utils.train import formats, loading, trainers

    stage_dir = run / "04_sft"
    data = load_stage02(stage_dir)
    rows_used = sample_rows(data["train"], rows, SEED)
    model, tokenizer = loading.load_for_training("gemma-3-270m")
    spec = model._tinyllm_spec
    config = trainers.sft_config_from_dict(tokens_seen(dict(QUICK_LORA_SFT, seed=SEED)))
    return trainers.train_sft(model, tokenizer, formats.sft_dataset(rows_used, spec.prompt_format, tokenizer), None,
                              config, loading.default_lora(), stage_dir / label, spec=spec,
                              name=f"{spec.name}-sft-lora")


def _last_checkpoint(method_dir: Path) -> Path:
    """The TRL checkpoint of the run's last step: its adapter is the fine-tune that final/ merged."""
    from tinyllm_utils.train.trainers import resume_checkpoint

    result = json.loads((method_dir / "result.json").read_text())
    last = resume_checkpoint(method_dir / "checkpoints")
    if last is None or not last.endswith(f"-{result['global_step']}"):
        raise RuntimeError(f"{method_dir}: no checkpoint of the last step {result['global_step']} ({last})")
    return Path(last)


OUT = None  # --out: where the files go (default <run>/q4_snapback)


def files(run: Path, label: str) -> dict[str, Path]:
    """Where `measure` puts (and `evaluate` reads) every file of one trained model."""
    from tinyllm_utils.models.registry import resolve_model

    out = (OUT or run / "q4_snapback") / label
    stem = f"gemma-3-270m-{label}"
    return {"out": out, "final": run / "04_sft" / label / "final",
            "embedded": resolve_model("gemma-3-270m").gguf_path(),  # the base's Q4_K_M: the training base itself
            "base_f16": out / "base" / "gemma-3-270m-F16.gguf",
            "base_q4_k_m": out / "base" / "gemma-3-270m-Q4_K_M.gguf",
            "base_q4_0": out / "base" / "gemma-3-270m-Q4_0.gguf", "f16": out / "gguf" / f"{stem}-F16.gguf",
            "q4_k_m": out / "gguf" / f"{stem}-Q4_K_M.gguf", "q4_0": out / "gguf" / f"{stem}-Q4_0.gguf",
            "deploy": out / "base-q4_k_m+adapter"}


def measure(run: Path, label: str, threads: int) -> dict:
    """Export, quantize (llama.cpp's quantizer), the adapter deployment, and the snap-back reports."""
    from tinyllm_utils.core.results import write_json_atomic
    from tinyllm_utils.edge.lora_adapter import export_deployment
    from tinyllm_utils.edge.quantize import quantize_variants
    from tinyllm_utils.edge.snapback import snapback_report
    from tinyllm_utils.train.export import export_gguf

    f = files(run, label)
    if not f["f16"].exists():
        export_gguf(f["final"], f["f16"], "f16")
    quantize_variants(f["f16"], f["f16"].parent, types=["Q4_K_M", "Q4_0"], nthread=threads, check=False)
    # the base's F16 is its Q4_K_M de-quantized (models/embedded.py); its 4-bit variants are quantized from that
    quantize_variants(f["embedded"], f["base_f16"].parent, types=["F16"], allow_requantize=True, nthread=threads,
                      check=False)
    quantize_variants(f["base_f16"], f["base_f16"].parent, types=["Q4_K_M", "Q4_0"], nthread=threads, check=False)
    deployment = export_deployment(_last_checkpoint(run / "04_sft" / label), f["embedded"], f["deploy"])
    write_json_atomic(f["deploy"] / "model_spec.json", {
        "name": f"gemma-3-270m-{label}-q4_k_m+lora", "source": "local", "prompt_format": "gemma",
        "path": str(deployment["base"].resolve()), "lora_path": str(deployment["adapter"].resolve()),
        "base_model": "gemma-3-270m", "method": "sft_lora"})
    reports = {
        # the question: Q4_K_M of the fine-tune against the embedded Q4_K_M it was trained from
        "q4_k_m": (f["embedded"], f["f16"], f["q4_k_m"], None),
        # the same recipe at Q4_0, both quantized from F16; W_base is the embedded model's exact weights
        "q4_0": (f["base_q4_0"], f["f16"], f["q4_0"], f["embedded"]),
        # control, no fine-tune: the base's F16 quantized to Q4_K_M again, against the embedded Q4_K_M
        "control_q4_k_m": (f["embedded"], f["base_f16"], f["base_q4_k_m"], None),
    }
    summary = {}
    for name, args in reports.items():
        target = f["out"] / f"snapback_{name}.json"
        if not target.exists():
            write_json_atomic(target, snapback_report(*args))
        report = json.loads(target.read_text())
        worst = sorted((t for t in report["tensors"] if t["identical_bytes"] is not None),
                       key=lambda t: t["identical_bytes"])[:5]
        summary[name] = {"overall": report["overall"], "by_type": report["by_type"],
                         "least_identical": [{k: t[k] for k in ("name", "type", "identical_bytes", "delta_rel",
                                                                "delta_steps_rms", "kept")} for t in worst]}
    return summary


@contextmanager
def run_time_adapter(adapters: dict[str, str] | None = None, threads: int | None = None):
    """Until the llama.cpp backend passes ModelSpec.lora_path itself: every full (not vocabulary-only) Llama made
    on a GGUF of `adapters` (model path -> adapter path; evaluate's resolve_model adds the specs it resolves) gets
    that `lora_path` (a no-op once the backend passes it: setdefault). `threads` caps every Llama's threads: the
    evaluation asks for all cores, and llama.cpp's threads wait on each other when other jobs hold a core."""
    import llama_cpp

    from tinyllm_utils.evaluation import evaluate as evaluate_module

    original, resolve, adapters = llama_cpp.Llama, evaluate_module.resolve_model, dict(adapters or {})

    class WithAdapter(original):
        def __init__(self, *args, **kwargs):
            adapter = adapters.get(str(kwargs.get("model_path")))
            if adapter and not kwargs.get("vocab_only"):
                kwargs.setdefault("lora_path", adapter)
            if threads:
                kwargs["n_threads"] = threads
            super().__init__(*args, **kwargs)

    def resolve_and_note(name_or_path, *args, **kwargs):
        spec = resolve(name_or_path, *args, **kwargs)
        if spec.lora_path:
            adapters[str(spec.gguf_path())] = spec.lora_path
        return spec

    llama_cpp.Llama, evaluate_module.resolve_model = WithAdapter, resolve_and_note
    try:
        yield
    finally:
        llama_cpp.Llama, evaluate_module.resolve_model = original, resolve


VARIANTS = ("deploy", "q4_k_m", "q4_0", "f16")  # the adapter first: it stands for the F16 model (same weights)
NAMES = {"f16": "merged F16", "q4_k_m": "merged Q4_K_M", "q4_0": "merged Q4_0",
         "deploy": "base Q4_K_M + F16 adapter"}


def parity(run: Path, label: str, n_prompts: int = 4, max_new_tokens: int = 48, threads: int = 1) -> list[dict]:
    """Greedy text of the merged F16 against base + F16 adapter, on the embedded Q4_K_M (its token rows patched)
    and on the base's F16, for simple_python prompts (the evaluation's decoding)."""
    from dataclasses import replace

    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.edge.lora_adapter import adapter_tensors, patch_token_rows
    from tinyllm_utils.models.families import entry_prompt
    from tinyllm_utils.models.registry import resolve_model

    f = files(run, label)
    deploy = resolve_model(str(f["deploy"]))
    base_f16_rows = f["deploy"] / "gemma-3-270m-F16-rows.gguf"
    if not base_f16_rows.exists():
        patch_token_rows(f["base_f16"], adapter_tensors(_last_checkpoint(run / "04_sft" / label))[2], base_f16_rows)
    specs = {"merged F16": resolve_model(str(f["f16"])), "base Q4_K_M + adapter": deploy,
             "base F16 + adapter": replace(deploy, path=str(base_f16_rows))}
    prompts = [entry_prompt(e.entry, specs["merged F16"], None)
               for e in load_category("simple_python", limit=n_prompts, seed=1)]
    texts = {}
    with run_time_adapter({s.path: s.lora_path for s in specs.values() if s.lora_path}, threads):
        for name, spec in specs.items():
            backend = LlamaCppBackend(spec, max_new_tokens=max_new_tokens, n_ctx=4096, n_threads=threads)
            texts[name] = [g.text for g in backend.generate(prompts)]
            backend.llm.close()
    return [{name: texts[name][i] for name in texts} | {"equal": len({texts[n][i] for n in texts}) == 1}
            for i in range(len(prompts))]


def evaluate_variants(run: Path, label: str, categories: list[str], limit: int, threads: int = 1,
                      variants=VARIANTS) -> list[dict]:
    """Stage 01's protocol on the same seeded entries for each variant, one at a time; one row per variant x
    category: n, accuracy, and the share of call entries answered without a call."""
    from tinyllm_utils.bfcl.scoring import failure_mode
    from tinyllm_utils.core.results import read_jsonl
    from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate

    f = files(run, label)
    rows = []
    with run_time_adapter(threads=threads):
        for variant in variants:
            out = f["out"] / "eval" / variant
            evaluate(EvalConfig(model=str(f[variant]), categories=categories, limit=limit, multi_turn_limit=0),
                     out, progress=False)
            for category in categories:
                predictions = read_jsonl(out / "predictions" / f"{category}.jsonl")
                modes = [failure_mode(p) for p in predictions]
                rows.append({"variant": NAMES[variant], "category": category, "n": len(predictions),
                             "correct": sum(p["valid"] for p in predictions),
                             "no_call": sum(m == "no call" for m in modes)})
                print(rows[-1], flush=True)
    return rows


def _call_list_prefix(raw: str) -> str:
    """The answer up to the end of its first top-level call list: a diagnostic for models that call correctly and
    then do not stop (an end-of-turn row not yet learned), never the score."""
    depth, quote = 0, None
    for i, ch in enumerate(raw):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth == 0:
                return raw[: i + 1]
    return raw


def summarize(run: Path, label: str, categories: list[str], limit: int) -> list[dict]:
    """From the saved predictions: per variant x category n, correct (BFCL's checker), no call, unparseable, the
    diagnostic `prefix_correct` (the checker on the answer cut after its first call list) and how many answers
    are the same text as the adapter deployment's."""
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.bfcl.scoring import failure_mode, score_example
    from tinyllm_utils.core.results import read_jsonl

    f, rows = files(run, label), []
    for category in categories:
        examples = {e.id: e for e in load_category(category, limit=limit, seed=0)}
        saved = {}
        for variant in VARIANTS:
            path = f["out"] / "eval" / variant / "predictions" / f"{category}.jsonl"
            saved[variant] = {p["id"]: p for p in read_jsonl(path) if p["id"] in examples} if path.exists() else {}
        for variant, predictions in saved.items():
            if not predictions:
                continue
            modes = [failure_mode(p) for p in predictions.values()]
            rows.append({"variant": NAMES[variant], "category": category, "n": len(predictions),
                         "correct": sum(p["valid"] for p in predictions.values()),
                         "no_call": modes.count("no call"), "unparseable": modes.count("unparseable"),
                         "prefix_correct": sum(bool(score_example(examples[i], _call_list_prefix(p["raw"]))["valid"])
                                               for i, p in predictions.items()),
                         "same_text_as_adapter": sum(p["raw"] == saved["deploy"].get(i, {}).get("raw")
                                                     for i, p in predictions.items())})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "measure", "parity", "evaluate", "summarize"])
    parser.add_argument("--run", type=Path, default=Path("outputs/q4dev"))
    parser.add_argument("--rows", type=int, default=QUICK_TRAIN_ROWS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="sft-lora", help="the method folder under <run>/04_sft")
    parser.add_argument("--categories", nargs="+", default=["simple_python", "irrelevance"])
    parser.add_argument("--limit", type=int, default=25, help="entries per category (stage 01's seeded sample)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, help="folder for measure / parity / evaluate (default <run>/q4_snapback)")
    args = parser.parse_args(argv)
    global OUT
    OUT = args.out
    if args.command == "train":
        result = train(args.run, args.rows, args.threads, args.label)
        print(json.dumps({k: result.get(k) for k in ("path", "seconds", "global_step", "rows")}, indent=1))
    elif args.command == "measure":
        print(json.dumps(measure(args.run, args.label, args.threads), indent=1))
    elif args.command == "parity":
        print(json.dumps(parity(args.run, args.label, threads=args.threads), indent=1))
    elif args.command == "summarize":
        for row in summarize(args.run, args.label, args.categories, args.limit):
            print(json.dumps(row))
    else:
        rows = evaluate_variants(args.run, args.label, args.categories, args.limit, args.threads, args.variants)
        (files(args.run, args.label)["out"] / "accuracy.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
