"""Stage 07: quantized variants of the chosen checkpoints (the base and the best trained model by default),
each evaluated on stage 01's entries and profiled on this machine (edge.sweep).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tinyllm_utils.edge.sweep import profile_checkpoints
from tinyllm_utils.models.registry import resolve_model
from tinyllm_utils.stages.common import (
    SMOKE_EVAL,
    MissingStageError,
    best_model,
    eval_protocol,
    run_root_of,
    trained_models,
)


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
    # the best trained model (F16, as trained) also on these of stage 01's categories or groups (live,
    # multi_turn), so that it is compared with the base beyond the categories it was trained for
    best_also_on: list[str] = field(default_factory=list)
    seed: int = 0


def run_edge_profile_stage(config: EdgeStageConfig, stage_dir: str | Path) -> dict:
    """Stage 07: quantized variants of the chosen checkpoints (`best`: see `best_model`), each evaluated on
    stage 01's entries and profiled on this machine."""

    stage_dir = Path(stage_dir)
    protocol = eval_protocol(stage_dir, config.evaluate_categories)
    if protocol.backend != "llama_cpp":
        raise ValueError("the edge stage measures llama.cpp variants; stage 01 ran on " + protocol.backend)
    trained = trained_models(stage_dir)
    checkpoints, requantize, references = {}, [], {}
    for name in config.checkpoints:
        if name == "base":
            base = resolve_model(json.loads(sorted((run_root_of(stage_dir) / "01_baseline_evaluation").glob(
                "*/run.json"))[0].read_text())["parameters"]["model"])
            checkpoints["base"] = str(base.gguf_path())
            requantize.append("base")  # the offline base exists only as Q4_K_M (see tinyllm_utils.edge.profile)
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
    if config.best_also_on:
        from dataclasses import replace

        from tinyllm_utils.bfcl.data import expand_categories
        from tinyllm_utils.evaluation.evaluate import evaluate

        best = best_model(trained)
        wider = eval_protocol(stage_dir, expand_categories(config.best_also_on))
        name = resolve_model(str(trained[best]["gguf"])).name
        evaluate(replace(wider, model=str(trained[best]["gguf"])), stage_dir / "best-wider" / "eval" / name)
    return profile_checkpoints(checkpoints, protocol, stage_dir, types=list(config.types), threads=list(config.threads),
                               threads_for={k: list(v) for k, v in config.threads_for.items()}, runs=config.runs,
                               decode_tokens=config.decode_tokens, requantize=requantize,
                               transformers_reference=references)
