"""Stage bookkeeping: one completion key, one marker and one resume rule for every folder of work.

A *work folder* (a pipeline stage's `outputs/<run_id>/<NN_stage>/`, or one model's evaluation folder) is keyed
by everything its results depend on. For a pipeline stage that is

    key = sha256(own parameters + the keys of the stages it reads + the code version)

where the code version covers the stage's notebook and the package modules it imports (core.code_version).
`open_work` compares the key with what the folder holds:

* `done`   - `stage.json` (written last, by atomic rename) holds this key: nothing to do;
* `resume` - an interrupted run with this key left `stage.running.json`: keep its files (predictions are
             appended entry by entry, generation caches too) and carry on;
* `rerun`  - the folder holds work made under another key: it is moved aside to `<parent>/.stale/` (never
             deleted, never mixed with new results) and the folder starts empty; `changes` names what differs;
* `run`    - nothing there yet.

`finish_work` writes the marker last, so a killed run never looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tinyllm_utils.core.params import PROJECT_ROOT
from tinyllm_utils.core.results import write_json_atomic

DONE = "stage.json"
RUNNING = "stage.running.json"


def digest(material) -> str:
    """A stable sha256 of JSON-able material (key order does not matter)."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def content_digest(root: Path, files) -> str:
    """sha256 over `files` under `root` in the order given, each named by its path relative to `root` (a file
    that is `root` itself by its content alone): a folder's key (a `save_to_disk` dataset, a checkpoint)."""
    sha = hashlib.sha256()
    for file in files:
        sha.update(file.relative_to(root).as_posix().encode() if file != root else b"")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                sha.update(chunk)
    return sha.hexdigest()


def file_digests(parameters, resolve=Path) -> dict[str, str]:
    """sha256 of every existing file or folder a parameter value names (a review CSV, a local user dataset saved
    with `save_to_disk`, a checkpoint folder), so that editing one in place changes the key just as changing the
    parameter would. A folder holding the project (".") is not one a parameter means."""
    found: dict[str, str] = {}
    project = PROJECT_ROOT

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, str) and 0 < len(value) < 4096:
            path = resolve(value)
            if path.is_file():
                found[value] = content_digest(path, [path])
            elif path.is_dir() and not project.is_relative_to(path.resolve()):
                found[value] = content_digest(path, sorted(f for f in path.rglob("*") if f.is_file()))

    walk(parameters)
    return found


@dataclass
class Work:
    """What `open_work` found: the status, the key, and (for a rerun) what changed since the folder's run."""

    folder: Path
    status: str  # done | resume | rerun | run
    key: str
    record: dict
    changes: list[str] = field(default_factory=list)
    moved_to: Path | None = None

    def describe(self) -> str:
        if self.status == "done":
            return "skipped (done)"
        if self.status == "rerun":
            return f"rerun ({'; '.join(self.changes)})"
        return "resumed (interrupted run, same key)" if self.status == "resume" else "run"


def _what_changed(old: dict, new: dict) -> list[str]:
    changes = []
    old_parameters, new_parameters = old.get("parameters", {}), new.get("parameters", {})
    for name in sorted(set(old_parameters) | set(new_parameters)):
        if old_parameters.get(name) != new_parameters.get(name):
            changes.append(f"{name}: {old_parameters.get(name)!r} -> {new_parameters.get(name)!r}")
    old_inputs, new_inputs = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(name) != new_inputs.get(name):
            changes.append(f"input {name} changed")
    for name in sorted(set(old.get("files", {})) | set(new.get("files", {}))):
        if old.get("files", {}).get(name) != new.get("files", {}).get(name):
            changes.append(f"file {name} changed")
    old_code, new_code = old.get("code", {}), new.get("code", {})
    for name in sorted(set(old_code) | set(new_code)):
        if name == "libraries":
            old_libraries, new_libraries = old_code.get(name) or {}, new_code.get(name) or {}
            changes += [f"{library} {old_libraries.get(library)} -> {new_libraries.get(library)}"
                        for library in sorted(set(old_libraries) | set(new_libraries))
                        if old_libraries.get(library) != new_libraries.get(library)]
        elif name not in new_code:
            changes.append(f"{name} no longer imported")
        elif name not in old_code:
            changes.append(f"{name} newly imported")
        elif old_code[name] != new_code[name]:
            changes.append(f"{name} code changed")
    return changes or ["key changed"]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # a marker is written atomically; unreadable means absent


def inspect_work(folder: str | Path, material: dict, force: bool = False) -> Work:
    """What `open_work` would do with a folder, without touching it: status `done`, `resume`, `rerun` (with what
    changed) or `run`. `--plan` prints this."""
    folder = Path(folder)
    key = digest(material)
    record = dict(material, key=key)
    done, running = _read(folder / DONE), _read(folder / RUNNING)
    if done and done.get("key") == key and not force:
        return Work(folder, "done", key, done)
    if running and running.get("key") == key and not done and not force:
        return Work(folder, "resume", key, record)
    previous = done or running
    has_files = folder.exists() and any(p.name not in (DONE, RUNNING) for p in folder.iterdir())
    if previous is None and not has_files:
        return Work(folder, "run", key, record)
    if force:
        changes = ["--force"]
    else:
        changes = _what_changed(previous, material) if previous else ["folder holds files from an unkeyed run"]
    return Work(folder, "rerun", key, record, changes)


def open_work(folder: str | Path, material: dict, on_mismatch: str = "move", force: bool = False) -> Work:
    """Open a work folder for `material` ({"parameters": ..., "inputs": ..., "code": ...}).

    `on_mismatch="move"` moves work made under another key aside (pipeline stages); `"refuse"` raises a
    ValueError naming the differences instead (a user's hand-picked output folder). `force` treats finished
    or interrupted work with the same key as stale too (`--force STAGE`).
    """
    work = inspect_work(folder, material, force)
    if work.status in ("done", "resume"):
        return work
    if work.status == "run":
        work.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work.folder / RUNNING, work.record)
        return work
    if on_mismatch == "refuse":
        raise ValueError(f"{work.folder} holds results made with other settings ({'; '.join(work.changes)}); "
                         "use another output folder or delete it")
    work.moved_to = set_aside(work.folder)
    work.folder.mkdir(parents=True)
    write_json_atomic(work.folder / RUNNING, work.record)
    return work


def set_aside(folder: str | Path) -> Path | None:
    """Move a folder of results that no longer hold to `.stale/<name>-<time>` beside it (nothing is deleted:
    readers such as the analysis skip hidden folders). Returns where it went, or None when there was none."""
    folder = Path(folder)
    if not folder.exists():
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    moved_to = folder.parent / ".stale" / f"{folder.name}-{stamp}"
    moved_to.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(moved_to))
    return moved_to


def finish_work(work: Work, **extra) -> dict:
    """Write the completion marker last (atomic rename); the running marker goes after it."""
    record = dict(work.record, **extra,
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json_atomic(work.folder / DONE, record)
    (work.folder / RUNNING).unlink(missing_ok=True)
    return record


def completed_key(folder: str | Path) -> str | None:
    """The key of a finished stage, or None when it has not finished."""
    done = _read(Path(folder) / DONE)
    return done.get("key") if done else None


def replace_dir_atomic(build, target: str | Path) -> Path:
    """Build a folder under a temporary name with `build(path)`, then rename it into place: a reader sees the
    old folder or the whole new one, never a half-written one (datasets' save_to_disk writes many files)."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
