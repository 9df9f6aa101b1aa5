"""Run the study's numbered notebooks as a DAG with papermill, into `outputs/<run_id>/<stage>/`.

    python -m tinyllm_utils.pipeline --profile quick                       # the README's main job
    python -m tinyllm_utils.pipeline --profile smoke --run-id ci
    python -m tinyllm_utils.pipeline --profile quick --set 02_data_filtering.max_distractors=2
    python -m tinyllm_utils.pipeline --profile quick --force 03_pair_construction
    python -m tinyllm_utils.pipeline --profile quick --plan                # what would run, and why; runs nothing

Parameters have one home each: the stage's config dataclass holds the defaults (the cheapest, `smoke`,
workload), and `configs/profiles.yaml` holds only what a profile changes (`quick` inherits `smoke`, `full`
inherits `quick`, ...). Each stage declares the stages it reads (`STAGES`); its completion key covers its own
parameters, the keys of those inputs and the code it runs (its notebook and the package modules that imports:
tinyllm_utils.core.code_version). So a stage is skipped only when nothing it depends on changed, and changing a
parameter upstream reruns exactly the stages downstream of it.
Every stage prints "skipped (done)", "rerun (what changed)", "resumed" or "run".
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import yaml

from tinyllm_utils.core import work as stage_lib
from tinyllm_utils.core.params import OUTPUT_ROOT, PROJECT_ROOT
from tinyllm_utils.core.profiles import (
    notebook_path,
    parse_overrides,
    resolve_profile,
    set_aside_downstream,
    stage_inputs,
    stage_material,
)
from tinyllm_utils.core.results import git_state, manifest, write_json_atomic


def _check_pairing(stage: str) -> None:
    """The .ipynb papermill runs must say what its jupytext .py twin says (readers edit either)."""
    from tinyllm_utils.core.notebooks import unsynced_cells

    problems = unsynced_cells(notebook_path(stage))
    if problems:
        raise SystemExit(f"{notebook_path(stage).name} and its .py differ ({problems[0]}); run "
                         f"`jupytext --sync notebooks/{stage}.py` first")


# glibc settings for each stage's kernel: keep freed memory and reuse it rather than unmap large blocks after each
# use. By default glibc maps and unmaps the large tensors of every training step (the 262 k-row embedding peft
# rebuilds with the trained end-of-turn row among them) and faults their pages in again, which makes training
# markedly slower on a CPU. glibc reads them when a process starts, so they go into the kernel's environment;
# a value already in the environment wins. Other C libraries ignore them.
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


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS")


def cpu_description() -> dict:
    """What the report card says of the CPU beside `hardware` (core.results): its model name, the cores this
    process may use (a container or taskset can allow fewer than cpu_count) and the thread settings set in the
    environment (unset: each library picks its own)."""
    model = None
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "usable_cores": usable,
            "thread_env": {name: os.environ[name] for name in THREAD_VARIABLES if name in os.environ}}


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration, ValueError):
        return None


def _descendants(pid: int) -> list[int]:
    """The processes started by `pid`, at any depth (Linux /proc; [] elsewhere)."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


class KernelMemory:
    """The peak resident memory (VmHWM, MB) of the largest process a stage runs: its notebook kernel, or a
    process the kernel starts. A thread reads it every `interval` seconds while the stage runs, so growth in the
    last interval before the kernel exits can be missed. Not getrusage(RUSAGE_CHILDREN): that is one maximum over
    every stage so far, and a kernel started by fork + exec reports this process's size at the fork. None where
    /proc is not there."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak_mb = interval, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _poll(self) -> None:
        for pid in _descendants(os.getpid()):
            mb = _vm_hwm_mb(pid)
            if mb is not None and (self.peak_mb is None or mb > self.peak_mb):
                self.peak_mb = mb

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> "KernelMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


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
                                                           kernel_malloc_env=kernel_malloc, cpu=cpu_description()))

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
        start, git = time.time(), git_state()  # the code the stage runs is the checkout's when it starts
        with KernelMemory() as memory:
            papermill.execute_notebook(
                str(notebook_path(stage)), str(out / f"{stage}.ipynb"),
                parameters=dict(parameters, stage_dir=str(out)), cwd=str(PROJECT_ROOT), progress_bar=False,
                kernel_name="python3", kernel_manager_class=local_kernel_manager(),
                # one stdout and one stderr text per cell, carriage returns applied: a saved text progress bar
                # reads as it ended (100 %), not as every redraw of it
                coalesce_streams=True,
                # forward the notebook's own output (per-entry progress bars) to this terminal
                stdout_file=sys.stdout if progress else None, stderr_file=sys.stderr if progress else None,
            )
        # the report card's per-stage row (analysis.report): this invocation's wall time, peak memory and commit
        stage_lib.finish_work(work, seconds=round(time.time() - start, 1), git=git,
                              peak_rss_mb=memory.peak_mb and round(memory.peak_mb, 1))
        keys[stage] = work.key
        print(f"{prefix}: done in {time.time() - start:.0f} s", flush=True)
    return run_root


def plan_pipeline(profile: str, run_id: str | None = None, stages: list[str] | None = None,
                  output_root: Path | None = None, overrides: dict | None = None,
                  force: list[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """What `run_pipeline` with these arguments would do, stage by stage, without running or moving anything:
    [(stage, "skip" | "resume" | "rerun" | "run" | "not selected" | "blocked", reasons)]. A stage downstream of one
    that will run reruns too (its inputs' keys are not known until they have run)."""
    plan = resolve_profile(profile, overrides, include=stages)["stages"]
    run_root = Path(output_root or OUTPUT_ROOT) / (run_id or profile)
    keys: dict[str, str | None] = {}
    will_run: set[str] = set()
    rows = []
    for stage, parameters in plan.items():
        out = run_root / stage
        reads = stage_inputs(stage, plan)
        if stages is not None and stage not in stages:
            keys[stage] = stage_lib.completed_key(out)
            rows.append((stage, "not selected", ["kept as it is" if keys[stage] else "not run yet"]))
            continue
        upstream = [s for s in reads if s in will_run]
        if upstream:
            will_run.add(stage)
            has_results = out.exists() and any(out.iterdir())
            rows.append((stage, "rerun" if has_results else "run", [f"after {', '.join(upstream)}"]))
            continue
        inputs = {s: keys.get(s) or stage_lib.completed_key(run_root / s) for s in reads}
        not_ready = [s for s, key in inputs.items() if key is None]
        if not_ready:
            rows.append((stage, "blocked", [f"its input stages {not_ready} have not finished"]))
            will_run.add(stage)
            continue
        work = stage_lib.inspect_work(out, stage_material(stage, parameters, inputs), force=stage in (force or []))
        if work.status == "done":
            keys[stage] = work.key
            rows.append((stage, "skip", ["done"]))
        else:
            will_run.add(stage)
            rows.append((stage, work.status, work.changes or (["interrupted run, same key"]
                                                              if work.status == "resume" else ["nothing there yet"])))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | full | paper (configs/profiles.yaml)")
    parser.add_argument("--run-id", default=None, help="output folder under outputs/ (default: the profile name)")
    parser.add_argument("--stages", nargs="*", default=None, help="only these stages, e.g. 01_baseline_evaluation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.NAME=VALUE",
                        help="override one parameter (YAML value), e.g. 03_pair_construction.limit=10")
    parser.add_argument("--force", nargs="*", default=[], metavar="STAGE", help="rerun these stages even if done")
    parser.add_argument("--show", action="store_true", help="print the resolved parameters of each stage and stop")
    parser.add_argument("--plan", action="store_true",
                        help="print which stages would be skipped, resumed, rerun or run, and why; run nothing")
    args = parser.parse_args(argv)
    if args.plan:
        for stage, status, reasons in plan_pipeline(args.profile, args.run_id, args.stages,
                                                    overrides=parse_overrides(args.overrides), force=args.force):
            print(f"{stage:24} {status:12} {'; '.join(reasons)}")
    if args.plan or args.show:
        from tinyllm_utils.models.dry_run import profile_paths  # each model's evaluation and training path

        resolved = resolve_profile(args.profile, parse_overrides(args.overrides))
        if args.show:
            print(yaml.safe_dump(resolved, sort_keys=False))
        print(profile_paths(resolved["stages"]))
        return
    run_root = run_pipeline(args.profile, args.run_id, args.stages, overrides=parse_overrides(args.overrides),
                            force=args.force)
    print(f"results in {run_root}")


if __name__ == "__main__":
    main()
