"""Stage 01: the baseline evaluation. Its protocol (categories, seeded sample, decoding, backend) is recorded
in each model's run.json and is what every later stage evaluates its checkpoints with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinyllm_utils.core.results import model_folder_name
from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate
from tinyllm_utils.models.registry import resolve_model


@dataclass
class BaselineConfig(EvalConfig):
    """Stage 01: the protocol above, applied to each of `models` (its single `model` field is not a parameter)."""

    NOT_STAGE_PARAMETERS = ("model",)
    models: list[str] = field(default_factory=lambda: ["gemma-3-270m"])
    require_revision: bool = False  # the paper profile: hub models only at a pinned commit (registry `revision`)

    def for_model(self, model: str) -> EvalConfig:
        fields = {k: v for k, v in asdict(self).items() if k not in ("models", "require_revision")}
        return EvalConfig(**dict(fields, model=model))


def run_baseline(config: BaselineConfig, stage_dir: str | Path, progress: bool = True) -> dict[str, dict]:
    """Stage 01: every model of `config.models`, one folder each (`results.model_folder_name`); unpinned hub
    models are refused up front when `require_revision`, before any time is spent on the others."""
    for model in config.models:
        resolve_model(model, require_revision=config.require_revision)
    return {model: evaluate(config.for_model(model), Path(stage_dir) / model_folder_name(model), progress)
            for model in config.models}
