"""Where a stage's files live and how a notebook's `parameters` cell becomes the stage's config dataclass.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Tests point this at a temporary folder (conftest.py), so nothing they run writes into the repository.
OUTPUT_ROOT = Path(os.environ.get("TINYLLM_OUTPUTS", PROJECT_ROOT / "outputs"))


def config_from_parameters(config_cls, namespace: dict):
    """A notebook's config from its `parameters` cell: `config_from_parameters(DataConfig, globals())`.

    Every field of the dataclass must be set in the namespace (the parameters cell lists them all), so a field
    added to the dataclass but missing from the notebook is an error here rather than a silent default.
    """
    from transformers import HfArgumentParser

    skip = getattr(config_cls, "NOT_STAGE_PARAMETERS", ())
    names = [f.name for f in dataclasses.fields(config_cls) if f.init and f.name not in skip]
    missing = [name for name in names if name not in namespace]
    if missing:
        raise NameError(f"the parameters cell does not set {missing} ({config_cls.__name__} fields)")
    (config,) = HfArgumentParser(config_cls).parse_dict({name: namespace[name] for name in names})
    return config


def resolve_stage_dir(stage_dir: str | Path) -> Path:
    """A notebook's `stage_dir`: absolute as given; `outputs/...` under OUTPUT_ROOT; else from the project root."""
    path = Path(stage_dir)
    if path.is_absolute():
        return path
    if path.parts and path.parts[0] == "outputs":
        return OUTPUT_ROOT.joinpath(*path.parts[1:])
    return PROJECT_ROOT / path
