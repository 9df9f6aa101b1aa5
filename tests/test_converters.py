"""Dataset converters: each format's fixture end to end, crafted bad rows, type mapping, loading paths."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from tinyllm_utils.data import converters
from tinyllm_utils.data.converters import FORMATS, convert_records, load_user_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "converters"


def load(name: str, fmt: str, **kwargs):
    rows, rejected = load_user_dataset(str(FIXTURES / name), fmt=fmt, **kwargs)
    for item in rejected:  # the rejection record is the same for every format
        assert set(item) == {"id", "source", "index", "rule", "field", "reason", "raw"}
        assert item["rule"] == "convert" and item["id"] == f"{item['source']}-{item['index']}"
        assert "\n" not in item["reason"] and len(item["raw"]) <= 2000
        if len(item["raw"]) < 2000:
            assert isinstance(json.loads(item["raw"]), dict)  # the whole record, re-readable
    return rows, rejected


def summary(functions: list[dict]) -> list[tuple]:
    """(name, {param: type, or (type, item type) for arrays}, required) per function doc."""
    out = []
    for doc in functions:
        props = doc["parameters"]["properties"]
        types = {p: (v["type"], v["items"]["type"]) if "items" in v else v["type"] for p, v in props.items()}
        assert doc["parameters"]["type"] == "dict" and isinstance(doc["description"], str)
        out.append((doc["name"], types, doc["parameters"]["required"]))
    return out


def rejections(rejected: list[dict]) -> list[tuple[str, str]]:
    return [(r["id"], r["field"]) for r in rejected]


def reject_one(record, fmt: str) -> dict:
    rows, rejected = convert_records([record], fmt)
    assert rows == [] and len(rejected) == 1, rows
    assert rejected[0]["id"] == f"{fmt}-0" and rejected[0]["index"] == 0
    return rejected[0]


# ---------------------------------------------------------------- fixtures, one per format

def test_xlam_fixture():
    rows, rejected = load("xlam.json", "xlam")
    assert [r["id"] for r in rows] == ["xlam-0", "xlam-1"]
    assert rows[0] == {
        "id": "xlam-0", "source": "xlam",
        "messages": [{"role": "user", "content": "Where can I find live giveaways for beta access and games?"}],
        "functions": [{"name": "live_giveaways_by_type",
                       "description": "Retrieve live giveaways from the GamerPower API based on the specified type.",
                       "parameters": {"type": "dict", "required": [], "properties": {"type": {
                           "type": "string", "default": "game",
                           "description": "The type of giveaways to retrieve (e.g., game, loot, beta)."}}}}],
        "target": [{"live_giveaways_by_type": {"type": "beta"}}, {"live_giveaways_by_type": {"type": "game"}}],
    }
    assert summary(rows[1]["functions"]) == [
        ("find_n_largest_numbers", {"nums": ("array", "integer"), "n": "integer"}, ["nums", "n"]),
        ("merge_dictionaries", {"dict1": "dict", "dict2": "dict"}, ["dict1"]),
        ("is_armstrong_number", {"num": "integer", "verbose": "boolean"}, ["num"]),
    ]
    assert rows[1]["target"] == [{"find_n_largest_numbers": {"nums": [5, 1, 9, 7], "n": 2}},
                                 {"merge_dictionaries": {"dict1": {"a": 1}, "dict2": {"b": 2.5}}}]
    assert rejections(rejected) == [("xlam-2", "answers"), ("xlam-3", "tools[0].parameters.function.type"),
                                    ("xlam-4", "answers[0]")]
    assert "malformed JSON" in rejected[0]["reason"]
    assert "Callable[[float], float]" in rejected[1]["reason"]
    assert "'get_news'" in rejected[2]["reason"] and "stock_quote" in rejected[2]["reason"]


def test_glaive_fixture():
    rows, rejected = load("glaive.jsonl", "glaive")
    assert [r["id"] for r in rows] == ["glaive-0", "glaive-1"]
    first = rows[0]
    assert first["messages"] == [{"role": "user",
                                  "content": 'Can you tell me about the movie "Schindler\'s List" from 1993?'}]
    assert first["target"] == [{"get_movie_details": {"title": "Schindler's List", "year": 1993}}]  # ' inside '...'
    assert summary(first["functions"]) == [("get_movie_details", {"title": "string", "year": "integer"}, ["title"])]
    second = rows[1]
    assert second["messages"] == [{"role": "user", "content": "Can you book a flight for me from New York to London?"}]
    assert second["target"] == []  # plain-text answer
    assert summary(second["functions"]) == [
        ("calculate_loan_payment", {"loan_amount": "float", "interest_rate": "float", "loan_term": "integer"},
         ["loan_amount", "interest_rate", "loan_term"]),
        ("get_news_headlines", {"category": "string", "sources": ("array", "string")}, []),
    ]
    assert second["functions"][1]["parameters"]["properties"]["category"]["enum"] == ["business", "sports",
                                                                                      "technology"]
    assert rejections(rejected) == [("glaive-2", "system"), ("glaive-3", "chat.turns[1].arguments"),
                                    ("glaive-4", "system")]
    assert rejected[0]["reason"] == "no functions offered"
    assert "malformed JSON" in rejected[1]["reason"] and '"loan_term": }' in rejected[1]["reason"]
    assert "function doc 0 is malformed JSON" in rejected[2]["reason"]


def test_chat_with_tools_openai_fixture():
    rows, rejected = load("chat_with_tools.jsonl", "chat_with_tools")
    assert [r["id"] for r in rows] == ["chat_with_tools-0", "chat_with_tools-1"]
    assert rows[0]["messages"] == [
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "What's the weather like in Boston and in Paris (in celsius)?"}]
    assert rows[0]["target"] == [{"get_current_weather": {"location": "Boston, MA"}},
                                 {"get_current_weather": {"location": "Paris, France", "unit": "celsius"}}]
    weather = ("get_current_weather", {"location": "string", "unit": "string"}, ["location"])
    assert summary(rows[0]["functions"]) == [weather]  # no parameters borrowed from other rows' tools
    assert rows[0]["functions"][0]["parameters"]["properties"]["unit"] == {
        "type": "string", "description": "", "enum": ["celsius", "fahrenheit"]}
    assert rows[1]["messages"] == [{"role": "user", "content": "Hi! Can you help me plan a trip?"}]
    assert rows[1]["target"] == []
    assert summary(rows[1]["functions"]) == [
        ("search_flights", {"origin": "string", "destination": "string", "passengers": "integer",
                            "airlines": ("array", "string"), "max_price": "float"}, ["origin", "destination"]),
        weather]
    assert rejections(rejected) == [("chat_with_tools-2", "messages[1].tool_calls[0].function.arguments"),
                                    ("chat_with_tools-3", "messages[1].tool_calls[0].function")]
    assert "malformed JSON" in rejected[0]["reason"]
    assert "'book_hotel'" in rejected[1]["reason"]


def test_chat_with_tools_sharegpt_fixture():
    rows, rejected = load("sharegpt_tools.json", "chat_with_tools", source="lf")
    assert [r["id"] for r in rows] == ["lf-0", "lf-1", "lf-2"] and {r["source"] for r in rows} == {"lf"}
    assert rows[0]["messages"] == [{"role": "system", "content": "You are a finance assistant."},
                                   {"role": "user", "content": "What's the current price of Apple stock?"}]
    assert rows[0]["target"] == [{"get_stock_price": {"symbol": "AAPL"}}]
    assert summary(rows[0]["functions"]) == [("get_stock_price", {"symbol": "string"}, ["symbol"])]
    assert rows[1]["messages"] == [{"role": "user", "content": "Convert 100 USD to EUR and to JPY."}]
    assert rows[1]["target"] == [{"convert_currency": {"amount": 100, "from": "USD", "to": "EUR"}},
                                 {"convert_currency": {"amount": 100, "from": "USD", "to": "JPY"}}]
    assert summary(rows[1]["functions"])[1] == (
        "convert_currency", {"amount": "float", "from": "string", "to": "string"}, ["amount", "from", "to"])
    assert rows[2]["target"] == [] and rows[2]["messages"] == [{"role": "user", "content": "Hello there"}]
    assert rejections(rejected) == [("lf-3", "conversations[1].value"), ("lf-4", "tools")]
    assert "get_stock_price(symbol='MSFT')" in rejected[0]["reason"]
    assert "malformed JSON" in rejected[1]["reason"]


def test_agentbank_fixture():
    rows, rejected = load("agentbank.jsonl", "agentbank")
    assert [r["id"] for r in rows] == ["agentbank-0", "agentbank-1", "agentbank-2"]
    apibank = rows[0]
    assert [m["role"] for m in apibank["messages"]] == ["user"]
    assert apibank["messages"][0]["content"].endswith("what happened on October 6th in history?")
    assert summary(apibank["functions"]) == [("ToolSearcher", {"keywords": "string"}, ["keywords"]),
                                             ("QueryHistoryToday", {"user_id": "string", "date": "string"},
                                              ["user_id"])]
    assert apibank["target"] == [{"ToolSearcher": {"keywords": "history October 6th"}}]
    alpaca = rows[1]
    assert [m["role"] for m in alpaca["messages"]] == ["user", "assistant", "user"]
    assert alpaca["messages"][1:] == [{"role": "assistant", "content": "OK"},
                                      {"role": "user", "content": "What's the weather in Berlin for the next 3 days?"}]
    assert summary(alpaca["functions"]) == [("getCurrentWeather", {"city": "string", "days": "integer"}, ["city"]),
                                            ("getAirQuality", {"city": "string"}, ["city"])]
    assert alpaca["target"] == [{"getCurrentWeather": {"city": "Berlin", "days": 3}}]
    assert rows[2]["target"] == []  # Action: Finish
    assert rows[2]["messages"][-1] == {"role": "user", "content": "Thanks, that's all I needed."}
    assert rejections(rejected) == [("agentbank-3", "conversations[0].value"),
                                    ("agentbank-4", "conversations[3].value")]
    assert "no JSON tool specs" in rejected[0]["reason"]
    assert "'getUVIndex'" in rejected[1]["reason"]


# ---------------------------------------------------------------- crafted bad rows

XLAM_OK = {"query": "q", "tools": json.dumps([{"name": "f", "description": "d", "parameters": {
    "x": {"type": "int", "description": "x"}}}]), "answers": json.dumps([{"name": "f", "arguments": {"x": 1}}])}
CHAT_TOOLS = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]
REACT_PROMPT = 'Tools: [{"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}]'

BAD_ROWS = [
    ("xlam", {**XLAM_OK, "tools": '[{"name": "f", "parameters": {'}, "tools", "malformed JSON"),
    ("xlam", {k: v for k, v in XLAM_OK.items() if k != "query"}, "query", "expected str, found nothing (missing)"),
    ("xlam", {**XLAM_OK, "query": 42}, "query", "expected str, found int"),
    ("xlam", {**XLAM_OK, "answers": json.dumps({"name": "f"})}, "answers", "expected JSON list"),
    ("xlam", {**XLAM_OK, "answers": json.dumps([{"name": "g", "arguments": {}}])}, "answers[0]", "'g'"),
    ("xlam", {**XLAM_OK, "answers": json.dumps([{"name": "f", "arguments": "[1]"}])}, "answers[0].arguments",
     "expected JSON dict"),
    ("xlam", {**XLAM_OK, "tools": json.dumps([{"name": "f", "parameters": {"x": {"description": "no type"}}}])},
     "tools[0].parameters.x.type", "expected str"),
    ("glaive", {"system": "SYSTEM: functions -\n" + json.dumps(CHAT_TOOLS[0]["function"]),
                "chat": "USER: hi\n\n\nASSISTANT: <functioncall> f(q='x') <|endoftext|>"},
     "chat.turns[1]", "functioncall is not"),
    ("glaive", {"system": "SYSTEM: functions -\n" + json.dumps(CHAT_TOOLS[0]["function"]),
                "chat": "USER: hi\n\n\nASSISTANT: <functioncall> {\"name\": \"g\", \"arguments\": '{}'} <|endoftext|>"},
     "chat.turns[1]", "'g', which is not among the offered functions ['f']"),
    ("glaive", {"system": "SYSTEM: functions -\n" + json.dumps(CHAT_TOOLS[0]["function"]), "chat": "USER: hi"},
     "chat", "no ASSISTANT turn"),
    ("chat_with_tools", {"messages": "hello", "tools": CHAT_TOOLS}, "messages", "expected list, found str"),
    ("chat_with_tools", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                         "tools": '[{"type": "function", "function": '}, "tools", "malformed JSON"),
    ("chat_with_tools", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                         "tools": [{"name": "f", "parameters": {"type": "object", "properties": {"q": {}}}}]},
     "tools[0].parameters.properties.q", "type missing"),
    ("chat_with_tools", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "g", "arguments": "{}"}}]}], "tools": CHAT_TOOLS},
     "messages[1].tool_calls[0].function", "'g'"),
    ("chat_with_tools", {"messages": [{"role": "assistant", "content": "hi"}], "tools": CHAT_TOOLS},
     "messages", "no user message"),
    ("chat_with_tools", {"conversations": [{"from": "human", "value": "hi"},
                                           {"from": "function_call", "value": '{"name": "g", "arguments": {}}'}],
                         "tools": json.dumps([CHAT_TOOLS[0]["function"]])},
     "conversations[1].value", "'g'"),
    ("chat_with_tools", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "tools", "no functions offered"),
    ("chat_with_tools", {"conversations": [{"from": "observation", "value": "{}"}, {"from": "gpt", "value": "x"}],
                         "tools": json.dumps([CHAT_TOOLS[0]["function"]])},
     "conversations[0]", "a tool result before any call"),
    ("agentbank", {"conversations": [{"from": "human", "value": REACT_PROMPT},
                                     {"from": "gpt", "value": "Action: f\nAction Input: {\"q\": "}]},
     "conversations[1].value", "Action Input is malformed JSON"),
    ("agentbank", {"conversations": [{"from": "human", "value": REACT_PROMPT}, {"from": "gpt", "value": "Action: f"}]},
     "conversations[1].value", "no 'Action Input:' line"),
    ("agentbank", {"conversations": [
        {"from": "human", "value": "Question: q"},
        {"from": "human", "value": REACT_PROMPT.replace('"properties": {}', '"properties": {"q": {}}')},
        {"from": "gpt", "value": "Action: f\nAction Input: {}"}]},
     "conversations[1].value.tools[0].parameters.properties.q", "parameter type missing"),
    ("agentbank", {"id": "x"}, "conversations", "expected list, found nothing (missing)"),
    ("agentbank", {"conversations": [{"from": "robot", "value": "hi"}]}, "conversations[0].from", "'robot'"),
    ("xlam", ["not", "a", "dict"], "record", "expected a dict, found list"),
]


@pytest.mark.parametrize("fmt, record, field, reason", BAD_ROWS, ids=[f"{b[0]}-{b[2]}" for b in BAD_ROWS])
def test_bad_rows_are_rejected_with_id_and_field(fmt, record, field, reason):
    item = reject_one(record, fmt)
    assert item["field"] == field
    assert reason in item["reason"], item["reason"]
    assert item["raw"] == json.dumps(record, ensure_ascii=False)[:2000]


def test_rows_never_vanish_and_good_rows_survive_bad_neighbours():
    records = [XLAM_OK, {"query": None}, XLAM_OK, 7]
    rows, rejected = convert_records(records, "xlam", source="mix")
    assert [r["id"] for r in rows] == ["mix-0", "mix-2"]
    assert [(r["id"], r["index"], r["source"]) for r in rejected] == [("mix-1", 1, "mix"), ("mix-3", 3, "mix")]


def test_converter_bug_becomes_a_one_line_rejection(monkeypatch):
    def broken(record):
        raise ValueError("boom\n  second line")
    monkeypatch.setitem(converters._CONVERTERS, "xlam", broken)
    item = reject_one(XLAM_OK, "xlam")
    assert item["field"] == "record" and item["reason"] == "converter failed: ValueError: boom second line"


def test_agentbank_spec_repeated_in_system_and_prompt_counts_once():
    record = {"id": "t", "conversations": [{"from": "system", "value": REACT_PROMPT},
                                           {"from": "human", "value": REACT_PROMPT + "\nQuestion: run f"},
                                           {"from": "gpt", "value": "Thought: go\nAction: f\nAction Input: {}"}]}
    rows, rejected = convert_records([record], "agentbank")
    assert rejected == [] and [m["role"] for m in rows[0]["messages"]] == ["system", "user"]
    assert summary(rows[0]["functions"]) == [("f", {}, [])] and rows[0]["target"] == [{"f": {}}]


# ---------------------------------------------------------------- type mapping

def xlam_param(type_text: str, **extra) -> dict:
    """Convert one xLAM parameter of the given type; returns (param doc, required?)."""
    spec = {"type": type_text, "description": "p", **extra}
    record = {**XLAM_OK, "tools": json.dumps([{"name": "f", "description": "d", "parameters": {"p": spec}}]),
              "answers": "[]"}
    rows, rejected = convert_records([record], "xlam")
    if rejected:
        return rejected[0]
    params = rows[0]["functions"][0]["parameters"]
    return {"doc": params["properties"]["p"], "required": params["required"] == ["p"]}


@pytest.mark.parametrize("type_text, doc, required", [
    ("str", {"type": "string"}, True),
    ("int, optional", {"type": "integer"}, False),
    ("float", {"type": "float"}, True),
    ("bool", {"type": "boolean"}, True),
    ("List[int]", {"type": "array", "items": {"type": "integer"}}, True),
    ("List[List[str]]", {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}, True),
    ("list", {"type": "array", "items": {"type": "any"}}, True),
    ("List[Union[int, float]]", {"type": "array", "items": {"type": "float"}}, True),
    ("Optional[str]", {"type": "string"}, False),
    ("Union[str, None]", {"type": "string"}, False),
    ("Dict[str, Any], optional", {"type": "dict"}, False),
    ("Tuple[int, int]", {"type": "tuple", "items": {"type": "integer"}}, True),
    ("Any", {"type": "any"}, True),
    ("str, default='en'", {"type": "string"}, False),
])
def test_python_types_map_to_bfcl(type_text, doc, required):
    got = xlam_param(type_text)
    assert got == {"doc": {**doc, "description": "p"}, "required": required}


def test_xlam_default_key_makes_a_parameter_optional_and_is_kept():
    assert xlam_param("int", default=3) == {"doc": {"type": "integer", "description": "p", "default": 3},
                                            "required": False}


@pytest.mark.parametrize("type_text", ["Callable[[float], float]", "set", "Union[str, int]", "str, required",
                                       "List[int"])
def test_unknown_python_types_reject_the_row(type_text):
    item = xlam_param(type_text)
    assert item["field"] == "tools[0].parameters.p.type" and repr(type_text) in item["reason"], item


def chat_param(schema: dict) -> dict:
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
              "tools": [{"name": "f", "parameters": {"type": "object", "properties": {"p": schema}}}]}
    rows, rejected = convert_records([record], "chat_with_tools")
    return rejected[0] if rejected else rows[0]["functions"][0]["parameters"]["properties"]["p"]


@pytest.mark.parametrize("schema, doc", [
    ({"type": "object", "properties": {"a": {"type": "number"}}, "required": ["a"]},
     {"type": "dict", "properties": {"a": {"type": "float", "description": ""}}, "required": ["a"]}),
    ({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "boolean", "description": "K"}}}},
     {"type": "array", "items": {"type": "dict", "properties": {"k": {"type": "boolean", "description": "K"}}}}),
    ({"type": "array"}, {"type": "array", "items": {"type": "any"}}),
    ({"type": "tuple", "items": {"type": "integer"}}, {"type": "tuple", "items": {"type": "integer"}}),  # BFCL's own
    ({"type": "dict", "properties": {"a": {"type": "any", "description": "A"}}},
     {"type": "dict", "properties": {"a": {"type": "any", "description": "A"}}}),
    ({"type": "List[str]"}, {"type": "array", "items": {"type": "string"}}),
    ({"type": ["string", "null"], "default": "x"}, {"type": "string", "default": "x"}),
    ({"enum": ["a", "b"]}, {"type": "string", "enum": ["a", "b"]}),
    ({"type": "integer", "enum": None, "default": None}, {"type": "integer"}),  # Arrow's None-filled keys
])
def test_json_schema_maps_to_bfcl(schema, doc):
    assert chat_param(schema) == {"description": "", **doc}


@pytest.mark.parametrize("schema", [{"description": "no type"}, {"type": ["string", "integer"]},
                                    {"type": "whatever"}, {"enum": [1, 2]}])
def test_json_schema_without_a_single_known_type_rejects(schema):
    item = chat_param(schema)
    assert item["field"] == "tools[0].parameters.properties.p" and item["id"] == "chat_with_tools-0", item


def test_arrow_none_filled_properties_are_not_parameters():
    # Older `datasets` unify struct schemas across rows, adding other rows' property names with None values.
    params = {"type": "object", "properties": {"q": {"type": "string"}, "other_rows_param": None}, "required": ["q"]}
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
              "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}]}
    rows, _ = convert_records([record], "chat_with_tools")
    assert summary(rows[0]["functions"]) == [("f", {"q": "string"}, ["q"])]
    # the same for Python-typed (xLAM) parameters given as structs
    tools = [{"name": "f", "description": "d", "parameters": {"x": {"type": "int", "description": "x"},
                                                              "other_rows_param": None}}]
    rows, rejected = convert_records([{**XLAM_OK, "tools": tools}], "xlam")
    assert not rejected and summary(rows[0]["functions"]) == [("f", {"x": "integer"}, ["x"])]


def test_required_name_without_property_rejects():
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
              "tools": [{"name": "f", "parameters": {"type": "object", "properties": {}, "required": ["q"]}}]}
    item = reject_one(record, "chat_with_tools")
    assert item["field"] == "tools[0].parameters.required" and "['q']" in item["reason"]


def test_openai_dict_arguments_and_content_parts_are_accepted():
    parts = [{"type": "text", "text": "find "}, {"type": "text", "text": "cats"}]
    call = {"type": "function", "function": {"name": "f", "arguments": {"q": "cats"}}}
    record = {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "tool_calls": [call]}],
              "tools": json.dumps(CHAT_TOOLS)}
    rows, rejected = convert_records([record], "chat_with_tools")
    assert rejected == []
    assert rows[0]["messages"] == [{"role": "user", "content": "find cats"}]
    assert rows[0]["target"] == [{"f": {"q": "cats"}}]


def test_glaive_arguments_as_a_json_object_are_accepted():
    record = {"system": "SYSTEM: functions -\n" + json.dumps(CHAT_TOOLS[0]["function"], indent=2),
              "chat": 'USER: look up dogs\n\n\nASSISTANT: <functioncall> {"name": "f", "arguments": {"q": "dogs"}} '
                      "<|endoftext|>\n\n\nFUNCTION RESPONSE: {}\n\n\nASSISTANT: done <|endoftext|>"}
    rows, rejected = convert_records([record], "glaive")
    assert rejected == [] and rows[0]["target"] == [{"f": {"q": "dogs"}}]


# A chat that asks back before it calls, then calls again after a tool result: one row per calling turn.
MULTI_TURN = {
    "chat_with_tools": {"tools": CHAT_TOOLS, "messages": [
        {"role": "user", "content": "find something"},
        {"role": "assistant", "content": "What should I look for?"},
        {"role": "user", "content": "cats"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": '{"q": "cats"}'}}]},
        {"role": "tool", "content": "3 cats"},
        {"role": "assistant", "content": "Found 3 cats."},
        {"role": "user", "content": "and dogs and owls?"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": '{"q": "dogs"}'}},
            {"type": "function", "function": {"name": "f", "arguments": '{"q": "owls"}'}}]}]},
    "sharegpt": {"tools": json.dumps([CHAT_TOOLS[0]["function"]]), "conversations": [
        {"from": "human", "value": "find something"},
        {"from": "gpt", "value": "What should I look for?"},
        {"from": "human", "value": "cats"},
        {"from": "function_call", "value": '{"name": "f", "arguments": {"q": "cats"}}'},
        {"from": "observation", "value": "3 cats"},
        {"from": "gpt", "value": "Found 3 cats."},
        {"from": "human", "value": "and dogs and owls?"},
        {"from": "function_call", "value": '[{"name": "f", "arguments": {"q": "dogs"}}, '
                                           '{"name": "f", "arguments": {"q": "owls"}}]'}]},
    "glaive": {"system": "SYSTEM: functions -\n" + json.dumps(CHAT_TOOLS[0]["function"]),
               "chat": "USER: find something\n\n\nASSISTANT: What should I look for? <|endoftext|>\n\n\n"
                       "USER: cats\n\n\nASSISTANT: <functioncall> {\"name\": \"f\", \"arguments\": '{\"q\": "
                       "\"cats\"}'} <|endoftext|>\n\n\nFUNCTION RESPONSE: 3 cats\n\n\nASSISTANT: Found 3 cats. "
                       "<|endoftext|>\n\n\nUSER: and dogs?\n\n\nASSISTANT: <functioncall> {\"name\": \"f\", "
                       "\"arguments\": '{\"q\": \"dogs\"}'} <|endoftext|>"},
}


@pytest.mark.parametrize("kind", sorted(MULTI_TURN))
def test_a_multi_turn_chat_gives_a_row_per_calling_turn_with_its_history(kind):
    """Loss on every assistant turn that calls: each is a row whose history holds the earlier calls (as the
    call text the model writes), their tool results and the assistant's text; a question asked back is history,
    not a no-call (irrelevance) answer."""
    fmt = "glaive" if kind == "glaive" else "chat_with_tools"
    rows, rejected = convert_records([MULTI_TURN[kind]], fmt)
    assert rejected == [] and [r["id"] for r in rows] == [f"{fmt}-0", f"{fmt}-0.2"]
    first, second = rows
    assert first["messages"] == [{"role": "user", "content": "find something"},
                                 {"role": "assistant", "content": "What should I look for?"},
                                 {"role": "user", "content": "cats"}]
    assert first["target"] == [{"f": {"q": "cats"}}]
    asked = second["messages"][-1]["content"]
    assert second["messages"] == first["messages"] + [
        {"role": "assistant", "content": "[f(q='cats')]"}, {"role": "tool", "content": "3 cats"},
        {"role": "assistant", "content": "Found 3 cats."}, {"role": "user", "content": asked}]
    assert second["target"][0] == {"f": {"q": "dogs"}} and second["functions"] == first["functions"]
    if kind != "glaive":
        assert second["target"] == [{"f": {"q": "dogs"}}, {"f": {"q": "owls"}}]

    assert asked == ("and dogs?" if kind == "glaive" else "and dogs and owls?")

    # the row's prompt is byte for byte what the evaluation's multi-turn chat shows the model at that point
    from tinyllm_utils.bfcl.decoding import DecodeError
    from tinyllm_utils.data.rows import category_of, row_entry
    from tinyllm_utils.models.families import PlainConversation
    from tinyllm_utils.models.prompts import first_turn_messages, format_prompt

    entry = row_entry({**second, "category": category_of(second)})
    prompt = format_prompt(first_turn_messages(entry)[0], "gemma")
    chat = PlainConversation({**entry, "question": [[m] for m in second["messages"] if m["role"] == "user"]},
                             "gemma")

    def reply(text):  # a reply without a call ends the turn (run_multi_turn catches the DecodeError)
        with contextlib.suppress(DecodeError):
            chat.add_reply(text)

    chat.add_user(chat.turns[0])
    reply("What should I look for?")
    chat.add_user(chat.turns[1])
    reply("[f(q='cats')]")
    chat.add_results(["f(q='cats')"], ["3 cats"])
    reply("Found 3 cats.")
    chat.add_user(chat.turns[2])
    assert prompt == chat.prompt()
    assert "<start_of_turn>model\n[f(q='cats')]<end_of_turn>\n<start_of_turn>tool\n3 cats<end_of_turn>" in prompt


def test_a_chats_answer_is_its_call_after_a_user_or_tool_turn():
    """As in the evaluation, an answer follows a user or tool turn: a greeting before the first user turn and
    text said just before a call are not kept (the prompt would hold two model turns in a row); an empty call
    list is no answer."""
    call = {"type": "function", "function": {"name": "f", "arguments": '{"q": "cats"}'}}
    record = {"tools": CHAT_TOOLS, "messages": [
        {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "find cats"},
        {"role": "assistant", "content": "Let me look."}, {"role": "assistant", "tool_calls": [call]}]}
    rows, rejected = convert_records([record], "chat_with_tools")
    assert not rejected and rows[0]["messages"] == [{"role": "user", "content": "find cats"}]
    assert rows[0]["target"] == [{"f": {"q": "cats"}}]
    empty = {"tools": json.dumps([CHAT_TOOLS[0]["function"]]), "conversations": [
        {"from": "human", "value": "find cats"}, {"from": "function_call", "value": "[]"}]}
    item = reject_one(empty, "chat_with_tools")
    assert item["field"] == "conversations[1].value" and item["reason"] == "an empty call list"


def test_an_agentbank_trajectory_gives_a_row_per_action_with_observations_as_tool_results():
    """Each ReAct turn with an Action is a row (its Thought dropped, like text beside a call); an
    "Observation:" after a call is the tool result; the closing Final Answer is history, never a target."""
    spec = REACT_PROMPT.replace('"properties": {}', '"properties": {"q": {"type": "string"}}')
    record = {"conversations": [
        {"from": "human", "value": spec + "\nQuestion: find cats, then dogs"},
        {"from": "gpt", "value": "Thought: cats first.\nAction: f\nAction Input: {\"q\": \"cats\"}"},
        {"from": "human", "value": "Observation: 3 cats"},
        {"from": "gpt", "value": "Thought: now dogs.\nAction: f\nAction Input: {\"q\": \"dogs\"}"},
        {"from": "human", "value": "Observation: 2 dogs"},
        {"from": "gpt", "value": "Thought: done.\nFinal Answer: 3 cats and 2 dogs."}]}
    rows, rejected = convert_records([record], "agentbank")
    assert rejected == [] and [r["id"] for r in rows] == ["agentbank-0", "agentbank-0.2"]
    first, second = rows
    assert first["messages"] == [{"role": "user", "content": spec + "\nQuestion: find cats, then dogs"}]
    assert first["target"] == [{"f": {"q": "cats"}}] and second["target"] == [{"f": {"q": "dogs"}}]
    assert second["messages"] == first["messages"] + [{"role": "assistant", "content": "[f(q='cats')]"},
                                                      {"role": "tool", "content": "3 cats"}]
    assert summary(second["functions"]) == [("f", {"q": "string"}, [])]


def test_a_bad_later_turn_rejects_the_whole_chat():
    record = json.loads(json.dumps(MULTI_TURN["chat_with_tools"]))
    record["messages"][-1]["tool_calls"][1]["function"]["name"] = "g"
    item = reject_one(record, "chat_with_tools")
    assert item["field"] == "messages[7].tool_calls[1].function" and "'g'" in item["reason"]


# ---------------------------------------------------------------- loading

def test_unknown_format_raises_listing_the_known_ones():
    for call in (lambda: load_user_dataset(str(FIXTURES / "xlam.json"), fmt="alpaca"),
                 lambda: convert_records([], "alpaca")):
        with pytest.raises(ValueError) as err:
            call()
        assert "alpaca" in str(err.value) and all(f in str(err.value) for f in FORMATS)


@pytest.mark.parametrize("path", ["no/such/file.jsonl", str(FIXTURES / "missing.json"), "not-a-dataset"])
def test_missing_path_raises(path):
    with pytest.raises(ValueError, match="not found"):
        load_user_dataset(path, fmt="xlam")


def test_unsupported_file_type_raises(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("query,tools,answers\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_user_dataset(str(path), fmt="xlam")


def test_unreadable_file_raises_one_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"query": "q", "tools": "[]"\nnot json at all\n')
    with pytest.raises(ValueError, match="cannot load the dataset") as err:
        load_user_dataset(str(path), fmt="xlam")
    assert "\n" not in str(err.value)


def test_save_to_disk_folder_parquet_and_limit(tmp_path):
    import datasets

    records = json.loads((FIXTURES / "xlam.json").read_text())
    ds = datasets.Dataset.from_list(records)
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "saved"))
    rows, rejected = load_user_dataset(str(tmp_path / "saved"), fmt="xlam", split="test")
    assert [r["id"] for r in rows] == ["xlam-0"] and rows[0]["target"][0] == {
        "find_n_largest_numbers": {"nums": [5, 1, 9, 7], "n": 2}}
    rows, rejected = load_user_dataset(str(tmp_path / "saved"), fmt="xlam", limit=3)
    assert [r["id"] for r in rows] == ["xlam-0", "xlam-1"] and rejections(rejected) == [("xlam-2", "answers")]
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_user_dataset(str(tmp_path / "saved"), fmt="xlam", split="validation")
    ds.to_parquet(str(tmp_path / "x.parquet"))
    rows, rejected = load_user_dataset(str(tmp_path / "x.parquet"), fmt="xlam", limit=1)
    assert len(rows) == 1 and rejected == []


def test_hub_id_goes_to_load_dataset_with_the_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list([XLAM_OK, XLAM_OK, XLAM_OK])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows, rejected = load_user_dataset("Salesforce/xlam-function-calling-60k", fmt="xlam", split="train", limit=2)
    assert calls == [("Salesforce/xlam-function-calling-60k", {"split": "train"})]
    assert [r["id"] for r in rows] == ["xlam-0", "xlam-1"] and rejected == []


def test_module_never_evaluates_text():
    source = Path(converters.__file__).read_text()
    for banned in ("ev" + "al(", "ex" + "ec("):  # spelled apart so this file passes the same grep
        assert banned not in source
