"""Public function-calling datasets -> the study's one internal row schema.

    rows, rejected = load_user_dataset("Salesforce/xlam-function-calling-60k", fmt="xlam")

A row is `{"id": f"{source}-{index}", "source", "messages", "functions", "target"}`: `messages` is the
conversation before the reference answer (roles system/user/assistant/tool, str content, at least one user
turn), `functions` the offered tools as BFCL function docs, `target` the answer's calls `[{name: {arg:
value}}]` in order (`[]` = the assistant answered in text). A multi-turn chat gives one row per assistant turn
that calls (ids `<source>-<index>`, then `.2`, `.3`...), so SFT learns every such turn: its history holds the
earlier calls as the call text the model writes and their results as `tool` messages, as the evaluation's
multi-turn chat does; assistant text is history, and only a chat without any call gives a text answer (its
first assistant turn). A record that cannot be converted never raises and never vanishes: it becomes a
rejection `{"id", "source", "index", "rule": "convert", "field", "reason", "raw"}` (one bad turn rejects the
whole record). Only an unreadable input (unknown format, missing path) raises `ValueError`.

Parameter types become BFCL's python types (string, integer, float, boolean, array, tuple, dict, any).
JSON-schema types map object->dict, number->float; Python-ish strings (xLAM, API-Bank) map str->string,
List[X]->array of X, "X, optional" / Optional[X] / "X, default=..." -> not required. An array whose source
leaves its items unconstrained (`list`, or no `items`) gets items {"type": "any"}; a parameter whose own type
is missing or unknown rejects the row (a missing type is inferred only from an all-string `enum` -> string,
`properties` -> dict or `items` -> array). Keys that older `datasets` fill with None when they unify struct
schemas across rows are read as absent. Calls are checked against the offered names, not against parameters.

Formats (`FORMATS`):

* xlam: Salesforce xLAM / APIGen-60k. `query` str, `tools` and `answers` JSON strings.
* glaive: glaiveai/glaive-function-calling-v2. `system` = intro + concatenated JSON-schema docs, `chat` =
  "USER: ... ASSISTANT: <functioncall> {"name": .., "arguments": '<json>'} <|endoftext|> FUNCTION RESPONSE: ..".
* chat_with_tools: OpenAI `messages` (+ `tool_calls`) with `tools`, or LLaMA-Factory ShareGPT
  `conversations` (human/gpt/function_call/observation) with `tools` as a JSON string.
* agentbank: Solaris99/AgentBank. Assumed layout (from the hub dataset and code that reads it):
  `{"id": str, "conversations": [{"from": "system"|"human"|"gpt", "value": str, ...}]}`; gpt turns are ReAct
  text "Thought: ...\\nAction: <tool>\\nAction Input: <json>", observations come back as human turns
  "Observation: ...". Tools must be declared as JSON in the system/human text before the first answer: a JSON
  list of specs or one JSON object per spec, each with `name` and `parameters` (JSON schema) or
  `input_parameters` (API-Bank style Python types). Every gpt turn with an "Action:" line is an answer (its
  Thought is dropped), an "Observation:" human turn after it the tool result; other gpt turns (e.g. "OK") stay as
  assistant messages. A chat that never acts answers [] at its first "Final Answer:" or "Action: Finish". Specs
  written as Python reprs (ToolLLaMA) or prose (the alfworld/webshop/gsm8k/... configs, whose actions are
  environment commands) are not parsed: those rows are rejected, never guessed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

FORMATS = ("xlam", "glaive", "chat_with_tools", "agentbank")
_FILE_LOADERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class RowError(ValueError):
    """One record cannot be converted: `field` names the offending field, `reason` says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


# ---------------------------------------------------------------- loading and the per-row driver

def load_user_dataset(path: str, fmt: str, split: str = "train", limit: int | None = None,
                      source: str | None = None) -> tuple[list[dict], list[dict]]:
    """Load a local .json/.jsonl/.parquet file, a save_to_disk folder or a hub id (org/name), then convert."""
    _check_format(fmt)
    import datasets  # heavy import, only when loading

    local = Path(path)
    is_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and local.suffix not in _FILE_LOADERS
    if local.is_file() and local.suffix not in _FILE_LOADERS:
        raise ValueError(f"{path}: unsupported file type {local.suffix!r}; expected .json, .jsonl or .parquet")
    if not (local.exists() or is_hub_id):
        raise ValueError(f"dataset {path!r} not found: neither an existing file/folder nor a hub id (org/name)")
    try:
        if local.is_dir():
            ds = datasets.load_from_disk(str(local))
        elif local.is_file():
            ds = datasets.load_dataset(_FILE_LOADERS[local.suffix], data_files=str(local), split="train")
        else:
            ds = datasets.load_dataset(str(path), split=split)
    except Exception as err:  # unreadable as a whole: one line, the cause chained
        first_line = (str(err).splitlines() or [""])[0]
        raise ValueError(f"{path}: cannot load the dataset: {type(err).__name__}: {first_line}") from err
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{path}: no split {split!r}; splits are {sorted(ds)}")
        ds = ds[split]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return convert_records(ds, fmt, source)


def convert_records(records: Iterable[dict], fmt: str, source: str | None = None) -> tuple[list[dict], list[dict]]:
    """Convert records of format `fmt`; returns (rows, rejected): each record gives its rows (one per calling
    turn of a chat) or one rejection."""
    _check_format(fmt)
    convert, source = _CONVERTERS[fmt], source or fmt
    rows, rejected = [], []
    for index, record in enumerate(records):
        row_id = f"{source}-{index}"
        try:
            if not isinstance(record, dict):
                raise RowError("record", f"expected a dict, found {type(record).__name__}")
            functions, answers = convert(record)
            targets = [_check_calls(calls, functions) for _, calls in answers]  # any bad turn rejects the record
            turns = [{"id": row_id if turn == 1 else f"{row_id}.{turn}", "source": source, "messages": messages,
                      "functions": functions, "target": target}
                     for turn, ((messages, _), target) in enumerate(zip(answers, targets), start=1)]
            if len(turns) > 1:  # stage 02 keeps a chat's rows in one split and never calls them duplicates
                turns = [{**row, "conversation": row_id} for row in turns]
            rows += turns
        except RowError as err:
            rejected.append(_rejection(row_id, source, index, record, err.field, err.reason))
        except Exception as err:  # a converter bug must not lose the row either
            rejected.append(_rejection(row_id, source, index, record, "record",
                                       f"converter failed: {type(err).__name__}: {err}"))
    return rows, rejected


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}; known formats: {', '.join(FORMATS)}")


def _rejection(row_id, source, index, record, field, reason) -> dict:
    raw = json.dumps(record, default=str, ensure_ascii=False)[:2000]
    return {"id": row_id, "source": source, "index": index, "rule": "convert", "field": field,
            "reason": " ".join(str(reason).split()), "raw": raw}


def _check_calls(calls: list[tuple[str, dict]], functions: list[dict]) -> list[dict]:
    """(field, {name: args}) pairs -> the target, once every called name is an offered function."""
    offered = {doc["name"] for doc in functions}
    for field, call in calls:
        (name,) = call
        if name not in offered:
            raise RowError(field, f"call to {name!r}, which is not among the offered functions {sorted(offered)}")
    return [call for _, call in calls]


# ---------------------------------------------------------------- shared helpers

def _get(record: dict, key: str, types: type | tuple, field: str | None = None) -> Any:
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise RowError(field or key, f"expected {expected}, found {_kind(value)}")
    return value


def _kind(value) -> str:
    return "nothing (missing)" if value is None else f"{type(value).__name__} {str(value)[:60]!r}"


def _json(value, field: str, types: type | tuple = (list, dict)) -> Any:
    """A JSON value that may arrive as a string (JSON-encoded) or already decoded."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(field, f"malformed JSON ({err.msg} at char {err.pos}) in {value[:80]!r}") from None
    if not isinstance(value, types):
        raise RowError(field, f"expected JSON {getattr(types, '__name__', 'list or object')}, found {_kind(value)}")
    return value


def _call(name, arguments, field: str) -> tuple[str, dict]:
    """One call as (field, {name: {arg: value}}); arguments may be a JSON string, a dict, or absent."""
    if not isinstance(name, str) or not name:
        raise RowError(f"{field}.name", f"expected a function name, found {_kind(name)}")
    args = {} if arguments in (None, "") else _json(arguments, f"{field}.arguments", dict)
    return field, {name: args}


def _call_obj(obj, field: str) -> tuple[str, dict]:
    """A {"name": ..., "arguments": ...} object -> _call."""
    if not isinstance(obj, dict):
        raise RowError(field, f"expected a call object with name and arguments, found {_kind(obj)}")
    return _call(obj.get("name"), obj.get("arguments"), field)


def _message(role: str, content, field: str) -> dict:
    if isinstance(content, list):  # OpenAI content parts
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise RowError(field, "content parts other than text")
        content = "".join(str(p.get("text") or "") for p in content)
    if not isinstance(content, str):
        raise RowError(field, f"expected str content, found {_kind(content)}")
    return {"role": role, "content": content}


def _need_user(messages: list[dict], field: str) -> list[dict]:
    if not any(m["role"] == "user" for m in messages):
        raise RowError(field, "no user message before the answer")
    return messages


class _Conversation:
    """A chat read turn by turn into answers: one (messages before it, calls) per assistant turn that calls,
    earlier calls kept in the history as the call text the model writes and tool results as `tool` messages
    (the evaluation's multi-turn chat). Assistant text stays as history; only a chat with no call at all
    answers in text, at its first assistant turn (target []). As in the evaluation, an answer is its call list
    alone and follows a user or tool turn: text said just before a call (or beside it) is not kept, nor a
    greeting before the first user turn (the system prompt is folded into the first turn)."""

    def __init__(self, field: str):
        self.field, self.messages, self.answers, self.first_text = field, [], [], None
        self.last_is_text = False

    def add(self, role: str, content) -> None:
        self.messages.append({"role": role, "content": content})
        self.last_is_text = False

    def call(self, calls: list[tuple[str, dict]], field: str) -> None:
        from tinyllm_utils.models.prompts import render_calls

        if not calls:
            raise RowError(field, "an empty call list")
        if self.last_is_text:
            self.messages.pop()
        self.answers.append((_need_user(list(self.messages), self.field), calls))
        self.add("assistant", render_calls([call for _, call in calls]))

    def text(self, content: str, answer: bool = True) -> None:
        """Assistant text; `answer=False`: a chat without calls does not answer here (ReAct's "OK")."""
        if not any(m["role"] == "user" for m in self.messages):
            return
        if answer and self.first_text is None and not self.answers:
            self.first_text = list(self.messages)
        self.add("assistant", content)
        self.last_is_text = True

    def result(self, content: str, field: str) -> None:
        if not self.answers:
            raise RowError(field, "a tool result before any call")
        self.add("tool", content)

    def done(self, missing: str) -> list[tuple[list[dict], list]]:
        if self.answers:
            return self.answers
        if self.first_text is not None:
            return [(self.first_text, [])]
        _need_user(self.messages, self.field)
        raise RowError(self.field, missing)


# JSON-schema names; anything else in a schema's "type" goes through the Python-ish parser (str, List[int], ...)
_SCHEMA_TYPES = {"object": "dict", "array": "array", "number": "float", "integer": "integer", "string": "string",
                 "boolean": "boolean"}
_PY_TYPES = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "float",
             "number": "float", "bool": "boolean", "boolean": "boolean", "list": "array", "sequence": "array",
             "array": "array", "dict": "dict", "mapping": "dict", "object": "dict", "tuple": "tuple", "any": "any"}


def _schema_param(schema, field: str) -> dict:
    """JSON-schema property -> BFCL parameter doc (recursive for items and nested properties)."""
    if not isinstance(schema, dict):
        raise RowError(field, f"expected a parameter schema object, found {_kind(schema)}")
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        enum = schema.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
            kind = "string"
        elif isinstance(schema.get("properties"), dict):
            kind = "object"
        elif schema.get("items") is not None:
            kind = "array"
        else:
            raise RowError(field, f"parameter type missing or not a single type, found {_kind(schema.get('type'))}")
    if not isinstance(kind, str):
        raise RowError(field, f"parameter type must be a string, found {_kind(kind)}")
    doc = {"type": _SCHEMA_TYPES[kind]} if kind in _SCHEMA_TYPES else dict(_python_type(kind, field)[0])
    doc["description"] = _description(schema, field)
    for key in ("enum", "default"):
        if schema.get(key) is not None:
            doc[key] = schema[key]
    if doc["type"] in ("array", "tuple") and schema.get("items") is not None:
        items = _schema_param(schema["items"], f"{field}.items")
        doc["items"] = {k: v for k, v in items.items() if k != "description" or v}
    elif doc["type"] in ("array", "tuple"):
        doc.setdefault("items", {"type": "any"})  # JSON schema without `items`: any item
    if doc["type"] == "dict" and isinstance(schema.get("properties"), dict):
        nested = _schema_params(schema, field)
        doc["properties"] = nested["properties"]
        if nested["required"]:
            doc["required"] = nested["required"]
    return doc


def _schema_params(schema, field: str) -> dict:
    """JSON-schema `parameters` object -> BFCL {"type": "dict", "properties", "required"}."""
    if schema is None:
        return {"type": "dict", "properties": {}, "required": []}
    if not isinstance(schema, dict):
        raise RowError(field, f"expected a JSON-schema object, found {_kind(schema)}")
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        raise RowError(f"{field}.properties", f"expected an object, found {_kind(props)}")
    properties = {name: _schema_param(p, f"{field}.properties.{name}") for name, p in props.items()
                  if p is not None}  # None: a key Arrow added from another row's schema
    required = schema.get("required") or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise RowError(f"{field}.required", f"expected a list of names, found {_kind(required)}")
    missing = [r for r in required if r not in properties]
    if missing:
        raise RowError(f"{field}.required", f"required {missing} not among the properties {sorted(properties)}")
    return {"type": "dict", "properties": properties, "required": list(required)}


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets: "Dict[str, int], optional" -> ["Dict[str, int]", "optional"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _python_type(text: str, field: str) -> tuple[dict, bool]:
    """Python-ish type string -> (BFCL type doc, optional?). Unknown types raise RowError."""
    head, *suffixes = _split_top(text.strip())
    optional = False
    for suffix in suffixes:
        if not suffix.lower().startswith(("optional", "default")):
            raise RowError(field, f"unknown type qualifier {suffix!r} in {text!r}")
        optional = True
    match = re.fullmatch(r"([A-Za-z_.]+)\s*(?:\[(.*)\])?", head, re.S)
    if not match:
        raise RowError(field, f"unsupported parameter type {text!r}")
    base, inner = match.group(1).split(".")[-1].lower(), match.group(2)
    args = _split_top(inner) if inner else []
    if base in ("optional", "union"):
        members = [a for a in args if a.lower() not in ("none", "nonetype")]
        optional = optional or base == "optional" or len(members) < len(args)
        if {_python_type(a, field)[0]["type"] for a in members} == {"integer", "float"}:
            return {"type": "float"}, optional
        if len(members) != 1:
            raise RowError(field, f"union type {text!r} has no single BFCL type")
        return _python_type(members[0], field)[0], optional
    if base not in _PY_TYPES:
        raise RowError(field, f"unsupported parameter type {text!r}")
    doc = {"type": _PY_TYPES[base]}
    if doc["type"] in ("array", "tuple"):
        item_kinds = {json.dumps(_python_type(a, field)[0], sort_keys=True) for a in args if a != "..."}
        doc["items"] = json.loads(item_kinds.pop()) if len(item_kinds) == 1 else {"type": "any"}
    return doc, optional


def _python_params(params, field: str) -> dict:
    """xLAM / API-Bank `{pname: {"type": "str, optional", "description", "default"}}` -> BFCL parameters."""
    if not isinstance(params, dict):
        raise RowError(field, f"expected an object of parameters, found {_kind(params)}")
    properties, required = {}, []
    for name, spec in params.items():
        pfield = f"{field}.{name}"
        if spec is None:  # a key Arrow added from another row's parameters
            continue
        if not isinstance(spec, dict):
            raise RowError(pfield, f"expected a parameter object, found {_kind(spec)}")
        doc, optional = _python_type(_get(spec, "type", str, f"{pfield}.type"), f"{pfield}.type")
        properties[name] = {**doc, "description": _description(spec, pfield)}
        if "default" in spec:
            properties[name]["default"] = spec["default"]
        elif not optional:
            required.append(name)
    return {"type": "dict", "properties": properties, "required": required}


def _description(spec: dict, field: str) -> str:
    text = spec.get("description")
    if text is not None and not isinstance(text, str):
        raise RowError(f"{field}.description", f"expected str, found {_kind(text)}")
    return text or ""


def _function_doc(spec, field: str, style: str) -> dict:
    """A tool spec -> BFCL function doc; style "schema" (JSON schema), "python" (xLAM) or "auto"."""
    if isinstance(spec, dict) and spec.get("type") == "function" and isinstance(spec.get("function"), dict):
        spec = spec["function"]  # OpenAI {"type": "function", "function": {...}}
    if not isinstance(spec, dict):
        raise RowError(field, f"expected a function spec object, found {_kind(spec)}")
    name = _get(spec, "name", str, f"{field}.name")
    params = spec.get("parameters", spec.get("input_parameters"))
    pfield = f"{field}.parameters"
    if isinstance(params, str):
        params = _json(params, pfield, dict)
    if style == "auto":
        is_schema = isinstance(params, dict) and (params.get("type") in ("object", "dict")
                                                  or isinstance(params.get("required"), list))
        style = "schema" if is_schema else "python"
    parameters = _schema_params(params, pfield) if style == "schema" else _python_params(params or {}, pfield)
    return {"name": name, "description": _description(spec, field), "parameters": parameters}


def _function_docs(specs, field: str, style: str) -> list[dict]:
    docs = [_function_doc(spec, f"{field}[{i}]", style) for i, spec in enumerate(_json(specs, field, list))]
    names = [d["name"] for d in docs]
    if len(set(names)) != len(names):
        raise RowError(field, f"duplicate function names in {names}")
    return docs


# ---------------------------------------------------------------- xlam

def _convert_xlam(record: dict):
    """xLAM: one user query, Python-typed tools (JSON string), answers = [{"name", "arguments"}] (JSON string)."""
    query = _get(record, "query", str)
    functions = _function_docs(_get(record, "tools", (str, list)), "tools", "python")
    answers = _json(_get(record, "answers", (str, list)), "answers", list)
    calls = [_call_obj(answer, f"answers[{i}]") for i, answer in enumerate(answers)]
    return functions, [([{"role": "user", "content": query}], calls)]


# ---------------------------------------------------------------- glaive

_GLAIVE_TURN = re.compile(r"(?:^|\n)[ \t]*(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]?")
_GLAIVE_CALL = re.compile(r"""\{\s*"name"\s*:\s*"([^"]+)"\s*,\s*"arguments"\s*:\s*'(.*)'\s*\}""", re.S)


def _glaive_docs(system: str) -> list[dict]:
    """The JSON objects concatenated after the system prompt's intro, parsed one by one (raw_decode)."""
    decoder, docs, pos = json.JSONDecoder(), [], system.find("{")
    while 0 <= pos < len(system):
        try:
            doc, pos = decoder.raw_decode(system, pos)
        except json.JSONDecodeError as err:
            raise RowError("system", f"function doc {len(docs)} is malformed JSON ({err.msg} at char {err.pos})")
        docs.append(doc)
        while pos < len(system) and system[pos].isspace():
            pos += 1
        if pos < len(system) and system[pos] != "{":
            raise RowError("system", f"unexpected text after function doc {len(docs) - 1}: {system[pos:pos + 40]!r}")
    return [_function_doc(d, f"system.functions[{i}]", "schema") for i, d in enumerate(docs)]


def _glaive_call(text: str, field: str) -> tuple[str, dict]:
    body = text.split("<functioncall>", 1)[1].replace("<|endoftext|>", "").strip()
    try:
        call = json.loads(body)  # some rows carry arguments as a plain JSON object
    except json.JSONDecodeError:
        match = _GLAIVE_CALL.fullmatch(body)  # the usual {"name": "f", "arguments": '<json>'}
        if not match:
            raise RowError(field, f"functioncall is not {{\"name\": ..., \"arguments\": '...'}}: {body[:80]!r}")
        call = {"name": match.group(1), "arguments": match.group(2)}
    return _call_obj(call, field)


def _convert_glaive(record: dict):
    """glaive v2: docs from `system`; one answer per ASSISTANT <functioncall> turn (_Conversation)."""
    functions = _glaive_docs(_get(record, "system", str))
    if not functions:
        raise RowError("system", "no functions offered")
    chat = _get(record, "chat", str)
    marks = list(_GLAIVE_TURN.finditer(chat))
    if not marks or chat[:marks[0].start()].strip():
        raise RowError("chat", f"expected the chat to start with 'USER:', found {chat[:40]!r}")
    conversation = _Conversation("chat")
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(chat)
        content = chat[mark.end():end].replace("<|endoftext|>", "").strip()
        if mark.group(1) == "ASSISTANT":
            if "<functioncall>" in content:
                conversation.call([_glaive_call(content, f"chat.turns[{i}]")], f"chat.turns[{i}]")
            else:
                conversation.text(content)
        elif mark.group(1) == "FUNCTION RESPONSE":
            conversation.result(content, f"chat.turns[{i}]")
        else:
            conversation.add("user", content)
    return functions, conversation.done("no ASSISTANT turn")


# ---------------------------------------------------------------- chat_with_tools (OpenAI messages, ShareGPT)

def _convert_chat(record: dict):
    """OpenAI `messages` (+ `tool_calls`, `tool` results) or LLaMA-Factory `conversations` + `tools`: one answer
    per assistant turn that calls (_Conversation)."""
    tools = record.get("tools")
    functions = [] if tools in (None, "", []) else _function_docs(tools, "tools", "schema")
    if record.get("messages") is None and record.get("conversations") is not None:
        return _convert_sharegpt(record, functions)
    conversation = _Conversation("messages")
    for i, msg in enumerate(_get(record, "messages", list)):
        field = f"messages[{i}]"
        role = _get(msg, "role", str, f"{field}.role")
        if role == "assistant":
            calls = msg.get("tool_calls") or []
            if not isinstance(calls, list):
                raise RowError(f"{field}.tool_calls", f"expected a list, found {_kind(calls)}")
            calls = [_call_obj(_get(call, "function", dict, f"{field}.tool_calls[{j}].function"),
                               f"{field}.tool_calls[{j}].function") for j, call in enumerate(calls)]
            if calls:
                conversation.call(calls, f"{field}.tool_calls")
            else:
                conversation.text(_message(role, msg.get("content"), f"{field}.content")["content"])
        elif role == "tool":
            conversation.result(_message(role, msg.get("content"), f"{field}.content")["content"], field)
        elif role in ("system", "user"):
            conversation.add(role, _message(role, msg.get("content"), f"{field}.content")["content"])
        else:
            raise RowError(f"{field}.role", f"unknown role {role!r}; expected system, user, assistant or tool")
    return _need_tools(functions), conversation.done("no assistant turn")


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user"}


def _convert_sharegpt(record: dict, functions: list[dict]):
    conversation = _Conversation("conversations")
    if record.get("system"):
        conversation.add("system", _message("system", record["system"], "system")["content"])
    for i, turn in enumerate(_get(record, "conversations", list)):
        field = f"conversations[{i}]"
        sender = _get(turn, "from", str, f"{field}.from")
        value = turn.get("value")
        if sender in ("gpt", "assistant"):
            conversation.text(_message("assistant", value, f"{field}.value")["content"])
        elif sender == "function_call":
            value = _json(value, f"{field}.value", (list, dict))
            if isinstance(value, dict):  # one call, or a list of parallel calls
                conversation.call([_call_obj(value, f"{field}.value")], f"{field}.value")
            else:
                conversation.call([_call_obj(c, f"{field}.value[{j}]") for j, c in enumerate(value)],
                                  f"{field}.value")
        elif sender in ("observation", "tool"):
            conversation.result(_message("tool", value, f"{field}.value")["content"], field)
        elif sender in _SHAREGPT_ROLES:
            conversation.add(_SHAREGPT_ROLES[sender], _message(sender, value, f"{field}.value")["content"])
        else:
            raise RowError(f"{field}.from", f"unknown sender {sender!r}; expected system, human, gpt, "
                                            "function_call or observation")
    return _need_tools(functions), conversation.done("no gpt or function_call turn")


def _need_tools(functions: list[dict]) -> list[dict]:
    if not functions:
        raise RowError("tools", "no functions offered")
    return functions


# ---------------------------------------------------------------- agentbank

_REACT_ACTION = re.compile(r"^\s*Action\s*:\s*(.+?)\s*$", re.M)
_REACT_INPUT = re.compile(r"^\s*Action Input\s*:\s*", re.M)
_REACT_FINAL = re.compile(r"^\s*Final Answer\s*:", re.M)
_REACT_OBSERVATION = re.compile(r"^\s*Observation\s*:\s*")
_JSON_START = re.compile(r"[\[{]")


def _json_specs(text: str) -> list:
    """Tool specs embedded as JSON in prose: lists of specs, or spec objects, anywhere in the text."""
    decoder, specs, pos = json.JSONDecoder(), [], 0
    while (match := _JSON_START.search(text, pos)) is not None:
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            pos = match.start() + 1
            continue
        items = value if isinstance(value, list) else [value]
        found = [v for v in items if isinstance(v, dict) and isinstance(v.get("name"), str)
                 and ("parameters" in v or "input_parameters" in v)]
        specs += found
        pos = end if found else match.start() + 1
    return specs


def _react_call(text: str, field: str) -> list[tuple[str, dict]]:
    action = _REACT_ACTION.search(text)
    if action is None or action.group(1).lower() in ("finish", "final answer"):
        return []
    rest = text[action.end():]
    given = _REACT_INPUT.search(rest)
    if given is None:
        raise RowError(field, f"'Action: {action.group(1)}' has no 'Action Input:' line")
    try:
        args, _ = json.JSONDecoder().raw_decode(rest, given.end())
    except json.JSONDecodeError as err:
        raise RowError(field, f"Action Input is malformed JSON ({err.msg}): {rest[given.end():][:80]!r}") from None
    return [_call(action.group(1), args, field)]


def _convert_agentbank(record: dict):
    """AgentBank ReAct trajectories: JSON tool specs in the prompt, one answer per turn with an Action
    (_Conversation), its "Observation:" the tool result; a chat without an Action answers in text at its
    first "Final Answer:" or "Action: Finish"."""
    conversation, specs, spec_field = _Conversation("conversations"), [], "conversations[0].value"
    for i, turn in enumerate(_get(record, "conversations", list)):
        field = f"conversations[{i}]"
        sender = _get(turn, "from", str, f"{field}.from")
        value = _get(turn, "value", str, f"{field}.value")
        role = {"system": "system", "human": "user", "user": "user", "gpt": "assistant"}.get(sender)
        if role is None:
            raise RowError(f"{field}.from", f"unknown sender {sender!r}; expected system, human or gpt")
        if role == "assistant" and (_REACT_ACTION.search(value) or _REACT_FINAL.search(value)):
            if not specs:
                raise RowError(spec_field, "no JSON tool specs (objects with name and parameters) before the answer")
            calls = _react_call(value, f"{field}.value")
            if calls:
                conversation.call(calls, f"{field}.value")
            else:
                conversation.text(value)
        elif role == "assistant":
            conversation.text(value, answer=False)
        elif (role == "user" and conversation.answers and conversation.messages[-1]["role"] in ("assistant", "tool")
              and _REACT_OBSERVATION.match(value)):
            conversation.result(_REACT_OBSERVATION.sub("", value, count=1), field)
        else:
            found = _json_specs(value) if not conversation.answers else []  # specs come before the first call
            if found and not specs:
                spec_field = f"{field}.value"
            specs += found
            conversation.add(role, value)
    answers = conversation.done("no gpt turn with an 'Action:' line or a 'Final Answer:'")
    unique = [spec for k, spec in enumerate(specs) if spec not in specs[:k]]  # one spec quoted twice
    return _function_docs(unique, f"{spec_field}.tools", "auto"), answers


_CONVERTERS = {"xlam": _convert_xlam, "glaive": _convert_glaive, "chat_with_tools": _convert_chat,
               "agentbank": _convert_agentbank}
