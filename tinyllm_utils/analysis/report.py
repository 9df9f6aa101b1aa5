"""A run's report card, `REPORT.md`: one generated page that says what ran where and what it found, never edited
by hand (nanochat's report.md is the model). The analysis stage writes it beside its tables and figures, and
`make figures` rebuilds it into `paper_figures/` with the run's executed notebooks in `paper_figures/notebooks/`.

It reads only the run's files: `pipeline.json` (environment, commit), each stage's `stage.json` (wall time, peak
memory, the commit it ran at), stage 02's `data_card.json` and stage 03's `pairs_card.json`, every
`training.json` of stages 04-06, the analysis' tables (`table_iv.md`, `results`, `comparisons`, `findings`) and
the edge stage's `edge_table.csv`; the figures are embedded by their file names.

Its first line is a stamp (`<!-- report-card {...} -->`: run id, commit, each stage's commit) that the copied
notebooks carry too (`metadata.tinyllm`), so `check_one_run` can tell whether the report, the tables, the figures
and the notebooks of a folder all come from one run at one commit (tests/test_reference_run.py).
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from tinyllm_utils.analysis.reference import TABLE_IV, TABLE_IV_LABELS, table_iv_markdown
from tinyllm_utils.analysis.runs import METHOD_LABELS, label_table
from tinyllm_utils.analysis.stats import ALPHA
from tinyllm_utils.bfcl.data import ALL_CATEGORIES, expects_call
from tinyllm_utils.core.results import write_text_atomic

REPORT = "REPORT.md"
NOTEBOOKS = "notebooks"
STAMP = re.compile(r"<!-- report-card (\{.*?\}) -->")
STAGE_FOLDER = re.compile(r"^\d\d_[a-z_]+$")
# The figures in the order the report shows them, each with what it shows.
FIGURES = [
    ("category_heatmap", "Accuracy per category and model/method"),
    ("method_ablation", "Table IV scores and shared categories per model/method, 95 % intervals"),
    ("error_kinds", "What each model/method answered, by BFCL error kind"),
    ("training_curves", "Training loss per step"),
    ("accuracy_vs_training_compute", "Accuracy vs training wall time"),
    ("accuracy_latency_memory", "Quantized variants: accuracy vs decode latency and memory"),
    ("multi_turn_vs_params", "Multi-turn accuracy vs parameters, beside the published rows"),
    ("baseline_accuracy", "Stage 01: the base model(s) per category"),
    ("baseline_failure_modes", "Stage 01: what the base model(s) did per category"),
]
LIBRARIES = ["torch", "transformers", "trl", "peft", "datasets", "llama-cpp-python", "bfcl-eval", "gguf"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) if len(frame) else "(none)"


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return "–"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _mb(value) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"


def _short(commit) -> str:
    return commit[:10] if isinstance(commit, str) and commit else "–"


def stage_folders(run_dir: Path) -> list[Path]:
    """The run's stage folders (`NN_name`), in order."""
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and STAGE_FOLDER.match(p.name)) \
        if Path(run_dir).is_dir() else []


def stage_records(run_dir: Path) -> pd.DataFrame:
    """One row per stage folder: status (done / running / interrupted), wall time, peak RSS, finished, commit."""
    rows = []
    for folder in stage_folders(run_dir):
        done = _read_json(folder / "stage.json")
        status = "done" if done else ("running or interrupted" if (folder / "stage.running.json").exists()
                                      else "not run")
        git = done.get("git") or {}
        rows.append({"stage": folder.name, "status": status, "seconds": done.get("seconds"),
                     "peak_rss_mb": done.get("peak_rss_mb"), "finished": done.get("finished"),
                     "commit": git.get("commit"), "dirty": git.get("dirty")})
    return pd.DataFrame(rows, columns=["stage", "status", "seconds", "peak_rss_mb", "finished", "commit", "dirty"])


def stamp(run_dir: Path) -> dict:
    """What identifies the run: its id, profile, the commit the pipeline started at (and whether the checkout
    was dirty), when, and the commit each finished stage ran at."""
    pipeline = _read_json(Path(run_dir) / "pipeline.json")
    git = pipeline.get("git") or {}
    stages = stage_records(run_dir)
    return {"run_id": pipeline.get("run_id") or Path(run_dir).resolve().name,
            "profile": (pipeline.get("parameters") or {}).get("profile"), "commit": git.get("commit"),
            "dirty": git.get("dirty"), "created": pipeline.get("created"),
            "stages": {r.stage: r.commit for r in stages.itertuples() if r.status == "done"}}


def read_stamp(report: str | Path) -> dict | None:
    """The stamp of a REPORT.md (its text or path); None when it has none."""
    text = Path(report).read_text() if isinstance(report, Path) else report
    match = STAMP.search(text)
    return json.loads(match.group(1)) if match else None


# ------------------------------------------------------------------------------------------------- sections

def environment_section(run_dir: Path) -> list[str]:
    pipeline = _read_json(Path(run_dir) / "pipeline.json")
    hardware, cpu = pipeline.get("hardware") or {}, pipeline.get("cpu") or {}
    packages = pipeline.get("packages") or {}
    threads = ", ".join(f"{k}={v}" for k, v in (cpu.get("thread_env") or {}).items()) or "not set (library defaults)"
    cores = f"{cpu['usable_cores']} usable of {hardware.get('cpu_count')}" if cpu.get("usable_cores") \
        else f"{hardware.get('cpu_count', '–')}"
    rows = [("CPU", f"{cpu.get('model') or hardware.get('processor') or '–'} ({hardware.get('machine', '–')}), "
                    f"{cores} cores"),
            ("thread settings", threads),
            ("RAM", f"{hardware['memory_gb']} GB" if hardware.get("memory_gb") else "–"),
            ("GPU", hardware.get("cuda") or "none"),
            ("Python, OS", f"{hardware.get('python', '–')} on {hardware.get('platform', '–')}"),
            ("libraries", ", ".join(f"{name} {packages[name]}" for name in LIBRARIES if packages.get(name))
             or "–")]
    return ["## Environment", "", _table(pd.DataFrame(rows, columns=["", "value"])), ""]


def stages_section(run_dir: Path, run_commit: str | None) -> list[str]:
    records = stage_records(run_dir)
    table = pd.DataFrame({
        "stage": records["stage"], "status": records["status"],
        "wall time": records["seconds"].map(_duration), "peak memory": records["peak_rss_mb"].map(_mb),
        "finished (UTC)": records["finished"].map(lambda t: t.replace("T", " ")[:16] if isinstance(t, str) else "–"),
        "commit": [_short(c) + (" (other than the run's)" if isinstance(c, str) and run_commit and c != run_commit
                                else "") for c in records["commit"]]})
    total = pd.to_numeric(records["seconds"], errors="coerce").sum()
    return ["## Stages", "", _table(table), "",
            f"Wall time: each stage's last invocation (a resumed stage counts from its resumption); total "
            f"{_duration(total)}. Peak memory: the largest resident size of the stage's kernel or a process it "
            "started (read every 0.5 s). `–`: not recorded by the pipeline that ran it.", ""]


def data_section(run_dir: Path) -> list[str]:
    card = _read_json(Path(run_dir) / "02_data_filtering" / "data_card.json")
    pairs = _read_json(Path(run_dir) / "03_pair_construction" / "pairs_card.json")
    lines = ["## Data", ""]
    if card:
        rows = ", ".join(f"{split} {n}" for split, n in (card.get("rows") or {}).items())
        lines.append(f"- **Stage 02 (SFT rows):** {rows}; {card.get('rejected', '–')} rows rejected by the filters "
                     "and decontamination (the run's `02_data_filtering/data_card.md`).")
        sources = pd.DataFrame(card.get("sources") or [])
        if len(sources) and "kept" in sources:
            top = sources.sort_values("kept", ascending=False)
            lines.append("- **Sources kept:** " + ", ".join(f"{r.source} {r.kept}" for r in top.itertuples()) + ".")
        mix = pd.DataFrame(card.get("category_mix") or [])
        if len(mix) and {"split", "category", "rows"} <= set(mix):
            train = mix[mix["split"] == "train"].groupby("category")["rows"].sum().sort_values(ascending=False)
            lines.append("- **Train categories:** " + ", ".join(f"{c} {n}" for c, n in train.items()) + ".")
        lengths = card.get("token_lengths") or {}
        train = lengths.get("train") or {}
        if train.get("prompt") and train.get("answer"):
            lines.append(f"- **Train lengths (tokens):** prompt median {train['prompt'].get('50%')}, max "
                         f"{train['prompt'].get('max')}; answer median {train['answer'].get('50%')}, max "
                         f"{train['answer'].get('max')}.")
    else:
        lines.append("- Stage 02 did not run (no data card).")
    if pairs:
        kinds = ", ".join(f"{k} {n}" for k, n in (pairs.get("pairs_per_kind") or {}).items() if n)
        lines.append(f"- **Stage 03 (DPO pairs):** {pairs.get('pairs', '–')} pairs from "
                     f"{pairs.get('rows', '–')} rows"
                     f" ({kinds or 'none'}); {pairs.get('chosen_verified', '–')} chosen answers verified by "
                     "bfcl's checker.")
    return lines + [""]


def training_table(run_dir: Path) -> pd.DataFrame:
    """One row per trained model (every training.json of the run's training stages)."""
    rows = []
    for path in sorted(Path(run_dir).glob("0[4-6]_*/**/training.json")):
        if any(part.startswith(".") for part in path.relative_to(run_dir).parts):
            continue
        t = _read_json(path)
        if not t:
            continue
        tokens, rate = t.get("tokens_seen"), t.get("tokens_per_s")
        rows.append({"method": METHOD_LABELS.get(t.get("method"), t.get("method")),
                     "stage": path.relative_to(run_dir).parts[0], "trained as": t.get("training_method"),
                     "rows": t.get("rows"), "steps": t.get("steps"),
                     "epochs": round(t["epochs"], 2) if isinstance(t.get("epochs"), (int, float)) else None,
                     "tokens": int(tokens) if isinstance(tokens, (int, float)) else None,
                     "seconds": round(t["seconds"], 1) if isinstance(t.get("seconds"), (int, float)) else None,
                     "tokens/s": round(rate, 1) if isinstance(rate, (int, float)) else None})
    return pd.DataFrame(rows, columns=["method", "stage", "trained as", "rows", "steps", "epochs", "tokens",
                                       "seconds", "tokens/s"])


def _cell(value, low, high) -> str:
    return "–" if pd.isna(value) else f"{value:.0f} [{low:.0f}, {high:.0f}]"


def accuracy_table(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Accuracy % [95 % Wilson interval] per model/method (rows) on the categories every one of them ran
    (stage 07's variants left out: the edge table has them), and those categories."""
    cats = results[(results["kind"] == "category") & ~results["stage"].astype(str).str.contains("edge")]
    if not len(cats):
        return pd.DataFrame(), []
    labels = list(dict.fromkeys(cats["label"]))
    shared = [c for c in ALL_CATEGORIES if all(c in set(cats.loc[cats["label"] == label, "category"])
                                               for label in labels)]
    one_n = {c: cats.loc[cats["category"] == c, "n"].nunique() == 1 for c in shared}
    rows = []
    for label in labels:
        mine = cats[(cats["label"] == label)].set_index("category")
        row = {"model/method": label}
        for c in shared:
            r = mine.loc[c]
            cell = _cell(r["accuracy"], r["ci_low"], r["ci_high"])
            row[f"{c} (n={int(r['n'])})" if one_n[c] else c] = cell if one_n[c] else f"{cell}, n={int(r['n'])}"
        rows.append(row)
    return pd.DataFrame(rows), shared


def comparison_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The paired differences (B − A, points) with their 95 % intervals: one row per pair, one column per
    Table IV score both runs cover, or per category where no pair has a score; `*` marks a difference that
    holds after Holm's correction."""
    if comparisons is None or not len(comparisons):
        return pd.DataFrame()
    scores = comparisons[comparisons["scoring"] != "category"]
    if len(scores):
        table = scores.assign(column=scores["comparison"].map(lambda c: TABLE_IV_LABELS.get(c, c)))
        order = [TABLE_IV_LABELS[c] for c in TABLE_IV_LABELS if c in set(scores["comparison"])]
    else:
        table = comparisons.assign(column=comparisons["comparison"])
        order = [c for c in ALL_CATEGORIES if c in set(table["column"])]
    order += [c for c in dict.fromkeys(table["column"]) if c not in order]
    rows = []
    for (b, a), group in table.groupby(["b", "a"], sort=False):
        row = {"B − A": f"{b} − {a}"}
        for r in group.itertuples():
            mark = "*" if r.p_holm < ALPHA and r.diff != 0 else ""
            row[r.column] = f"{r.diff:+.0f} [{r.ci_low:+.0f}, {r.ci_high:+.0f}]{mark}"
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=["B − A", *order]).fillna("–")


def _what(scoring: str, comparison: str) -> str:
    return comparison if scoring == "category" else f"Table IV {TABLE_IV_LABELS.get(comparison, comparison)}"


def decisive_findings(results: pd.DataFrame, comparisons: pd.DataFrame, shared: list[str]) -> list[str]:
    """A few generated sentences: the best model/method on the shared call categories, and what the paired
    comparisons establish after Holm's correction."""
    sentences = []
    calls = [c for c in shared if expects_call(c)]
    cats = results[(results["kind"] == "category") & results["category"].isin(calls)
                   & ~results["stage"].astype(str).str.contains("edge")]
    if len(cats):
        totals = cats.groupby("label", sort=False)[["correct", "n"]].sum()
        share = (totals["correct"] / totals["n"].where(totals["n"] > 0)).fillna(0.0)
        what = "call category" if len(calls) == 1 else f"{len(calls)} call categories"
        low, high = int(totals["n"].min()), int(totals["n"].max())
        scope = (f"On the {what} every model/method ran ({', '.join(calls)}; "
                 f"{low if low == high else f'{low}-{high}'} entries each)")
        top, bottom = share.max(), share.min()
        if top == bottom:
            sentences.append(f"{scope}, every model/method answers {100 * top:.1f} % correctly: no method separates "
                             "from the others.")
        else:
            best = " and ".join(f"**{label}**" for label in share.index[share == top])
            worst = " and ".join(f"**{label}**" for label in share.index[share == bottom])
            sentences.append(f"{scope}, {best} answer{'s' if (share == top).sum() == 1 else ''} the most "
                             f"entries correctly ({100 * top:.1f} %); the fewest: {worst} ({100 * bottom:.1f} %).")
    if comparisons is not None and len(comparisons):
        held = comparisons[(comparisons["p_holm"] < ALPHA) & (comparisons["diff"] != 0)]
        family = len(comparisons)
        if len(held):
            top = held.reindex(held["diff"].abs().sort_values(ascending=False).index).head(3)
            parts = [f"{r.b} vs {r.a} on {_what(r.scoring, r.comparison)}: {r.diff:+.1f} points "
                     f"(95 % CI {r.ci_low:+.1f} to "
                     f"{r.ci_high:+.1f}, Holm p = {r.p_holm:.2g})" for r in top.itertuples()]
            sentences.append(f"{len(held)} of {family} paired comparisons hold after Holm's correction; the "
                             f"largest: {'; '.join(parts)}.")
        elif (comparisons["diff"] == 0).all():
            sentences.append(f"All {family} paired comparisons find no difference at all (every paired entry "
                             "answered alike): at this n no method is shown to differ from its parent or the base.")
        else:
            largest = comparisons.loc[comparisons["diff"].abs().idxmax()]
            sentences.append(f"None of the {family} paired comparisons holds after Holm's correction (the largest "
                             f"difference, {largest['b']} vs {largest['a']} on "
                             f"{_what(largest['scoring'], largest['comparison'])}, is "
                             f"{largest['diff']:+.1f} points, 95 % CI {largest['ci_low']:+.1f} to "
                             f"{largest['ci_high']:+.1f}): at this n no method is shown to differ from its parent "
                             "or the base.")
    elif len(results):
        sentences.append("No two evaluations share entries, so nothing is compared.")
    return sentences


def table_iv_section(out_dir: Path) -> list[str]:
    """Our rows that have a Table IV score, beside the paper's own rows and FunctionGemma's card (the full table,
    with every leaderboard row, is table_iv.md)."""
    try:
        table = pd.read_csv(out_dir / "table_iv.csv")
    except (OSError, pd.errors.EmptyDataError):
        return []
    scored = table[list(TABLE_IV)].notna().any(axis=1)
    ours = table[(table["row"] == "ours") & scored]
    paper = table[(table["row"] != "ours") & table["source"].astype(str).str.contains("TinyLLM paper|FunctionGemma")]
    unscored = int(((table["row"] == "ours") & ~scored).sum())
    note = (f" {unscored} evaluations ran too few categories for any Table IV score (see the methods compared "
            "below)." if unscored else "")
    return ["## Table IV", "", table_iv_markdown(pd.concat([ours, paper])) if len(ours) or len(paper) else "(none)",
            "", f"Accuracy %; '–': a component whose categories were not run, never 0. Our rows: BFCL v4 data, "
            f"scored with the v3 (the paper's) and the v4 formula.{note} With every leaderboard row: "
            "[table_iv.md](table_iv.md).", ""]


EDGE_COLUMNS = {"method": "method", "quantization": "quant", "accuracy": "accuracy %", "n": "n",
                "retained": "retained", "decode_tokens_per_s": "decode tok/s", "ttft_s": "TTFT s",
                "peak_rss_mb": "peak RSS MB", "size_mb": "file MB", "threads": "threads"}


def edge_section(run_dir: Path) -> list[str]:
    tables = [p for p in sorted(Path(run_dir).glob("*/edge_table.csv"))
              if not any(part.startswith(".") for part in p.relative_to(run_dir).parts)]
    lines = ["## Edge profile", ""]
    if not tables:
        return lines + ["The edge stage (07) did not run in this profile.", ""]
    table = pd.read_csv(tables[0])
    table = table[[c for c in EDGE_COLUMNS if c in table]].rename(columns=EDGE_COLUMNS)
    if "accuracy %" in table:
        table["accuracy %"] = (100 * table["accuracy %"]).round(1)
    if "method" in table:
        table["method"] = table["method"].map(lambda m: METHOD_LABELS.get(m, m))
    for column in ("decode tok/s", "TTFT s", "peak RSS MB", "file MB", "retained"):
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce").round(2 if column == "retained" else 1)
    return lines + [_table(table), "", "Accuracy: the categories that expect a call, on the variant's own "
                    "evaluation; retained: its share of F16's accuracy on paired entries (`edge_table.csv`).", ""]


# ------------------------------------------------------------------------------------------------- the page

def write_report(run_dir: str | Path, out_dir: str | Path, results: pd.DataFrame | None = None,
                 comparisons: pd.DataFrame | None = None, missing: list[str] | None = None) -> Path:
    """Write `<out_dir>/REPORT.md` from the run's files and the analysis' tables in out_dir (results and
    comparisons are read from there when not given). Returns its path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if results is None:
        results = pd.read_csv(out_dir / "results.csv") if (out_dir / "results.csv").exists() else pd.DataFrame()
    if comparisons is None:
        try:
            comparisons = pd.read_csv(out_dir / "comparisons.csv")
        except (OSError, pd.errors.EmptyDataError):
            comparisons = pd.DataFrame()
    info = stamp(run_dir)
    dirty = " (uncommitted changes in the checkout)" if info["dirty"] else ""
    lines = [f"<!-- report-card {json.dumps(info, sort_keys=True)} -->",
             f"# Report card: run `{info['run_id']}` (profile `{info['profile'] or '–'}`)", "",
             f"Generated from the run's files by `python -m tinyllm_utils.stages.analysis` on "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; do not edit by hand. The run started "
             f"{(info['created'] or '–').replace('T', ' ')[:16]} UTC at commit `{_short(info['commit'])}`"
             f"{dirty}.", ""]
    lines += environment_section(run_dir)
    lines += stages_section(run_dir, info["commit"])
    lines += data_section(run_dir)
    training = training_table(run_dir)
    lines += ["## Training", "", _table(training) if len(training) else "No training stage ran.", "",
              "seconds: from step 0 (a resumed run adds its checkpoint's; a cycle's include answering its "
              "prompts); tokens/s: training only.", ""] if len(training) or stage_folders(run_dir) else []
    results_ok = results is not None and len(results) > 0
    accuracy, shared = accuracy_table(results) if results_ok else (pd.DataFrame(), [])
    lines += ["## Findings", ""] + [f"- {s}" for s in (decisive_findings(results, comparisons, shared)
                                                     if results_ok else ["No evaluation under the run."])]
    lines += ["", "Every evaluation and comparison in sentences: [findings.md](findings.md).", ""]
    lines += table_iv_section(out_dir)
    lines += ["## Methods compared", "",
              f"Accuracy % [95 % Wilson interval] on the categories every model/method ran "
              f"({len(shared)}):", "", _table(accuracy), "",
              "Paired differences B − A in points [95 % paired bootstrap interval] on the entries both answered "
              "(Table IV scores where both have them, else categories; every comparison is in `comparisons.csv`); "
              f"`*`: holds after Holm's correction over all {len(comparisons)} comparisons:", "",
              _table(comparison_table(comparisons)), ""]
    lines += edge_section(run_dir)
    if results_ok:
        names = label_table(results).drop(columns=["key"]).fillna("–")
        lines += ["## Names", "", "The short labels of the tables and figures, and what each stands for:", "",
                  _table(names), ""]
    lines += ["## Figures", ""]
    for name, caption in FIGURES:
        if (out_dir / f"{name}.png").exists():
            lines += [f"**{caption}** (`{name}.pdf`)", "", f"![{caption}]({name}.png)", ""]
    if missing:
        lines += ["Not drawn (a stage that did not run): " + "; ".join(missing) + ".", ""]
    if (out_dir / NOTEBOOKS).is_dir():
        notebooks = sorted(p.name for p in (out_dir / NOTEBOOKS).glob("*.ipynb"))
        lines += ["## Notebooks", "", "The run's executed notebooks: "
                  + ", ".join(f"[{n}]({NOTEBOOKS}/{n})" for n in notebooks) + ".", ""]
    path = out_dir / REPORT
    write_text_atomic(path, "\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------------- notebooks

def copy_notebooks(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy the run's executed notebooks (`<stage>/<stage>.ipynb`) into `<out_dir>/notebooks/`, each stamped
    with `metadata.tinyllm` (run id, stage, the commit its stage ran at, finished); notebooks there from
    another run are removed first."""
    run_dir, dest = Path(run_dir), Path(out_dir) / NOTEBOOKS
    info = stamp(run_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.ipynb"):
        old.unlink()
    written = []
    for folder in stage_folders(run_dir):
        source = folder / f"{folder.name}.ipynb"
        done = _read_json(folder / "stage.json")
        if not source.exists() or not done:
            continue  # a stage still running (08, while it writes this) or interrupted
        notebook = json.loads(source.read_text())
        notebook.setdefault("metadata", {})["tinyllm"] = {
            "run_id": info["run_id"], "stage": folder.name, "commit": (done.get("git") or {}).get("commit"),
            "finished": done.get("finished")}
        write_text_atomic(dest / source.name, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
        written.append(dest / source.name)
    return written


# ------------------------------------------------------------------------------------------------- one run?

def check_one_run(folder: str | Path) -> list[str]:
    """Whether a folder of report files (paper_figures/) comes from one run at one commit: REPORT.md's stamp, the
    run id of results.csv, the run figures_status.md names, and each notebook's stamp and papermill stage_dir
    must agree, every stage must have run at the run's commit from a clean checkout, and every finished stage
    must have its notebook. Returns the problems found ([]: one run)."""
    folder = Path(folder)
    report = folder / REPORT
    if not report.exists():
        return [f"{report} is missing"]
    info = read_stamp(report)
    if not info:
        return [f"{report} has no report-card stamp"]
    run_id, commit = info.get("run_id"), info.get("commit")
    problems = []
    if not commit:
        problems.append("the report records no commit")
    if info.get("dirty"):
        problems.append(f"run {run_id} ran from a checkout with uncommitted changes")
    for stage, stage_commit in (info.get("stages") or {}).items():
        if stage_commit != commit:
            problems.append(f"stage {stage} ran at commit {stage_commit}, the run at {commit}")
    results = folder / "results.csv"
    if results.exists():
        try:
            ids = set(pd.read_csv(results, usecols=["run_id"])["run_id"].astype(str))
        except (pd.errors.EmptyDataError, ValueError):
            ids = set()
        if ids != {run_id}:
            problems.append(f"results.csv holds runs {sorted(ids)}, the report run {run_id}")
    else:
        problems.append("results.csv is missing")
    status = folder / "figures_status.md"
    if status.exists():
        match = re.search(r"Rebuilt from `([^`]*)`", status.read_text())
        if not match or Path(match.group(1)).name != run_id:
            problems.append(f"figures_status.md names {match and match.group(1)}, not run {run_id}")
    notebooks = {p.stem: p for p in sorted((folder / NOTEBOOKS).glob("*.ipynb"))}
    for stage in info.get("stages") or {}:
        if stage not in notebooks:
            problems.append(f"no notebook of stage {stage} in {folder / NOTEBOOKS}")
    for stage, path in notebooks.items():
        metadata = json.loads(path.read_text()).get("metadata", {})
        mine = metadata.get("tinyllm") or {}
        if (mine.get("run_id"), mine.get("commit")) != (run_id, commit):
            problems.append(f"{path.name} is stamped run {mine.get('run_id')} at {mine.get('commit')}, the report "
                            f"run {run_id} at {commit}")
        stage_dir = ((metadata.get("papermill") or {}).get("parameters") or {}).get("stage_dir", "")
        if Path(stage_dir).parts[-2:] != (run_id, stage):
            problems.append(f"{path.name} was executed into {stage_dir or 'an unknown folder'}, not {run_id}/{stage}")
    return problems
