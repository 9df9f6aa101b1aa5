"""Run the study's numbered notebooks in order with papermill, into `outputs/<run_id>/<stage>/`.

    python -m tinyllm_utils.pipeline --profile quick            # the README's main job
    python -m tinyllm_utils.pipeline --profile smoke --run-id ci

Parameters come from `configs/profiles.yaml`. Each stage writes its executed notebook beside its results and,
last, a `DONE.json` marker (atomic rename); a rerun skips stages whose marker matches the parameters, and a
stage interrupted half-way resumes its evaluation from the predictions already on disk.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.resources import files
from pathlib import Path

import yaml

from tinyllm_utils.results import manifest, write_json_atomic

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
OUTPUT_ROOT = PROJECT_ROOT / "outputs"


def load_profiles() -> dict:
    return yaml.safe_load(files("tinyllm_utils").joinpath("configs/profiles.yaml").read_text())


def stage_dir(run_id: str, stage: str, output_root: Path = OUTPUT_ROOT) -> Path:
    return Path(output_root) / run_id / stage


def run_pipeline(profile: str, run_id: str | None = None, stages: list[str] | None = None,
                 output_root: Path = OUTPUT_ROOT, progress: bool = True) -> Path:
    import papermill

    profiles = load_profiles()
    if profile not in profiles:
        raise SystemExit(f"unknown profile {profile!r}; choose one of {', '.join(profiles)}")
    plan = profiles[profile]["stages"]
    unknown = set(stages or []) - set(plan)
    if unknown:
        raise SystemExit(f"profile {profile!r} has no stage {sorted(unknown)}; it has {list(plan)}")
    run_id = run_id or profile
    run_root = Path(output_root) / run_id
    write_json_atomic(run_root / "pipeline.json", manifest({"profile": profile, "stages": plan}, run_id=run_id))

    for index, (stage, parameters) in enumerate(plan.items(), 1):
        if stages and stage not in stages:
            continue
        out = stage_dir(run_id, stage, output_root)
        marker = out / "DONE.json"
        parameters = dict(parameters, stage_dir=str(out))
        if marker.exists() and json.loads(marker.read_text()).get("parameters") == parameters:
            print(f"[{index}/{len(plan)}] {stage}: already done, skipped ({marker})")
            continue
        print(f"[{index}/{len(plan)}] {stage}: running -> {out}")
        out.mkdir(parents=True, exist_ok=True)
        start = time.time()
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / f"{stage}.ipynb"), str(out / f"{stage}.ipynb"), parameters=parameters,
            cwd=str(PROJECT_ROOT), progress_bar=progress, kernel_name="python3",
            # forward the notebook's own output (per-entry progress bars) to this terminal
            stdout_file=sys.stdout if progress else None, stderr_file=sys.stderr if progress else None,
        )
        write_json_atomic(marker, {"parameters": parameters, "seconds": round(time.time() - start, 1)})
        print(f"[{index}/{len(plan)}] {stage}: done in {time.time() - start:.0f} s")
    return run_root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | full | paper (configs/profiles.yaml)")
    parser.add_argument("--run-id", default=None, help="output folder under outputs/ (default: the profile name)")
    parser.add_argument("--stages", nargs="*", default=None, help="only these stages, e.g. 01_baseline_evaluation")
    args = parser.parse_args(argv)
    run_root = run_pipeline(args.profile, args.run_id, args.stages)
    print(f"results in {run_root}")


if __name__ == "__main__":
    main()
