"""Stage 05: DPO of the base on stage 03's pairs; each trained model is exported and evaluated like the baseline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tinyllm_utils.models.registry import resolve_model
from tinyllm_utils.stages.common import (
    SMOKE_DPO,
    SMOKE_EVAL,
    eval_protocol,
    finish_model,
    load_pairs,
    lora_for,
    run_root_of,
    sample_rows,
    tokens_seen,
)


@dataclass
class DPOStageConfig:
    model: str = "gemma-3-270m"
    dpo: dict = field(default_factory=lambda: {**SMOKE_DPO, "beta": 0.1, "loss_type": ["sigmoid"]})
    use_lora: bool = True  # reference = the policy with its adapter disabled (no second model in memory)
    lora: dict = field(default_factory=dict)
    train_pairs: int | None = None  # seeded sample of stage-03 train pairs; None = all
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0




def check_pairs_fit(stage_dir: Path, policy) -> None:
    """Stage 03 wrote its pairs as text in the prompt format of its `model`: DPO on a policy prompted another
    way would learn from prompts (and end markers) its evaluation never shows."""
    card = json.loads((run_root_of(stage_dir) / "03_pair_construction" / "pairs_card.json").read_text())
    made_for = resolve_model(card["parameters"]["model"])

    def template(spec):  # what decides the text: the Gemma turns, or the base model's own chat template
        if spec.prompt_format == "gemma":
            return "gemma"
        base = resolve_model(spec.base_model) if spec.base_model else spec
        # the family and reasoning too: Qwen3's prompting and FC entries share one hub id, not one prompt
        return f"{base.hf_id or base.path or base.name} ({spec.family}, {spec.reasoning})"
    if template(made_for) != template(policy):
        raise ValueError(f"stage 03's pairs are written in {made_for.name!r}'s prompt format ({template(made_for)}); "
                         f"the model trained here, {policy.name!r}, is prompted as {template(policy)}: set "
                         f"03_pair_construction.model to {policy.base_model or policy.name!r}")


def train_dpo_method(start: str, pairs, block: dict, config, method_dir: Path, name: str):
    from tinyllm_utils.train import formats, loading, trainers
    check_pairs_fit(method_dir.parent, resolve_model(start))  # before minutes of loading
    model, tokenizer = loading.load_for_training(start)
    spec = model._tinyllm_spec
    dpo = trainers.dpo_config_from_dict(tokens_seen(dict(block, seed=config.seed)))
    return trainers.train_dpo(model, tokenizer, formats.dpo_dataset(pairs), None, dpo,
                              lora_for(config, config.use_lora), method_dir, spec=spec, name=name)


def run_dpo_stage(config: DPOStageConfig, stage_dir: str | Path) -> dict[str, dict]:
    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    pairs = sample_rows(load_pairs(stage_dir)["train"], config.train_pairs, config.seed)
    base = resolve_model(config.model)
    result = train_dpo_method(config.model, pairs, config.dpo, config, stage_dir / "dpo", f"{base.name}-dpo")
    return {"dpo": finish_model(result, stage_dir / "dpo", "dpo", base.name, protocol)}
