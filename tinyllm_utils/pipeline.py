"""Run the study's numbered notebooks as a DAG with papermill, into `outputs/<run_id>/<stage>/`.

    python -m tinyllm_utils.pipeline --profile quick                       # the README's main job
    python -m tinyllm_utils.pipeline --profile smoke --run-id ci
    python -m tinyllm_utils.pipeline --profile quick --set 02_data_filtering.max_distractors=2
    python -m tinyllm_utils.pipeline --profile quick --force 03_pair_construction

Parameters have one home each: the stage's config dataclass holds the defaults (the cheapest, `smoke`,
workload), and `configs/profiles.yaml` holds only what a profile changes (`quick` inherits `smoke`, `full`
inherits `quick`, ...). Each stage declares the stages it reads (`STAGES`); its completion key covers its own
parameters, the keys of those inputs and the code version (tinyllm_utils.stage). So a stage is skipped only when
nothing it depends on changed, and changing a parameter upstream reruns exactly the stages downstream of it.
Every stage prints "skipped (done)", "rerun (what changed)", "resumed" or "run".
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from tinyllm_utils import stage as stage_lib
from tinyllm_utils.results import manifest, package_versions, write_json_atomic

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
# Tests point this at a temporary folder (conftest.py), so nothing they run writes into the repository.
OUTPUT_ROOT = Path(os.environ.get("TINYLLM_OUTPUTS", PROJECT_ROOT / "outputs"))


@dataclass(frozen=True)
class StageSpec:
    config: str  # "module:Class", the dataclass whose fields are the stage's parameters and defaults
    inputs: tuple[str, ...] = ()  # stages whose results this one reads; ("*",) = every earlier stage of the run


STAGES: dict[str, StageSpec] = {
    "01_baseline_evaluation": StageSpec("tinyllm_utils.evaluate:BaselineConfig"),
    "02_data_filtering": StageSpec("tinyllm_utils.training_data:DataConfig"),
    "03_pair_construction": StageSpec("tinyllm_utils.pairs:PairConfig", ("02_data_filtering",)),
    # Training stages read stage 01 too: its protocol (entries, decoding, backend) evaluates every checkpoint.
    "04_sft": StageSpec("tinyllm_utils.training_stages:SFTStageConfig", ("01_baseline_evaluation", "02_data_filtering")),
    "05_dpo": StageSpec("tinyllm_utils.training_stages:DPOStageConfig",
                        ("01_baseline_evaluation", "03_pair_construction")),
    "06_hybrid": StageSpec("tinyllm_utils.training_stages:HybridStageConfig",
                           ("01_baseline_evaluation", "02_data_filtering", "03_pair_construction", "04_sft")),
    "08_edge_profile": StageSpec("tinyllm_utils.training_stages:EdgeStageConfig",
                                 ("01_baseline_evaluation", "04_sft", "05_dpo", "06_hybrid")),
    # The analysis runs last, after the edge profile where a profile has one, so its tables and figures (and
    # its key) cover every evaluation of the run.
    "07_analysis": StageSpec("tinyllm_utils.analysis:AnalysisConfig", ("*",)),
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


def _check_pairing(stage: str) -> None:
    """The .ipynb papermill runs must say what its jupytext .py twin says (readers edit either)."""
    from tinyllm_utils.notebooks import unsynced_cells

    problems = unsynced_cells(notebook_path(stage))
    if problems:
        raise SystemExit(f"{notebook_path(stage).name} and its .py differ ({problems[0]}); run "
                         f"`jupytext --sync notebooks/{stage}.py` first")


def stage_material(stage: str, parameters: dict, inputs: dict[str, str | None]) -> dict:
    """What a stage's key covers: its parameters, its inputs' keys, the files its parameters name, the code (the
    package, the notebook, and the versions of the libraries it runs on: bfcl's checkers, llama.cpp, torch...)."""
    return {"parameters": parameters, "inputs": inputs,
            "files": stage_lib.file_digests(parameters, resolve=lambda v: PROJECT_ROOT / v),
            "code": {"package": stage_lib.package_code_version(),
                     "notebook": stage_lib.notebook_code_version(notebook_path(stage)),
                     "libraries": {name: v for name, v in package_versions().items() if name != "tinyllm-utils"}}}


def set_aside_downstream(run_root: Path, stage: str, plan, prefix: str = "") -> None:
    """Results computed from this stage's old ones no longer hold, even where this call does not rerun them: set
    them aside now, so that no reader (the analysis, `make figures`) mixes them with the new ones."""
    for later in downstream(stage, plan):
        moved = stage_lib.set_aside(run_root / later)
        if moved:
            print(f"{prefix or stage}: {later} was computed from its previous results: set aside in {moved}",
                  flush=True)


def open_stage(run_root: Path, stage: str, parameters: dict, plan) -> "stage_lib.Work":
    """Open a stage's folder under the key the pipeline gives it (for runs outside the pipeline, e.g. a stage
    under `accelerate launch`): the pipeline later finds the same key and resumes instead of starting over.
    Like the pipeline, it sets aside the later stages' results unless the stage is done."""
    inputs = {s: stage_lib.completed_key(run_root / s) for s in stage_inputs(stage, plan)}
    work = stage_lib.open_work(run_root / stage, stage_material(stage, parameters, inputs))
    if work.status != "done":
        set_aside_downstream(run_root, stage, plan)
    return work


# glibc settings for each stage's kernel: keep freed memory and reuse it rather than unmap large blocks after each
# use. By default glibc maps and unmaps the large tensors of every training step (the 262 k-row embedding peft
# rebuilds with the trained end-of-turn row among them) and faults their pages in again: without that quick's 04
# ran 1.33x faster here, the smoke run 1.25x (README "Training"). glibc reads them when a process starts,
# so they go into the kernel's environment; a value already in the environment wins. Other C libraries ignore them.
KERNEL_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30), "MALLOC_TOP_PAD_": str(1 << 30)}


def kernel_env(env: dict | None = None) -> dict:
    """A stage kernel's environment: `env` (default: this process's) over KERNEL_MALLOC_ENV, so its own values win."""
    return {**KERNEL_MALLOC_ENV, **(os.environ if env is None else env)}


def local_kernel_manager():
    """A Jupyter kernel manager whose sockets are local files (IPC), not TCP ports (nothing of the notebook's
    kernel listens on the network, and ipykernel has no "running over TCP without encryption" to warn about), and
    whose kernels start with KERNEL_MALLOC_ENV."""
    import tempfile
    import uuid

    import zmq
    from jupyter_client.manager import KernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import CaselessStrEnum

    class LocalKernelManager(KernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        def _ip_default(self) -> str:
            # jupyter_client's default, "kernel-ipc", is relative to the kernel's cwd (the project root), so a
            # killed run left its sockets in the checkout; Jupyter's runtime folder is where its connection
            # files already go (and where a killed kernel's leftovers belong). A Unix socket's path holds at
            # most 107 bytes (sockaddr_un), so a deeper runtime folder gives way to the temp folder.
            name = f"tinyllm-{uuid.uuid4().hex[:12]}-ipc"
            folder = Path(jupyter_runtime_dir())
            if len(os.fsencode(folder / f"{name}-99")) > getattr(zmq, "IPC_PATH_MAX_LEN", 107):
                folder = Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / name)

        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = kernel_env(kw.get("env"))
            return await super()._async_pre_start_kernel(**kw)

    return LocalKernelManager


def run_pipeline(profile: str, run_id: str | None = None, stages: list[str] | None = None,
                 output_root: Path | None = None, progress: bool = True, overrides: dict | None = None,
                 force: list[str] | None = None) -> Path:
    import papermill

    plan = resolve_profile(profile, overrides, include=stages)["stages"]  # refuses a stage the pipeline lacks
    unknown = set(force or []) - set(plan)
    if unknown:
        raise SystemExit(f"profile {profile!r} has no stage {sorted(unknown)}; it has {list(plan)}")
    run_id = run_id or profile
    run_root = Path(output_root or OUTPUT_ROOT) / run_id
    env = kernel_env()
    kernel_malloc = {name: env[name] for name in KERNEL_MALLOC_ENV}
    write_json_atomic(run_root / "pipeline.json", manifest({"profile": profile, "stages": plan}, run_id=run_id,
                                                           kernel_malloc_env=kernel_malloc))

    keys: dict[str, str | None] = {}
    for index, (stage, parameters) in enumerate(plan.items(), 1):
        out = run_root / stage
        prefix = f"[{index}/{len(plan)}] {stage}"
        missing = [s for s in stage_inputs(stage, plan) if s not in plan]
        if missing:
            raise SystemExit(f"{prefix}: reads {missing}, which profile {profile!r} does not run")
        inputs = {s: keys.get(s) or stage_lib.completed_key(run_root / s) for s in stage_inputs(stage, plan)}
        if stages is not None and stage not in stages:
            keys[stage] = stage_lib.completed_key(out)
            continue
        not_ready = [s for s, key in inputs.items() if key is None]
        if not_ready:
            raise SystemExit(f"{prefix}: its input stages {not_ready} have not finished; run them first")
        _check_pairing(stage)
        work = stage_lib.open_work(out, stage_material(stage, parameters, inputs), force=stage in (force or []))
        if work.status == "done":
            print(f"{prefix}: skipped (done)")
            keys[stage] = work.key
            continue
        print(f"{prefix}: {work.describe()} -> {out}" + (f" (previous results in {work.moved_to})"
                                                         if work.moved_to else ""), flush=True)
        set_aside_downstream(run_root, stage, plan, prefix)
        start = time.time()
        papermill.execute_notebook(
            str(notebook_path(stage)), str(out / f"{stage}.ipynb"), parameters=dict(parameters, stage_dir=str(out)),
            cwd=str(PROJECT_ROOT), progress_bar=False, kernel_name="python3",
            kernel_manager_class=local_kernel_manager(),
            # forward the notebook's own output (per-entry progress bars) to this terminal
            stdout_file=sys.stdout if progress else None, stderr_file=sys.stderr if progress else None,
        )
        stage_lib.finish_work(work, seconds=round(time.time() - start, 1))
        keys[stage] = work.key
        print(f"{prefix}: done in {time.time() - start:.0f} s", flush=True)
    return run_root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | full | paper (configs/profiles.yaml)")
    parser.add_argument("--run-id", default=None, help="output folder under outputs/ (default: the profile name)")
    parser.add_argument("--stages", nargs="*", default=None, help="only these stages, e.g. 01_baseline_evaluation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.NAME=VALUE",
                        help="override one parameter (YAML value), e.g. 03_pair_construction.limit=10")
    parser.add_argument("--force", nargs="*", default=[], metavar="STAGE", help="rerun these stages even if done")
    parser.add_argument("--show", action="store_true", help="print the resolved parameters of each stage and stop")
    args = parser.parse_args(argv)
    if args.show:
        print(yaml.safe_dump(resolve_profile(args.profile, parse_overrides(args.overrides)), sort_keys=False))
        return
    run_root = run_pipeline(args.profile, args.run_id, args.stages, overrides=parse_overrides(args.overrides),
                            force=args.force)
    print(f"results in {run_root}")


if __name__ == "__main__":
    main()
