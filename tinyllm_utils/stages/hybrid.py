"""Stage 06: hybrids from stage 04's SFT checkpoint: SFT->DPO, SFT->GRPO, and the paper's self-improvement
cycles (the model answers training prompts, its checked failures become pairs or GRPO prompts, it trains on them,
and is evaluated again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tinyllm_utils.core.results import write_json_atomic
from tinyllm_utils.models.registry import resolve_model
from tinyllm_utils.stages.common import (
    SMOKE_DPO,
    SMOKE_EVAL,
    changed_answers,
    eval_protocol,
    evaluated_model,
    finish_model,
    load_pairs,
    load_stage02,
    lora_for,
    sample_rows,
    stage04_model,
    tokens_seen,
)
from tinyllm_utils.stages.dpo import train_dpo_method
from tinyllm_utils.train.formats import NothingFitsError, dpo_dataset, grpo_dataset
from tinyllm_utils.train.loading import load_for_training
from tinyllm_utils.train.trainers import dpo_config_from_dict, grpo_config_from_dict, train_dpo, train_grpo


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
    # own, and a step's memory grows with them (trainers.train_grpo)
    grpo_max_prompt_length: int | None = 1024
    # Compute-matched SFT: for each hybrid named in `sft_matched_to`, SFT continued from the same start checkpoint
    # for as many steps as stage 04's SFT ran in that hybrid's training seconds (an SFTConfig block; max_steps is
    # set from the match), so every hybrid is compared with more SFT at equal compute. None skips it.
    sft_matched: dict | None = field(default_factory=lambda: {"learning_rate": 2e-4,
                                                              "lr_scheduler_type": "constant"})
    sft_matched_to: list[str] = field(default_factory=lambda: ["sft→dpo", "sft→grpo"])
    sft_matched_rows: int | None = 8  # seeded sample of stage-02 train rows (another seed than stage 04's)
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0


# ---------------------------------------------------------------- the stage


def run_hybrid_stage(config: HybridStageConfig, stage_dir: str | Path) -> dict[str, dict]:
    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    start = stage04_model(stage_dir, config.start)
    start_spec = resolve_model(str(start))
    base = start_spec.base_model or start_spec.name
    results = {}
    if config.sft_dpo is not None:
        pairs = sample_rows(load_pairs(stage_dir)["train"], config.train_pairs, config.seed)
        result = train_dpo_method(str(start), pairs, config.sft_dpo, config, stage_dir / "sft-dpo", f"{base}-sft-dpo")
        results["sft→dpo"] = finish_model(result, stage_dir / "sft-dpo", "sft→dpo", str(start), protocol)
    if config.sft_grpo is not None:
        model, tokenizer = load_for_training(str(start))
        prompts = grpo_dataset(sample_rows(load_stage02(stage_dir)["train"], config.grpo_rows, config.seed),
                               start_spec, tokenizer)
        # GRPO counts the tokens it generates itself: transformers' counter would only warn that it cannot
        grpo = grpo_config_from_dict(dict(config.sft_grpo, seed=config.seed))
        result = train_grpo(model, tokenizer, prompts, None, grpo, lora_for(config, config.use_lora),
                            stage_dir / "sft-grpo", max_prompt_length=config.grpo_max_prompt_length,
                            spec=start_spec, name=f"{base}-sft-grpo")
        results["sft→grpo"] = finish_model(result, stage_dir / "sft-grpo", "sft→grpo", str(start), protocol)
    # each cycle answers its prompts with the model as evaluation runs it (backend, exported file, decoding
    # length), so it learns from the failures the evaluation counts
    current, data = start, load_stage02(stage_dir)
    current_evaluated = evaluated_model(start, start.parent, protocol)
    for cycle in range(1, config.cycles + 1):
        method_dir = stage_dir / f"cycle-{cycle}"
        outcome = self_improvement_cycle(
            current, data, method_dir, (tokens_seen if config.cycle_method == "dpo" else dict)(
                dict(config.cycle_training, seed=config.seed)),
            method=config.cycle_method,
            lora=lora_for(config, config.use_lora), limit=config.cycle_rows, backend=protocol.backend,
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
    if config.sft_matched is not None:
        for hybrid in config.sft_matched_to:
            if "training" in results.get(hybrid, {}):
                label = f"sft matched to {hybrid}"
                results[label] = train_matched_sft(config, stage_dir, start, results[hybrid]["training"]["seconds"],
                                                   label, protocol)
    start_eval = start.parent / "eval" / start_spec.name
    for result in results.values():
        if "metrics" in result:
            result["changed_answers"] = changed_answers(start_eval, Path(result["metrics_dir"]))
    return results


def matched_steps(start: Path, seconds: float) -> int:
    """SFT steps that take `seconds` at the rate stage 04's SFT of `start` ran (its training.json)."""
    training = json.loads((start.parent / "training.json").read_text())
    return max(1, round(seconds * training["steps"] / training["seconds"]))


def train_matched_sft(config: HybridStageConfig, stage_dir: Path, start: Path, seconds: float, label: str,
                      protocol) -> dict:
    """SFT continued from `start` for the steps stage 04's SFT ran in `seconds`: the hybrid's compute-matched
    alternative (constant learning rate, so its length is all that differs from one match to another)."""
    from tinyllm_utils.train.formats import sft_dataset
    from tinyllm_utils.train.trainers import sft_config_from_dict, train_sft

    method_dir = stage_dir / label.replace(" ", "-").replace("→", "-")
    steps = matched_steps(start, seconds)
    model, tokenizer = load_for_training(str(start))
    spec = model._tinyllm_spec
    rows = sample_rows(load_stage02(stage_dir)["train"], config.sft_matched_rows, config.seed + 1)
    sft = sft_config_from_dict(tokens_seen(dict(config.sft_matched, max_steps=steps, seed=config.seed)))
    base = spec.base_model or spec.name
    result = train_sft(model, tokenizer, sft_dataset(rows, spec, tokenizer), None, sft,
                       lora_for(config, config.use_lora), method_dir, spec=spec,
                       name=f"{base}-{method_dir.name}")
    finished = finish_model(result, method_dir, label, str(start), protocol)
    finished["matched"] = {"hybrid_seconds": seconds, "steps": steps}
    return finished


# ---------------------------------------------------------------- self-improvement


def self_improvement_cycle(model_path: str | Path, dataset, out_dir: str | Path, config: dict | None = None,
                           method: str = "dpo", lora=None, limit: int | None = None, backend="transformers",
                           max_new_tokens: int = 128, seed: int = 0, stage_key: str | None = None,
                           generator: str | Path | None = None, max_prompt_length: int | None = None) -> dict:
    """One cycle: the current model answers stage-02 training prompts (greedy) -> its answers that bfcl's
    checker rejects become `rejected`, the verified reference `chosen` (pairs.build_pairs; no synthetic
    negatives) -> DPO on those pairs, or GRPO on the prompts it failed (`config`: a DPOConfig block for "dpo", a
    GRPOConfig block for "grpo", checked before anything is generated; `max_prompt_length`: GRPO's, train_grpo).

    `model_path`: a trained folder (with model_spec.json) or registry name, the model trained; `generator`: the
    same model as evaluation runs it (stage 06 passes its exported GGUF with the llama.cpp backend, so the
    cycle learns from the failures evaluation sees); default `model_path`. `dataset`: the stage-02
    DatasetDict; `backend`: a backend name or object with `generate` (tests pass a fake one). Returns
    {"path": the new checkpoint (the old one when it did not train), "pairs", "failed", "rows", "trained",
    "generation_seconds" (the generator's own seconds per answer, summed: recorded with each answer, so a rerun
    that finds them cached still counts them), and "skipped" (why) when it did not train: no checked failure,
    or no pair (prompt) fits max_length}. Training seconds are train_dpo / train_grpo's. Evaluation of the new
    checkpoint is the stage's job (the evaluation core)."""
    from tinyllm_utils.data import pairs
    from tinyllm_utils.stages import pair_construction

    configs = {"dpo": dpo_config_from_dict, "grpo": grpo_config_from_dict}
    if method not in configs:
        raise ValueError(f"unknown method {method!r}; expected 'dpo' or 'grpo'")
    trainer_config = configs[method](config)  # a block that does not fit the method fails here, not after answering
    out_dir = Path(out_dir)
    spec = resolve_model(str(model_path))
    rows = pairs.select_rows(dataset, limit, seed)
    rows = [r for r in rows if r["split"] == "train"]
    if not rows:  # the validation rows measure the training: never train on them
        raise ValueError("the stage-02 dataset has no train rows for the self-improvement cycle")
    kept, _ = pairs.verify_chosen(rows)
    pair_config = pair_construction.PairConfig(model=str(model_path), rejecter=str(generator or model_path),
                                       backend=backend if isinstance(backend, str) else "transformers",
                                       rejecter_max_new_tokens=max_new_tokens, negatives_per_row=0,
                                       synthetic_ratio=0.0, seed=seed)
    cache = out_dir / "generations.jsonl"
    generations = pairs.generate_rejections(
        kept, pair_config, cache_path=cache, backend=None if isinstance(backend, str) else backend, progress=False)
    answered = {row["id"]: row.get("seconds") or 0.0 for row in pairs.read_generations(cache)}
    built, outcomes = pairs.build_pairs(kept, generations, pair_config)
    failed = [o["id"] for o in outcomes if o["outcome"] in ("used", "empty")]
    summary = {"rows": len(kept), "failed": len(failed), "pairs": len(built),
               "generation_seconds": sum(answered.get(key, 0.0) for key in generations)}
    untrained = {**summary, "path": spec.path or spec.name, "trained": False}
    if (method == "dpo" and not built) or (method == "grpo" and not failed):
        return {**untrained, "skipped": "no checked failure to learn from"}
    model, tokenizer = load_for_training(spec)
    try:
        if method == "dpo":
            data = pairs.to_preference_dataset(built, spec, tokenizer, splits=("train",))["train"]
            result = train_dpo(model, tokenizer, dpo_dataset(data), None, trainer_config, lora, out_dir / "dpo",
                               spec=spec, stage_key=stage_key)
        else:
            failed_ids = set(failed)
            data = grpo_dataset([r for r in kept if r["id"] in failed_ids], spec, tokenizer)
            result = train_grpo(model, tokenizer, data, None, trainer_config, lora, out_dir / "grpo",
                                max_prompt_length=max_prompt_length, spec=spec, stage_key=stage_key)
    except NothingFitsError as error:  # its failures are all on prompts too long to train on: nothing to learn
        return {**untrained, "skipped": str(error)}
    write_json_atomic(out_dir / "cycle.json", {**summary, "path": result["path"], "seconds": result["seconds"]})
    return {**summary, "path": result["path"], "trained": True}
