"""Stages 04 (SFT), 05 (DPO) and 06 (hybrid: SFT→DPO, SFT→GRPO, self-improvement cycles), each one call.

    python -m tinyllm_utils.pipeline --profile smoke          # runs them after 01-03 (notebooks 04-06)

Every stage trains with TRL through tinyllm_utils.training, then treats each checkpoint exactly like the
baseline: exported to GGUF (F16) when stage 01 ran on llama.cpp, and evaluated by the same evaluation core with
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinyllm_utils.data import expects_call
from tinyllm_utils.evaluate import EvalConfig, evaluate
from tinyllm_utils.registry import resolve_model
from tinyllm_utils.results import write_json_atomic

SMOKE_EVAL = ["simple_python", "irrelevance"]


class MissingStageError(FileNotFoundError):
    """A stage this one reads has not produced what is needed."""


# ---------------------------------------------------------------- configs (defaults = the smoke workload)

# Every smoke DPO run (05, 06's SFT -> DPO and cycle): one step of one pair. A DPO step holds 2 sequences per
# pair, and on the CI machine every GB a fresh process touches costs 6-8 s (README "Training"): at one pair per
# step the smoke run took 14 min instead of 18; a second step cost each run 30-40 s more (smoke's 15 min budget).
SMOKE_DPO = {"max_steps": 1, "learning_rate": 5e-6, "per_device_train_batch_size": 1}


@dataclass
class SFTStageConfig:
    model: str = "gemma-3-270m"  # the base model (registry name, hub id or folder)
    lora_sft: dict | None = field(default_factory=lambda: {"max_steps": 2, "learning_rate": 2e-4})
    full_sft: dict | None = None  # trl.SFTConfig fields for full fine-tuning; None skips it
    lora: dict = field(default_factory=dict)  # peft.LoraConfig fields over training.LORA_DEFAULTS
    train_rows: int | None = 8  # seeded sample of stage-02 train rows; None = all of them
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0


@dataclass
class DPOStageConfig:
    model: str = "gemma-3-270m"
    dpo: dict = field(default_factory=lambda: {**SMOKE_DPO, "beta": 0.1, "loss_type": ["sigmoid"]})
    use_lora: bool = True  # reference = the policy with its adapter disabled (no second model in memory)
    lora: dict = field(default_factory=dict)
    train_pairs: int | None = None  # seeded sample of stage-03 train pairs; None = all
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0


@dataclass
class HybridStageConfig:
    start: str = "sft-lora"  # the stage-04 model the hybrids start from
    sft_dpo: dict | None = field(default_factory=lambda: {**SMOKE_DPO, "beta": 0.1})
    sft_grpo: dict | None = field(default_factory=lambda: {
        "max_steps": 1, "num_generations": 2, "per_device_train_batch_size": 2, "max_completion_length": 16})
    cycles: int = 1  # self-improvement rounds: generate -> pairs from own checked failures -> train -> evaluate
    cycle_method: str = "dpo"  # dpo | grpo
    cycle_rows: int | None = 2  # training prompts answered per cycle
    cycle_training: dict = field(default_factory=lambda: dict(SMOKE_DPO))  # a GRPOConfig block for cycle_method grpo
    use_lora: bool = True
    lora: dict = field(default_factory=dict)
    train_pairs: int | None = None
    grpo_rows: int | None = 8
    # GRPO (sft_grpo, grpo cycles) leaves out prompts longer than this many tokens: TRL 1.16 has no option of its
    # own, and a step's memory grows with them (11.6 GB at 1 000 tokens, 13.2 at 1 800: training.train_grpo)
    grpo_max_prompt_length: int | None = 1024
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0


# ---------------------------------------------------------------- inputs


def _run_root(stage_dir: Path) -> Path:
    return Path(stage_dir).parent


def eval_protocol(stage_dir: str | Path, categories: list[str] | None = None) -> EvalConfig:
    """Stage 01's protocol, as its evaluation recorded it (run.json), optionally on a subset of its categories."""
    baseline = _run_root(Path(stage_dir)) / "01_baseline_evaluation"
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


def _sample(data, n: int | None, seed: int):
    if n is None or n >= len(data):
        return data
    return data.select(sorted(random.Random(seed).sample(range(len(data)), n)))


def load_stage02(stage_dir: Path):
    from tinyllm_utils.pairs import load_stage02 as load

    return load(_run_root(stage_dir) / "02_data_filtering" / "dataset")


def load_pairs(stage_dir: Path):
    from datasets import load_from_disk

    path = _run_root(stage_dir) / "03_pair_construction" / "pairs"
    if not (path / "dataset_dict.json").exists():
        raise MissingStageError(f"no stage-03 pairs at {path}: run stage 03 first")
    return load_from_disk(str(path))


def stage04_model(stage_dir: Path, method: str) -> Path:
    final = _run_root(stage_dir) / "04_sft" / method / "final"
    if not (final / "model_spec.json").exists():
        raise MissingStageError(f"no stage-04 {method} model at {final}: run stage 04 with it enabled first")
    return final


# ---------------------------------------------------------------- after training: label, export, evaluate


def _in_run(parent: str, run_root: Path) -> str:
    """A parent checkpoint inside this run as its path in the run (`04_sft/sft-lora/final`), so the lineage
    still holds when outputs move; a registry name or a checkpoint elsewhere stays as given."""
    if not Path(parent).exists():
        return parent
    path, run_root = Path(parent).resolve(), run_root.resolve()
    return path.relative_to(run_root).as_posix() if path.is_relative_to(run_root) else parent


def _gguf_path(method_dir: Path, name: str) -> Path:
    return method_dir / "gguf" / f"{name}-F16.gguf"


def evaluated_model(final: Path, method_dir: Path, protocol: EvalConfig) -> str:
    """What the evaluation runs for a trained checkpoint: on llama.cpp the F16 GGUF that `finish_model` exported
    (read only: this stage does not write into the stage that trained it), else the folder itself."""
    if protocol.backend != "llama_cpp":
        return str(final)
    gguf = _gguf_path(method_dir, resolve_model(str(final)).name)
    if not gguf.exists():
        raise MissingStageError(f"no GGUF export {gguf} of {final}: rerun the stage that trained it "
                                "(it exports every checkpoint it evaluates on llama.cpp)")
    return str(gguf)


def finish_model(result: dict, method_dir: Path, label: str, parent: str, protocol: EvalConfig,
                 generation_seconds: float | None = None) -> dict:
    """Label the trained model (method, parent), record training.json, export GGUF and evaluate like stage 01.
    `generation_seconds`: a cycle's answering before it trained, part of its cost (`seconds`), not of its rate."""
    from tinyllm_utils.export import export_gguf

    final = Path(result["path"])
    parent = _in_run(parent, _run_root(method_dir.parent))
    spec = replace(resolve_model(str(final)), method=label, parent=parent)
    spec.save(final)
    tokens = (result.get("train_metrics") or {}).get("num_input_tokens_seen") or result.get("tokens_seen")
    # a resumed run's rate is this process's: the tokens and seconds since its checkpoint (`seconds` itself counts
    # from step 0 where the checkpoint recorded its own, training.training_clock)
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
                # and those left out as too long: SFT and DPO over max_length (quick's SFT: 112 of 400 sampled),
                # GRPO over grpo_max_prompt_length
                "rows": result.get("rows"), "dropped_too_long": result.get("dropped_too_long")}
    write_json_atomic(method_dir / "training.json", training)
    model = str(final)
    if protocol.backend == "llama_cpp":
        model = str(export_gguf(final, _gguf_path(method_dir, spec.name)))
    metrics = evaluate(replace(protocol, model=model), method_dir / "eval" / spec.name, progress=True)
    return {"label": label, "path": str(final), "model": model, "training": training, "metrics": metrics,
            "curves": result.get("curves")}


def _lora(config, enabled: bool = True):
    from tinyllm_utils import training

    return training.default_lora(**config.lora) if enabled else None


def _tokens_seen(config: dict) -> dict:
    # transformers counts the tokens each step consumed, for the report's tokens/s: the real ones, not the
    # padding of a batch (True, i.e. "all", counted those until 2026-12-02; GRPO counts its own, unpadded)
    return {"include_num_input_tokens_seen": "non_padding", **config}


# ---------------------------------------------------------------- stage 04: SFT


def run_sft_stage(config: SFTStageConfig, stage_dir: str | Path) -> dict[str, dict]:
    from tinyllm_utils import training

    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    data = load_stage02(stage_dir)
    train = _sample(data["train"], config.train_rows, config.seed)
    results = {}
    for label, block, lora in (("sft-lora", config.lora_sft, True), ("sft-full", config.full_sft, False)):
        if block is None:
            continue
        method_dir = stage_dir / label
        model, tokenizer = training.load_for_training(config.model)
        spec = model._tinyllm_spec
        sft = training.sft_config_from_dict(_tokens_seen(dict(block, seed=config.seed)))
        result = training.train_sft(model, tokenizer, training.sft_dataset(train, spec.prompt_format, tokenizer),
                                    None, sft, _lora(config, lora), method_dir, spec=spec,
                                    name=f"{spec.name}-{label}")
        results[label] = finish_model(result, method_dir, label, spec.name, protocol)
    return results


# ---------------------------------------------------------------- stage 05: DPO from the base


def check_pairs_fit(stage_dir: Path, policy) -> None:
    """Stage 03 wrote its pairs as text in the prompt format of its `model`: DPO on a policy prompted another
    way would learn from prompts (and end markers) its evaluation never shows."""
    card = json.loads((_run_root(stage_dir) / "03_pair_construction" / "pairs_card.json").read_text())
    made_for = resolve_model(card["parameters"]["model"])

    def template(spec):  # what decides the text: the Gemma turns, or the base model's own chat template
        if spec.prompt_format == "gemma":
            return "gemma"
        base = resolve_model(spec.base_model) if spec.base_model else spec
        return base.hf_id or base.path or base.name
    if template(made_for) != template(policy):
        raise ValueError(f"stage 03's pairs are written in {made_for.name!r}'s prompt format ({template(made_for)}); "
                         f"the model trained here, {policy.name!r}, is prompted as {template(policy)}: set "
                         f"03_pair_construction.model to {policy.base_model or policy.name!r}")


def _train_dpo(start: str, pairs, block: dict, config, method_dir: Path, name: str):
    from tinyllm_utils import training

    check_pairs_fit(method_dir.parent, resolve_model(start))  # before minutes of loading
    model, tokenizer = training.load_for_training(start)
    spec = model._tinyllm_spec
    dpo = training.dpo_config_from_dict(_tokens_seen(dict(block, seed=config.seed)))
    return training.train_dpo(model, tokenizer, training.dpo_dataset(pairs), None, dpo,
                              _lora(config, config.use_lora), method_dir, spec=spec, name=name)


def run_dpo_stage(config: DPOStageConfig, stage_dir: str | Path) -> dict[str, dict]:
    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    pairs = _sample(load_pairs(stage_dir)["train"], config.train_pairs, config.seed)
    base = resolve_model(config.model)
    result = _train_dpo(config.model, pairs, config.dpo, config, stage_dir / "dpo", f"{base.name}-dpo")
    return {"dpo": finish_model(result, stage_dir / "dpo", "dpo", base.name, protocol)}


# ---------------------------------------------------------------- stage 06: hybrids and cycles


def run_hybrid_stage(config: HybridStageConfig, stage_dir: str | Path) -> dict[str, dict]:
    from tinyllm_utils import training

    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    start = stage04_model(stage_dir, config.start)
    start_spec = resolve_model(str(start))
    base = start_spec.base_model or start_spec.name
    results = {}
    if config.sft_dpo is not None:
        pairs = _sample(load_pairs(stage_dir)["train"], config.train_pairs, config.seed)
        result = _train_dpo(str(start), pairs, config.sft_dpo, config, stage_dir / "sft-dpo", f"{base}-sft-dpo")
        results["sft→dpo"] = finish_model(result, stage_dir / "sft-dpo", "sft→dpo", str(start), protocol)
    if config.sft_grpo is not None:
        model, tokenizer = training.load_for_training(str(start))
        prompts = training.grpo_dataset(_sample(load_stage02(stage_dir)["train"], config.grpo_rows, config.seed),
                                        start_spec.prompt_format, tokenizer)
        grpo = training.grpo_config_from_dict(_tokens_seen(dict(config.sft_grpo, seed=config.seed)))
        result = training.train_grpo(model, tokenizer, prompts, None, grpo, _lora(config, config.use_lora),
                                     stage_dir / "sft-grpo", max_prompt_length=config.grpo_max_prompt_length,
                                     spec=start_spec, name=f"{base}-sft-grpo")
        results["sft→grpo"] = finish_model(result, stage_dir / "sft-grpo", "sft→grpo", str(start), protocol)
    # each cycle answers its prompts with the model as evaluation runs it (backend, exported file, decoding
    # length), so it learns from the failures the evaluation counts
    current, data = start, load_stage02(stage_dir)
    current_evaluated = evaluated_model(start, start.parent, protocol)
    for cycle in range(1, config.cycles + 1):
        method_dir = stage_dir / f"cycle-{cycle}"
        outcome = training.self_improvement_cycle(
            current, data, method_dir, _tokens_seen(dict(config.cycle_training, seed=config.seed)),
            method=config.cycle_method,
            lora=_lora(config, config.use_lora), limit=config.cycle_rows, backend=protocol.backend,
            max_new_tokens=protocol.max_new_tokens, seed=config.seed + cycle, generator=current_evaluated,
            max_prompt_length=config.grpo_max_prompt_length)
        if not outcome.get("trained"):
            # the model stays current; the next cycle answers other rows (its own seed) and may find pairs
            results[f"cycle {cycle}"] = {"label": f"cycle {cycle}", **outcome}
            continue
        trained = Path(outcome["path"]).parent
        # result.json's training seconds count from step 0 (also when this process only reran its evaluation);
        # the files are where the folder is now
        result = {**json.loads((trained / "result.json").read_text()), "path": outcome["path"],
                  "curves": str(trained / "curves.csv")}
        # the cycle's whole cost: its answering (recorded per answer, cached ones included) + its training
        results[f"cycle {cycle}"] = finish_model(result, method_dir, f"cycle {cycle}", str(current), protocol,
                                                 generation_seconds=outcome["generation_seconds"])
        results[f"cycle {cycle}"]["cycle"] = {k: outcome[k] for k in ("rows", "failed", "pairs")}
        current, current_evaluated = Path(outcome["path"]), results[f"cycle {cycle}"]["model"]
    return results


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
        row = {"method": label, "rows": result["training"].get("rows"), "epochs": epochs and round(epochs, 2),
               "dropped (too long)": result["training"].get("dropped_too_long"),
               "training s": round(result["training"]["seconds"], 1),
               "tokens/s": result["training"]["tokens_per_s"] and round(result["training"]["tokens_per_s"], 1)}
        for category, m in result["metrics"]["categories"].items():
            row[category] = None if m["accuracy"] is None else f"{100 * m['accuracy']:.0f} % (n {m['n']})"
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- before / after, for the stage's notebook


def _stage_evaluations(stage_dir: Path):
    from tinyllm_utils import analysis

    run_root = _run_root(Path(stage_dir))
    found = analysis.find_evaluations(run_root)
    stage = [ev for ev in found if ev.stage in ("01_baseline_evaluation", Path(stage_dir).name)]
    # and the models this stage's models were trained from (06's SFT→DPO: stage 04's SFT), for before / after
    keys = {ev.key for ev in stage}
    parents = {other.key: other for ev in stage for other in found if ev.trained_from(other) and other.key not in keys}
    return run_root, stage + list(parents.values())


def before_after(stage_dir: str | Path, n_resamples: int = 2000):
    """Each model of this stage against its parent and the base, on their shared entries: per category and
    composite, the difference in points, its paired 95 % bootstrap interval, McNemar / permutation p-values
    and Holm-adjusted p-values (tinyllm_utils.analysis.compare)."""
    from tinyllm_utils import analysis

    run_root, evaluations = _stage_evaluations(Path(stage_dir))
    results = analysis.collect(run_root, n_resamples)
    results = results[results["key"].isin([ev.key for ev in evaluations])]
    table = analysis.compare(analysis.entries(evaluations), results=results, n_resamples=n_resamples)
    if len(table):
        table = table[table["b_key"].str.contains(f"/{Path(stage_dir).name}/", regex=False)]
    return table


def failure_shift(stage_dir: str | Path):
    """Failure modes (counts) of the base and of each model of this stage, on the same entries."""
    from tinyllm_utils import analysis

    _, evaluations = _stage_evaluations(Path(stage_dir))
    table = analysis.entries(evaluations)
    if not len(table):
        return table
    return table.pivot_table(index="label", columns="failure_mode", values="id", aggfunc="count", fill_value=0)


# ---------------------------------------------------------------- stage 08: edge profile of the study's checkpoints


@dataclass
class EdgeStageConfig:
    checkpoints: list[str] = field(default_factory=lambda: ["base", "best"])  # base | best | a method label
    types: list[str] = field(default_factory=lambda: ["Q8_0", "Q4_K_M"])  # quantized variants besides F16
    threads: list[int] = field(default_factory=lambda: [2])
    threads_for: dict[str, list[int]] = field(default_factory=dict)  # per variant (e.g. F16), replaces `threads`
    runs: int = 1  # profile repetitions (median and spread)
    decode_tokens: int = 16
    transformers_reference: bool = False  # profile the fp32 / bf16 transformers model of each checkpoint too
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0


def trained_models(stage_dir: Path) -> dict[str, dict]:
    """Every model stages 04-06 of this run trained: label -> {method_dir, gguf, final, mean accuracy}."""
    found = {}
    for stage in ("04_sft", "05_dpo", "06_hybrid"):
        for training_file in sorted((_run_root(stage_dir) / stage).glob("*/training.json")):
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


def run_edge_profile_stage(config: EdgeStageConfig, stage_dir: str | Path) -> dict:
    """Stage 08: quantized variants of the chosen checkpoints (`best`: see `best_model`), each evaluated on
    stage 01's entries and profiled on this machine."""
    from tinyllm_utils.edge import EdgeConfig, run_edge_stage

    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    if protocol.backend != "llama_cpp":
        raise ValueError("the edge stage measures llama.cpp variants; stage 01 ran on " + protocol.backend)
    trained = trained_models(stage_dir)
    checkpoints, requantize, references = {}, [], {}
    for name in config.checkpoints:
        if name == "base":
            base = resolve_model(json.loads(sorted((_run_root(stage_dir) / "01_baseline_evaluation").glob(
                "*/run.json"))[0].read_text())["parameters"]["model"])
            checkpoints["base"] = str(base.gguf_path())
            requantize.append("base")  # the offline base exists only as Q4_K_M (see tinyllm_utils.edge)
            if config.transformers_reference:
                references["base"] = "embedded" if base.source == "embedded" else (base.path or base.hf_id)
            continue
        if name == "best":
            name = best_model(trained)
        if name not in trained or trained[name]["gguf"] is None:
            raise MissingStageError(f"no exported model {name!r} in stages 04-06 (have {sorted(trained)})")
        checkpoints[name] = str(trained[name]["gguf"])
        if config.transformers_reference:
            references[name] = str(trained[name]["final"])
    edge = EdgeConfig(checkpoints=checkpoints, types=list(config.types), requantize=requantize,
                      categories=protocol.categories, limit=protocol.limit, multi_turn_limit=protocol.multi_turn_limit,
                      seed=protocol.seed, max_new_tokens=protocol.max_new_tokens,
                      stop_when_hopeless=protocol.stop_when_hopeless, grammar=protocol.grammar,
                      threads=list(config.threads),
                      threads_for={k: list(v) for k, v in config.threads_for.items()},
                      runs=config.runs, decode_tokens=config.decode_tokens, transformers_reference=references)
    return run_edge_stage(edge, stage_dir)


# ---------------------------------------------------------------- command line (e.g. under `accelerate launch`)

STAGE_RUNNERS = {"04_sft": run_sft_stage, "05_dpo": run_dpo_stage, "06_hybrid": run_hybrid_stage,
                 "08_edge_profile": run_edge_profile_stage}


def main(argv=None) -> None:
    """Run one stage without its notebook, with a profile's parameters: what `accelerate launch` needs on a
    multi-GPU machine (the notebook path runs in one Jupyter kernel). The stage folder is opened under the
    pipeline's own key but not marked finished: the pipeline then resumes it (finished training folders are
    returned as they are) and runs the notebook."""
    import argparse

    from tinyllm_utils.pipeline import OUTPUT_ROOT, build_config, open_stage, parse_overrides, resolve_profile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--stage", required=True, choices=sorted(STAGE_RUNNERS))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.NAME=VALUE")
    args = parser.parse_args(argv)
    plan = resolve_profile(args.profile, parse_overrides(args.overrides))["stages"]
    work = open_stage(OUTPUT_ROOT / (args.run_id or args.profile), args.stage, plan[args.stage], plan)
    print(f"{args.stage}: {work.describe()} -> {work.folder}")
    results = STAGE_RUNNERS[args.stage](build_config(args.stage, plan[args.stage]), work.folder)
    print(summary_table(results).to_string() if args.stage != "08_edge_profile" else results["recommendation"])


if __name__ == "__main__":
    main()
