"""A run's saved evaluations as tidy tables: discovery, one row per model x category with intervals, one row per
entry, cumulative training seconds, and the training curves.

The analysis reads only files (`metrics.json`, `run.json`, `predictions/*.jsonl`, optional `training.json` /
`profile.json`), never a model. An evaluation is any folder, at any depth under a run, that holds both
`metrics.json` and `run.json`; its method, parent and quantization come from run.json's `model_spec` (missing: method "base").
Only the entries an evaluation selected count (a folder reused with another limit keeps older predictions).

Intervals: Wilson for a category (aggregate.wilson_interval); for a composite BFCL score, the categories' Wilson
intervals combined by MOVER (composite_accuracy_interval; a bootstrap over entries gives a category answered all
right or all wrong no spread, and can give a composite a zero-width interval). Comparisons of two
evaluations use their shared entries only: McNemar's exact test (statsmodels) per category, a paired sign-flip
permutation test (scipy) for composite scores, paired bootstrap intervals for every difference, and Holm's
correction over all comparisons of one report.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from tinyllm_utils.analysis.stats import V4_COUNTS, composite_accuracy_interval, score_weights
from tinyllm_utils.bfcl import aggregate
from tinyllm_utils.bfcl.data import LIVE_CATEGORIES, MULTI_TURN_CATEGORIES, NO_CALL_CATEGORIES, NON_LIVE_CATEGORIES
from tinyllm_utils.bfcl.scoring import failure_mode
from tinyllm_utils.core.results import read_jsonl, write_text_atomic

STAGE_PATTERN = re.compile(r"^\d\d_")
QUANT_PATTERN = re.compile(r"(?i)(?<![A-Za-z0-9])(IQ\d_[A-Z]+|Q\d_K(?:_[SML])?|Q\d_\d|BF16|F16|F32)(?![A-Za-z0-9])")
GROUP = {**{c: "non-live" for c in NON_LIVE_CATEGORIES}, **{c: "live" for c in LIVE_CATEGORIES},
         **{c: "multi-turn" for c in MULTI_TURN_CATEGORIES}}
IRRELEVANCE = list(NO_CALL_CATEGORIES)  # correct = no call; every other category needs a call
AGENTIC = ["web_search_base", "web_search_no_snippet", "memory_kv", "memory_vector", "memory_rec_sum"]
METHOD_ORDER = ["base", "sft-lora", "sft-full", "dpo", "sft→dpo", "sft→grpo"]


# --------------------------------------------------------------------------------------------- evaluations

@dataclass
class Evaluation:
    """One evaluated model folder and what its run.json says about it."""

    path: Path
    run_id: str
    stage: str
    eval_id: str  # path of the folder inside its stage, e.g. "gemma-3-270m" or "eval/Salesforce/xLAM-2-1b-fc-r"
    model: str
    method: str
    parent: str | None
    base_model: str
    backend: str | None
    quantization: str | None
    params_b: float | None
    training_seconds: float | None
    peak_memory_mb: float | None
    bfcl_eval: str | None
    parameters: dict = field(repr=False)
    metrics: dict = field(repr=False)
    model_spec: dict = field(repr=False)
    checkpoint: str | None = None  # the weights evaluated; `<run>/<stage>/...` when inside an outputs folder

    @property
    def decoding(self) -> str:
        """"free", or the decoding options its protocol adds: "grammar", "decline", "grammar+decline"."""
        options = [name for name, on in (("grammar", self.parameters.get("grammar")),
                                         ("decline", self.parameters.get("decline_bias") is not None)) if on]
        return "+".join(options) or "free"

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.stage}/{self.eval_id}"

    def trained_from(self, other: "Evaluation") -> bool:
        """Whether `other` evaluates the model this one was trained from (run.json's parent), in the same run."""
        return (other is not self and other.run_id == self.run_id
                and names_parent(self.parent, other.stage, other.eval_id, other.key, other.model, other.method))


def _model_folder(stage: str, eval_id: str) -> str | None:
    """The trained model's folder in its run, from where its evaluation lies: `04_sft/sft-lora` for
    `04_sft/sft-lora/eval/<name>` (the layout of stages 04-08); None for an evaluation outside that layout."""
    parts = eval_id.split("/")
    if "eval" not in parts[1:]:
        return None
    return "/".join([stage, *parts[:parts.index("eval", 1)]])


def names_parent(parent: str | None, stage: str, eval_id: str, *names: str) -> bool:
    """Whether a recorded parent names this evaluation: its key, model name, or a checkpoint inside its model
    folder (training records `04_sft/sft-lora/final`, which is evaluated from `04_sft/sft-lora/gguf/`)."""
    if not parent:
        return False
    folder = _model_folder(stage, eval_id)
    return parent in (eval_id, *names) or (folder is not None and (parent == folder or parent.startswith(folder + "/")))


def _outputs_path(text: str | None) -> str | None:
    """A recorded absolute path into an outputs folder as `<run>/<NN_stage>/...`: outputs move between machines,
    and run.json and model_spec.json keep where the files were (older runs recorded parents that way too); any
    other path or name as recorded."""
    if not text or not Path(text).is_absolute():
        return text
    parts = Path(text).parts
    stage = max((i for i, part in enumerate(parts) if i > 1 and STAGE_PATTERN.match(part)), default=None)
    return text if stage is None else "/".join(parts[stage - 1:])


def _parent_in_run(parent: str | None, run_id: str) -> str | None:
    """run.json's parent as training records it: a checkpoint of the same run by its path in the run
    (`04_sft/sft-lora/final`); older runs recorded the absolute path."""
    in_outputs = _outputs_path(parent)
    return in_outputs[len(run_id) + 1:] if in_outputs != parent and in_outputs.startswith(f"{run_id}/") else parent


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _first_number(data: dict | None, names: tuple[str, ...]) -> float | None:
    for name in names:
        value = (data or {}).get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _sibling_file(eval_dir: Path, stage_dir: Path, spec: dict, name: str) -> dict | None:
    """A file beside the checkpoint (model_spec.path) or in the evaluation folder or one of its parents."""
    places = []
    if spec.get("path"):
        checkpoint = Path(spec["path"])
        places += [checkpoint if checkpoint.is_dir() else checkpoint.parent, checkpoint.parent]
    folder = eval_dir
    while True:
        places.append(folder)
        if folder == stage_dir or folder.parent == folder:
            break
        folder = folder.parent
    for place in places:
        data = _read_json(place / name)
        if data is not None:
            return data
    return None


def _quantization(spec: dict, backend: dict) -> str | None:
    if spec.get("quantization"):
        return spec["quantization"]
    for text in (backend.get("model_file"), spec.get("path"), spec.get("gguf_package")):
        match = QUANT_PATTERN.search(Path(str(text)).name.replace("-", "_") if text else "")
        if match:
            return match.group(1).upper()
    return None


@cache
def _registry_params() -> dict[str, float]:
    from tinyllm_utils.models.registry import load_registry

    registry = load_registry()
    params = {name: spec.params_b for name, spec in registry.items() if spec.params_b}
    params.update({spec.hf_id: spec.params_b for spec in registry.values() if spec.hf_id and spec.params_b})
    return params


def _edge_variant(eval_dir: Path) -> dict:
    """The edge stage's layout `<stage>/<method>/eval/<quant>/` with `<method>/profile/<quant>-t<threads>.json`:
    method and quantization from the folders, peak RSS from the profile (2 threads when there)."""
    if eval_dir.parent.name != "eval" or not (eval_dir.parent.parent / "profile").is_dir():
        return {}
    profiles = sorted((eval_dir.parent.parent / "profile").glob(f"{eval_dir.name}-t*.json"),
                      key=lambda p: (not p.stem.endswith("-t2"), p.name))
    memory = next((m for m in (_first_number(_read_json(p), ("peak_rss_mb",)) for p in profiles) if m), None)
    return {"method": eval_dir.parent.parent.name, "quantization": eval_dir.name, "peak_memory_mb": memory}


def _locate(eval_dir: Path, root: Path) -> tuple[str, str, str]:
    """(run_id, stage, eval_id) from the folder's place under root (root may be outputs/ or one run)."""
    parts = eval_dir.relative_to(root).parts
    stage_index = next((i for i, p in enumerate(parts) if STAGE_PATTERN.match(p)), None)
    if stage_index is None:  # not inside a numbered stage: an ad-hoc evaluation
        return (parts[0] if len(parts) > 1 else root.name), "adhoc", "/".join(parts[1:] or parts)
    run_id = parts[stage_index - 1] if stage_index > 0 else root.resolve().name
    return run_id, parts[stage_index], "/".join(parts[stage_index + 1:]) or "."


def find_evaluations(root: str | Path) -> list[Evaluation]:
    """Every folder under root (at any depth) holding metrics.json and run.json, sorted by path."""
    root = Path(root)
    evaluations = []
    for metrics_file in sorted(root.rglob("metrics.json")):
        eval_dir = metrics_file.parent
        if any(part.startswith(".") for part in eval_dir.relative_to(root).parts):
            continue  # `.stale/` (work set aside by stage.open_work) and other hidden folders are not results
        run, metrics = _read_json(eval_dir / "run.json"), _read_json(metrics_file)
        if run is None or metrics is None or "categories" not in metrics:
            continue
        run_id, stage, eval_id = _locate(eval_dir, root)
        spec = run.get("model_spec") or {}
        backend = run.get("backend") or {}
        model = metrics.get("model") or spec.get("name") or eval_dir.name
        base_model = spec.get("base_model") or model
        stage_dir = next((p for p in eval_dir.parents if p.name == stage), eval_dir)  # adhoc: the folder itself
        training = _sibling_file(eval_dir, stage_dir, spec, "training.json")
        edge = _edge_variant(eval_dir)
        params_b = spec.get("params_b") or _registry_params().get(base_model) or _registry_params().get(model)
        evaluations.append(Evaluation(
            path=eval_dir, run_id=run_id, stage=stage, eval_id=eval_id, model=model,
            method=spec.get("method") or edge.get("method") or "base",
            parent=_parent_in_run(spec.get("parent"), run_id),
            base_model=base_model, backend=backend.get("backend") or (run.get("parameters") or {}).get("backend"),
            quantization=_quantization(spec, backend) or edge.get("quantization"), params_b=params_b,
            training_seconds=_first_number(training, ("seconds", "training_seconds", "train_runtime")),
            peak_memory_mb=edge.get("peak_memory_mb"),
            bfcl_eval=run.get("bfcl_eval"), parameters=run.get("parameters") or {}, metrics=metrics,
            model_spec=spec, checkpoint=_outputs_path(spec.get("path"))))
    return evaluations


def selected_ids(evaluation: Evaluation) -> dict[str, set[str] | None]:
    """Per category, the entry ids this evaluation selected (None: unknown, every saved row counts).

    metrics.json's `selected_ids` when evaluate recorded them; otherwise the seeded sample is drawn again from
    run.json's parameters (categories, limit, multi_turn_limit, seed), exactly as evaluate drew it.
    """
    recorded = evaluation.metrics.get("selected_ids")
    if recorded:
        return {c: set(ids) for c, ids in recorded.items()}
    from tinyllm_utils.bfcl.data import is_multi_turn, load_category

    p = evaluation.parameters
    out = {}
    for category in evaluation.metrics["categories"]:
        limit = p.get("multi_turn_limit") if is_multi_turn(category) else p.get("limit")
        try:
            out[category] = {e.id for e in load_category(category, limit, p.get("seed", 0))} if p else None
        except (KeyError, ValueError, FileNotFoundError):
            out[category] = None
    return out


def selected_predictions(evaluation: Evaluation) -> dict[str, list[dict]]:
    """The saved predictions of the selected entries only, per category (the rows metrics.json counted)."""
    ids = selected_ids(evaluation)
    out = {}
    for category in evaluation.metrics["categories"]:
        rows = read_jsonl(evaluation.path / "predictions" / f"{category}.jsonl")
        keep = ids.get(category)
        out[category] = [r for r in rows if keep is None or r["id"] in keep]
    return out


# --------------------------------------------------------------------------------------------- tidy tables

def _eval_columns(ev: Evaluation) -> dict:
    return {"run_id": ev.run_id, "stage": ev.stage, "eval_id": ev.eval_id, "key": ev.key, "model": ev.model,
            "method": ev.method, "parent": ev.parent, "base_model": ev.base_model, "backend": ev.backend,
            "quantization": ev.quantization, "params_b": ev.params_b, "training_seconds": ev.training_seconds,
            "peak_memory_mb": ev.peak_memory_mb, "bfcl_eval": ev.bfcl_eval, "checkpoint": ev.checkpoint,
            "decoding": ev.decoding}


# Short names for the figures and tables; the full names (model, method, quantization, stage) are in
# `label_table`, which the report prints beside them.
METHOD_LABELS = {"base": "base", "sft-lora": "SFT", "sft-full": "SFT (full)", "dpo": "DPO", "grpo": "GRPO",
                 "sft→dpo": "SFT→DPO", "sft→grpo": "SFT→GRPO", "sft matched to sft→dpo": "SFT≡SFT→DPO",
                 "sft matched to sft→grpo": "SFT≡SFT→GRPO"}  # ≡: as many training seconds


def short_label(method: str, model: str, base_model: str | None = None, quantization: str | None = None, *,
                several_bases: bool = False, edge: bool = False) -> str:
    """A figure's name for one evaluation: the method's short name (`base`, `SFT`, `DPO`, `SFT→DPO`, `SFT→GRPO`,
    `cycle 2`, ...), the base model's name in front only when the run holds several base models, and the
    quantization after it for a variant of the edge stage (`SFT→GRPO Q4_0`). Unique labels: `_labels`."""
    name = METHOD_LABELS.get(method, method)
    if several_bases:
        base = str(base_model or model).split("/")[-1]
        name = base if method == "base" else f"{base} {name}"
    return f"{name} {quantization}" if edge and quantization else name


def _labels(evaluations: list[Evaluation]) -> dict[str, str]:
    """Short, unique labels (short_label); where two evaluations share one, the stage's number, then the run,
    then the key tells them apart."""
    bases = sorted({ev.model for ev in evaluations if ev.method == "base"}, key=len, reverse=True)

    def base_of(ev: Evaluation) -> str:  # an edge variant records no base model: its name starts with it
        return next((b for b in bases if ev.model.startswith(b)), ev.base_model)

    labels = {ev.key: short_label(ev.method, ev.model, base_of(ev), ev.quantization, several_bases=len(bases) > 1,
                                  edge="edge" in ev.stage) for ev in evaluations}
    for ev in evaluations:  # a decoding option's row: the same weights, decoded another way
        if ev.decoding != "free" and ev.method != "base":
            labels[ev.key] += f" +{ev.decoding}"
    for extra in (lambda ev: ev.stage[:2], lambda ev: f"{ev.run_id}/{ev.stage[:2]}", lambda ev: ev.key):
        counts = pd.Series(list(labels.values())).value_counts()
        for ev in evaluations:
            if counts[labels[ev.key]] > 1:
                labels[ev.key] = f"{labels[ev.key].split(' [')[0]} [{extra(ev)}]"
    return labels


def label_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per label: the short label and the full names it stands for (model, method, quantization, backend,
    stage, key), for the report's table beside the figures."""
    columns = ["label", "model", "method", "quantization", "backend", "stage", "key"]
    if not len(results):
        return pd.DataFrame(columns=columns)
    return results.drop_duplicates("key")[columns].reset_index(drop=True)


def entries(evaluations: list[Evaluation]) -> pd.DataFrame:
    """One row per selected prediction: correct (0/1), failure mode, bfcl error kind, seconds, tokens."""
    labels = _labels(evaluations)
    rows = []
    for ev in evaluations:
        base = _eval_columns(ev) | {"label": labels[ev.key]}
        for category, predictions in selected_predictions(ev).items():
            for r in predictions:
                rows.append(base | {"category": category, "group": GROUP.get(category, "other"), "id": r["id"],
                                    "correct": int(bool(r["valid"])), "failure_mode": failure_mode(r),
                                    "error_type": r.get("error_type"), "seconds": r.get("seconds"),
                                    "completion_tokens": r.get("completion_tokens")})
    columns = list(_eval_columns(evaluations[0]) if evaluations else []) + [
        "label", "category", "group", "id", "correct", "failure_mode", "error_type", "seconds", "completion_tokens"]
    return pd.DataFrame(rows, columns=columns or None)


def _parent_of(ev: Evaluation, evaluations: list[Evaluation]) -> Evaluation | None:
    """The evaluation of the checkpoint a trained model was trained from (run.json's parent), same run."""
    if not ev.parent:
        return None
    return next((other for other in evaluations if ev.trained_from(other)), None)


def cumulative_training_seconds(evaluations: list[Evaluation]) -> dict[str, float | None]:
    """Training seconds including every parent stage (SFT -> DPO costs both), following run.json's parent;
    None where the model itself has no training.json, or where a parent trained in the run (`04_sft/...`) has no
    evaluation or no training.json to read its seconds from (moved to .stale, failed): a partial sum would make it
    look cheap."""
    totals = {}
    for ev in evaluations:
        total, seen, current = None, set(), ev
        while current is not None and current.key not in seen:
            seen.add(current.key)
            if current.training_seconds is not None:
                total = (total or 0.0) + current.training_seconds
            elif current is not ev and current.parent:  # a trained ancestor whose seconds were not recorded
                total = None
                break
            parent = _parent_of(current, evaluations)
            if parent is None and current.parent and STAGE_PATTERN.match(current.parent):
                total = None
                break
            current = parent
        totals[ev.key] = total if ev.training_seconds is not None else None
    return totals


def _counts(ev: Evaluation) -> dict[str, int]:
    """Full-category sizes that weight the live score: as metrics.json recorded them (bfcl-eval's data), else v4's."""
    recorded = {c: m.get("category_size") for c, m in ev.metrics["categories"].items() if m.get("category_size")}
    return {**V4_COUNTS, **recorded}


def collect(root: str | Path, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The tidy long results table of every evaluation under root (outputs/ or outputs/<run_id>).

    One row per (evaluation, category) with n, correct, accuracy % and its Wilson interval, and one row per
    BFCL composite (scoring v3 / v4, every component; Table IV's relevance) with its categories' Wilson
    intervals combined (composite_accuracy_interval).
    A composite whose categories were not all run is missing (NaN), never 0.
    """
    evaluations = find_evaluations(root)
    labels = _labels(evaluations)
    totals = cumulative_training_seconds(evaluations)
    rows = []
    for ev in evaluations:
        base = _eval_columns(ev) | {"label": labels[ev.key], "training_seconds_total": totals[ev.key]}
        predictions = selected_predictions(ev)
        samples, latency = {}, {}
        for category, m in ev.metrics["categories"].items():
            n, correct = int(m["n"]), int(m["correct"])
            samples[category] = np.r_[np.ones(correct), np.zeros(n - correct)]
            seconds = [r["seconds"] for r in predictions.get(category, []) if isinstance(r.get("seconds"), (int, float))]
            latency[category] = float(np.mean(seconds)) if seconds else math.nan
            low, high = aggregate.wilson_interval(correct, n) if n else (math.nan, math.nan)
            rows.append(base | {"kind": "category", "scoring": "category", "category": category,
                                "group": GROUP.get(category, "other"), "n": n, "correct": correct,
                                "accuracy": 100 * correct / n if n else math.nan, "ci_low": 100 * low,
                                "ci_high": 100 * high, "ci_method": "wilson", "seconds_per_entry": latency[category],
                                "category_size": m.get("category_size")})
        accuracy = {c: (s.mean() if len(s) else None) for c, s in samples.items()}
        counts = _counts(ev)
        scores = aggregate.overall_scores(accuracy, counts)
        components = [(f, name) for f in ("v3", "v4") for name in scores[f]] + [("category", "live_relevance")]
        for formula, name in components:
            weights = score_weights(formula, name, samples, counts)
            if formula == "category":
                continue  # a category: its row above already holds it
            value = scores[formula][name]
            if weights is None or value is None:
                low = high = math.nan
                n = math.nan
                seconds = math.nan
            else:
                low, high = composite_accuracy_interval(samples, weights)
                n = sum(len(samples[c]) for c in weights)
                total = sum(len(samples[c]) for c in weights)
                seconds = float(sum(latency[c] * len(samples[c]) for c in weights) / total) if total else math.nan
            rows.append(base | {"kind": "score", "scoring": formula, "category": name, "group": "composite",
                                "n": n, "correct": math.nan, "accuracy": math.nan if value is None else 100 * value,
                                "ci_low": 100 * low, "ci_high": 100 * high, "ci_method": "wilson-mover",
                                "seconds_per_entry": seconds, "category_size": math.nan})
    return pd.DataFrame(rows)


def save_table(table: pd.DataFrame, out_dir: str | Path, name: str) -> list[Path]:
    """Write a table as parquet and CSV (atomic), return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / f"{name}.csv", out_dir / f"{name}.parquet"
    write_text_atomic(csv_path, table.to_csv(index=False))
    tmp = out_dir / f".{name}.parquet.tmp"
    table.astype({c: "string" for c in table.columns if table[c].dtype == object}).to_parquet(tmp, index=False)
    tmp.replace(parquet_path)
    return [parquet_path, csv_path]


# --------------------------------------------------------------------------------------------- training logs

def training_curves(root: str | Path) -> pd.DataFrame:
    """Loss (and any logged metric) per step from trainer logs under root: `training.json`'s `log_history` or a
    transformers `trainer_state.json` (the last checkpoint of each training folder)."""
    root = Path(root)
    rows, latest = [], {}
    for path in sorted(root.rglob("trainer_state.json")) + sorted(root.rglob("training.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # `.stale/` work
        data = _read_json(path) or {}
        history = data.get("log_history")
        if not history:
            continue
        folder = path.parent.parent if path.parent.name.startswith("checkpoint-") else path.parent
        step = data.get("global_step") or max((h.get("step", 0) for h in history), default=0)
        if folder in latest and latest[folder][0] >= step:
            continue
        latest[folder] = (step, path, history)
    for folder, (_, path, history) in latest.items():
        try:
            run_id, stage, name = _locate(folder, root)
        except ValueError:
            run_id, stage, name = root.name, "?", folder.name
        method = (_read_json(folder / "training.json") or {}).get("method") or name
        for h in history:
            for metric, value in h.items():
                if metric in ("step", "epoch") or not isinstance(value, (int, float)):
                    continue
                rows.append({"run_id": run_id, "stage": stage, "training": name, "method": method,
                             "step": h.get("step"), "epoch": h.get("epoch"), "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["run_id", "stage", "training", "method", "step", "epoch", "metric", "value"])
