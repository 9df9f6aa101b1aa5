"""What the training stages (04 SFT, 05 DPO, 06 hybrid) and the edge stage (07) share: stage 01's protocol,
stage 02's rows and stage 03's pairs, and the treatment of every trained checkpoint.

Every training stage trains with TRL through tinyllm_utils.train.trainers, then treats each checkpoint exactly
like the baseline: exported to GGUF (F16) when stage 01 ran on llama.cpp, and evaluated by the same evaluation core with
stage 01's own protocol (categories, sample, seed, decoding, backend, read from the parameters stage 01 recorded
in its run.json), into the same layout. `evaluate_categories` may name a subset of stage 01's categories (the
smoke profile does, to stay cheap); the entries of a category are always stage 01's.

Layout of one trained model under its stage folder (`<method>` = sft-lora, sft-full, dpo, sft-dpo, sft-grpo,
cycle-1, ...):

    <method>/checkpoints/  TRL checkpoints (a killed run resumes from the last one)
    <method>/curves.csv    loss, learning rate, grad norm, DPO margins / accuracies, GRPO reward (+ spread)
    <method>/final/        merged weights + tokenizer + model_spec.json (method label, parent, base model)
    <method>/training.json seconds, steps, tokens seen, tokens/s (read by the analysis stage)
    <method>/gguf/         <name>-F16.gguf + model_spec.json (llama.cpp protocol only)
    <method>/eval/<name>/  run.json, predictions/, metrics.json: the evaluation core's layout
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from tinyllm_utils.bfcl.data import expects_call
from tinyllm_utils.core.results import write_json_atomic
from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate
from tinyllm_utils.models.registry import resolve_model

SMOKE_EVAL = ["simple_python", "irrelevance"]


class MissingStageError(FileNotFoundError):
    """A stage this one reads has not produced what is needed."""


# ---------------------------------------------------------------- configs (defaults = the smoke workload)

# Every smoke DPO run (05, 06's SFT -> DPO and cycle): one step of one pair. A DPO step holds 2 sequences per
# pair, and on a 2-core CI machine every GB a fresh process touches costs seconds: one pair per step keeps a DPO
# step's memory small, and one step keeps the smoke run inside CI's time budget.
SMOKE_DPO = {"max_steps": 1, "learning_rate": 5e-6, "per_device_train_batch_size": 1}


# ---------------------------------------------------------------- inputs


def run_root_of(stage_dir: Path) -> Path:
    return Path(stage_dir).parent


def eval_protocol(stage_dir: str | Path, categories: list[str] | None = None) -> EvalConfig:
    """Stage 01's protocol, as its evaluation recorded it (run.json), optionally on a subset of its categories."""
    baseline = run_root_of(Path(stage_dir)) / "01_baseline_evaluation"
    runs = sorted(baseline.glob("*/run.json"))
    if not runs:
        raise MissingStageError(f"no stage-01 evaluation under {baseline}: run stage 01 first (its protocol, "
                                "entries and backend are what every trained model is evaluated with)")
    recorded = json.loads(runs[0].read_text())["parameters"]
    fields_ = {k: v for k, v in recorded.items() if k in EvalConfig.__dataclass_fields__}
    protocol = EvalConfig(**fields_)
    if protocol.backend == "openai":
        # checked before any training: a server answers for the model it serves, not for checkpoints made here
        raise ValueError(f"stage 01 ({runs[0].parent}) evaluated through an OpenAI-compatible server (backend "
                         "'openai'); the checkpoints these stages train are local files that server does not serve, "
                         "so base and trained models would not be compared on one backend: run stage 01 with "
                         "backend llama_cpp or transformers")
    if categories:
        unknown = set(categories) - set(protocol.categories)
        if unknown:
            raise ValueError(f"evaluate_categories {sorted(unknown)} were not evaluated in stage 01 "
                             f"({protocol.categories}): trained and base models are compared on the same entries")
        protocol = replace(protocol, categories=list(categories))
    return protocol


def sample_rows(data, n: int | None, seed: int):
    if n is None or n >= len(data):
        return data
    return data.select(sorted(random.Random(seed).sample(range(len(data)), n)))


def load_stage02(stage_dir: Path):
    from tinyllm_utils.data.pairs import load_stage02 as load

    return load(run_root_of(stage_dir) / "02_data_filtering" / "dataset")


def load_pairs(stage_dir: Path):
    from datasets import load_from_disk

    path = run_root_of(stage_dir) / "03_pair_construction" / "pairs"
    if not (path / "dataset_dict.json").exists():
        raise MissingStageError(f"no stage-03 pairs at {path}: run stage 03 first")
    return load_from_disk(str(path))


def stage04_model(stage_dir: Path, method: str) -> Path:
    final = run_root_of(stage_dir) / "04_sft" / method / "final"
    if not (final / "model_spec.json").exists():
        raise MissingStageError(f"no stage-04 {method} model at {final}: run stage 04 with it enabled first")
    return final


# ---------------------------------------------------------------- after training: label, export, evaluate


def in_run_path(parent: str, run_root: Path) -> str:
    """A parent checkpoint inside this run as its path in the run (`04_sft/sft-lora/final`), so the lineage
    still holds when outputs move; a registry name or a checkpoint elsewhere stays as given."""
    if not Path(parent).exists():
        return parent
    path, run_root = Path(parent).resolve(), run_root.resolve()
    return path.relative_to(run_root).as_posix() if path.is_relative_to(run_root) else parent


def exported_gguf(method_dir: Path, name: str) -> Path:
    return method_dir / "gguf" / f"{name}-F16.gguf"


def evaluated_model(final: Path, method_dir: Path, protocol: EvalConfig) -> str:
    """What the evaluation runs for a trained checkpoint: on llama.cpp the F16 GGUF that `finish_model` exported
    (read only: this stage does not write into the stage that trained it), else the folder itself."""
    if protocol.backend != "llama_cpp":
        return str(final)
    gguf = exported_gguf(method_dir, resolve_model(str(final)).name)
    if not gguf.exists():
        raise MissingStageError(f"no GGUF export {gguf} of {final}: rerun the stage that trained it "
                                "(it exports every checkpoint it evaluates on llama.cpp)")
    return str(gguf)


def finish_model(result: dict, method_dir: Path, label: str, parent: str, protocol: EvalConfig,
                 generation_seconds: float | None = None) -> dict:
    """Label the trained model (method, parent), record training.json, export GGUF and evaluate like stage 01.
    `generation_seconds`: a cycle's answering before it trained, part of its cost (`seconds`), not of its rate."""
    from tinyllm_utils.train.export import export_gguf

    final = Path(result["path"])
    parent = in_run_path(parent, run_root_of(method_dir.parent))
    spec = replace(resolve_model(str(final)), method=label, parent=parent)
    spec.save(final)
    tokens = (result.get("train_metrics") or {}).get("num_input_tokens_seen") or result.get("tokens_seen")
    # a resumed run's rate is this process's: the tokens and seconds since its checkpoint (`seconds` itself counts
    # from step 0 where the checkpoint recorded its own, trainers.training_clock)
    # (None when this process trained nothing: a run killed after its last checkpoint, before its result)
    seconds_here = result["seconds"] - (result.get("seconds_at_resume") or 0)
    tokens_here = (tokens or 0) - (result.get("tokens_seen_at_resume") or 0)
    training = {"method": label, "training_method": result.get("method"), "parent": parent,
                "checkpoint": str(final.relative_to(method_dir)),
                "seconds": result["seconds"] + (generation_seconds or 0), "generation_seconds": generation_seconds,
                "steps": result.get("global_step"), "epochs": result.get("epoch"),
                "resumed_from": result.get("resumed_from") and Path(result["resumed_from"]).name,
                "seconds_at_resume": result.get("seconds_at_resume"),
                "tokens_seen": tokens, "tokens_per_s": tokens_here / seconds_here if tokens_here > 0 else None,
                "train_metrics": result.get("train_metrics"),
                "curves": result.get("curves") and Path(result["curves"]).resolve().relative_to(
                    method_dir.resolve()).as_posix(),  # like checkpoint: a path in the method's folder
                # the rows (pairs, prompts) it trained on, `epochs` times over (a max_steps run may see fewer),
                # and those left out as too long: SFT and DPO over max_length,
                # GRPO over grpo_max_prompt_length
                "rows": result.get("rows"), "dropped_too_long": result.get("dropped_too_long")}
    write_json_atomic(method_dir / "training.json", training)
    model = str(final)
    if protocol.backend == "llama_cpp":
        model = str(export_gguf(final, exported_gguf(method_dir, spec.name)))
    metrics_dir = method_dir / "eval" / spec.name
    metrics = evaluate(replace(protocol, model=model), metrics_dir, progress=True)
    return {"label": label, "path": str(final), "model": model, "training": training, "metrics": metrics,
            "metrics_dir": str(metrics_dir), "curves": result.get("curves")}


def calibrate_decline(model: str, stage_dir: Path, out_path: Path, rows: int | None = 200, seed: int = 0) -> dict:
    """The decline bias for `model` (a GGUF), calibrated on stage 02's validation rows (held out from training):
    evaluation.decline.calibrate_threshold on each row's first-position margin; written to `out_path`."""
    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.data.rows import row_example
    from tinyllm_utils.evaluation.decline import calibrate_threshold
    from tinyllm_utils.models.families import entry_prompt

    if out_path.exists():
        recorded = json.loads(out_path.read_text())
        if recorded.get("model") == model and recorded.get("rows_asked") == rows:
            return recorded
    validation = sample_rows(load_stage02(stage_dir)["validation"], rows, seed)
    spec = resolve_model(model)
    backend = LlamaCppBackend(spec, max_new_tokens=1, seed=seed)
    prompts = [entry_prompt(row_example(row).entry, spec, None) for row in validation]
    margins = backend.decline_margins(prompts)
    backend.close()
    needs_call = [bool(json.loads(row["target"])) for row in validation]  # [] = the row needs no call
    result = calibrate_threshold([m for m, c in zip(margins, needs_call) if c],
                                 [m for m, c in zip(margins, needs_call) if not c])
    result |= {"model": model, "rows_asked": rows, "source": "02_data_filtering validation split"}
    write_json_atomic(out_path, result)
    return result


DECODING_OPTIONS = ("decline", "grammar", "grammar+decline")


def evaluate_decoding(finished: dict, method_dir: Path, stage_dir: Path, protocol: EvalConfig, option: str) -> dict:
    """The trained model again under another decoding option, as its own row (`eval/<name>-<option>/`): the
    calibrated call/no-call decision (`decline`, evaluation.decline), the call-list grammar, or both."""
    if option not in DECODING_OPTIONS:
        raise ValueError(f"unknown decoding option {option!r}; expected one of {DECODING_OPTIONS}")
    changes, calibration = {"grammar": "grammar" in option}, None
    if "decline" in option:
        calibration = calibrate_decline(finished["model"], stage_dir, method_dir / "decline.json", seed=protocol.seed)
        changes["decline_bias"] = calibration["bias"]
    name = resolve_model(finished["path"]).name
    metrics_dir = method_dir / "eval" / f"{name}-{option.replace('+', '-')}"
    metrics = evaluate(replace(protocol, model=finished["model"], **changes), metrics_dir, progress=True)
    return {**finished, "metrics": metrics, "metrics_dir": str(metrics_dir), "decoding": option,
            "decline": calibration}


def changed_answers(before: Path, after: Path) -> dict:
    """How many of the entries both evaluation folders answered got a different raw answer: whether training
    changed the model's behaviour at all, before asking whether it changed its score."""
    from tinyllm_utils.core.results import read_jsonl

    changed = shared = 0
    for path in sorted((after / "predictions").glob("*.jsonl")):
        old = {row["id"]: row["raw"] for row in read_jsonl(before / "predictions" / path.name)} \
            if (before / "predictions" / path.name).exists() else {}
        for row in read_jsonl(path):
            if row["id"] in old:
                shared += 1
                changed += row["raw"] != old[row["id"]]
    return {"changed": changed, "shared": shared}


def lora_for(config, enabled: bool = True):
    from tinyllm_utils.train import loading
    return loading.default_lora(**config.lora) if enabled else None


def tokens_seen(config: dict) -> dict:
    # transformers counts the tokens each step consumed, for the report's tokens/s: the real ones, not the
    # padding of a batch (True, i.e. "all", would count those; GRPO counts its own, unpadded)
    return {"include_num_input_tokens_seen": "non_padding", **config}


def summary_table(results: dict[str, dict]):
    """One row per trained model: rows trained (epochs over them; left out as longer than max_length), training
    seconds (a cycle's include its answering), tokens/s and per-category accuracy (%, with n)."""
    import pandas as pd

    rows = []
    for label, result in results.items():
        if "metrics" not in result:
            rows.append({"method": label, "note": result.get("skipped")})
            continue
        epochs = result["training"].get("epochs")
        changed = result.get("changed_answers")
        row = {"method": label, "rows": result["training"].get("rows"), "epochs": epochs and round(epochs, 2),
               "answers changed": changed and f"{changed['changed']} of {changed['shared']}",
               "dropped (too long)": result["training"].get("dropped_too_long"),
               "training s": round(result["training"]["seconds"], 1),
               "tokens/s": result["training"]["tokens_per_s"] and round(result["training"]["tokens_per_s"], 1)}
        for category, m in result["metrics"]["categories"].items():
            row[category] = None if m["accuracy"] is None else f"{100 * m['accuracy']:.0f} % (n {m['n']})"
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- before / after, for the stage's notebook


def _stage_evaluations(stage_dir: Path):
    from tinyllm_utils.analysis import runs

    run_root = run_root_of(Path(stage_dir))
    found = runs.find_evaluations(run_root)
    stage = [ev for ev in found if ev.stage in ("01_baseline_evaluation", Path(stage_dir).name)]
    # and the models this stage's models were trained from (06's SFT→DPO: stage 04's SFT), for before / after
    keys = {ev.key for ev in stage}
    parents = {other.key: other for ev in stage for other in found if ev.trained_from(other) and other.key not in keys}
    return run_root, stage + list(parents.values())


def before_after(stage_dir: str | Path, n_resamples: int = 2000):
    """Each model of this stage against its parent and the base, on their shared entries: per category and
    composite, the difference in points, its paired 95 % bootstrap interval, McNemar / permutation p-values
    and Holm-adjusted p-values (tinyllm_utils.analysis.findings.compare)."""
    from tinyllm_utils.analysis import findings, runs

    run_root, evaluations = _stage_evaluations(Path(stage_dir))
    results = runs.collect(run_root, n_resamples)
    results = results[results["key"].isin([ev.key for ev in evaluations])]
    table = findings.compare(runs.entries(evaluations), results=results, n_resamples=n_resamples)
    if len(table):
        table = table[table["b_key"].str.contains(f"/{Path(stage_dir).name}/", regex=False)]
    return table


def failure_shift(stage_dir: str | Path):
    """Failure modes (counts) of the base and of each model of this stage, on the same entries."""
    from tinyllm_utils.analysis import runs

    _, evaluations = _stage_evaluations(Path(stage_dir))
    table = runs.entries(evaluations)
    if not len(table):
        return table
    return table.pivot_table(index="label", columns="failure_mode", values="id", aggfunc="count", fill_value=0)


def trained_models(stage_dir: Path) -> dict[str, dict]:
    """Every model stages 04-06 of this run trained: label -> {method_dir, gguf, final, mean accuracy}."""
    found = {}
    for stage in ("04_sft", "05_dpo", "06_hybrid"):
        for training_file in sorted((run_root_of(stage_dir) / stage).glob("*/training.json")):
            method_dir = training_file.parent
            training = json.loads(training_file.read_text())
            metrics = [json.loads(p.read_text()) for p in method_dir.glob("eval/*/metrics.json")]
            scores = {c: m["accuracy"] for mm in metrics for c, m in mm["categories"].items()
                      if m["accuracy"] is not None}
            calls = [a for c, a in scores.items() if expects_call(c)]
            found[training["method"]] = {
                "method_dir": method_dir, "gguf": next(iter(sorted(method_dir.glob("gguf/*.gguf"))), None),
                "final": method_dir / training["checkpoint"],  # cycles keep theirs in cycle-k/<method>/final
                "accuracy": sum(scores.values()) / len(scores) if scores else None,
                "call_accuracy": sum(calls) / len(calls) if calls else None}
    return found


def best_model(trained: dict[str, dict]) -> str:
    """The exported model with the highest mean accuracy on the categories that expect a call; the mean over
    every category only breaks ties. (A model that never calls scores 100 % on irrelevance: ranked on the plain
    mean, it would beat one that calls correctly now and then.) It is picked on stage 01's entries, the ones its
    accuracy is then reported on: the best of several noisy figures reads high (no held-out selection set)."""
    ranked = [((m["call_accuracy"] or 0.0, m["accuracy"]), label) for label, m in trained.items()
              if m["accuracy"] is not None and m["gguf"]]
    if not ranked:
        raise MissingStageError("no trained, exported and evaluated model in stages 04-06 to call `best`")
    return max(ranked)[1]
