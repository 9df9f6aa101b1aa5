"""Stage 06's compute matching and the count of changed answers (tinyllm_utils.stages.hybrid / common)."""

import json

from tinyllm_utils.stages.common import changed_answers
from tinyllm_utils.stages.hybrid import matched_steps


def test_matched_steps_take_the_hybrid_s_seconds_at_sft_s_rate(tmp_path):
    start = tmp_path / "04_sft" / "sft-lora" / "final"
    start.mkdir(parents=True)
    (start.parent / "training.json").write_text(json.dumps({"steps": 36, "seconds": 1800.0}))
    assert matched_steps(start, 600.0) == 12  # a third of SFT's time: a third of its steps
    assert matched_steps(start, 1.0) == 1  # never zero steps: the matched model is always trained


def _predictions(folder, rows):
    (folder / "predictions").mkdir(parents=True)
    (folder / "predictions" / "simple_python.jsonl").write_text(
        "".join(json.dumps({"id": i, "raw": raw}) + "\n" for i, raw in rows))


def test_changed_answers_counts_only_shared_entries(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    _predictions(before, [("a", "[f(x=1)]"), ("b", "[g()]"), ("c", "no")])
    _predictions(after, [("a", "[f(x=1)]"), ("b", "[g(y=2)]"), ("d", "new")])
    assert changed_answers(before, after) == {"changed": 1, "shared": 2}
    assert changed_answers(tmp_path / "missing", after) == {"changed": 0, "shared": 0}
