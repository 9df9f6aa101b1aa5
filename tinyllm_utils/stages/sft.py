"""Stage 04: supervised fine-tuning (LoRA and/or full) of the base on stage 02's rows; each trained model is
exported and evaluated like the baseline (stages.common).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tinyllm_utils.stages.common import (
    SMOKE_EVAL,
    eval_protocol,
    evaluate_decoding,
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
    # A learning curve: the LoRA run's intermediate checkpoints (this many, evenly spaced, plus the final model)
    # evaluated on stage 01's entries of `curve_categories` (needs as many kept checkpoints: save_total_limit)
    curve_points: int = 0
    curve_categories: list[str] | None = None  # None = evaluate_categories
    # the LoRA model again under other decoding options, each its own row: "decline" (a call/no-call decision
    # calibrated on stage 02's validation rows), "grammar", "grammar+decline" (stages.common.evaluate_decoding)
    decoding_rows: list[str] = field(default_factory=list)
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
        for option in config.decoding_rows if lora else []:
            results[f"{label} ({option})"] = evaluate_decoding(results[label], method_dir, stage_dir, protocol, option)
        if lora and config.curve_points:
            results[label]["curve"] = learning_curve(config, method_dir, results[label], stage_dir)
    return results


def learning_curve(config: SFTStageConfig, method_dir: Path, final: dict, stage_dir: Path) -> list[dict]:
    """Accuracy against training seconds: `curve_points` intermediate LoRA checkpoints, each merged, exported and
    evaluated like the final model (same entries, decoding, backend), then the final model; written to
    `<method>/learning_curve.csv`, one row per point and category."""
    import json

    import pandas as pd
    from peft import PeftModel

    from tinyllm_utils.train import loading
    from tinyllm_utils.train.trainers import CLOCK_FILE, save_final

    protocol = eval_protocol(stage_dir, config.curve_categories or config.evaluate_categories)
    checkpoints = sorted((method_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    final_step = final["training"]["steps"]
    checkpoints = [c for c in checkpoints if int(c.name.split("-")[1]) < final_step]
    if len(checkpoints) > config.curve_points:  # evenly spaced, the latest one included
        stride = len(checkpoints) / config.curve_points
        checkpoints = [checkpoints[round(len(checkpoints) - 1 - i * stride)] for i in range(config.curve_points)][::-1]
    points = []
    for checkpoint in checkpoints:
        step = int(checkpoint.name.split("-")[1])
        point_dir = method_dir / "curve" / f"step-{step}"
        model, tokenizer = loading.load_for_training(config.model)
        spec = model._tinyllm_spec
        name = f"{spec.name}-sft-lora-step{step}"
        folder = save_final(PeftModel.from_pretrained(model, str(checkpoint)), tokenizer, point_dir / "final", spec,
                            "sft-lora", name=name)
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        clock = checkpoint / CLOCK_FILE
        result = {"path": str(folder), "seconds": json.loads(clock.read_text())["seconds"] if clock.exists() else None,
                  "global_step": step, "epoch": state.get("epoch"),
                  "tokens_seen": state.get("num_input_tokens_seen")}
        finished = finish_model(result, point_dir, f"sft-lora step {step}", spec.name, protocol)
        points.append((step, finished))
    points.append((final_step, final))
    rows = [{"step": step, "seconds": f["training"]["seconds"], "tokens_seen": f["training"]["tokens_seen"],
             "category": category, "accuracy": m["accuracy"], "n": m["n"]}
            for step, f in points for category, m in f["metrics"]["categories"].items()
            if category in protocol.categories]
    pd.DataFrame(rows).to_csv(method_dir / "learning_curve.csv", index=False)
    return rows
