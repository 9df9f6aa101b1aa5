"""Stage 08, the analysis: every evaluation of a run read from its files alone, into one results table, Table IV
beside the published rows, paired comparisons, findings, every figure and the run's report card (REPORT.md).
`make figures` runs it on a finished run, and copies the run's executed notebooks beside them:

    python -m tinyllm_utils.stages.analysis --run outputs/quick --out paper_figures
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tinyllm_utils.analysis.baseline_views import (
    BASELINE_STAGE,
    baseline_findings,
    evaluations_in,
    failure_mode_table,
    metrics_table,
    overall_table,
    plot_category_accuracy,
    plot_failure_modes,
)
from tinyllm_utils.analysis.edge_views import plot_edge_pareto
from tinyllm_utils.analysis.figures import (
    plot_accuracy_vs_compute,
    plot_category_heatmap,
    plot_error_kinds,
    plot_method_ablation,
    plot_multi_turn_vs_params,
    plot_training_curves,
    table_iv_long,
)
from tinyllm_utils.analysis.findings import compare, findings_markdown
from tinyllm_utils.analysis.reference import table_iv, table_iv_markdown
from tinyllm_utils.analysis.report import copy_notebooks, write_report
from tinyllm_utils.analysis.runs import collect, entries, find_evaluations, save_table, training_curves
from tinyllm_utils.core.results import save_figure, write_text_atomic


@dataclass
class AnalysisConfig:
    n_resamples: int = 2000  # bootstrap resamples per interval
    seed: int = 0
    reference: bool = True  # reference rows beside ours in Table IV


def analyze(root: str | Path, out_dir: str | Path, config: AnalysisConfig | None = None) -> dict:
    """Write results.{parquet,csv}, entries.parquet, table_iv.{csv,md}, comparisons.csv and findings.md to
    out_dir from the saved files under root. Returns the tables and the written paths."""
    config = config or AnalysisConfig()
    out_dir = Path(out_dir)
    evaluations = find_evaluations(root)
    results = collect(root, config.n_resamples, config.seed)
    entry_table = entries(evaluations)
    written = save_table(results, out_dir, "results")
    if len(entry_table):
        written += save_table(entry_table, out_dir, "entries")[:1]
    iv = table_iv(results, reference=config.reference)
    write_text_atomic(out_dir / "table_iv.csv", iv.to_csv(index=False))
    write_text_atomic(out_dir / "table_iv.md", table_iv_markdown(iv) + "\n\nMissing components are shown as '–' "
                      "(not run), never 0. Our rows: BFCL v4 data (bfcl-eval) summarized with the v3 formula (the "
                      "paper's) and the v4 formula; reference rows carry their own version in `bfcl`.\n")
    comparisons = compare(entry_table, results=results, n_resamples=config.n_resamples, seed=config.seed)
    write_text_atomic(out_dir / "comparisons.csv", comparisons.to_csv(index=False))
    write_text_atomic(out_dir / "findings.md", findings_markdown(results, comparisons, entry_table))
    written += [out_dir / n for n in ("table_iv.csv", "table_iv.md", "comparisons.csv", "findings.md")]
    return {"results": results, "entries": entry_table, "table_iv": iv, "comparisons": comparisons,
            "written": written}



def make_figures(run_dir: str | Path, out_dir: str | Path, n_resamples: int = 2000,
                 notebooks: bool = False) -> list[Path]:
    """Regenerate every table and figure of a run and its REPORT.md from saved files alone; returns the written
    paths. What a missing stage would have fed is listed in `<out>/figures_status.md` (and printed), not raised.
    `notebooks`: also copy the run's executed notebooks into `<out>/notebooks/` (make figures; not the stage
    itself, whose own notebook is still running)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    done = analyze(run_dir, out_dir, AnalysisConfig(n_resamples=n_resamples))
    written = list(done["written"])
    results, entry_table = done["results"], done["entries"]

    baseline = run_dir / BASELINE_STAGE
    if evaluations_in(baseline):
        metrics, failures = metrics_table(baseline), failure_mode_table(baseline)
        for name, table in [("baseline_accuracy", metrics), ("baseline_overall", overall_table(baseline)),
                            ("baseline_failure_modes", failures.reset_index())]:
            write_text_atomic(out_dir / f"{name}.csv", table.to_csv(index=False))
            written.append(out_dir / f"{name}.csv")
        write_text_atomic(out_dir / "baseline_findings.md", baseline_findings(metrics, failures) + "\n")
        written.append(out_dir / "baseline_findings.md")
        written += save_figure(plot_category_accuracy(metrics), out_dir, "baseline_accuracy")
        written += save_figure(plot_failure_modes(failures), out_dir, "baseline_failure_modes")
    else:
        missing.append(f"baseline figures and tables: {baseline} holds no evaluation (stage 01 did not run)")

    has_eval = len(results) > 0
    trained = has_eval and results["training_seconds"].notna().any()
    has_multi_turn = has_eval and not table_iv_long(results).query("column == 'multi_turn'").empty
    curves = training_curves(run_dir) if run_dir.is_dir() else pd.DataFrame()
    edge_tables = [p for p in sorted(run_dir.rglob("edge_table.csv")) if not any(
        part.startswith(".") for part in p.relative_to(run_dir).parts)] if run_dir.is_dir() else []
    plan = [
        ("category_heatmap", has_eval, lambda: plot_category_heatmap(results), "no evaluation under the run"),
        ("method_ablation", has_eval, lambda: plot_method_ablation(results), "no evaluation under the run"),
        ("multi_turn_vs_params", True, lambda: plot_multi_turn_vs_params(results), ""),
        ("accuracy_vs_training_compute", trained, lambda: plot_accuracy_vs_compute(results),
         "no training stage wrote training.json (seconds) beside an evaluated checkpoint"),
        ("error_kinds", len(entry_table) > 0, lambda: plot_error_kinds(entry_table), "no saved predictions"),
        ("training_curves", len(curves) > 0, lambda: plot_training_curves(curves),
         "no trainer log (trainer_state.json or training.json with log_history) under the run"),
    ]
    for name, available, build, reason in plan:
        if available:
            written += save_figure(build(), out_dir, name)
        else:
            missing.append(f"{name}: {reason}")
    if not has_multi_turn:
        missing.append("multi_turn_vs_params: drawn with reference rows only (no evaluation ran all four "
                       "multi-turn categories)")
    if edge_tables:

        table = pd.read_csv(edge_tables[0])
        if {"accuracy", "decode_ms_per_token"} <= set(table.columns) and table["accuracy"].notna().any():
            plot_edge_pareto(table, out_dir / "accuracy_latency_memory")
            written += [out_dir / "accuracy_latency_memory.png", out_dir / "accuracy_latency_memory.pdf"]
        else:
            missing.append(f"accuracy_latency_memory: {edge_tables[0]} has no accuracy / latency columns")
    else:
        missing.append("accuracy_latency_memory: no edge stage output (edge_table.csv) under the run")

    status = ["# Figures and tables of this folder", "", f"Rebuilt from `{run_dir}` by "
              "`python -m tinyllm_utils.stages.analysis`.", "", "## Written", ""]
    status += [f"- `{p.name}`" for p in written]
    status += ["", "## Missing (a stage that did not run; not an error)", ""] + [f"- {m}" for m in missing or ["none"]]
    write_text_atomic(out_dir / "figures_status.md", "\n".join(status) + "\n")
    written.append(out_dir / "figures_status.md")
    if notebooks:
        written += copy_notebooks(run_dir, out_dir)
    written.append(write_report(run_dir, out_dir, results, done["comparisons"], missing))
    for line in missing:
        print(f"missing: {line}")
    return written


def main(argv=None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a headless run writes files; notebooks keep their own backend
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="outputs/quick", help="a run folder, outputs/<run_id>")
    parser.add_argument("--out", default="paper_figures")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples per interval")
    args = parser.parse_args(argv)
    if not Path(args.run).is_dir():
        raise SystemExit(f"{args.run} does not exist: run the pipeline first (make reproduce)")
    start = time.perf_counter()
    for path in make_figures(args.run, args.out, args.n_resamples, notebooks=True):
        print(path)
    print(f"figures: rebuilt {args.out} from {args.run} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
