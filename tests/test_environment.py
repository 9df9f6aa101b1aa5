"""environment.yml (conda users) and pyproject.toml (pip) must list the same dependencies."""

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_environment_yml_matches_pyproject():
    declared = _pyproject()["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip_section if not p.startswith("-e .")) == sorted(declared)
    assert "-e .[test]" in pip_section  # the package itself, with its test tools


def test_bfcl_eval_is_pinned():
    assert "bfcl-eval==2026.3.23" in _pyproject()["dependencies"]


def test_test_tools_are_an_extra_not_runtime_dependencies():
    project = _pyproject()
    runtime = " ".join(project["dependencies"])
    for tool in ("pytest", "nbval", "hypothesis"):
        assert tool not in runtime
        assert any(spec.startswith(tool) for spec in project["optional-dependencies"]["test"])


def test_torch_is_a_range_in_metadata_and_pinned_to_the_cpu_build_in_the_makefile():
    assert not any(spec.startswith("torch==") for spec in _pyproject()["dependencies"])
    assert "torch==2.13.0" in (ROOT / "Makefile").read_text()
