"""What a training run prints, in a notebook and in a terminal alike: plain text lines a saved notebook keeps as
they were, in place of transformers' own output.

With `disable_tqdm=True` (the study's default: a notebook's widget bar is saved as a snapshot at 0 %) the
Trainer adds `PrinterCallback`, which prints every log dict (`{'loss': '2.207', 'grad_norm': '7.865', ...}`,
one per step). `attach(trainer, name)` swaps it (and any bar) for `TrainingProgress`, which prints

* one line when training starts (steps, rows, batch),
* a line at each quarter of a run of 20 steps or more (for whoever watches a long run in the terminal),
* one line when it ends (steps done of planned, 100 %, seconds, first and last loss), then a compact table of
  the logged curves (`curve_table`: at most a dozen evenly spaced steps; the whole curve is in `curves.csv`).

`quiet_notebook_output()` turns off the progress bars that datasets, transformers and huggingface_hub draw with
`tqdm.auto` (dataset `map`s and saves, weight loading): in a notebook they are widgets, saved frozen at 0 %. It
also filters the warnings in KNOWN_WARNINGS, each known and harmless, with the reason beside it. The notebooks
that load models or save datasets call it once; a terminal run keeps both.
"""

from __future__ import annotations

import time

import pandas as pd

# The curves the end-of-run table shows, when the trainer logged them (SFT: loss; DPO: reward margins and
# accuracies; GRPO: the checker's reward).
TABLE_COLUMNS = ("loss", "eval_loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies",
                 "reward", "reward_std")
TABLE_ROWS = 12
# Warnings that are known and harmless: (message pattern, category, why it is filtered).
KNOWN_WARNINGS = [
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning,
     "peft reads transformers 5's deprecated alias when it wraps a model for LoRA (PeftModel.__init__); the "
     "study sets activation checkpointing through its new name (trainers._defaults), and peft will follow"),
]


def curve_table(log_history: list[dict], rows: int = TABLE_ROWS) -> pd.DataFrame:
    """The logged curves, one row per logged step (train and eval logs of a step merged), thinned to at most
    `rows` evenly spaced steps, the first and last always kept."""
    # a step's log (its train_runtime too, when tokens are counted); not the run's closing summary (train_loss)
    frame = pd.DataFrame([h for h in log_history if "step" in h and "train_loss" not in h
                          and any(c in h for c in TABLE_COLUMNS)])
    if frame.empty:
        return frame
    frame = frame.groupby("step", as_index=False).first()
    columns = ["step"] + [c for c in TABLE_COLUMNS if c in frame and frame[c].notna().any()]
    frame = frame[columns]
    if len(frame) > rows:
        keep = sorted({round(i * (len(frame) - 1) / (rows - 1)) for i in range(rows)})
        frame = frame.iloc[keep]
    return frame.reset_index(drop=True)


def _loss_text(history: list[dict]) -> str:
    losses = [h["loss"] for h in history if isinstance(h.get("loss"), (int, float))]
    if not losses:
        return ""
    return f", loss {losses[0]:.3f} → {losses[-1]:.3f}" if len(losses) > 1 else f", loss {losses[0]:.3f}"


def _progress_callback_class():
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        """Prints a start line, quarter lines on long runs, an end line and the curve table (module docstring)."""

        def __init__(self, name: str, rows: int | None = None):
            self.name, self.rows = name, rows
            self.start, self.marks, self.printed = 0.0, [], set()

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.start = time.perf_counter()
            total, first = state.max_steps, state.global_step
            self.marks = [(q, round(total * q / 4)) for q in (1, 2, 3)] if total - first >= 20 else []
            rows = f", {self.rows} rows" if self.rows is not None else ""
            resumed = f", resuming at step {first}" if first else ""
            batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
            print(f"{self.name}: training {total} steps{rows}, {batch} rows per step{resumed}", flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            for quarter, step in self.marks:
                if state.global_step >= step and quarter not in self.printed:
                    self.printed.add(quarter)
                    elapsed = time.perf_counter() - self.start
                    print(f"{self.name}: step {state.global_step}/{state.max_steps} ({25 * quarter} %), "
                          f"{elapsed:.0f} s{_loss_text(state.log_history)}", flush=True)

        def on_train_end(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            done = 100 * state.global_step / state.max_steps if state.max_steps else 100.0
            elapsed = time.perf_counter() - self.start
            print(f"{self.name}: {state.global_step}/{state.max_steps} steps ({done:.0f} %) in {elapsed:.1f} s"
                  f"{_loss_text(state.log_history)}", flush=True)
            table = curve_table(state.log_history)
            if len(table):
                print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)

    return TrainingProgress


def training_progress(name: str, rows: int | None = None):
    """A TrainerCallback printing the lines of the module docstring for a run called `name`."""
    return _progress_callback_class()(name, rows)


def attach(trainer, name: str) -> None:
    """Replace the Trainer's own printing (PrinterCallback's per-step dicts, or its progress bar) with
    `training_progress`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    dataset = getattr(trainer, "train_dataset", None)
    trainer.add_callback(training_progress(name, len(dataset) if dataset is not None else None))


def quiet_notebook_output() -> None:
    """Turn off the `tqdm.auto` bars of datasets, transformers and huggingface_hub in this process and filter
    KNOWN_WARNINGS (module docstring); the study's own bars (evaluation, filtering) are text bars and stay."""
    import warnings

    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    for pattern, category, _ in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
