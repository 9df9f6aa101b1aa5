"""The pipeline's stages (their config classes and the stages each reads), the run profiles
(`configs/profiles.yaml`) resolved over each stage's defaults, and the key material of a stage.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from tinyllm_utils.core.code_version import code_versions
from tinyllm_utils.core.params import PROJECT_ROOT
from tinyllm_utils.core.results import package_versions
from tinyllm_utils.core.work import Work, completed_key, file_digests, open_work, set_aside

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


@dataclass(frozen=True)
class StageSpec:
    config: str  # "module:Class", the dataclass whose fields are the stage's parameters and defaults
    inputs: tuple[str, ...] = ()  # stages whose results this one reads; ("*",) = every earlier stage of the run


STAGES: dict[str, StageSpec] = {
    "01_baseline_evaluation": StageSpec("tinyllm_utils.stages.baseline:BaselineConfig"),
    "02_data_filtering": StageSpec("tinyllm_utils.stages.data_filtering:DataConfig"),
    "03_pair_construction": StageSpec("tinyllm_utils.stages.pair_construction:PairConfig", ("02_data_filtering",)),
    # Training stages read stage 01 too: its protocol (entries, decoding, backend) evaluates every checkpoint.
    "04_sft": StageSpec("tinyllm_utils.stages.sft:SFTStageConfig", ("01_baseline_evaluation", "02_data_filtering")),
    "05_dpo": StageSpec("tinyllm_utils.stages.dpo:DPOStageConfig",
                        ("01_baseline_evaluation", "03_pair_construction")),
    "06_hybrid": StageSpec("tinyllm_utils.stages.hybrid:HybridStageConfig",
                           ("01_baseline_evaluation", "02_data_filtering", "03_pair_construction", "04_sft")),
    "07_edge_profile": StageSpec("tinyllm_utils.stages.edge_profile:EdgeStageConfig",
                                 ("01_baseline_evaluation", "04_sft", "05_dpo", "06_hybrid")),
    # The analysis runs last, after the edge profile where a profile has one, so its tables and figures (and
    # its key) cover every evaluation of the run.
    "08_analysis": StageSpec("tinyllm_utils.stages.analysis:AnalysisConfig", ("*",)),
}


def stage_inputs(stage: str, plan) -> list[str]:
    declared = STAGES[stage].inputs
    if declared == ("*",):  # e.g. the analysis: whatever ran before it in this profile
        return [s for s in plan if s in STAGES and list(STAGES).index(s) < list(STAGES).index(stage)]
    return list(declared)


def downstream(stage: str, plan) -> list[str]:
    """The stages computed from `stage`'s results, directly or through others, in pipeline order."""
    found = {stage}
    for other in STAGES:  # STAGES lists every stage after the stages it reads
        if other != stage and found & set(stage_inputs(other, plan)):
            found.add(other)
    return [s for s in STAGES if s in found and s != stage]


def config_class(stage: str):
    module, name = STAGES[stage].config.split(":")
    return getattr(importlib.import_module(module), name)


def stage_parameters(config) -> dict:
    """A config dataclass as the notebook's parameters (fields a stage does not take are left out)."""
    skip = getattr(config, "NOT_STAGE_PARAMETERS", ())
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in skip}


def default_parameters(stage: str) -> dict:
    return stage_parameters(config_class(stage)())


def build_config(stage: str, parameters: dict):
    """Validate parameters through the stage's dataclass (HfArgumentParser: unknown names are refused)."""
    from transformers import HfArgumentParser

    try:
        (config,) = HfArgumentParser(config_class(stage)).parse_dict(parameters)
    except ValueError as exc:
        raise SystemExit(f"stage {stage}: {exc}") from None
    return config


def load_profiles() -> dict:
    return yaml.safe_load(files("tinyllm_utils").joinpath("configs/profiles.yaml").read_text())


def resolve_profile(name: str, overrides: dict | None = None, include: list[str] | None = None) -> dict:
    """{"stages": {stage: parameters}, "description": ...}: defaults <- each inherited profile <- overrides.

    `include` adds stages the profile does not run by default (e.g. 08 on a smoke run), in pipeline order."""
    profiles = load_profiles()
    chain, current = [], name
    while current is not None:
        if current not in profiles:
            raise SystemExit(f"unknown profile {current!r}; choose one of {', '.join(profiles)}")
        chain.append(profiles[current])
        current = profiles[current].get("inherits")
    stages = next(p["stages"] for p in chain if "stages" in p)
    for stage in [*stages, *(include or [])]:
        if stage not in STAGES:
            raise SystemExit(f"no stage {stage!r} in the pipeline (profile {name!r}); it has {list(STAGES)}")
    stages = [s for s in STAGES if s in set(stages) | set(include or [])]
    resolved = {}
    for stage in stages:
        parameters = default_parameters(stage)
        for profile in reversed(chain):
            parameters.update((profile.get("parameters") or {}).get(stage) or {})
        parameters.update((overrides or {}).get(stage, {}))
        resolved[stage] = stage_parameters(build_config(stage, parameters))
    return {"description": chain[0].get("description", ""), "stages": resolved}


def parse_overrides(assignments: list[str]) -> dict:
    """`stage.name=value` (value in YAML) -> {stage: {name: value}}."""
    overrides: dict[str, dict] = {}
    for assignment in assignments or []:
        target, sep, value = assignment.partition("=")
        stage, dot, name = target.partition(".")
        if not (sep and dot and stage in STAGES):
            raise SystemExit(f"--set {assignment!r}: expected STAGE.NAME=VALUE with STAGE one of {list(STAGES)}")
        overrides.setdefault(stage, {})[name] = yaml.safe_load(value)
    return overrides


def notebook_path(stage: str) -> Path:
    return NOTEBOOK_DIR / f"{stage}.ipynb"


def stage_material(stage: str, parameters: dict, inputs: dict[str, str | None]) -> dict:
    """What a stage's key covers: its parameters, its inputs' keys, the files its parameters name, and the code it
    runs: its notebook and the package modules it imports (core.code_version), and the versions of the libraries
    it runs on (bfcl's checkers, llama.cpp, torch...)."""
    return {"parameters": parameters, "inputs": inputs,
            "files": file_digests(parameters, resolve=lambda v: PROJECT_ROOT / v),
            "code": {**code_versions(notebook_path(stage)),
                     "libraries": {name: v for name, v in package_versions().items() if name != "tinyllm-utils"}}}


def set_aside_downstream(run_root: Path, stage: str, plan, prefix: str = "") -> None:
    """Results computed from this stage's old ones no longer hold, even where this call does not rerun them: set
    them aside now, so that no reader (the analysis, `make figures`) mixes them with the new ones."""
    for later in downstream(stage, plan):
        moved = set_aside(run_root / later)
        if moved:
            print(f"{prefix or stage}: {later} was computed from its previous results: set aside in {moved}",
                  flush=True)


def open_stage(run_root: Path, stage: str, parameters: dict, plan) -> Work:
    """Open a stage's folder under the key the pipeline gives it (for runs outside the pipeline, e.g. a stage
    under `accelerate launch`): the pipeline later finds the same key and resumes instead of starting over.
    Like the pipeline, it sets aside the later stages' results unless the stage is done."""
    inputs = {s: completed_key(run_root / s) for s in stage_inputs(stage, plan)}
    work = open_work(run_root / stage, stage_material(stage, parameters, inputs))
    if work.status != "done":
        set_aside_downstream(run_root, stage, plan)
    return work
