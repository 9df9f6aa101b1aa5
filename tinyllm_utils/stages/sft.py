"""Stage 04: supervised fine-tuning (LoRA and/or full) of the base on stage 02's rows; each trained model is
exported and evaluated like the baseline (stages.common).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinyllm_utils.stages.common import (
    SMOKE_EVAL,
    eval_protocol,
    finish_model,
    load_stage02,
    lora_for,
    sample_rows,
    tokens_seen,
)


@dataclass
class SFTStageConfig:
    model: str = "gemma-3-270m"  # the base model (registry name, hub id or folder)
    lora_sft: dict | None = field(default_factory=lambda: {"max_steps": 2, "learning_rate": 2e-4})
    full_sft: dict | None = None  # trl.SFTConfig fields for full fine-tuning; None skips it
    lora: dict = field(default_factory=dict)  # peft.LoraConfig fields over loading.LORA_DEFAULTS
    train_rows: int | None = 8  # seeded sample of stage-02 train rows; None = all of them
    evaluate_categories: list[str] | None = field(default_factory=lambda: list(SMOKE_EVAL))
    seed: int = 0




def run_sft_stage(config: SFTStageConfig, stage_dir: str | Path) -> dict[str, dict]:
    from tinyllm_utils.train import formats, loading, trainers
    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    data = load_stage02(stage_dir)
    train = sample_rows(data["train"], config.train_rows, config.seed)
    results = {}
    for label, block, lora in (("sft-lora", config.lora_sft, True), ("sft-full", config.full_sft, False)):
        if block is None:
            continue
        method_dir = stage_dir / label
        model, tokenizer = loading.load_for_training(config.model)
        spec = model._tinyllm_spec
        sft = trainers.sft_config_from_dict(tokens_seen(dict(block, seed=config.seed)))
        result = trainers.train_sft(model, tokenizer, formats.sft_dataset(train, spec, tokenizer),
                                    None, sft, lora_for(config, lora), method_dir, spec=spec,
                                    name=f"{spec.name}-{label}")
        results[label] = finish_model(result, method_dir, label, spec.name, protocol)
    return results
