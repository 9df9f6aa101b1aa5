"""Checker wiring: ground truth fed as model text scores 100 %; wrong answers fail; no state leaks."""

import pytest

from conftest import render_c_family_ground_truth, render_ground_truth, render_multi_turn_ground_truth
from tinyllm_utils.bfcl.data import MULTI_TURN_CATEGORIES, SINGLE_TURN_CATEGORIES, load_category
from tinyllm_utils.bfcl.scoring import failure_mode, score_example

AST_CATEGORIES = [c for c in SINGLE_TURN_CATEGORIES if "relevance" not in c]


@pytest.mark.parametrize("category", [c for c in AST_CATEGORIES if c.startswith("simple_j")])
def test_java_javascript_ground_truth_scores_full_marks(category):
    examples = load_category(category)
    rendered = [(e, render_c_family_ground_truth(e.ground_truth)) for e in examples]
    rendered = [(e, text) for e, text in rendered if text is not None][:10]
    assert len(rendered) >= 5
    for example, text in rendered:
        result = score_example(example, text)
        assert result["valid"], (example.id, text, result)


@pytest.mark.parametrize("category", [c for c in AST_CATEGORIES if not c.startswith("simple_j")])
def test_ground_truth_scores_full_marks(category, sample):
    for example in sample(category, n=8):
        text = render_ground_truth(example.ground_truth)
        result = score_example(example, text)
        assert result["valid"], (example.id, text, result)


@pytest.mark.parametrize("category", AST_CATEGORIES)
def test_prose_and_wrong_function_fail(category, sample):
    example = sample(category, n=1)[0]
    assert not score_example(example, "I think you should call the function.")["valid"]
    assert not score_example(example, "[definitely_not_offered(x=1)]")["valid"]


@pytest.mark.parametrize("category", ["irrelevance", "live_irrelevance"])
def test_irrelevance_rules(category, sample):
    example = sample(category, n=1)[0]
    assert score_example(example, "None of the functions can be used.")["valid"]
    assert score_example(example, "[]")["valid"]
    called = score_example(example, f"[{example.entry['function'][0]['name']}(x=1)]")
    assert not called["valid"] and called["error_type"] == "irrelevance_error:decoder_success"
    assert failure_mode({**called, "raw": "..."}) == "wrong function"


def test_relevance_rules(sample):
    example = sample("live_relevance", n=1)[0]
    assert score_example(example, f"[{example.entry['function'][0]['name']}(query='x')]")["valid"]
    missed = score_example(example, "Sorry, I can't.")
    assert not missed["valid"] and missed["error_type"] == "relevance_error:decoder_failed"


@pytest.mark.parametrize("category", MULTI_TURN_CATEGORIES)
def test_multi_turn_ground_truth_scores_full_marks(category, sample):
    for example in sample(category, n=2):
        result = score_example(example, render_multi_turn_ground_truth(example))
        assert result["valid"], (example.id, result["error_type"], result["error"])


def test_multi_turn_wrong_and_short_answers_fail(sample):
    example = sample("multi_turn_base", n=1)[0]
    assert not score_example(example, [["Sure."] for _ in example.ground_truth])["valid"]
    short = score_example(example, [["Sure."]])
    assert short["error_type"] == "multi_turn:force_terminated"


def test_multi_turn_scoring_has_no_state_leak():
    # bfcl caches API instances per (model name, entry id); scoring twice must not start from the first run's end state
    example = load_category("multi_turn_base")[0]
    raw = render_multi_turn_ground_truth(example)
    first, second = score_example(example, raw), score_example(example, raw)
    assert first["valid"] and second["valid"]
