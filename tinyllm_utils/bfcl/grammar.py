"""Grammar-constrained decoding, an evaluation option (`EvalConfig.grammar`): a GBNF grammar, built from an
entry's offered functions, that llama.cpp's sampler enforces token by token.

The answer is either a Python call list of offered functions, as BFCL's prompt asks for, or prose (any text
that does not start with "["; it is how a model declines, so irrelevance is still the model's choice):

* each call names an offered function and passes its parameters as keywords, in the schema's order, each at
  most once, every required one present: BFCL's checker wants all required parameters and no others, in any
  order (the order is the grammar's simplification: a call in another order cannot be written);
* values have the declared type: string literals, integers, numbers (an integer is allowed where a float is
  declared, as bfcl's checker allows), True/False, lists and tuples of the item type (a list where a tuple is
  declared, as bfcl's checker takes it), dicts, and only the listed values for an `enum`; a parameter of
  unknown type takes any Python literal.

Nothing about the expected answer is used: the grammar is built from the functions the prompt shows, as
llama.cpp deployments constrain tool calls. Built for the Python categories (multi-turn: each step, with the
functions offered so far) and the prompting families whose raw answer is the call list
(`model_families.raw_answer_is_call_list`); Java and JavaScript values are written in their own syntax and are
left free.
"""

from __future__ import annotations

import json
import re

GRAMMAR_VERSION = 2  # part of an evaluation's key: predictions made under another grammar do not mix

# Shared rules. Strings are single- or double-quoted Python literals on one line, with escapes Python reads;
# numbers as Python writes them (no leading zeros); prose starts with neither "[", a space nor a backtick,
# which would let a call list through unconstrained (the decoder strips them).
_COMMON = r"""
ws ::= " "?
hex ::= [0-9a-fA-F]
escape ::= "\\" ( [^xuUN\n\r] | "x" hex hex | "u" hex hex hex hex )
string ::= "'" ( [^'\\\n\r] | escape )* "'" | "\"" ( [^"\\\n\r] | escape )* "\""
digits ::= "0" | [1-9] [0-9]*
integer ::= "-"? digits
float ::= "-"? digits ( "." [0-9]+ ( [eE] [-+]? [0-9]+ )? | [eE] [-+]? [0-9]+ )
number ::= float | integer
boolean ::= "True" | "False"
literal ::= string | number | boolean | "None" | literal-list | literal-tuple | literal-dict
literal-list ::= "[" ( literal ( "," ws literal )* )? "]"
literal-tuple ::= "(" ( literal "," ( ws literal ( "," ws literal )* )? )? ")"
literal-dict ::= "{" ( string ":" ws literal ( "," ws string ":" ws literal )* )? "}"
prose ::= [^\[ \t\n\r`\x00] [^\x00]*
"""

# Declared type -> rule. An integer is allowed where a float is declared: bfcl's checker converts it at the
# top level, and inside a list it scores integers right where the ground truth has them (`interval=[0, 3]`).
_SCALARS = {"string": "string", "integer": "integer", "float": "number", "number": "number",
            "boolean": "boolean", "dict": "literal-dict"}


def _quoted(text: str) -> str:
    """`text` as a GBNF string literal."""
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t")):
        text = text.replace(char, escaped)
    return f'"{text}"'


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


class _Rules:
    """GBNF rules by name; a rule body seen before reuses its name."""

    def __init__(self):
        self.bodies: dict[str, str] = {}

    def add(self, body: str, hint: str) -> str:
        for name, known in self.bodies.items():
            if known == body:
                return name
        name = f"{re.sub('[^a-z0-9]+', '-', hint.lower()).strip('-')[:24] or 'rule'}-{len(self.bodies)}"
        self.bodies[name] = body
        return name

    def value(self, schema: dict) -> str:
        """The rule for one parameter's value."""
        if not isinstance(schema, dict):
            return "literal"
        kind = schema.get("type")
        if kind in ("array", "tuple"):
            items = _as_dict(schema.get("items"))
            if schema.get("enum"):  # BFCL's live data list an array's allowed items as its enum
                items = {**items, "enum": schema["enum"]}
            element = self.value(items) if items else "literal"
            if kind == "array":
                return self.add(f'"[" ( {element} ( "," ws {element} )* )? "]"', kind)
            # bfcl's checker takes a list where a tuple is declared; a tuple of one element needs its comma
            return self.add(f'"(" ( {element} "," ( ws {element} ( "," ws {element} )* )? )? ")" | '
                            f'"[" ( {element} ( "," ws {element} )* )? "]"', kind)
        if schema.get("enum"):
            options = []
            for value in schema["enum"]:
                options.append(_quoted(repr(value)))
                if isinstance(value, str):
                    options.append(_quoted(json.dumps(value, ensure_ascii=False)))  # "value" as well as 'value'
            return self.add(" | ".join(dict.fromkeys(options)), "enum")
        return _SCALARS.get(kind, "literal")

    def call(self, function: dict) -> str:
        """`name(p1=v1, p2=v2)` with the parameters in schema order, optional ones skippable (or None)."""
        parameters = _as_dict(function.get("parameters"))
        properties = _as_dict(parameters.get("properties"))
        required = set(parameters.get("required") or [])
        names = list(properties)
        keyword = []
        for name in names:
            value = self.value(properties[name])
            if name not in required:  # bfcl takes None where the ground truth allows leaving it out
                value = value if value == "literal" else self.add(f'{value} | "None"', "optional")
            keyword.append(f"{_quoted(name + '=')} {value}")

        def choices(start: int, separator: str) -> str:
            """The arguments from position `start` on: the next one written is any up to the first required."""
            options = []
            for j in range(start, len(names)):
                options.append(f"{separator}{keyword[j]} {rest[j + 1]}")
                if names[j] in required:
                    break
            else:
                options.append('""')  # every remaining parameter is optional
            return " | ".join(f"( {option} )" for option in options)

        rest = [""] * len(names) + ['""']  # rest[i]: ", arg" for the parameters from position i on
        for i in range(len(names) - 1, 0, -1):
            rest[i] = self.add(choices(i, '"," ws '), function["name"] + "-args")
        return self.add(f'{_quoted(function["name"] + "(")} ( {choices(0, "")} ) ")"', function["name"])


def call_list_grammar(functions: list[dict]) -> str:
    """The GBNF grammar (llama.cpp) for an answer to a prompt offering `functions` (BFCL's schema). With no
    function offered (some live_irrelevance entries) only prose, or nothing, is allowed."""
    rules = _Rules()
    calls = [rules.call(function) for function in functions]
    if not calls:
        return 'root ::= ( "[]" | prose )?\n' + _COMMON
    head = ("root ::= ( call-list | prose )?\n"  # an empty answer, like "[]", is no call, as bfcl reads it
            'call-list ::= "[" ( call ( "," ws call )* )? "]"\n'
            f"call ::= {' | '.join(dict.fromkeys(calls))}\n")
    return head + "".join(f"{name} ::= {body}\n" for name, body in rules.bodies.items()) + _COMMON
