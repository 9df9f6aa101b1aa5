"""Evaluate one model on BFCL categories: generate, save raw output, score with bfcl's checkers, aggregate.

    python -m tinyllm_utils.evaluate --model gemma-3-270m --categories simple_python irrelevance --limit 20

writes `<out>/run.json`, `<out>/predictions/<category>.jsonl` and `<out>/metrics.json`. A rerun with the same
parameters skips entries already on disk, so an interrupted run resumes where it stopped. `--rescore` scores
the saved raw outputs again from disk alone and reports any verdict that differs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from tinyllm_utils import aggregate, model_families
from tinyllm_utils.backends import make_backend
from tinyllm_utils.bfcl import BFCL_EVAL_VERSION
from tinyllm_utils.data import expand_categories, is_multi_turn, language_of, load_category
from tinyllm_utils.multi_turn import run_multi_turn
from tinyllm_utils.prompts import entry_prompt
from tinyllm_utils.registry import ModelUnavailableError, resolve_model
from tinyllm_utils.results import PredictionWriter, manifest, read_jsonl, write_json_atomic
from tinyllm_utils.scoring import score_example


@dataclass
class EvalConfig:
    model: str = "gemma-3-270m"
    categories: list[str] = field(default_factory=lambda: ["simple_python"])
    limit: int | None = 2  # single-turn entries per category (seeded sample); None = the whole category
    multi_turn_limit: int | None = 1  # multi-turn entries per category (each costs about a minute on 2 cores)
    seed: int = 0
    backend: str = "llama_cpp"
    max_new_tokens: int = 256
    batch_size: int = 8
    stop_when_hopeless: bool = True

    def prediction_keys(self) -> dict:
        """Parameters that change the predictions: a resumed run must match them."""
        keys = asdict(self)
        keys.pop("categories")
        keys.pop("limit")
        keys.pop("multi_turn_limit")
        keys["bfcl_eval"] = BFCL_EVAL_VERSION
        return keys


def _check_resumable(out_dir: Path, config: EvalConfig) -> None:
    run_file = out_dir / "run.json"
    if not run_file.exists():
        return
    previous = json.loads(run_file.read_text()).get("prediction_keys", {})
    changed = {k: (previous.get(k), v) for k, v in config.prediction_keys().items() if previous.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{out_dir} holds predictions made with other parameters ({detail}); "
                         "use another output folder or delete it")


def _row(example, raw, generation_stats: dict, parser=None) -> dict:
    scored = score_example(example, raw, parser)
    generation_stats = dict(generation_stats)
    error = generation_stats.pop("error", None)
    if error:  # the model produced no (complete) answer: wrong whatever the category
        scored.update(valid=False, error_type=error, error=error)
    return {"id": example.id, "category": example.category, "raw": raw, **scored, **generation_stats}


def evaluate(config: EvalConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run (or resume) an evaluation; returns the metrics also written to `<out_dir>/metrics.json`."""
    out_dir = Path(out_dir)
    categories = expand_categories(config.categories)
    spec = resolve_model(config.model)
    parser = model_families.parser_for(spec)  # the family's: Python calls, xLAM JSON or Qwen <tool_call>
    _check_resumable(out_dir, config)
    run = manifest(asdict(config) | {"categories": categories}, prediction_keys=config.prediction_keys(),
                   model_spec=asdict(spec), bfcl_eval=BFCL_EVAL_VERSION, parser=model_families.parser_name(spec),
                   scoring_path=model_families.scoring_path(spec))
    if (out_dir / "run.json").exists():  # a resumed run keeps the history of when and how it was started
        previous = json.loads((out_dir / "run.json").read_text())
        run["started"] = previous.get("started", previous["created"])
        run["backend"] = previous.get("backend")
    write_json_atomic(out_dir / "run.json", run)

    backend = None
    selected: dict[str, set[str]] = {}
    for category in categories:
        limit = config.multi_turn_limit if is_multi_turn(category) else config.limit
        examples = load_category(category, limit, config.seed)
        selected[category] = {e.id for e in examples}
        writer = PredictionWriter(out_dir / "predictions" / f"{category}.jsonl")
        todo = [e for e in examples if e.id not in writer.done]
        if not todo:
            continue
        if backend is None:
            backend = make_backend(spec, config.backend, config.max_new_tokens, config.seed, config.batch_size)
            run = json.loads((out_dir / "run.json").read_text())
            write_json_atomic(out_dir / "run.json", run | {"backend": backend.describe()})
        bar = tqdm(total=len(todo), desc=f"{spec.name} {category}", disable=not progress, unit="entry")
        if is_multi_turn(category):
            for example in todo:
                result = run_multi_turn(example, backend, spec.prompt_format, spec=spec)
                raw = result.pop("raw")
                writer.append(_row(example, raw, result, parser))
                bar.update()
        else:
            hopeless_stop = (config.stop_when_hopeless and language_of(category) == "python"
                             and model_families.early_stop_applies(spec))
            for start in range(0, len(todo), config.batch_size):
                chunk = todo[start:start + config.batch_size]
                prompts = [entry_prompt(e.entry, spec, backend.tokenizer) for e in chunk]
                for example, generation in zip(chunk, backend.generate(prompts, stop_when_hopeless=hopeless_stop)):
                    stats = generation.to_dict()
                    writer.append(_row(example, stats.pop("text"), stats, parser))
                    bar.update()
        bar.close()

    # Only the entries of this configuration count, even if the folder holds more (e.g. an earlier larger limit).
    predictions = {c: [row for row in read_jsonl(out_dir / "predictions" / f"{c}.jsonl") if row["id"] in ids]
                   for c, ids in selected.items()}
    metrics = aggregate.summarize(predictions)
    metrics["model"] = spec.name
    metrics["selected_ids"] = {c: sorted(ids) for c, ids in selected.items()}  # what analysis/figures count
    write_json_atomic(out_dir / "metrics.json", metrics)
    return metrics


def rescore(out_dir: str | Path) -> dict:
    """Score saved raw outputs again, from disk alone; returns metrics and the ids whose verdict changed."""
    out_dir = Path(out_dir)
    predictions, changed = {}, []
    run_file = out_dir / "run.json"  # runs from before parsers were recorded used the Python-call decoder
    parser_id = json.loads(run_file.read_text()).get("parser", "python_ast") if run_file.exists() else "python_ast"
    parser = model_families.parser_by_name(parser_id)
    for path in sorted((out_dir / "predictions").glob("*.jsonl")):
        rows = read_jsonl(path)
        examples = {e.id: e for e in load_category(path.stem)}
        for row in rows:
            if (row.get("error_type") or "").startswith(("inference:", "multi_turn:force_terminated")):
                continue  # no answer was generated; nothing to score
            fresh = score_example(examples[row["id"]], row["raw"], parser)
            if fresh["valid"] != row["valid"] or fresh["error_type"] != row["error_type"]:
                changed.append(row["id"])
        predictions[path.stem] = rows
    return {"metrics": aggregate.summarize(predictions), "changed": changed}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--categories", nargs="+", default=["simple_python"])
    parser.add_argument("--limit", type=int, default=None, help="single-turn entries per category (seeded sample)")
    parser.add_argument("--multi-turn-limit", type=int, default=None, help="multi-turn entries per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="llama_cpp", choices=["llama_cpp", "transformers"])
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-early-stop", action="store_true", help="always generate to end of turn or the cap")
    parser.add_argument("--out", required=True, help="output folder, e.g. outputs/my_run/01_baseline_evaluation/gemma-3-270m")
    parser.add_argument("--rescore", action="store_true", help="only re-score the raw outputs saved in --out")
    args = parser.parse_args(argv)
    if args.rescore:
        result = rescore(args.out)
        print(aggregate.format_table(result["metrics"]))
        print(f"verdicts changed on re-scoring: {len(result['changed'])} {result['changed'][:20]}")
        raise SystemExit(1 if result["changed"] else 0)
    config = EvalConfig(args.model, args.categories, args.limit, args.multi_turn_limit, args.seed, args.backend,
                        args.max_new_tokens, args.batch_size, not args.no_early_stop)
    try:
        metrics = evaluate(config, args.out)
    except ModelUnavailableError as exc:
        raise SystemExit(f"error: {exc}") from None  # one clear line, not a traceback
    print(aggregate.format_table(metrics))


if __name__ == "__main__":
    main()
