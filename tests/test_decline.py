"""The calibrated call/no-call threshold (tinyllm_utils.evaluation.decline)."""

import pytest

from tinyllm_utils.evaluation.decline import calibrate_threshold


def test_threshold_separates_the_two_kinds_and_reports_greedy():
    result = calibrate_threshold(call_margins=[3.0, 4.0, 5.0, 2.5], decline_margins=[0.5, 1.0, 1.5])
    assert 1.5 < result["bias"] < 2.5  # greedy (0) declines none of them; the bias declines all three
    assert result["balanced_accuracy"] == 1.0 and result["greedy_balanced_accuracy"] == 0.5
    assert result["declined_share_of_no_call_rows"] == 1.0 and result["called_share_of_call_rows"] == 1.0


def test_equal_choices_keep_plain_greedy():
    result = calibrate_threshold(call_margins=[1.0, 2.0], decline_margins=[-2.0, -1.0])
    assert result["bias"] == 0.0 and result["balanced_accuracy"] == 1.0


def test_overlap_is_a_trade_off_not_a_perfect_split():
    result = calibrate_threshold(call_margins=[0.2, 1.0, 3.0, 4.0], decline_margins=[0.5, 2.0, 5.0])
    assert result["balanced_accuracy"] < 1.0
    assert result["balanced_accuracy"] >= result["greedy_balanced_accuracy"]


def test_one_kind_missing_is_refused():
    with pytest.raises(ValueError, match="both kinds"):
        calibrate_threshold([1.0], [])
