"""The analysis stage: every saved evaluation under `outputs/` as one tidy table, Table IV beside published
reference rows, paired comparisons between methods, and findings written from the numbers.

    python -m tinyllm_utils.analysis --root outputs/quick --out paper_figures

reads only files (`metrics.json`, `run.json`, `predictions/*.jsonl`, optional `training.json` / `profile.json`),
never a model. An evaluation is any folder, at any depth under a run, that holds both `metrics.json` and
`run.json`; its method, parent and quantization come from run.json's `model_spec` (missing: method "base").
Only the entries an evaluation selected count (a folder reused with another limit keeps older predictions).

Intervals: Wilson for a category (aggregate.wilson_interval); for a composite BFCL score, the categories' Wilson
intervals combined by MOVER (composite_accuracy_interval; a bootstrap over entries gave a category answered all
right or all wrong no spread, and a base model's v3 overall the interval 19.76 to 19.76 %). Comparisons of two
evaluations use their shared entries only: McNemar's exact test (statsmodels) per category, a paired sign-flip
permutation test (scipy) for composite scores, paired bootstrap intervals for every difference, and Holm's
correction over all comparisons of one report.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from tinyllm_utils import aggregate
from tinyllm_utils.data import (ALL_CATEGORIES, LIVE_CATEGORIES, MULTI_TURN_CATEGORIES, NO_CALL_CATEGORIES,
                                NON_LIVE_CATEGORIES)
from tinyllm_utils.results import read_jsonl, write_text_atomic
from tinyllm_utils.scoring import failure_mode

STAGE_PATTERN = re.compile(r"^\d\d_")
QUANT_PATTERN = re.compile(r"(?i)(?<![A-Za-z0-9])(IQ\d_[A-Z]+|Q\d_K(?:_[SML])?|Q\d_\d|BF16|F16|F32)(?![A-Za-z0-9])")
GROUP = {**{c: "non-live" for c in NON_LIVE_CATEGORIES}, **{c: "live" for c in LIVE_CATEGORIES},
         **{c: "multi-turn" for c in MULTI_TURN_CATEGORIES}}
IRRELEVANCE = list(NO_CALL_CATEGORIES)  # correct = no call; every other category needs a call
AGENTIC = ["web_search_base", "web_search_no_snippet", "memory_kv", "memory_vector", "memory_rec_sum"]
# Full-benchmark counts that weight the live score: v3 had 882 / 18 live (ir)relevance entries, v4 has 884 / 16.
V3_COUNTS = {"live_simple": 258, "live_multiple": 1053, "live_parallel": 16, "live_parallel_multiple": 24,
             "live_irrelevance": 882, "live_relevance": 18}
V4_COUNTS = {**V3_COUNTS, "live_irrelevance": 884, "live_relevance": 16}
# Table IV of the paper (BFCL v3 leaderboard columns), plus v4 overall: column -> (formula, component).
# non_live = non-live AST summary; live = count-weighted live incl. (ir)relevance (v3's "Live Acc");
# irrelevance = mean of non-live and live irrelevance; relevance = live_relevance.
TABLE_IV = {"overall_v3": ("v3", "overall"), "overall_v4": ("v4", "overall"), "non_live": ("v3", "non_live_ast"),
            "live": ("v3", "live_overall"), "multi_turn": ("v3", "multi_turn"),
            "relevance": ("category", "live_relevance"), "irrelevance": ("v4", "irrelevance")}
TABLE_IV_LABELS = {"overall_v3": "overall (v3 scoring)", "overall_v4": "overall (v4 scoring)",
                   "non_live": "non-live AST", "live": "live", "multi_turn": "multi-turn",
                   "relevance": "relevance", "irrelevance": "irrelevance"}
METHOD_ORDER = ["base", "sft-lora", "sft-full", "dpo", "sft→dpo", "sft→grpo"]
ALPHA = 0.05
PERMUTATIONS = 4999  # paired permutation test of a composite: p resolution 2e-4, ~2 s at full BFCL size on 2 cores


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
    def key(self) -> str:
        return f"{self.run_id}/{self.stage}/{self.eval_id}"

    def trained_from(self, other: "Evaluation") -> bool:
        """Whether `other` evaluates the model this one was trained from (run.json's parent), in the same run."""
        return (other is not self and other.run_id == self.run_id
                and _names_parent(self.parent, other.stage, other.eval_id, other.key, other.model, other.method))


def _model_folder(stage: str, eval_id: str) -> str | None:
    """The trained model's folder in its run, from where its evaluation lies: `04_sft/sft-lora` for
    `04_sft/sft-lora/eval/<name>` (the layout of stages 04-08); None for an evaluation outside that layout."""
    parts = eval_id.split("/")
    if "eval" not in parts[1:]:
        return None
    return "/".join([stage, *parts[:parts.index("eval", 1)]])


def _names_parent(parent: str | None, stage: str, eval_id: str, *names: str) -> bool:
    """Whether a recorded parent names this evaluation: its key, model name, or a checkpoint inside its model
    folder (training records `04_sft/sft-lora/final`, which is evaluated from `04_sft/sft-lora/gguf/`)."""
    if not parent:
        return False
    folder = _model_folder(stage, eval_id)
    return parent in (eval_id, *names) or (folder is not None and (parent == folder or parent.startswith(folder + "/")))


def _outputs_path(text: str | None) -> str | None:
    """A recorded absolute path into an outputs folder as `<run>/<NN_stage>/...`: outputs move between machines,
    and run.json and model_spec.json keep where the files were (runs before 2026-12-01 recorded parents that way
    too); any other path or name as recorded."""
    if not text or not Path(text).is_absolute():
        return text
    parts = Path(text).parts
    stage = max((i for i, part in enumerate(parts) if i > 1 and STAGE_PATTERN.match(part)), default=None)
    return text if stage is None else "/".join(parts[stage - 1:])


def _parent_in_run(parent: str | None, run_id: str) -> str | None:
    """run.json's parent as training records it since 2026-12-01: a checkpoint of the same run by its path in the
    run (`04_sft/sft-lora/final`); earlier runs recorded the absolute path."""
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
    from tinyllm_utils.registry import load_registry

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
    from tinyllm_utils.data import is_multi_turn, load_category

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


# --------------------------------------------------------------------------------------------- statistics

def score_weights(formula: str, component: str, categories, counts: dict | None = None) -> dict[str, float] | None:
    """Linear weights of a BFCL composite over per-category accuracies (None if a needed category is missing).

    Every BFCL summary is a (weighted) mean of category accuracies, so its weights are read off
    aggregate.overall_scores with unit inputs: the composite then stays defined in one place.
    """
    categories = list(categories)
    if formula == "category":
        return {component: 1.0} if component in categories else None

    def value(acc):
        return aggregate.overall_scores(acc, counts)[formula][component]

    zero = {c: 0.0 for c in categories}
    if value(zero) is None:
        return None
    weights = {c: value({**zero, c: 1.0}) for c in categories}
    return {c: w for c, w in weights.items() if abs(w) > 1e-12}


def composite_interval(samples: dict[str, np.ndarray], weights: dict[str, float], n_resamples: int = 2000,
                       seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of sum_k w_k mean(x_k), resampling entries within each category (scipy bootstrap)."""
    from scipy import stats

    names = list(weights)
    data = tuple(np.asarray(samples[c], dtype=float) for c in names)
    if any(len(x) < 2 for x in data):
        return (math.nan, math.nan)
    w = np.array([weights[c] for c in names])

    def statistic(*xs, axis=-1):
        return sum(wk * np.mean(x, axis=axis) for wk, x in zip(w, xs))

    if all(np.ptp(x) == 0 for x in data):  # nothing varies: the interval is the point
        point = float(statistic(*data))
        return (point, point)
    result = stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=False, vectorized=True, batch=500,
                             confidence_level=confidence, method="percentile", random_state=seed)
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def composite_accuracy_interval(samples: dict[str, np.ndarray], weights: dict[str, float]) -> tuple[float, float]:
    """95 % interval of sum_k w_k p_k for 0/1 outcomes: each category's Wilson interval, combined by MOVER
    (Zou & Donner 2008; Newcombe's method for differences of proportions): the point minus / plus the root of the
    summed squared weighted distances to each category's limits. One category gives its Wilson interval exactly;
    a category answered all right or all wrong still adds its uncertainty (a bootstrap over entries gave 0 of 3
    multi-turn entries none, and a base model's v3 overall the interval 19.76 to 19.76 %)."""
    point, below, above = 0.0, 0.0, 0.0
    for category, weight in weights.items():
        x = np.asarray(samples[category], dtype=float)
        if len(x) == 0:
            return (math.nan, math.nan)
        p = x.mean()
        low, high = aggregate.wilson_interval(int(x.sum()), len(x))
        point += weight * p
        down, up = (p - low, high - p) if weight > 0 else (high - p, p - low)
        below += (weight * down) ** 2
        above += (weight * up) ** 2
    return (point - math.sqrt(below), point + math.sqrt(above))


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    return float(mcnemar(table, exact=True).pvalue)


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], weights: dict[str, float],
                      n_resamples: int = 2000, seed: int = 0) -> dict:
    """B - A on the same entries for a (composite) score: difference, paired bootstrap interval, p-value.

    One category: McNemar's exact test. A composite: a paired permutation test that swaps the two methods'
    outcomes within each entry (scipy permutation_test, permutation_type='samples').
    """
    from scipy import stats

    names = list(weights)
    w = np.array([weights[c] for c in names])
    diff_samples = {c: np.asarray(b[c], float) - np.asarray(a[c], float) for c in names}
    point = float(sum(wk * diff_samples[c].mean() for wk, c in zip(w, names)))
    low, high = composite_interval(diff_samples, weights, n_resamples, seed)
    n = int(sum(len(diff_samples[c]) for c in names))
    if len(names) == 1:
        p_value, test = mcnemar_exact(a[names[0]], b[names[0]]), "McNemar exact"
    else:
        # The composite is linear: sum_i c_i (y_i - x_i) with c_i = w_k / n_k. Swapping a pair's outcomes only
        # matters where they differ, so the (exactly equivalent) test runs on the discordant entries alone.
        c = np.concatenate([np.full(len(diff_samples[k]), wk / len(diff_samples[k])) for wk, k in zip(w, names)])
        x = np.concatenate([np.asarray(a[k], float) for k in names])
        y = np.concatenate([np.asarray(b[k], float) for k in names])
        discordant = x != y
        cd = c[discordant]

        def statistic(x, y, axis=-1):
            return np.sum(cd * (y - x), axis=axis)

        if not discordant.any():
            p_value = 1.0
        else:
            p_value = float(stats.permutation_test((x[discordant], y[discordant]), statistic,
                                                   permutation_type="samples", vectorized=True,
                                                   n_resamples=PERMUTATIONS,
                                                   alternative="two-sided", batch=1000,  # bounded memory
                                                   random_state=seed).pvalue)
        test = "paired permutation"
    return {"n": n, "diff": 100 * point, "ci_low": 100 * low, "ci_high": 100 * high, "p_value": p_value,
            "test": test}


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels multipletests)."""
    from statsmodels.stats.multitest import multipletests

    p_values = np.asarray(list(p_values), float)
    if len(p_values) == 0:
        return p_values
    return multipletests(p_values, alpha=ALPHA, method="holm")[1]


# --------------------------------------------------------------------------------------------- tidy tables

def _eval_columns(ev: Evaluation) -> dict:
    return {"run_id": ev.run_id, "stage": ev.stage, "eval_id": ev.eval_id, "key": ev.key, "model": ev.model,
            "method": ev.method, "parent": ev.parent, "base_model": ev.base_model, "backend": ev.backend,
            "quantization": ev.quantization, "params_b": ev.params_b, "training_seconds": ev.training_seconds,
            "peak_memory_mb": ev.peak_memory_mb, "bfcl_eval": ev.bfcl_eval, "checkpoint": ev.checkpoint}


def _labels(evaluations: list[Evaluation]) -> dict[str, str]:
    """Short, unique labels: model · method [· quantization], with run/stage added only where needed."""
    labels = {}
    for ev in evaluations:
        label = f"{ev.model} · {ev.method}" + (f" · {ev.quantization}" if ev.quantization else "")
        labels[ev.key] = label
    counts = pd.Series(list(labels.values())).value_counts()
    for ev in evaluations:
        if counts[labels[ev.key]] > 1:
            labels[ev.key] = f"{labels[ev.key]} [{ev.run_id}/{ev.stage}]"
    counts = pd.Series(list(labels.values())).value_counts()
    for ev in evaluations:  # two of one model and method in one stage: only the key tells them apart
        if counts[labels[ev.key]] > 1:
            labels[ev.key] = f"{ev.model} · {ev.method} [{ev.key}]"
    return labels


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


# --------------------------------------------------------------------------------------------- reference rows

REFERENCE_LEADERBOARDS = [("v4", "2025-12-16", ""), ("v3", "2025-06-14", "v3_2025-06-14_"),
                          ("v3", "2025-04-30", "v3_2025-04-30_")]
LEADERBOARD_URL = "https://gorilla.cs.berkeley.edu/leaderboard.html"
# The paper's and comparable small models (leaderboard name without the " (FC)" / " (Prompt)" suffix) -> nominal
# parameter count in billions, read from the name.
REFERENCE_MODELS = {
    "xLAM-2-1b-fc-r": 1.0, "xLAM-2-3b-fc-r": 3.0, "Qwen3-0.6B": 0.6, "Qwen3-1.7B": 1.7, "Qwen3-4B": 4.0,
    "Qwen3-4B-Instruct-2507": 4.0, "Hammer2.1-0.5b": 0.5, "Hammer2.1-1.5b": 1.5, "Hammer2.1-3b": 3.0,
    "Gemma-3-1b-it": 1.0, "Gemma-3-4b-it": 4.0, "Llama-3.2-1B-Instruct": 1.0, "Llama-3.2-3B-Instruct": 3.0,
    "Qwen2.5-0.5B-Instruct": 0.5, "Qwen2.5-1.5B-Instruct": 1.5, "Qwen2.5-3B-Instruct": 3.0,
}
SUB_TABLE_COLUMNS = {
    "non_live": {"Python Simple AST": "simple_python", "Java Simple AST": "simple_java",
                 "JavaScript Simple AST": "simple_javascript", "Multiple AST": "multiple", "Parallel AST": "parallel",
                 "Parallel Multiple AST": "parallel_multiple", "Irrelevance Detection": "irrelevance"},
    "live": {"Python Simple AST": "live_simple", "Python Multiple AST": "live_multiple",
             "Python Parallel AST": "live_parallel", "Python Parallel Multiple AST": "live_parallel_multiple",
             "Irrelevance Detection": "live_irrelevance", "Relevance Detection": "live_relevance"},
    "multi_turn": {"Base": "multi_turn_base", "Miss Func": "multi_turn_miss_func",
                   "Miss Param": "multi_turn_miss_param", "Long Context": "multi_turn_long_context"},
    "agentic": {"Web Search Base": "web_search_base", "Web Search No Snippet": "web_search_no_snippet",
                "Memory KV": "memory_kv", "Memory Vector": "memory_vector",
                "Memory Recursive Summarization": "memory_rec_sum"},
}
# Published summary columns of the leaderboards' overall table -> Table IV column (v4's "Live Acc" is live AST
# only, not Table IV's live, so it is not carried).
PUBLISHED_COLUMNS = {"Non-Live AST Acc": "non_live", "Multi Turn Acc": "multi_turn",
                     "Relevance Detection": "relevance", "Irrelevance Detection": "irrelevance"}
PAPER_URL = "https://arxiv.org/abs/2511.22138"
CARD_URL = "https://huggingface.co/google/functiongemma-270m-it"
REFERENCE_COLUMNS = (["row_id", "model", "mode", "params_b", "params_note", "source", "source_url", "date",
                      "bfcl_version", "note"] + ALL_CATEGORIES + AGENTIC + ["non_live_simple"]
                     + [f"published_{c}" for c in TABLE_IV])


def reference_dir() -> Path:
    return Path(str(files("tinyllm_utils").joinpath("reference")))


def _percent(value) -> float:
    try:
        return float(str(value).rstrip("%"))
    except ValueError:
        return math.nan  # "N/A"


def _split_mode(name: str) -> tuple[str, str | None]:
    match = re.match(r"^(.*?) \((FC|Prompt)\)$", name)
    return (match.group(1), match.group(2)) if match else (name, None)


def build_reference_rows(leaderboard_dir: str | Path | None = None) -> pd.DataFrame:
    """Reference rows from the leaderboard CSVs (small and paper models) plus the paper's and FunctionGemma's
    published figures; every row carries source, URL, date and BFCL version. Figures in %."""
    folder = Path(leaderboard_dir) if leaderboard_dir else reference_dir() / "bfcl_leaderboard"
    rows, seen_v3 = [], set()
    for version, date, prefix in REFERENCE_LEADERBOARDS:
        overall = pd.read_csv(folder / f"{prefix}data_overall.csv")
        parts = ["non_live", "live", "multi_turn"] + (["agentic"] if version == "v4" else [])
        tables = {p: pd.read_csv(folder / f"{prefix}data_{p}.csv").set_index("Model") for p in parts}
        for _, line in overall.iterrows():
            name, mode = _split_mode(line["Model"])
            if name not in REFERENCE_MODELS:
                continue
            if version == "v3":  # the older v3 table only for models the newer one lacks
                if line["Model"] in seen_v3:
                    continue
                seen_v3.add(line["Model"])
            row = {"row_id": f"bfcl-{version}-{date}:{line['Model']}", "model": line["Model"], "mode": mode,
                   "params_b": REFERENCE_MODELS[name], "params_note": "nominal, from the model name",
                   "source": f"BFCL {version} leaderboard", "source_url": LEADERBOARD_URL, "date": date,
                   "bfcl_version": version, "note": f"{prefix}data_*.csv"}
            for part, columns in SUB_TABLE_COLUMNS.items():
                if part not in tables or line["Model"] not in tables[part].index:
                    continue
                for column, category in columns.items():
                    row[category] = _percent(tables[part].loc[line["Model"], column])
            row[f"published_overall_{version}"] = _percent(line["Overall Acc"])
            for column, target in PUBLISHED_COLUMNS.items():
                row[f"published_{target}"] = _percent(line[column])
            if version == "v3":
                row["published_live"] = _percent(line["Live Acc"])
            rows.append(row)
    paper = {"source": "TinyLLM paper (arXiv 2511.22138)", "source_url": PAPER_URL, "date": "2025-11",
             "bfcl_version": "v3"}
    rows.append(paper | {"row_id": "paper:headline", "model": "TinyLLM paper, best (hybrid optimization)",
                         "params_note": "1-3B models; not one model", "published_overall_v3": 65.74,
                         "published_multi_turn": 55.62,
                         "note": "headline; matches BFCL v3 scoring of xLAM-2-3b-fc-r"})
    for model in ("TinyLlama-1.1B", "TinyAgent-1.1B"):
        rows.append(paper | {"row_id": f"paper:{model}", "model": model, "params_b": 1.1,
                             "params_note": "nominal, from the model name", "published_multi_turn": 0.0,
                             "note": "multi-turn reported as 0 %"})
    card = {"multiple": 63.5, "parallel": 39.0, "parallel_multiple": 29.5, "live_simple": 36.2,
            "live_multiple": 25.7, "live_parallel": 22.9, "live_parallel_multiple": 20.8, "live_relevance": 61.1,
            "non_live_simple": 61.6, "published_relevance": 61.1, "published_irrelevance": 73.7}
    rows.append(card | {"row_id": "card:functiongemma-270m-it", "model": "FunctionGemma-270M-it", "params_b": 0.27,
                        "params_note": "model card", "source": "FunctionGemma-270M model card (Google), 0-shot",
                        "source_url": CARD_URL, "date": "undated", "bfcl_version": "not stated",
                        "note": "simple = non-live simple summary; irrelevance not split into non-live / live"})
    return pd.DataFrame(rows).reindex(columns=REFERENCE_COLUMNS)


def load_reference_rows() -> pd.DataFrame:
    """The committed reference_rows.csv (package data)."""
    return pd.read_csv(reference_dir() / "reference_rows.csv")


def table_iv_from_accuracy(accuracy: dict[str, float | None], counts: dict | None = None,
                           non_live_simple: float | None = None) -> dict[str, float | None]:
    """Table IV's columns (fractions) from per-category accuracies (fractions); missing -> None."""
    scores = aggregate.overall_scores(accuracy, counts)
    out = {}
    for column, (formula, component) in TABLE_IV.items():
        out[column] = accuracy.get(component) if formula == "category" else scores[formula][component]
    if out["non_live"] is None and non_live_simple is not None:  # a source that publishes only the simple summary
        parts = [non_live_simple] + [accuracy.get(c) for c in ("multiple", "parallel", "parallel_multiple")]
        out["non_live"] = None if any(p is None for p in parts) else float(np.mean(parts))
    return out


def reference_table_iv(reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table IV for the reference rows: computed from their category figures with their version's counts,
    else the published figure; each row keeps its source, date and BFCL version."""
    reference = load_reference_rows() if reference is None else reference
    rows = []
    for _, line in reference.iterrows():
        accuracy = {c: line[c] / 100 for c in ALL_CATEGORIES + AGENTIC if c in line and pd.notna(line[c])}
        counts = V3_COUNTS if line["bfcl_version"] == "v3" else V4_COUNTS
        simple = line["non_live_simple"] / 100 if pd.notna(line.get("non_live_simple")) else None
        computed = table_iv_from_accuracy(accuracy, counts=counts, non_live_simple=simple)
        row = {"row": "reference", "label": line["model"], "model": line["model"], "method": "published",
               "source": line["source"], "date": line["date"], "bfcl": line["bfcl_version"],
               "params_b": line["params_b"], "n": math.nan}
        for column in TABLE_IV:
            value = computed[column]
            published = line.get(f"published_{column}")
            row[column] = 100 * value if value is not None else (published if pd.notna(published) else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def table_iv(results: pd.DataFrame, reference: pd.DataFrame | bool | None = True) -> pd.DataFrame:
    """The paper's Table IV layout, one row per evaluation (model x method), reference rows below.

    Our rows: BFCL v4 data as bfcl-eval scores it, summarized with both formulas (v3 = the paper's scoring);
    a component whose categories were not run is NaN (shown as missing), never 0. Columns in %, with n and
    the v3 overall's 95 % bootstrap interval.
    """
    ours = []
    scores = results[results["kind"] == "score"] if len(results) else results
    cats = results[results["kind"] == "category"] if len(results) else results
    for key, group in results.groupby("key", sort=False) if len(results) else []:
        first = group.iloc[0]
        row = {"row": "ours", "label": first["label"], "model": first["model"], "base_model": first["base_model"],
               "method": first["method"],
               "source": f"{first['run_id']}/{first['stage']}", "date": None,
               "bfcl": f"v4 data (bfcl-eval {first['bfcl_eval']})" if first["bfcl_eval"] else "v4 data",
               "params_b": first["params_b"], "n": int(cats[cats["key"] == key]["n"].sum())}
        s = scores[scores["key"] == key].set_index(["scoring", "category"])
        c = cats[cats["key"] == key].set_index("category")
        for column, (formula, component) in TABLE_IV.items():
            if formula == "category":
                row[column] = c["accuracy"].get(component, math.nan)
            else:
                row[column] = s["accuracy"].get((formula, component), math.nan)
        overall = s.loc[("v3", "overall")] if ("v3", "overall") in s.index else None
        row["overall_v3_ci_low"] = overall["ci_low"] if overall is not None else math.nan
        row["overall_v3_ci_high"] = overall["ci_high"] if overall is not None else math.nan
        ours.append(row)
    table = pd.DataFrame(ours)
    if len(table):
        rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        order = sorted(range(len(table)), key=lambda i: (ours[i]["source"].split("/")[0], ours[i]["base_model"],
                                                         rank.get(ours[i]["method"], len(rank)), ours[i]["label"]))
        table = table.iloc[order].reset_index(drop=True)
    if reference is not False and reference is not None:
        ref = reference_table_iv(None if reference is True else reference)
        table = pd.concat([table, ref], ignore_index=True)
    return table


def table_iv_markdown(table: pd.DataFrame) -> str:
    """Table IV as markdown; missing components print as '–' (missing), never 0."""
    show = table[["label", "bfcl", "source", "n"] + list(TABLE_IV)].copy()
    show = show.rename(columns=TABLE_IV_LABELS)
    for column in TABLE_IV_LABELS.values():
        show[column] = show[column].map(lambda v: "–" if pd.isna(v) else f"{v:.2f}")
    show["n"] = show["n"].map(lambda v: "" if pd.isna(v) else f"{int(v)}")
    return show.to_markdown(index=False)


# --------------------------------------------------------------------------------------------- comparisons

def default_pairs(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(A, B) evaluation keys to compare, B the derived one, within one run:

    * a trained model (method other than "base") against the evaluation its run.json `parent` names (its key,
      folder, model, label or method, or a checkpoint inside its model folder) and against the base evaluation
      of the same base model;
    * an edge variant (a quantization other than F16) against the F16 variant of its method and stage.

    A file evaluated again (stage 08's F16 is stage 06's export) is compared as a derived model only once, at its
    first evaluation: the same test twice would only enlarge Holm's family.
    """
    if not len(results):
        return []
    evals = results.drop_duplicates("key").sort_values("key")
    repeated = evals["checkpoint"].notna() & evals.duplicated(["run_id", "checkpoint"])
    pairs = []
    for (_, b), again in zip(evals.iterrows(), repeated):
        same_run = evals[(evals["run_id"] == b["run_id"]) & (evals["key"] != b["key"])]
        if pd.notna(b["quantization"]) and b["quantization"] != "F16":
            f16 = same_run[(same_run["stage"] == b["stage"]) & (same_run["method"] == b["method"])
                           & (same_run["quantization"] == "F16")]
            pairs += [(a, b["key"]) for a in f16["key"]]
        if b["method"] == "base" or again:
            continue
        if pd.notna(b["parent"]) and b["parent"]:
            parent = str(b["parent"])
            match = same_run[[_names_parent(parent, a["stage"], a["eval_id"], a["key"], a["model"], a["label"],
                                            a["method"]) for _, a in same_run.iterrows()]]
            pairs += [(a, b["key"]) for a in match["key"]]
        base = same_run[(same_run["method"] == "base") & (same_run["base_model"] == b["base_model"])]
        pairs += [(a, b["key"]) for a in base["key"]]
    return list(dict.fromkeys(pairs))


def compare(entry_table: pd.DataFrame, pairs: list[tuple[str, str]] | None = None, results: pd.DataFrame | None = None,
            n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Paired comparisons B - A on shared entries: per category, and for every Table IV composite both runs cover
    fully. Columns: diff (points), its 95 % paired bootstrap interval, p-value and Holm-adjusted p-value."""
    if pairs is None:
        pairs = default_pairs(results if results is not None else entry_table.assign(parent=None))
    rows = []
    by_key = {k: g for k, g in entry_table.groupby("key")} if len(entry_table) else {}
    for key_a, key_b in pairs:
        if key_a not in by_key or key_b not in by_key:
            continue
        a_rows, b_rows = by_key[key_a], by_key[key_b]
        merged = a_rows.merge(b_rows, on=["category", "id"], suffixes=("_a", "_b"))
        if not len(merged):
            continue
        a = {c: g["correct_a"].to_numpy() for c, g in merged.groupby("category")}
        b = {c: g["correct_b"].to_numpy() for c, g in merged.groupby("category")}
        info = {"a": a_rows["label"].iloc[0], "b": b_rows["label"].iloc[0], "a_key": key_a, "b_key": key_b,
                "run_id": b_rows["run_id"].iloc[0], "a_backend": a_rows["backend"].iloc[0],
                "b_backend": b_rows["backend"].iloc[0], "a_quantization": a_rows["quantization"].iloc[0],
                "b_quantization": b_rows["quantization"].iloc[0]}
        for category in a:
            result = paired_difference(a, b, {category: 1.0}, n_resamples, seed)
            rows.append(info | {"scoring": "category", "comparison": category,
                                "acc_a": 100 * a[category].mean(), "acc_b": 100 * b[category].mean(),
                                "b_only": int(np.sum((b[category] == 1) & (a[category] == 0))),
                                "a_only": int(np.sum((a[category] == 1) & (b[category] == 0)))} | result)
        # Composites only when every category of the score is shared; sampled categories use their shared entries.
        for column, (formula, component) in TABLE_IV.items():
            if formula == "category":
                continue
            weights = score_weights(formula, component, a, V4_COUNTS)
            if weights is None or len(weights) < 2:
                continue
            result = paired_difference(a, b, weights, n_resamples, seed)
            rows.append(info | {"scoring": formula, "comparison": column,
                                "acc_a": 100 * sum(w * a[c].mean() for c, w in weights.items()),
                                "acc_b": 100 * sum(w * b[c].mean() for c, w in weights.items()),
                                "b_only": math.nan, "a_only": math.nan} | result)
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(table["p_value"])
        table["family_size"] = len(table)
    return table


# --------------------------------------------------------------------------------------------- findings

def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


def comparison_sentence(row) -> str:
    """One finding, every number from the comparison row."""
    what = row["comparison"] if row["scoring"] == "category" else f"Table IV {TABLE_IV_LABELS[row['comparison']]}"
    detail = (f"{row['acc_b']:.1f} % vs {row['acc_a']:.1f} %, n = {int(row['n'])} paired entries, 95 % CI of the "
              f"difference {row['ci_low']:+.1f} to {row['ci_high']:+.1f} points, {row['test']} p = {_p(row['p_value'])}, "
              f"Holm-adjusted p = {_p(row['p_holm'])}")
    if row.get("a_backend") != row.get("b_backend"):  # the method is then not the only difference
        detail += f"; backends differ: {row.get('a_backend')} vs {row.get('b_backend')}"
    quantizations = (row.get("a_quantization"), row.get("b_quantization"))
    if all(isinstance(q, str) for q in quantizations) and quantizations[0] != quantizations[1]:
        detail += f"; weights differ in precision too: {quantizations[0]} vs {quantizations[1]}"
    if row["p_holm"] < ALPHA and row["diff"] != 0:
        verb = "beats" if row["diff"] > 0 else "trails"
        return f"**{row['b']}** {verb} **{row['a']}** by {abs(row['diff']):.1f} points on {what} ({detail})."
    return (f"**{row['b']}** vs **{row['a']}** on {what}: no difference established after Holm correction "
            f"(difference {row['diff']:+.1f} points; {detail}).")


def evaluation_summary(results: pd.DataFrame, key: str, entry_table: pd.DataFrame | None = None) -> str:
    """What one evaluation measured, in sentences generated from its rows (e.g. notebook 01's closing text)."""
    rows = results[results["key"] == key]
    cats = rows[(rows["kind"] == "category") & (rows["n"] > 0)].sort_values("accuracy", ascending=False)
    scores = rows[rows["kind"] == "score"].set_index(["scoring", "category"])
    first = rows.iloc[0]
    lines = [f"**{first['label']}** ({first['run_id']}/{first['stage']}, backend {first['backend']}): "
             f"{int(cats['n'].sum())} entries in {len(cats)} categories."]
    for formula in ("v3", "v4"):
        value = scores["accuracy"].get((formula, "overall"), math.nan)
        if pd.isna(value):
            lines.append(f"BFCL {formula} overall: missing (not every category it needs was run).")
        else:
            s = scores.loc[(formula, "overall")]
            lines.append(f"BFCL {formula} overall: {value:.2f} % (95 % interval {s['ci_low']:.2f} to "
                         f"{s['ci_high']:.2f}).")
    if len(cats):
        best, worst = cats.iloc[0], cats.iloc[-1]
        lines.append(f"Best category: {best['category']} {best['accuracy']:.1f} % (n = {int(best['n'])}, "
                     f"95 % CI {best['ci_low']:.1f} to {best['ci_high']:.1f}); worst: {worst['category']} "
                     f"{worst['accuracy']:.1f} % (n = {int(worst['n'])}, 95 % CI {worst['ci_low']:.1f} to "
                     f"{worst['ci_high']:.1f}).")
    if entry_table is not None and len(entry_table):
        mine = entry_table[entry_table["key"] == key]
        call_categories = mine[~mine["category"].isin(IRRELEVANCE)]
        if len(call_categories):
            no_call = 100 * (call_categories["failure_mode"] == "no call").mean()
            lines.append(f"In the categories that need a call, {no_call:.1f} % of the {len(call_categories)} "
                         f"answers contained no call at all.")
        irrelevance = mine[mine["category"].isin(IRRELEVANCE)]
        if len(irrelevance) and len(call_categories):
            lines.append(f"Irrelevance detection ({100 * irrelevance['correct'].mean():.1f} %, n = {len(irrelevance)}) "
                         "rewards answering without a call, so read it beside that no-call share.")
    return " ".join(lines)


def findings_markdown(results: pd.DataFrame, comparisons: pd.DataFrame | None = None,
                      entry_table: pd.DataFrame | None = None) -> str:
    """Findings written from the tables: one paragraph per evaluation, then every paired comparison."""
    out = ["# Findings (generated from the results table; do not edit by hand)", ""]
    if not len(results):
        return "\n".join(out + ["No evaluations found."]) + "\n"
    out += ["## Evaluations", ""]
    for key in results["key"].drop_duplicates():
        out += [f"- {evaluation_summary(results, key, entry_table)}"]
    out += [""]
    if comparisons is not None and len(comparisons):
        family = int(comparisons["family_size"].iloc[0])
        out += ["## Paired comparisons", "",
                f"Each comparison uses only the entries both evaluations answered. Categories: McNemar's exact test; "
                f"composite scores: a paired permutation test. p-values are Holm-adjusted over all {family} "
                f"comparisons below (family-wise error 5 %).", ""]
        ordered = comparisons.sort_values(["p_holm", "comparison"])
        out += [f"- {comparison_sentence(row)}" for _, row in ordered.iterrows()]
    else:
        out += ["## Paired comparisons", "", "No two evaluations share entries yet (only one method was run)."]
    return "\n".join(out) + "\n"


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


# --------------------------------------------------------------------------------------------- stage entry

@dataclass
class AnalysisConfig:
    n_resamples: int = 2000  # bootstrap resamples per interval
    seed: int = 0
    reference: bool = True  # reference rows beside ours in Table IV


def analyze(root: str | Path, out_dir: str | Path, config: AnalysisConfig | None = None) -> dict:
    """Write results.{parquet,csv}, entries.parquet, table_iv.{csv,md}, comparisons.csv and findings.md to
    out_dir from the saved files under root. Returns the tables and the written paths."""
    config = config or AnalysisConfig()
    out_dir = Path(out_dir)
    evaluations = find_evaluations(root)
    results = collect(root, config.n_resamples, config.seed)
    entry_table = entries(evaluations)
    written = save_table(results, out_dir, "results")
    if len(entry_table):
        written += save_table(entry_table, out_dir, "entries")[:1]
    iv = table_iv(results, reference=config.reference)
    write_text_atomic(out_dir / "table_iv.csv", iv.to_csv(index=False))
    write_text_atomic(out_dir / "table_iv.md", table_iv_markdown(iv) + "\n\nMissing components are shown as '–' "
                      "(not run), never 0. Our rows: BFCL v4 data (bfcl-eval) summarized with the v3 formula (the "
                      "paper's) and the v4 formula; reference rows carry their own version in `bfcl`.\n")
    comparisons = compare(entry_table, results=results, n_resamples=config.n_resamples, seed=config.seed)
    write_text_atomic(out_dir / "comparisons.csv", comparisons.to_csv(index=False))
    write_text_atomic(out_dir / "findings.md", findings_markdown(results, comparisons, entry_table))
    written += [out_dir / n for n in ("table_iv.csv", "table_iv.md", "comparisons.csv", "findings.md")]
    return {"results": results, "entries": entry_table, "table_iv": iv, "comparisons": comparisons,
            "written": written}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="outputs", help="outputs/ (every run) or outputs/<run_id>")
    parser.add_argument("--out", default="paper_figures")
    parser.add_argument("--n-resamples", type=int, default=2000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    done = analyze(args.root, args.out, AnalysisConfig(n_resamples=args.n_resamples))
    for path in done["written"]:
        print(path)
    print(f"analysis: {len(done['results'])} result rows in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
