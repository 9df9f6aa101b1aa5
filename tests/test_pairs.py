"""Stage 03 pair construction: every pair verified by the official checker, offline with a fake rejecter."""

import json
import random
from collections import Counter

import pandas as pd
import pytest

from conftest import FakeBackend
from tinyllm_utils.analysis import data_views
from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.data import pairs
from tinyllm_utils.data.rows import row_example
from tinyllm_utils.models.prompts import NO_CALL_ANSWER, first_turn_messages, format_prompt, render_calls
from tinyllm_utils.models.registry import ModelUnavailableError, resolve_model
from tinyllm_utils.stages import pair_construction

PROSE = "I would call a function for that."


@pytest.fixture(scope="module")
def stage02():
    """A stage-02-shaped DatasetDict from real BFCL entries: 4 rows of each of the five categories."""
    return pairs.bfcl_rows_as_stage02(per_category=4, seed=3)


@pytest.fixture(scope="module")
def candidates(stage02):
    kept, failed = pairs.verify_chosen(pairs.select_rows(stage02))
    assert not failed
    return kept


def _config(**overrides):
    return pair_construction.PairConfig(**{"limit": None, "batch_size": 4, **overrides})


def _generate(rows, reply, config=None, cache=None):
    backend = FakeBackend(reply)
    return pairs.generate_rejections(rows, config or _config(), cache, backend=backend, progress=False), backend


def test_fixture_has_the_stage02_schema(stage02):
    assert set(stage02) == {"train", "validation"}
    for split in stage02.values():
        assert split.column_names == ["id", "source", "category", "messages", "functions", "target", "augmentation"]
        assert all(isinstance(v, str) for v in split[0].values())
    categories = Counter(c for split in stage02.values() for c in split["category"])
    assert categories == {c: 4 for c in pairs.CATEGORIES}


def test_chosen_passes_the_checker_and_a_broken_reference_is_reported(stage02):
    rows = pairs.select_rows(stage02)
    broken = dict(rows[0], id="broken", target=json.dumps([{"no_such_function": {"x": 1}}]))
    kept, failed = pairs.verify_chosen(rows + [broken])
    assert len(kept) == len(rows) and [f["id"] for f in failed] == ["broken"]
    for row in kept:
        assert score_single_turn(row_example(row), row["chosen_text"])["valid"]
    irrelevant = [r for r in kept if r["category"] == "irrelevance"]
    assert irrelevant and all(r["chosen_text"] == NO_CALL_ANSWER for r in irrelevant)


def test_model_generations_become_rejected_only_when_the_checker_says_wrong(candidates):
    generations, backend = _generate(candidates, lambda prompt: PROSE + "  \n")
    assert backend.calls == len(candidates)
    built, outcomes = pairs.build_pairs(candidates, generations, _config(synthetic_ratio=0.0))
    model_pairs = [p for p in built if p["kind"] == pairs.MODEL_GENERATION]
    # Prose is wrong on every call row (no call) and right on irrelevance rows (no call is the answer).
    assert {p["category"] for p in model_pairs} == set(pairs.CATEGORIES) - {"irrelevance"}
    assert all(p["rejected"] == PROSE for p in model_pairs)  # trailing whitespace stripped, nothing else
    assert Counter(o["outcome"] for o in outcomes) == {"used": 16, "correct": 4}
    assert {p["kind"] for p in built if p["category"] == "irrelevance"} == {"call_on_irrelevance"}
    assert pairs.verify_pairs(built) == []
    for pair in built:
        example = row_example(pair)
        assert score_single_turn(example, pair["chosen"])["valid"]
        assert not score_single_turn(example, pair["rejected"])["valid"]
        assert pair["checker_error"] == score_single_turn(example, pair["rejected"])["error_type"]


def test_a_rejecter_that_answers_correctly_yields_synthetic_negatives(candidates):
    answers = {pairs.question_text(r): r["chosen_text"] for r in candidates}

    def correct(prompt):
        return next(answer for question, answer in answers.items() if question.strip() in prompt)

    generations, _ = _generate(candidates, correct)
    built, outcomes = pairs.build_pairs(candidates, generations, _config())
    assert {o["outcome"] for o in outcomes} == {"same_as_chosen"}
    assert len(built) == len(candidates) and pairs.MODEL_GENERATION not in {p["kind"] for p in built}
    assert pairs.verify_pairs(built) == []
    # An answer that is right but written differently is "correct", not "same_as_chosen": still no model pair.
    row = next(r for r in candidates if r["category"] == "simple_python")
    spaced = row["chosen_text"].replace(", ", " , ")
    assert pairs.rejecter_outcome(row, spaced)[0] == "correct"
    empty_built, empty_outcomes = pairs.build_pairs([row], {f"{row['split']}/{row['id']}": "   "}, _config())
    assert empty_outcomes[0]["outcome"] == "empty" and empty_built[0]["kind"] != pairs.MODEL_GENERATION


@pytest.mark.parametrize("kind", pairs.SYNTHETIC_KINDS)
def test_each_synthetic_kind_is_produced_and_verified_wrong(candidates, kind):
    rows = [r for r in candidates if (r["category"] == "irrelevance") == (kind == "call_on_irrelevance")]
    made = [n for r in rows for n in pairs.synthetic_negatives(r, 1, [kind], random.Random(0))]
    assert len(made) >= len(rows) - 1 and {n["kind"] for n in made} == {kind}
    for row in rows:
        for negative in pairs.synthetic_negatives(row, 2, [kind], random.Random(1)):
            scored = score_single_turn(row_example(row), negative["text"])
            assert not scored["valid"] and negative["checker_error"] == scored["error_type"]
            assert negative["text"] != row["chosen_text"]


def test_synthetic_negatives_are_seeded_distinct_and_respect_the_count(candidates):
    row = next(r for r in candidates if r["category"] == "parallel_multiple")
    kinds = [k for k in pairs.SYNTHETIC_KINDS if k != "call_on_irrelevance"]
    first = pairs.synthetic_negatives(row, 6, kinds, random.Random(7))
    assert first == pairs.synthetic_negatives(row, 6, kinds, random.Random(7))
    assert len(first) == 6 and len({n["text"] for n in first}) == 6
    assert set(n["kind"] for n in first[:4]) == set(kinds)  # every kind once before any repeats
    config = _config(negatives_per_row=3, synthetic_ratio=1.0)
    built, _ = pairs.build_pairs([row], {}, config)
    assert built == pairs.build_pairs([row], {}, config)[0] and len(built) == 3


def test_missing_required_on_a_function_without_required_arguments_is_not_invented():
    row = {"split": "train", "id": "no_required", "category": "simple_python", "source": "test",
           "messages": json.dumps([{"role": "user", "content": "What time is it?"}]),
           "functions": json.dumps([{"name": "now", "description": "Current time.",
                                     "parameters": {"type": "dict", "properties": {}, "required": []}}]),
           "target": json.dumps([{"now": {}}]), "augmentation": ""}
    assert pairs.synthetic_negatives(row, 1, ["missing_required"], random.Random(0)) == []
    assert pairs.synthetic_negatives(row, 1, ["wrong_function"], random.Random(0))[0]["kind"] == "wrong_function"


def test_review_round_trip(candidates, tmp_path):
    generations, _ = _generate(candidates, lambda prompt: PROSE)
    built, _ = pairs.build_pairs(candidates, generations, _config(synthetic_ratio=1.0))
    path = tmp_path / "review_sample.csv"
    sample = pairs.export_review(built, path, per_kind=2, seed=0)
    assert list(sample.columns) == pairs.REVIEW_COLUMNS
    assert sample.groupby("kind").size().max() <= 2 and set(sample["kind"]) == {p["kind"] for p in built}
    assert (sample["verdict"] == "").all()

    filled = pd.read_csv(path, dtype=str, keep_default_na=False)
    filled.loc[0, "verdict"], filled.loc[1, "verdict"], filled.loc[2, "verdict"] = "OK", " Disagree ", "y"
    filled.loc[1, "note"] = "rejected is actually fine"
    filled.to_csv(path, index=False)
    kept, report = pairs.apply_review(built, path)
    assert report["reviewed"] == 3 and report["agree"] == 2 and report["disputed"] == 1
    assert report["agreement"] == pytest.approx(2 / 3)
    assert report["dropped"] == [filled.loc[1, "pair_id"]]
    assert len(kept) == len(built) - 1 and filled.loc[1, "pair_id"] not in {p["pair_id"] for p in kept}

    # Writing the sample again keeps the reviewer's verdicts and notes.
    again = pairs.export_review(built, path, per_kind=2, seed=0)
    assert list(again["verdict"][:3]) == ["OK", " Disagree ", "y"]
    assert again.loc[1, "note"] == "rejected is actually fine"

    filled.loc[3, "verdict"] = "maybe"
    filled.to_csv(path, index=False)
    with pytest.raises(ValueError, match="unknown review verdict 'maybe'"):
        pairs.apply_review(built, path)


def test_a_review_inside_the_stage_folder_is_refused_not_read_blank(tmp_path):
    """A changed review reruns the stage, and the pipeline first moves the stage's folder aside: a review_csv
    inside it would be read back as this run's fresh, blank sample (every disputed pair kept)."""
    stage_dir = tmp_path / "run" / "03_pair_construction"
    inside = stage_dir / "review_sample.csv"
    with pytest.raises(ValueError, match="inside the stage's folder .* copy it out"):
        pair_construction.run_stage(_config(review_csv=str(inside)), stage_dir)
    with pytest.raises(FileNotFoundError, match="review_csv .*no such file"):
        pair_construction.run_stage(_config(review_csv=str(tmp_path / "missing.csv")), stage_dir)
    outside = tmp_path / "run" / "review.csv"
    outside.parent.mkdir(parents=True)
    outside.write_text("pair_id,verdict\n")
    pairs.check_review_csv(outside, stage_dir)  # accepted
    pairs.check_review_csv(None, stage_dir)


def test_the_review_shows_a_later_turns_calls_and_results():
    messages = [{"role": "user", "content": "Look up zebra, then what it says."},
                {"role": "assistant", "content": "[lookup(word='zebra')]"}, {"role": "tool", "content": "see stripes"}]
    assert pairs.question_text({"messages": json.dumps(messages)}) == (
        "Look up zebra, then what it says.\n[assistant] [lookup(word='zebra')]\n[tool] see stripes")
    assert pairs.question_text({"messages": json.dumps(messages[:1])}) == "Look up zebra, then what it says."


def test_blank_review_keeps_every_pair(candidates, tmp_path):
    built, _ = pairs.build_pairs(candidates[:4], {}, _config())
    path = tmp_path / "review.csv"
    pairs.export_review(built, path, per_kind=5)
    kept, report = pairs.apply_review(built, path)
    assert kept == built and report["reviewed"] == 0 and report["agreement"] is None


def test_preference_dataset_uses_the_evaluation_prompt(candidates):
    generations, _ = _generate(candidates, lambda prompt: PROSE)
    built, _ = pairs.build_pairs(candidates, generations, _config())
    dataset = pairs.to_preference_dataset(built, "gemma")
    assert set(dataset) == {"train", "validation"}
    assert dataset["train"].column_names == pairs.PAIR_COLUMNS
    assert sum(len(split) for split in dataset.values()) == len(built)
    examples = {(e.category, e.id): e for c in pairs.CATEGORIES for e in load_category(c)}
    spec = resolve_model("gemma-3-270m")
    for row in dataset["validation"]:
        entry = examples[(row["category"], row["id"])].entry  # as evaluation prompts it
        assert row["prompt"] == format_prompt(first_turn_messages(entry)[0], spec.prompt_format, None)
        assert row["chosen"].endswith("<end_of_turn>") and row["rejected"].endswith("<end_of_turn>")
        assert row["chosen"] != row["rejected"]
        assert row["kind"] in pairs.KINDS and row["checker_error"]


def test_save_is_atomic(candidates, tmp_path):
    built, outcomes = pairs.build_pairs(candidates, {}, _config())
    dataset = pairs.to_preference_dataset(built, "gemma")
    card = pairs.pairs_card(_config(), candidates, [], outcomes, built, None, "fixture")
    (tmp_path / "pairs.partial").mkdir()  # left over by a killed run: never taken as the result
    saved = pairs.save_pairs(tmp_path, dataset, pairs.pair_stats(built), card)
    assert {s: len(d) for s, d in saved.items()} == {s: len(d) for s, d in dataset.items()}
    for name in ("pairs/dataset_dict.json", "pair_stats.csv", "pairs_card.json"):
        assert (tmp_path / name).exists()
    assert not (tmp_path / "pairs.partial").exists()
    assert json.loads((tmp_path / "pairs_card.json").read_text())["pairs"] == len(built)
    stats = pd.read_csv(tmp_path / "pair_stats.csv")
    assert list(stats.columns) == ["split", "category", "kind", "pairs"] and stats["pairs"].sum() == len(built)


def test_generations_are_cached_and_resume(candidates, tmp_path):
    cache = pairs.generation_cache_path(tmp_path, _config())
    first, backend = _generate(candidates[:3], lambda prompt: PROSE, cache=cache)
    assert backend.calls == 3
    again, backend = _generate(candidates, lambda prompt: "other", cache=cache)
    assert backend.calls == len(candidates) - 3  # only the rows not on disk are generated
    assert [again[k] for k in first] == [PROSE] * 3
    assert pairs.generation_cache_path(tmp_path, _config(rejecter_max_new_tokens=7)) != cache


def test_select_rows_limit_covers_categories_and_is_seeded(stage02):
    rows = pairs.select_rows(stage02, limit=5, seed=0)
    assert Counter(r["split"] for r in rows) == {"train": 5, "validation": 5}
    for split in ("train", "validation"):
        assert len({r["category"] for r in rows if r["split"] == split}) == 5
    assert rows == pairs.select_rows(stage02, limit=5, seed=0)
    assert rows != pairs.select_rows(stage02, limit=5, seed=1)


def test_missing_stage02_dataset_gives_a_clear_error(tmp_path):
    stage_dir = tmp_path / "run" / "03_pair_construction"
    data_dir = pairs.default_data_dir(stage_dir)
    assert data_dir == tmp_path / "run" / "02_data_filtering" / "dataset"
    with pytest.raises(pairs.MissingInputError, match="run stage 02 first"):
        pairs.load_stage02(data_dir)


def test_unknown_rejecter_or_kind_is_a_clear_error(candidates):
    with pytest.raises(ModelUnavailableError, match="unknown model 'no-such-model'"):
        pairs.generate_rejections(candidates[:1], _config(rejecter="no-such-model"), progress=False)
    with pytest.raises(ValueError, match="unknown synthetic kinds"):
        pair_construction.PairConfig(synthetic_kinds=["typo"])


def test_a_synthetic_candidate_the_checker_accepts_is_not_kept(candidates, monkeypatch):
    row = next(r for r in candidates if r["category"] == "simple_python" and "'" in r["chosen_text"])
    calls = json.loads(row["target"])

    def same_answer_in_upper_case(kind, calls_, docs, rng):
        # Written differently from chosen, but the checker compares strings case-insensitively: still correct.
        return [{name: {k: v.upper() if isinstance(v, str) else v for k, v in args.items()}}
                for call in calls for name, args in call.items()]

    assert render_calls(same_answer_in_upper_case("", calls, {}, None)) != row["chosen_text"]
    monkeypatch.setattr(pairs, "_mutate", same_answer_in_upper_case)
    assert pairs.synthetic_negatives(row, 1, ["wrong_value"], random.Random(0)) == []


@pytest.mark.slow
def test_real_rejecter_on_two_rows(candidates, tmp_path):
    """The embedded gemma-3-270m on llama.cpp, 2 rows, 8 new tokens: its own text becomes rejected or not."""
    rows = [next(r for r in candidates if r["category"] == c) for c in ("simple_python", "irrelevance")]
    config = _config(rejecter_max_new_tokens=8, synthetic_ratio=0.0)
    cache = pairs.generation_cache_path(tmp_path, config)
    generations = pairs.generate_rejections(rows, config, cache, progress=False)
    assert [r["completion_tokens"] for r in pairs.read_generations(cache)] and all(generations.values())
    built, outcomes = pairs.build_pairs(rows, generations, config)
    assert pairs.verify_pairs(built) == [] and {p["category"] for p in built} == {"simple_python", "irrelevance"}
    for pair, outcome in zip(built, outcomes):
        if outcome["outcome"] == "used":
            assert pair["kind"] == pairs.MODEL_GENERATION
            assert pair["rejected"] == generations[pairs._row_key(pair)].rstrip()


def test_statistics_tables_and_figure(candidates):
    generations, _ = _generate(candidates, lambda prompt: PROSE)
    built, outcomes = pairs.build_pairs(candidates, generations, _config(synthetic_ratio=1.0))
    table = pairs.kind_table(built)
    assert list(table.index) == list(pairs.KINDS)  # prose rejecter + synthetic on every row: every kind
    assert table["total"].sum() == len(built) and table["share %"].sum() == pytest.approx(100, abs=0.5)
    assert pairs.error_table(built)["pairs"].sum() == len(built)
    assert pairs.outcome_table(outcomes).loc["irrelevance", "correct"] == 4
    fig = data_views.plot_pair_stats(pairs.pair_stats(built))
    heights = sum(bar.get_height() for bar in fig.axes[0].patches)
    assert heights == len(built)
