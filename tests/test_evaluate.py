"""End-to-end evaluation wiring with a fake backend: files on disk, resumption, parameters, multi-turn loop."""

import dataclasses
import json

import pytest

from conftest import FakeBackend, render_ground_truth, render_multi_turn_ground_truth
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.core.results import PredictionWriter, read_jsonl
from tinyllm_utils.evaluation import evaluate as evaluate_module
from tinyllm_utils.evaluation.evaluate import EvalConfig, evaluate
from tinyllm_utils.evaluation.multi_turn import run_multi_turn

CATEGORIES = ["simple_python", "parallel", "irrelevance"]


def oracle_backend():
    answers = {}
    for category in CATEGORIES:
        for example in load_category(category):
            question = example.entry["question"][0][-1]["content"].strip()
            answers[question] = render_ground_truth(example.ground_truth) if example.ground_truth else "No call."

    def reply_for(prompt):
        return next(answer for question, answer in answers.items() if question + "<end_of_turn>" in prompt)
    return FakeBackend(reply_for)


@pytest.fixture
def fake(monkeypatch):
    backend = oracle_backend()
    monkeypatch.setattr(evaluate_module, "make_backend", lambda *args, **kwargs: backend)
    return backend


def test_oracle_scores_full_marks_and_writes_results(fake, tmp_path):
    config = EvalConfig(categories=CATEGORIES, limit=4, seed=3)
    metrics = evaluate(config, tmp_path, progress=False)
    for category in CATEGORIES:
        assert metrics["categories"][category]["accuracy"] == 1.0
        rows = read_jsonl(tmp_path / "predictions" / f"{category}.jsonl")
        assert len(rows) == 4 and all({"id", "raw", "decoded", "valid", "error_type"} <= set(r) for r in rows)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["parameters"]["seed"] == 3 and run["bfcl_eval"] == "2026.3.23"
    assert {"git", "packages", "hardware", "created"} <= set(run)
    assert json.loads((tmp_path / "metrics.json").read_text())["categories"]["parallel"]["n"] == 4


def test_rerun_skips_finished_entries_and_recovers_a_torn_line(fake, tmp_path):
    config = EvalConfig(categories=["simple_python"], limit=3)
    evaluate(config, tmp_path, progress=False)
    assert fake.calls == 3
    assert (tmp_path / "stage.json").exists() and not (tmp_path / "stage.running.json").exists()
    evaluate(config, tmp_path, progress=False)
    assert fake.calls == 3  # nothing generated again
    path = tmp_path / "predictions" / "simple_python.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # killed while writing the third line
    metrics = evaluate(config, tmp_path, progress=False)
    assert fake.calls == 4 and metrics["categories"]["simple_python"]["n"] == 3
    assert len(read_jsonl(path)) == 3
    metrics = evaluate(EvalConfig(categories=["simple_python"], limit=5), tmp_path, progress=False)
    assert fake.calls == 6 and metrics["categories"]["simple_python"]["n"] == 5  # a larger limit extends it


def test_changed_parameters_refuse_to_mix_with_old_predictions(fake, tmp_path):
    evaluate(EvalConfig(categories=["simple_python"], limit=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens: 256 -> 64"):
        evaluate(EvalConfig(categories=["simple_python"], limit=1, max_new_tokens=64), tmp_path, progress=False)


def test_damaged_prediction_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="x.jsonl:2"):
        PredictionWriter(path)


def test_unknown_category_is_a_clear_error(fake, tmp_path):
    with pytest.raises(ValueError, match="unknown BFCL category 'simple_rust'"):
        evaluate(EvalConfig(categories=["simple_rust"]), tmp_path, progress=False)


@pytest.mark.parametrize("category", ["multi_turn_base", "multi_turn_miss_func"])
def test_multi_turn_loop_executes_and_feeds_back_results(category):
    example = load_category(category, 1, seed=5)[0]
    replies = [step for turn in render_multi_turn_ground_truth(example) for step in turn]
    prompts = []

    def reply_for(prompt):
        prompts.append(prompt)
        return replies[len(prompts) - 1]

    backend = FakeBackend(reply_for)
    first = run_multi_turn(example, backend, "gemma")
    assert first["raw"] == render_multi_turn_ground_truth(example)
    assert any("<start_of_turn>tool\n" in p for p in prompts)  # execution results went back to the model
    if example.entry.get("missed_function"):  # held-out functions are offered at their turn
        assert "I have updated some more functions" in prompts[-1]
    # Fresh API state per entry: the same conversation again gives the same tool results
    prompts_first = list(prompts)
    prompts.clear()
    run_multi_turn(example, backend, "gemma")
    assert prompts == prompts_first


@pytest.mark.parametrize("stuck_turn", ["first", "last"])
def test_the_step_limit_ends_the_entry_and_only_missing_turns_fail_it(stuck_turn):
    """As bfcl: a model that keeps calling is stopped after MAXIMUM_STEP_LIMIT + 1 steps; stopped before the
    last turn, the missing turns fail the entry (force_terminated), on the last turn the checker decides."""
    from tinyllm_utils.bfcl import shim as bfcl
    from tinyllm_utils.bfcl.scoring import score_example

    example = load_category("multi_turn_base", 1, seed=5)[0]
    truth = render_multi_turn_ground_truth(example)
    stuck = 0 if stuck_turn == "first" else len(truth) - 1
    steps_in_turn = {}

    def reply_for(prompt):
        turn = prompt.count("<start_of_turn>user") - 1
        k = steps_in_turn[turn] = steps_in_turn.get(turn, -1) + 1
        if turn == stuck:
            return truth[turn][0]  # the same call again and again
        return truth[turn][k] if k < len(truth[turn]) else "Done."

    result = run_multi_turn(example, FakeBackend(reply_for), "gemma")
    assert result["error"] is None and result["force_quit_turn"] == stuck
    assert len(result["raw"]) == stuck + 1 and len(result["raw"][-1]) == bfcl.MAXIMUM_STEP_LIMIT + 1
    scored = score_example(example, result["raw"])
    assert (scored["error_type"] == "multi_turn:force_terminated") == (stuck_turn == "first" and len(truth) > 1)


def test_rescoring_from_disk_agrees_and_detects_tampering(fake, tmp_path):
    from tinyllm_utils.evaluation.evaluate import rescore

    metrics = evaluate(EvalConfig(categories=["simple_python", "irrelevance"], limit=3), tmp_path, progress=False)
    assert rescore(tmp_path)["changed"] == []
    path = tmp_path / "predictions" / "simple_python.jsonl"
    rows = read_jsonl(path)
    # a row of an entry this evaluation did not select (the folder may hold more): not counted, as in evaluate
    other = next(e.id for e in load_category("simple_python") if e.id not in {r["id"] for r in rows})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**rows[0], "id": other}]))
    assert rescore(tmp_path)["metrics"]["categories"] == metrics["categories"]
    rows[0]["raw"] = "I would rather not."
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rescore(tmp_path)["changed"] == [rows[0]["id"]]


def test_weights_overwritten_at_the_same_path_refuse_to_resume(fake, tmp_path):
    model = tmp_path / "model" / "retrained.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF first weights")
    config = EvalConfig(model=str(model), categories=["simple_python"], limit=1)
    evaluate(config, tmp_path / "out", progress=False)
    evaluate(config, tmp_path / "out", progress=False)  # same weights: resumes
    moved = tmp_path / "moved" / "retrained.gguf"  # the same file elsewhere (outputs moved): resumes
    moved.parent.mkdir()
    moved.write_bytes(model.read_bytes())
    evaluate(dataclasses.replace(config, model=str(moved)), tmp_path / "out", progress=False)
    # prompted another way (its spec beside it says chat_template): refused
    (moved.parent / "model_spec.json").write_text(json.dumps(
        {"name": "retrained", "source": "local", "prompt_format": "chat_template"}))
    with pytest.raises(ValueError, match="prompt_format"):
        evaluate(dataclasses.replace(config, model=str(moved)), tmp_path / "out", progress=False)
    model.write_bytes(b"GGUF retrained weights")  # a new model written where the old one was
    with pytest.raises(ValueError, match="input model weights changed"):
        evaluate(config, tmp_path / "out", progress=False)


def test_a_resumed_batched_run_rebuilds_the_same_batches(fake, tmp_path):
    config = EvalConfig(categories=["simple_python"], limit=4, parallel=2)
    evaluate(config, tmp_path, progress=False)
    assert fake.calls == 4
    path = tmp_path / "predictions" / "simple_python.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")  # killed after the first answer of the second batch
    evaluate(config, tmp_path, progress=False)
    # the whole second batch is answered again (its answers may depend on the batch), only the missing one kept
    assert fake.calls == 6
    assert [row["id"] for row in read_jsonl(path)] == [json.loads(line)["id"] for line in lines]


def test_batching_and_the_decline_bias_are_part_of_the_protocol(fake, tmp_path):
    plain = EvalConfig().prediction_keys()
    assert "parallel" not in plain and "decline_bias" not in plain  # off: earlier evaluations still resume
    assert EvalConfig(parallel=8).prediction_keys()["parallel"] == 8
    assert EvalConfig(decline_bias=1.5).prediction_keys()["decline_bias"] == 1.5
    evaluate(EvalConfig(categories=["simple_python"], limit=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="parallel"):
        evaluate(EvalConfig(categories=["simple_python"], limit=1, parallel=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match="decline_bias"):
        evaluate(EvalConfig(categories=["simple_python"], limit=1, backend="transformers", decline_bias=1.0),
                 tmp_path / "hf", progress=False)
