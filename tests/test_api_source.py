"""The `python_apis` stage-02 source: real Python APIs as BFCL docs, checker-verified targets, a set mix."""

import inspect
import json
import math
import re
import textwrap

import numpy as np
import pytest

from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.data import api_source
from tinyllm_utils.data.api_source import ApiSourceConfig, build_rows, collect_functions, function_doc, schema_type
from tinyllm_utils.data.rows import ROW_CHECKS, apply_check, category_of, load_sources, row_example
from tinyllm_utils.models.prompts import answer_text
from tinyllm_utils.stages.data_filtering import DataConfig

ROWS = 600


@pytest.fixture(scope="module")
def rows():
    return build_rows(ApiSourceConfig(rows=ROWS, seed=0))


def test_schema_types_from_docstrings_defaults_and_names():
    assert schema_type("int, optional") == {"type": "integer"}
    assert schema_type("float") == {"type": "float"}
    assert schema_type("bool, default False") == {"type": "boolean"}
    assert schema_type("str or None") == {"type": "string"}
    assert schema_type("array_like") == {"type": "array", "items": {"type": "float"}}
    assert schema_type("sequence of ints") == {"type": "array", "items": {"type": "integer"}}
    assert schema_type("{'left', 'right'}, optional") == {"type": "string", "enum": ["left", "right"]}
    assert schema_type("dict") == {"type": "dict"}
    assert schema_type("callable") is None and schema_type("DataFrame") is None
    assert schema_type(None, default=70) == {"type": "integer"}
    assert schema_type(None, default=True) == {"type": "boolean"}
    assert schema_type(None, name="text") == {"type": "string"}
    assert schema_type(None, name="mystery") is None


def test_known_functions_become_bfcl_docs():
    mean = function_doc("numpy.mean", np.mean)
    assert mean["description"] == "Compute the arithmetic mean along the specified axis."
    assert mean["parameters"]["required"] == ["a"]
    assert mean["parameters"]["properties"]["a"]["type"] == "array"
    assert "out" not in mean["parameters"]["properties"]  # output buffers are never part of a request
    wrap = function_doc("textwrap.wrap", textwrap.wrap)
    assert wrap["parameters"]["properties"]["width"]["type"] == "integer"
    assert wrap["parameters"]["required"] == ["text"]
    comb = function_doc("math.comb", math.comb)
    assert comb["parameters"]["properties"] == {"n": {"type": "integer", "description": "The n."},
                                                "k": {"type": "integer", "description": "The k."}}
    assert function_doc("math.gcd", math.gcd) is None  # *integers: no keyword form
    assert function_doc("math.pi", lambda: 1) is None  # nothing to ask for


def test_docs_use_only_types_bfcl_checks():
    docs = collect_functions()
    allowed = {"integer", "float", "string", "boolean", "array", "dict"}
    for doc in docs:
        for prop in doc["parameters"]["properties"].values():
            assert prop["type"] in allowed, doc["name"]
            assert prop.get("items", {"type": "float"})["type"] in allowed
        assert set(doc["parameters"]["required"]) <= set(doc["parameters"]["properties"])
    assert len(docs) >= 300  # hundreds of distinct functions
    assert len({d["name"] for d in docs}) == len(docs)
    with pytest.raises(ValueError, match="'numpy.char' does not import here"):  # not skipped unnoticed
        collect_functions(("math", "numpy.char"))


def test_bfcl_function_names_are_left_out():
    names = api_source.bfcl_function_names()
    assert "math.factorial" in names  # BFCL simple_python offers it
    everything = {d["name"] for d in collect_functions()}
    assert names & everything  # some installed functions are BFCL's own (math.factorial, ...)
    assert not names & {d["name"] for d in collect_functions(exclude=names)}
    assert not names & {d["name"] for r in build_rows(ApiSourceConfig(rows=100)) for d in r["functions"]}


def test_every_target_is_accepted_by_bfcl_checker(rows):
    checked = [dict(r) for r in rows]
    for rule in ROW_CHECKS:  # the stage-02 filters, checker last
        checked, rejected = apply_check(checked, rule)
        assert not rejected, rejected[:2]
    for row in rows[:50]:  # and directly: the reference text scores valid, a wrong answer does not
        record = {**row, "category": category_of(row)}
        assert score_single_turn(row_example(record), answer_text(row["target"]))["valid"]
        if row["target"]:
            assert not score_single_turn(row_example(record), "[nothing_offered(x=1)]")["valid"]


def _float_arguments(rows):
    values = []
    for row in rows:
        docs = {d["name"]: d for d in row["functions"]}
        for call in row["target"]:
            (name, args), = call.items()
            properties = docs[name]["parameters"]["properties"]
            values += [v for p, v in args.items() if properties[p]["type"] == "float"]
    return values


def test_integral_floats_are_written_as_ints_and_accepted(rows):
    assert all(isinstance(v, float) for v in _float_arguments(rows))  # the default keeps decimals only
    whole = build_rows(ApiSourceConfig(rows=200, integral_floats=0.5))
    values = _float_arguments(whole)
    ints = [v for v in values if isinstance(v, int)]
    assert 0.3 * len(values) <= len(ints) <= 0.7 * len(values)
    checked, rejected = apply_check([dict(r) for r in whole], "checker_accepts")
    assert not rejected, rejected[:2]
    assert any(str(v) in r["messages"][0]["content"] for r in whole for v in ints)  # said as written


def test_natural_requests_never_name_a_parameter_or_function(rows):
    """BFCL's requests say what a value means ("a base of 10"), not `base = 10`; the default keeps the names."""
    def named(row):
        text = row["messages"][0]["content"]
        params = {p for call in row["target"] for args in call.values() for p in args}
        # the templates of named values: "x = 1", "x=1", "x set to 1", "1 as x", "the value (x) 1"
        return any(re.search(rf"\b{p} ?=|\({p}\)|\b{p} set to|\bas {p}(?=[,;.]|$| and )", text) for p in params) \
            or any(d["name"] in text for d in row["functions"])

    assert sum(map(named, rows)) > 0.5 * len(rows)
    natural = build_rows(ApiSourceConfig(rows=200, natural_requests=1.0))
    assert len(natural) == 200 and not [r["messages"][0]["content"] for r in natural if named(r)][:2]
    checked, rejected = apply_check([dict(r) for r in natural], "checker_accepts")
    assert not rejected, rejected[:2]
    half = build_rows(ApiSourceConfig(rows=200, natural_requests=0.5))
    assert 0.3 * len(half) <= sum(not named(r) for r in half) <= 0.7 * len(half)


def test_mix_and_distinct_functions(rows):
    kinds = {k: sum(r["api_kind"] == k for r in rows) for k in api_source.KINDS}
    assert kinds == {"simple": 180, "multiple": 120, "parallel": 90, "parallel_multiple": 90, "irrelevance": 120}
    categories = {r["api_kind"]: category_of(r) for r in rows}  # the shape stage 02 sees is the one intended
    assert categories == {"simple": "simple_python", "multiple": "multiple", "parallel": "parallel",
                          "parallel_multiple": "parallel_multiple", "irrelevance": "irrelevance"}
    assert api_source.mix(rows)["functions_called"] >= 300
    for row in rows:
        called = {next(iter(c)) for c in row["target"]}
        offered = {d["name"] for d in row["functions"]}
        assert called <= offered
        if row["api_kind"] == "irrelevance":
            assert row["target"] == [] and offered


def test_a_parallel_rows_calls_pass_the_same_parameters(rows):
    """"Do the same for x = 2" repeats the first call's arguments but x: a later call that dropped an optional
    argument the first one passed (or added one) would be a target the request contradicts."""
    parallel = [r for r in rows if r["api_kind"] == "parallel"]
    assert parallel and any(len(next(iter(r["target"][0].values()))) > 1 for r in parallel)
    for row in parallel:
        assert len({tuple(args) for call in row["target"] for args in call.values()}) == 1, row["target"]


def test_stage02_split_keeps_functions_apart(rows):
    """Functions called or offered together stay in seeded families, so the split by function still works."""
    from tinyllm_utils.data.rows import split_by_function

    splits = split_by_function([{**r, "category": category_of(r)} for r in rows], 0.2, seed=0)
    assert 0.1 * len(rows) <= len(splits["validation"]) <= 0.35 * len(rows)
    called = {name: {next(iter(c)) for r in split for c in r["target"]} for name, split in splits.items()}
    assert called["train"] and called["validation"] and not called["train"] & called["validation"]


def test_deterministic_by_seed(rows):
    again = build_rows(ApiSourceConfig(rows=ROWS, seed=0))
    assert json.dumps(again, sort_keys=True) == json.dumps(rows, sort_keys=True)
    other = build_rows(ApiSourceConfig(rows=ROWS, seed=1))
    assert json.dumps(other, sort_keys=True) != json.dumps(rows, sort_keys=True)


def test_selectable_in_stage02_config():
    rows, rejected = load_sources(DataConfig(bfcl_sources=[], synthetic_sources=[{"name": "python_apis", "rows": 50}]),
                                  progress=False)
    assert len(rows) == 50 and not rejected and {r["source"] for r in rows} == {"python_apis"}
    assert all(r["user_texts"] == [r["messages"][0]["content"]] for r in rows)
    assert load_sources(DataConfig(bfcl_sources=[]), progress=False) == ([], [])  # default: not included
    with pytest.raises(ValueError, match="synthetic_sources"):
        DataConfig(synthetic_sources=["nope"])
    with pytest.raises(ValueError, match="max_offered must be at least 2"):
        ApiSourceConfig(max_offered=1)
    assert inspect.signature(api_source.load_api_source).parameters["seed"].default == 0
