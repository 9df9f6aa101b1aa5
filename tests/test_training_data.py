"""Stage 02: sources, every filter rule on crafted rows, decontamination, split, augmentation, saved contract."""

import json
from pathlib import Path

import pytest

from tinyllm_utils.bfcl.data import load_category
from tinyllm_utils.data import pairs
from tinyllm_utils.data import rows as data_rows
from tinyllm_utils.stages import data_filtering

DOC = {"name": "get_weather", "description": "Weather for a city.",
       "parameters": {"type": "dict", "properties": {
           "city": {"type": "string", "description": "City name."},
           "days": {"type": "integer", "description": "Forecast days."},
           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit."},
           "coords": {"type": "array", "items": {"type": "float"}, "description": "Lat, lon."},
           "options": {"type": "dict", "properties": {"alerts": {"type": "boolean", "description": "."}},
                       "description": "Options."}},
           "required": ["city"]}}


def row(target, functions=(DOC,), question="What is the weather in Paris for the next three days?", rid="r0"):
    return {"id": rid, "source": "test", "messages": [{"role": "user", "content": question}],
            "functions": list(functions), "target": target, "user_texts": [question]}


def first_problem(r):
    for rule, check in data_rows.ROW_CHECKS.items():
        problem = check(r)
        if problem:
            return rule, problem
    return None


def test_a_clean_row_passes_every_check():
    assert first_problem(row([{"get_weather": {"city": "Paris", "days": 3, "unit": "celsius",
                                               "coords": [48.8, 2.35], "options": {"alerts": True}}}])) is None


@pytest.mark.parametrize("target, rule, field, words", [
    (None, "target_parses", "target", "no reference answer"),
    ("get_weather(city='Paris')", "target_parses", "target", "list of calls"),
    ([{"get_weather": "Paris"}], "target_parses", "target[0]", "{name: {arg: value}}"),
    ([{"get_weather": {"city": "Paris"}, "other": {}}], "target_parses", "target[0]", "{name: {arg: value}}"),
    ([{"get_forecast": {"city": "Paris"}}], "function_exists", "target[0]", "'get_forecast', which is not offered"),
    ([{"get_weather": {"days": 3}}], "required_arguments", "target[0].get_weather", "['city'] not given"),
    ([{"get_weather": {"city": 7}}], "argument_types", "target[0].get_weather", "city: expected string, got int"),
    ([{"get_weather": {"city": "Paris", "days": True}}], "argument_types", "target[0].get_weather",
     "days: expected integer, got bool"),
    ([{"get_weather": {"city": "Paris", "unit": "kelvin"}}], "argument_types", "target[0].get_weather",
     "'kelvin' is not one of"),
    ([{"get_weather": {"city": "Paris", "coords": [48.8, "2"]}}], "argument_types", "target[0].get_weather",
     "coords[1]: expected float, got str"),
    ([{"get_weather": {"city": "Paris", "coords": [48.8, 2]}}], "argument_types", "target[0].get_weather",
     "coords[1]: expected float, got int"),  # bfcl accepts int for float only at the top level
    ([{"get_weather": {"city": "Paris", "options": {"sound": True}}}], "argument_types", "target[0].get_weather",
     "options.sound: not a declared key"),
    ([{"get_weather": {"city": "Paris", "country": "FR"}}], "argument_types", "target[0].get_weather.country",
     "not a parameter of get_weather"),
])
def test_each_rule_names_the_field_and_the_reason(target, rule, field, words):
    found_rule, (found_field, reason) = first_problem(row(target))
    assert (found_rule, found_field) == (rule, field)
    assert words in reason


def test_reference_call_text_is_parsed_to_literals_and_expressions_are_rejected():
    good = row(None)
    good["target_text"] = ["get_weather(city='Paris', days=3)", "get_weather(city='Rome')"]
    assert data_rows.check_target_parses(good) is None
    assert good["target"] == [{"get_weather": {"city": "Paris", "days": 3}}, {"get_weather": {"city": "Rome"}}]
    bad = row(None)
    bad["target_text"] = ["get_weather(city='Paris', days=1/6)"]  # as in bfcl's exec_multiple_0
    field, reason = data_rows.check_target_parses(bad)
    assert field == "target" and "does not parse into literal calls" in reason


def test_malformed_function_docs_are_rejected_not_crashing():
    r = row([{"get_weather": {"city": "Paris"}}], functions=["not a doc"])
    assert data_rows.check_target_parses(r) == ("functions", "expected a list of function docs with a name")


def test_a_row_with_a_broken_doc_is_rejected_by_the_rule_that_met_it():
    broken = row([{"get_weather": {"city": "Paris"}}], functions=[{"name": "get_weather", "parameters": ["city"]}])
    kept, rejected = data_rows.apply_check([broken], "required_arguments")
    assert not kept and rejected[0]["rule"] == "required_arguments" and "malformed row" in rejected[0]["reason"]


def test_exact_and_near_duplicates_are_removed_and_point_at_the_kept_row():
    target = [{"get_weather": {"city": "Paris"}}]
    rows = [row(target, rid="a"), row(target, rid="b"),
            row(target, question="What is the weather in Paris for the next three days, please?", rid="c"),
            row([{"get_weather": {"city": "Rome"}}], question="Is it raining in Rome today?", rid="d")]
    kept, rejected = data_rows.remove_duplicates(rows)
    assert [r["id"] for r in kept] == ["a", "c", "d"] and "same question and answer as a" in rejected[0]["reason"]
    kept, rejected = data_rows.remove_near_duplicates(kept, threshold=0.7)
    assert [r["id"] for r in kept] == ["a", "d"]
    assert rejected[0]["rule"] == "near_duplicate" and "a's" in rejected[0]["reason"]


@pytest.fixture(scope="module")
def index():
    return data_rows.BenchmarkIndex(n=8)


def test_decontamination_finds_planted_questions_and_identical_docs(index):
    simple = load_category("simple_python", limit=1, seed=3)[0]
    question = simple.scoring_entry["question"][0][0]["content"]
    live_doc = load_category("live_simple", limit=1, seed=3)[0].scoring_entry["function"][0]
    target = [{"get_weather": {"city": "Paris"}}]
    planted = row(target, question="Hi! " + question + " Thanks.", rid="planted")
    doc_twin = row(target, functions=[DOC, live_doc], rid="doc_twin")
    clean = row(target, question="Tell me tomorrow's weather in the small town of Zzyzx, California.", rid="clean")
    kept, rejected, report = data_rows.decontaminate([planted, doc_twin, clean], index, threshold=0.5, progress=False)
    assert [r["id"] for r in kept] == ["clean"]
    reasons = {r["id"]: r for r in rejected}
    assert "simple_python" in reasons["planted"]["reason"] and reasons["planted"]["field"] == "messages"
    assert reasons["doc_twin"]["field"] == "functions" and "live_simple" in reasons["doc_twin"]["reason"]
    assert set(report["bfcl_category"]) >= {"simple_python", "live_simple"}


def test_decontamination_measures_the_known_overlaps_of_bfcls_unused_data(index):
    chatable = data_rows.load_bfcl_source("chatable")
    _, rejected, report = data_rows.decontaminate(chatable, index, threshold=0.5, progress=False)
    line = report[report["bfcl_category"] == "simple_python"].iloc[0]
    assert line["identical_user_turn"] >= 190 and len(rejected) >= 190  # bfcl reused them in simple_python
    composite = data_rows.load_bfcl_source("multi_turn_composite")
    kept, rejected, report = data_rows.decontaminate(composite, index, threshold=0.5, progress=False)
    assert not kept  # same API docs as multi_turn_base, and most user turns too
    base = report[report["bfcl_category"] == "multi_turn_base"].iloc[0]
    assert base["identical_user_turn"] >= 150 and base["identical_function_doc"] == len(composite)


def test_bfcl_sources_load_with_their_references():
    assert len(data_rows.load_bfcl_source("exec_simple")) == 100
    rest = data_rows.load_bfcl_source("rest")
    assert all(r["target_text"][0].startswith("requests.get(") for r in rest)
    sql = data_rows.load_bfcl_source("sql")
    assert sql[0]["target"] == [{"sql.execute": {"sql_keyword": "SELECT", "table_name": "students",
                                                 "columns": ["name"], "conditions": ["id = 1234"]}}]
    assert all(r["target"] is None and "target_text" not in r for r in data_rows.load_bfcl_source("chatable"))
    with pytest.raises(ValueError, match="unknown bfcl source"):
        data_rows.load_bfcl_source("simple_python")


def _pool(n_functions=10, per_function=3):
    rows = []
    for f in range(n_functions):
        doc = dict(DOC, name=f"tool_{f}")
        for k in range(per_function):
            rows.append(row([{f"tool_{f}": {"city": f"City{k}"}}], functions=[doc],
                            question=f"Question {k} for tool {f}", rid=f"t{f}_{k}"))
    for r in rows:
        r["category"], r["augmentation"] = data_rows.category_of(r), ""
    return rows


def test_split_keeps_validation_functions_out_of_train():
    splits = data_rows.split_by_function(_pool(), validation_fraction=0.2, seed=0)
    train = {n for r in splits["train"] for n in data_rows._called(r)}
    validation = {n for r in splits["validation"] for n in data_rows._called(r)}
    assert train and validation and not train & validation
    assert len(splits["validation"]) == 6 and len(splits["train"]) == 24


def test_augmentation_makes_the_asked_shares_and_flags_every_row():
    base = _pool()
    new = data_rows.augment(base, {"parallel": 0.5, "multiple": 0.3, "irrelevance": 0.2}, max_distractors=2, seed=0)
    kinds = {k: [r for r in new if r["augmentation"] == k] for k in data_rows.AUGMENTATIONS}
    assert {k: len(v) for k, v in kinds.items()} == {"parallel": 15, "multiple": 9, "irrelevance": 6}
    for r in kinds["parallel"]:
        assert len(r["target"]) == 2 and r["category"] in ("parallel", "parallel_multiple")
        assert "Also:" in r["messages"][0]["content"]
    for r in kinds["multiple"]:
        assert 2 <= len(r["functions"]) <= 3 and r["category"] == "multiple"
        assert next(iter(r["target"][0])) in {d["name"] for d in r["functions"]}
    for r in kinds["irrelevance"]:
        called = {next(iter(c)) for c in next(b for b in base if b["id"] == r["parents"][0])["target"]}
        assert r["target"] == [] and r["category"] == "irrelevance" and r["functions"]
        assert not called & {d["name"] for d in r["functions"]}
    assert data_rows.augment(base, {"parallel": 0.5}, 2, seed=0) == data_rows.augment(base, {"parallel": 0.5}, 2, seed=0)


def test_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown bfcl_sources"):
        data_filtering.DataConfig(bfcl_sources=["nope"])
    with pytest.raises(ValueError, match="unknown augment kinds"):
        data_filtering.DataConfig(augment={"shuffle": 0.1})
    with pytest.raises(ValueError, match="max_distractors must be at least 1"):
        data_filtering.DataConfig(max_distractors=0)
    # two datasets of one format default to one source name: their ids (`xlam-0`, ...) would collide
    with pytest.raises(ValueError, match=r"share the source name\(s\) \['xlam'\]"):
        data_filtering.DataConfig(user_datasets=[{"path": "a.json", "format": "xlam"}, {"path": "b.json", "format": "xlam"}])
    data_filtering.DataConfig(user_datasets=[{"path": "a.json", "format": "xlam"},
                                 {"path": "b.json", "format": "xlam", "source": "xlam-b"}])


def test_the_stage_saves_the_stage03_contract_and_loses_no_row(tmp_path):
    config = data_filtering.DataConfig(bfcl_sources=["exec_simple", "exec_multiple", "sql", "chatable"],
                           augment={"parallel": 0.2, "multiple": 0.2, "irrelevance": 0.2})
    result = data_filtering.build_dataset(config, progress=False)
    report = result["filter_report"]
    assert report["rows_out"].iloc[-1] == sum(len(r) for r in result["splits"].values()) - sum(
        1 for rows in result["splits"].values() for r in rows if r["augmentation"])
    pool_rejected = [r for r in result["rejected"] if not r["id"].startswith("aug_")]  # augmented: not pool rows
    assert report["rows_in"].iloc[0] == report["rows_out"].iloc[-1] + len(pool_rejected)
    assert all(r["rule"] and r["field"] and r["reason"] for r in result["rejected"])
    path = data_filtering.save_dataset(result, tmp_path)
    dataset = pairs.load_stage02(path)
    assert set(dataset) == {"train", "validation"} and dataset["train"].column_names == data_rows.COLUMNS
    for split in dataset.values():
        for r in split:
            assert r["category"] in pairs.CATEGORIES
            assert isinstance(json.loads(r["messages"]), list) and isinstance(json.loads(r["target"]), list)
    assert len((tmp_path / "rejected.jsonl").read_text().splitlines()) == len(result["rejected"])
    card = json.loads((tmp_path / "data_card.json").read_text())
    assert card["functions_called"]["in_both"] == 0 and card["git"]
    # every saved reference answer is accepted by bfcl's checker (stage 03 relies on it)
    rows = pairs.select_rows(dataset, limit=10, seed=0)
    verified, failures = pairs.verify_chosen(rows)
    assert not failures and len(verified) == len(rows)


def test_user_datasets_join_the_same_filters_and_converter_rejections_are_counted():
    fixtures = Path(__file__).parent / "fixtures" / "converters"
    config = data_filtering.DataConfig(bfcl_sources=[], augment={}, validation_fraction=0.3,
                           user_datasets=[{"path": str(fixtures / "xlam.json"), "format": "xlam"},
                                          {"path": str(fixtures / "glaive.jsonl"), "format": "glaive"}])
    result = data_filtering.build_dataset(config, progress=False)
    report = result["filter_report"].set_index("step")
    converted = [r for r in result["rejected"] if r["rule"] == "convert"]
    assert converted and report.loc["converted", "removed"] == len(converted)
    kept = [r for rows in result["splits"].values() for r in rows]
    assert kept and {r["source"] for r in kept} <= {"xlam", "glaive"}
    assert report.loc["converted", "rows_in"] == len(kept) + len(result["rejected"])


def test_a_multi_turn_chats_rows_all_reach_the_dataset_in_one_split(tmp_path):
    """Every calling turn of a chat is a row (loss on each); a later turn repeats the earlier history, so it
    must not be taken for a near-duplicate of it, and a chat's rows stay in one split."""
    story = " ".join(f"token{i}" for i in range(200))  # a long first request: turn 2 shares ~all its shingles
    tools = [{"type": "function", "function": {"name": name, "description": f"{name.title()} a word.", "parameters": {
        "type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}}}
        for name in ("lookup", "spell")]

    def call(name, word):
        return {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": json.dumps({"word": word})}}]}

    chat = {"tools": tools, "messages": [
        {"role": "user", "content": f"{story}. Look up zebra, then what it says."}, call("lookup", "zebra"),
        {"role": "tool", "content": "see stripes"}, call("lookup", "stripes"),
        {"role": "tool", "content": "lines"}, call("spell", "stripes")]}
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(chat) + "\n")
    config = data_filtering.DataConfig(bfcl_sources=[], augment={}, validation_fraction=0.0,
                           user_datasets=[{"path": str(path), "format": "chat_with_tools"}])
    result = data_filtering.build_dataset(config, progress=False)
    kept = [r for rows in result["splits"].values() for r in rows]
    assert [r["id"] for r in kept] == ["chat_with_tools-0", "chat_with_tools-0.2", "chat_with_tools-0.3"], \
        result["rejected"]
    assert [r["target"] for r in kept][1:] == [[{"lookup": {"word": "stripes"}}], [{"spell": {"word": "stripes"}}]]
    # without the chat's link turn 2 is a near-duplicate of turn 1 (the check itself still works)
    unlinked = [{k: v for k, v in r.items() if k != "conversation"} for r in kept]
    assert [r["id"] for r in data_rows.remove_near_duplicates(unlinked, 0.9)[1]] == ["chat_with_tools-0.2"]
    # the chat's rows stay together beside other rows, whatever the seed; unlinked, some seed splits them
    others = [{**kept[0], "id": f"o{i}", "target": [{f"g{i}": {}}], "conversation": None} for i in range(4)]

    def apart(rows, seed):
        splits = data_rows.split_by_function(rows + others, 0.3, seed)
        return len({name for name, part in splits.items() for r in part if r["id"].startswith("chat")}) > 1

    assert not any(apart(kept, seed) for seed in range(20)) and any(apart(unlinked, seed) for seed in range(20))


def test_decontamination_reasons_do_not_depend_on_the_hash_seed(index):
    # chatable_4 is in both simple_python and multiple: the reason names the category listed first
    row = next(r for r in data_rows.load_bfcl_source("chatable") if r["id"] == "bfcl_chatable_4")
    _, rejected, _ = data_rows.decontaminate([row], index, threshold=0.5, progress=False)
    assert rejected[0]["reason"].endswith("BFCL simple_python")


def test_augmented_rows_meet_the_token_budget_or_are_rejected_with_it():
    config = data_filtering.DataConfig(bfcl_sources=["exec_simple"], augment={"parallel": 0.5}, max_answer_tokens=40)
    result = data_filtering.build_dataset(config, progress=False)
    assert all(r["answer_tokens"] <= 40 for rows in result["splits"].values() for r in rows)
    too_long = [r for r in result["rejected"] if r["id"].startswith("aug_") and r["rule"] == "length"]
    assert too_long and all("tokens > 40" in r["reason"] for r in too_long)
