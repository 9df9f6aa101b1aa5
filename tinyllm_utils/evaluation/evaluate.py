"""Evaluate one model on BFCL categories: generate, save raw output, score with bfcl's checkers, aggregate.

    python -m tinyllm_utils.evaluation.evaluate --model gemma-3-270m --categories simple_python irrelevance --limit 20

writes `<out>/run.json`, `<out>/predictions/<category>.jsonl` and `<out>/metrics.json`. A rerun with the same
parameters skips entries already on disk, so an interrupted run resumes where it stopped. `--rescore` scores
the saved raw outputs again from disk alone and reports any verdict that differs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm  # text bars: they reach the terminal through papermill too

from tinyllm_utils.backends.factory import make_backend
from tinyllm_utils.bfcl import aggregate
from tinyllm_utils.bfcl.data import expand_categories, is_multi_turn, language_of, load_category
from tinyllm_utils.bfcl.grammar import GRAMMAR_VERSION, call_list_grammar
from tinyllm_utils.bfcl.scoring import score_example
from tinyllm_utils.bfcl.shim import BFCL_EVAL_VERSION
from tinyllm_utils.core.results import PredictionWriter, manifest, read_jsonl, write_json_atomic
from tinyllm_utils.core.work import Work, finish_work, open_work
from tinyllm_utils.evaluation.multi_turn import run_multi_turn
from tinyllm_utils.models import families
from tinyllm_utils.models.families import entry_prompt
from tinyllm_utils.models.registry import ModelUnavailableError, resolve_model, weights_fingerprint

SMOKE_CATEGORIES = ["simple_python", "simple_java", "multiple", "parallel", "parallel_multiple", "irrelevance",
                    "live_simple", "live_irrelevance", "live_relevance", "multi_turn_base"]


@dataclass
class EvalConfig:
    """The evaluation protocol. Defaults are the cheapest workload (the `smoke` profile); profiles change them."""

    model: str = field(default="gemma-3-270m", metadata={"help": "registry name, Hugging Face id, checkpoint folder or .gguf"})
    categories: list[str] = field(default_factory=lambda: list(SMOKE_CATEGORIES),
                                  metadata={"help": "BFCL categories or groups: non_live live multi_turn single_turn all"})
    limit: int | None = field(default=2, metadata={"help": "single-turn entries per category (seeded sample); None = all"})
    multi_turn_limit: int | None = field(default=1, metadata={"help": "multi-turn entries per category (about a minute each on 2 cores)"})
    seed: int = 0
    backend: str = field(default="llama_cpp", metadata={
        "help": "llama_cpp | transformers | openai (a server: TINYLLM_OPENAI_BASE_URL, README)"})
    max_new_tokens: int = 256
    batch_size: int = field(default=8, metadata={"help": "prompts per batch (transformers backend)"})
    parallel: int = field(default=1, metadata={
        "help": "llama_cpp: answers decoded together, one decode call per token for all (1 = one at a time); "
                "the batches are fixed slices of each category's seeded entries, so a resumed run forms the same"})
    decline_bias: float | None = field(default=None, metadata={
        "help": "Python categories, llama_cpp: logit added to the no-call answer's first token at the answer's "
                "first position (a calibrated call/no-call decision: tinyllm_utils.evaluation.decline); None = off"})
    stop_when_hopeless: bool = field(default=True, metadata={
        "help": "Python categories: stop once the text can no longer decode as a call list (README)"})
    grammar: bool = field(default=False, metadata={
        "help": "Python categories, llama_cpp: sample only a call list of the offered functions "
                "(required parameters, declared types) or prose (tinyllm_utils.bfcl.grammar, README)"})

    def prediction_keys(self) -> dict:
        """Parameters that change the predictions: a resumed run must match them."""
        keys = asdict(self)
        for name in ("categories", "limit", "multi_turn_limit", "models"):
            keys.pop(name, None)  # which entries are scored, not how each is predicted
        if keys["grammar"]:
            keys["grammar"] = GRAMMAR_VERSION  # predictions of an earlier grammar are not resumed
        else:
            del keys["grammar"]  # off, it changes nothing: evaluations made before the option still resume
        for option, off in (("parallel", 1), ("decline_bias", None)):  # likewise
            if keys[option] == off:
                del keys[option]
        keys["bfcl_eval"] = BFCL_EVAL_VERSION
        return keys


PROMPTING = ("name", "prompt_format", "mode", "family", "reasoning")  # how a model's prompts are built and parsed


def _check_resumable(out_dir: Path, config: EvalConfig, spec) -> Work:
    """Predictions in `out_dir` are keyed by what changes them (tinyllm_utils.core.work): the decoding, the weights'
    content and how the model is prompted and parsed, not where its file is (a run folder that moved resumes);
    other keys are refused."""
    parameters = {k: v for k, v in config.prediction_keys().items() if k != "model"}
    material = {"parameters": {**parameters, "prompting": {f: getattr(spec, f) for f in PROMPTING}},
                "inputs": {"model weights": weights_fingerprint(spec)}}
    return open_work(out_dir, material, on_mismatch="refuse")


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
    parser = families.parser_for(spec)  # the family's: Python calls, xLAM JSON or Qwen <tool_call>
    if config.grammar and config.backend != "llama_cpp":
        raise ValueError(f"grammar=True needs the llama_cpp backend (got {config.backend!r}): "
                         "llama.cpp's sampler is what enforces the grammar")
    if config.decline_bias is not None and (config.backend != "llama_cpp"
                                            or not families.raw_answer_is_call_list(spec)):
        raise ValueError(f"decline_bias biases the no-call sentence against a Python call list on llama_cpp; "
                         f"{spec.name} on {config.backend!r} does not answer that way")
    if config.grammar and not families.raw_answer_is_call_list(spec):
        raise ValueError(f"grammar=True constrains Python call-list answers; {spec.name} answers in its family's "
                         "own syntax (JSON, <tool_call>) or reasons first")
    work = _check_resumable(out_dir, config, spec)
    run = manifest(asdict(config) | {"categories": categories}, prediction_keys=config.prediction_keys(),
                   model_spec=asdict(spec), bfcl_eval=BFCL_EVAL_VERSION, parser=families.parser_name(spec),
                   scoring_path=families.scoring_path(spec))
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
            backend = make_backend(spec, config.backend, config.max_new_tokens, config.seed, config.batch_size,
                                   parallel=config.parallel, decline_bias=config.decline_bias)
            run = json.loads((out_dir / "run.json").read_text())
            write_json_atomic(out_dir / "run.json", run | {"backend": backend.describe()})
        bar = tqdm(total=len(todo), desc=f"{spec.name} {category}", disable=not progress, unit="entry")
        if is_multi_turn(category):
            for example in todo:
                result = run_multi_turn(example, backend, spec.prompt_format, spec=spec,
                                        grammar=config.grammar)
                raw = result.pop("raw")
                writer.append(_row(example, raw, result, parser))
                bar.update()
        else:
            # Both read the raw text as a Python call list: only where the family answers with one.
            python_answers = language_of(category) == "python" and families.raw_answer_is_call_list(spec)
            hopeless_stop = config.stop_when_hopeless and python_answers
            # Fixed slices of the seeded entries, whatever is already done: an entry shares its batch with the
            # same entries in a fresh and in a resumed run (quantized kernels can round by batch composition).
            size = config.parallel if config.backend == "llama_cpp" else config.batch_size
            slices = [examples[i:i + size] for i in range(0, len(examples), size)]
            for chunk in (s for s in slices if any(e.id not in writer.done for e in s)):
                prompts = [entry_prompt(e.entry, spec, backend.tokenizer) for e in chunk]
                constrained = ({"grammars": [call_list_grammar(e.entry["function"]) for e in chunk]}
                               if config.grammar and python_answers else {})
                generations = backend.generate(prompts, stop_when_hopeless=hopeless_stop, **constrained)
                for example, generation in zip(chunk, generations):
                    if example.id in writer.done:  # answered again only to rebuild its batch
                        continue
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
    finish_work(work)  # the folder's marker says "finished" (a later, larger limit reopens and extends it)
    return metrics


def rescore(out_dir: str | Path) -> dict:
    """Score saved raw outputs again, from disk alone; returns metrics and the ids whose verdict changed. Only the
    entries the evaluation selected count (metrics.json), as in `evaluate`: the folder may hold more."""
    out_dir = Path(out_dir)
    predictions, changed = {}, []
    run_file = out_dir / "run.json"  # runs from before parsers were recorded used the Python-call decoder
    parser_id = json.loads(run_file.read_text()).get("parser", "python_ast") if run_file.exists() else "python_ast"
    parser = families.parser_by_name(parser_id)
    metrics_file = out_dir / "metrics.json"
    selected = json.loads(metrics_file.read_text()).get("selected_ids") if metrics_file.exists() else None
    for path in sorted((out_dir / "predictions").glob("*.jsonl")):
        if selected is not None and path.stem not in selected:
            continue
        ids = None if selected is None else set(selected[path.stem])
        rows = [row for row in read_jsonl(path) if ids is None or row["id"] in ids]
        examples = {e.id: e for e in load_category(path.stem)}
        for row in rows:
            if (row.get("error_type") or "").startswith("inference:"):
                continue  # no answer was generated; nothing to score (a force-quit's turns are scored)
            fresh = score_example(examples[row["id"]], row["raw"], parser)
            if fresh["valid"] != row["valid"] or fresh["error_type"] != row["error_type"]:
                changed.append(row["id"])
        predictions[path.stem] = rows
    return {"metrics": aggregate.summarize(predictions), "changed": changed}


@dataclass
class CommandLine:
    out: str = field(default=None, metadata={
        "help": "output folder, e.g. outputs/my_run/01_baseline_evaluation/gemma-3-270m (required unless --dry_run)"})
    rescore: bool = field(default=False, metadata={"help": "only re-score the raw outputs saved in --out"})
    dry_run: bool = field(default=False, metadata={
        "help": "print the mode, parser and a rendered prompt for --model without loading weights"})
    all_entries: bool = field(default=False, metadata={
        "help": "every entry of each category (sets --limit and --multi_turn_limit to None)"})


def main(argv=None) -> None:
    from transformers import HfArgumentParser

    # The options are EvalConfig's fields (one home for every default), plus what only the command line needs.
    parser = HfArgumentParser((EvalConfig, CommandLine), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    config, cli = parser.parse_args_into_dataclasses(args=argv)
    if cli.all_entries:
        config.limit = config.multi_turn_limit = None
    if cli.dry_run:
        from tinyllm_utils.models.dry_run import dry_run

        print(dry_run(config.model, expand_categories(config.categories)[0]))
        return
    if not cli.out:
        parser.error("--out is required")
    if cli.rescore:
        result = rescore(cli.out)
        print(aggregate.format_table(result["metrics"]))
        print(f"verdicts changed on re-scoring: {len(result['changed'])} {result['changed'][:20]}")
        raise SystemExit(1 if result["changed"] else 0)
    from tinyllm_utils.backends.server import ServerRequestError, ServerUnavailableError

    try:
        metrics = evaluate(config, cli.out)
    except (ModelUnavailableError, ServerUnavailableError, ServerRequestError) as exc:
        raise SystemExit(f"error: {exc}") from None  # one clear line, not a traceback; finished entries are kept
    print(aggregate.format_table(metrics))


if __name__ == "__main__":
    main()
