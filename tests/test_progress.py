"""What a training run prints (tinyllm_utils.train.progress): start, quarter and end lines, the thinned curve
table, and the Trainer's own per-step printing taken away. Fake trainer state, no model."""

from types import SimpleNamespace

from tinyllm_utils.train import progress


def history(steps: int) -> list[dict]:
    # as transformers logs them with include_num_input_tokens_seen: train_runtime in every step's log too
    rows = [{"loss": 3.0 - 0.01 * s, "grad_norm": 1.0, "learning_rate": 1e-4, "step": s, "epoch": s / steps,
             "train_runtime": 0.5 * s} for s in range(1, steps + 1)]
    return rows + [{"train_runtime": 9.0, "train_loss": 2.5, "step": steps}]


def test_curve_table_keeps_first_and_last_step_and_at_most_the_rows_asked():
    table = progress.curve_table(history(100), rows=12)
    assert len(table) == 12
    assert (table["step"].iloc[0], table["step"].iloc[-1]) == (1, 100)
    assert list(table.columns) == ["step", "loss", "learning_rate", "grad_norm"]  # the closing summary left out
    assert len(progress.curve_table(history(3))) == 3
    assert progress.curve_table([]).empty


def run_callback(steps: int, capsys) -> str:
    callback = progress.training_progress("sft_lora", rows=8)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=steps, global_step=0, log_history=[])
    callback.on_train_begin(args, state, None)
    for step in range(1, steps + 1):
        state.global_step = step
        state.log_history = history(step)[:-1]
        callback.on_step_end(args, state, None)
    state.log_history = history(steps)
    callback.on_train_end(args, state, None)
    return capsys.readouterr().out


def test_a_short_run_prints_a_start_line_an_end_line_at_100_percent_and_the_table(capsys):
    out = run_callback(2, capsys).splitlines()
    assert out[0] == "sft_lora: training 2 steps, 8 rows, 2 rows per step"
    assert out[1].startswith("sft_lora: 2/2 steps (100 %) in ") and out[1].endswith("loss 2.990 → 2.980")
    assert out[2].split() == ["step", "loss", "learning_rate", "grad_norm"]
    assert len(out) == 5 and "{" not in "".join(out)  # no raw log dict


def test_a_long_run_prints_each_quarter_once(capsys):
    out = run_callback(40, capsys)
    assert [line.split("(")[1].split(")")[0] for line in out.splitlines() if "%)" in line and "/40 (" in line] \
        == ["25 %", "50 %", "75 %"]
    assert "40/40 steps (100 %)" in out


def test_attach_replaces_the_printer_callback():
    from transformers.trainer_callback import PrinterCallback

    class FakeTrainer:
        train_dataset = [1, 2, 3]

        def __init__(self):
            self.callbacks = [PrinterCallback()]

        def remove_callback(self, cls):
            self.callbacks = [c for c in self.callbacks if not isinstance(c, cls)]

        def add_callback(self, callback):
            self.callbacks.append(callback)

    trainer = FakeTrainer()
    progress.attach(trainer, "dpo_lora")
    assert [type(c).__name__ for c in trainer.callbacks] == ["TrainingProgress"]
    assert trainer.callbacks[0].rows == 3


def test_quiet_notebook_output_turns_off_library_bars_and_known_warnings():
    import warnings

    import datasets
    from transformers.utils import logging

    try:
        with warnings.catch_warnings(record=True) as caught:  # the filters it adds end with this block
            warnings.simplefilter("always")
            progress.quiet_notebook_output()
            assert not datasets.is_progress_bar_enabled() and not logging.is_progress_bar_enabled()
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("an unknown deprecation", FutureWarning)
        assert [str(w.message) for w in caught] == ["an unknown deprecation"]
    finally:
        datasets.enable_progress_bars()
        logging.enable_progress_bar()
