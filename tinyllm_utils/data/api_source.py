"""Stage-02 source `python_apis`: function-calling rows built from real Python APIs installed here.

Why: bfcl-eval's unused datasets leave a few hundred rows over ~40 functions, too few to teach parallel calls
or when *not* to call. Here every public function of a few installed modules (the standard library's math,
statistics, string, textwrap, ...; numpy, pandas) becomes a BFCL function doc: the signature gives the
parameters, the docstring (parsed by `docstring_parser`: numpydoc, Google, reST) their descriptions and
types, mapped to the types bfcl's checker knows (integer, float, string, boolean, array, dict). Requests are
rendered from varied templates with sampled argument values, so the target is known by construction; the
mix is deliberate: simple, multiple (distractor docs offered), parallel, parallel_multiple and irrelevance
(no offered function fits). Deterministic by seed.

The rows are ordinary stage-02 rows: they meet every filter (bfcl's checker on the target, decontamination
against every scored BFCL category, duplicates, length) in training_data.build_dataset, selected with
`DataConfig(synthetic_sources=[{"name": "python_apis", "rows": 4000}])`. Functions whose name is offered
in a scored BFCL category (e.g. `math.factorial`) are left out by default.

    .venv/bin/python -m tinyllm_utils.data.api_source --rows 4000 --seed 0     # function count and the mix
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache

SOURCE = "python_apis"
DEFAULT_MODULES = ("math", "cmath", "statistics", "string", "textwrap", "json", "html", "shlex", "fnmatch",
                   "colorsys", "calendar", "bisect", "heapq", "os.path", "posixpath", "zlib",
                   "binascii", "unicodedata", "difflib", "ipaddress", "urllib.parse", "base64",
                   "numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.polynomial.polynomial", "pandas")
KINDS = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
# Parameters that only steer memory layout or output buffers: never part of a request.
_SKIP_PARAMS = {"out", "dtype", "where", "casting", "order", "subok", "like", "signature", "extobj", "copy",
                "keepdims", "initial", "self", "cls", "engine", "engine_kwargs", "storage_options", "backend"}
_NAME_TYPES = {  # last resort for undocumented standard-library parameters
    "string": {"s", "text", "string", "sep", "prefix", "suffix", "name", "path", "pattern", "word", "chars",
               "fillchar", "old", "new", "a_string", "pat", "encoding", "errors", "url", "address", "filename",
               "format_spec", "fmt", "tabsize_text", "ch", "chr", "char", "newline", "indent", "placeholder"},
    "integer": {"n", "k", "width", "count", "size", "index", "year", "month", "day", "tabsize", "level",
                "maxsplit", "lo", "hi", "start", "stop", "step", "firstweekday", "ndigits", "i", "j"},
    "float": {"x", "y", "z", "value", "r", "g", "b", "h", "l", "v", "a", "rel_tol", "abs_tol", "phi", "base"},
    "array": {"data", "iterable", "values", "seq", "sequence", "xs", "ys", "weights", "list", "items", "p", "q"},
}
_WORDS = ("alpha", "river", "orbit", "maple", "quartz", "delta", "harbor", "cobalt", "ember", "lunar", "meadow",
          "nimbus", "pixel", "saffron", "tundra", "velvet", "willow", "zephyr", "cinder", "garnet")
_SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Data beats opinions when the sample is large.",
              "Small models can call functions well.", "Meet me at the north gate at noon.",
              "Edge devices run models without a network.", "Every answer should be checked twice.")


@dataclass
class ApiSourceConfig:
    rows: int = 4000
    seed: int = 0
    modules: list[str] = field(default_factory=lambda: list(DEFAULT_MODULES))
    mix: dict = field(default_factory=lambda: {"simple": 0.3, "multiple": 0.2, "parallel": 0.15,
                                               "parallel_multiple": 0.15, "irrelevance": 0.2})
    max_offered: int = 4  # functions offered in multiple / parallel_multiple / irrelevance rows
    exclude_bfcl_functions: bool = True  # leave out functions whose name a scored BFCL category offers
    family_size: int = 12  # functions called / offered together come from one seeded group of this size
    integral_floats: float = 0.0  # share of float arguments given a whole value written as an int; 0 draws nothing
    # share of rows whose request says values the way BFCL's do ("a base of 10"), not by parameter name
    # ("base = 10"), and never names the function; 0 draws nothing
    natural_requests: float = 0.0

    def __post_init__(self):
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown mix kinds {sorted(unknown)}; expected some of {KINDS}")
        if self.max_offered < 2:  # a multiple row offers the called function and at least one other
            raise ValueError(f"max_offered must be at least 2, got {self.max_offered}")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- signatures + docstrings -> BFCL docs


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return (match.group(1) if match else text).strip()


def _enum(type_name: str) -> list | None:
    """numpydoc's `{'left', 'right'}` choice sets: the string choices, or None."""
    match = re.search(r"\{([^}]*)\}", type_name)
    if not match:
        return None
    choices = [c.strip().strip("'\"") for c in match.group(1).split(",")]
    quoted = re.findall(r"['\"]([^'\"]+)['\"]", match.group(1))
    return quoted if quoted and len(quoted) == len(choices) else None


def schema_type(type_name: str | None, default=inspect.Parameter.empty, annotation=inspect.Parameter.empty,
                name: str = "") -> dict | None:
    """A parameter's BFCL schema ({type, items?, enum?}) from its documented type, annotation, default or name;
    None when none of them says (the caller drops an optional parameter and skips a function needing it)."""
    text = (type_name or "").lower()
    text = re.sub(r",?\s*(optional|default.*)$", "", text).strip()
    if annotation is not inspect.Parameter.empty and not text:
        text = getattr(annotation, "__name__", str(annotation)).lower()
    if text:
        if (choices := _enum(type_name or "")) is not None:
            return {"type": "string", "enum": choices}
        first = next((p.strip() for p in re.split(r",|\bor\b|\|", text) if p.strip()), "")
        if re.search(r"array|ndarray|list|sequence|tuple|iterable|series", first):
            kind = "integer" if re.search(r"\bint", first) else "string" if re.search(r"\bstr", first) else "float"
            return {"type": "array", "items": {"type": kind}}
        if re.fullmatch(r"bool(ean)?", first):
            return {"type": "boolean"}
        if re.fullmatch(r"int|integer|int\w*", first):
            return {"type": "integer"}
        if re.fullmatch(r"float|scalar|number|real|float\w*|complex", first) and first != "complex":
            return {"type": "float"}
        if re.fullmatch(r"str|string|path|path-like|pathlike|os\.pathlike", first):
            return {"type": "string"}
        if re.fullmatch(r"dict|mapping", first):
            return {"type": "dict"}
        return None  # a documented type we cannot express (callable, DataFrame, dtype, ...)
    if default is not inspect.Parameter.empty and default is not None:
        for kind, py in (("boolean", bool), ("integer", int), ("float", float), ("string", str)):
            if type(default) is py:
                return {"type": kind}
        return None
    for kind, names in _NAME_TYPES.items():
        if name in names:
            return {"type": kind, "items": {"type": "float"}} if kind == "array" else {"type": kind}
    return None


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def function_doc(qualname: str, obj) -> dict | None:
    """A BFCL function doc for a Python callable, or None when it cannot be called with literal arguments
    (no signature, *args needed, a required parameter of a type bfcl cannot express, nothing to pass)."""
    import docstring_parser

    signature, raw = _signature(obj), inspect.getdoc(obj) or ""
    if signature is None or not raw:
        return None
    try:
        parsed = docstring_parser.parse(raw)
    except (docstring_parser.ParseError, ValueError, IndexError):
        return None
    description = _first_sentence(parsed.short_description)
    if len(description) < 12 or re.match(r"^[\w.]+\(", description):  # a signature line, not a description
        return None
    documented = {p.arg_name: p for p in parsed.params}
    properties, required = {}, []
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if param.kind is inspect.Parameter.VAR_KEYWORD or param.name in _SKIP_PARAMS:
            continue
        doc = documented.get(param.name)
        schema = schema_type(doc.type_name if doc else None, param.default, param.annotation, param.name)
        needed = param.default is inspect.Parameter.empty
        if schema is None:
            if needed:
                return None
            continue
        text = _first_sentence(doc.description if doc else "")
        properties[param.name] = {**schema, "description": text or f"The {param.name.replace('_', ' ')}."}
        if needed:
            required.append(param.name)
    if not required:  # nothing the request has to say: not a function-calling example
        return None
    return {"name": qualname, "description": description,
            "parameters": {"type": "dict", "properties": properties, "required": required}}


@cache
def bfcl_function_names() -> frozenset[str]:
    """Names of every function doc offered in a scored BFCL category (for `exclude_bfcl_functions`)."""
    from tinyllm_utils.bfcl import shim as bfcl
    from tinyllm_utils.bfcl.data import ALL_CATEGORIES

    return frozenset(doc["name"] for category in ALL_CATEGORIES
                     for entry in bfcl.load_dataset_entry(category, include_prereq=False,
                                                          include_language_specific_hint=False)
                     for doc in entry.get("function") or [])


def collect_functions(modules=DEFAULT_MODULES, exclude=frozenset()) -> list[dict]:
    """BFCL docs for the public functions of `modules` (sorted by name; aliases kept once)."""
    docs, seen = {}, set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:  # a module left out silently would change the pool unnoticed
                raise ValueError(f"python_apis module {module_name!r} does not import here: {err}") from err
            prefix = {"posixpath": "os.path", "numpy.polynomial.polynomial": "numpy.polynomial"}.get(module_name,
                                                                                                     module_name)
            for name in sorted(getattr(module, "__all__", None) or dir(module)):
                obj = getattr(module, name, None)
                if name.startswith("_") or obj is None or inspect.isclass(obj) or inspect.ismodule(obj) \
                        or not callable(obj) or id(obj) in seen:
                    continue
                qualname = f"{prefix}.{name}"
                doc = function_doc(qualname, obj)
                if doc and qualname not in exclude and qualname not in docs:
                    seen.add(id(obj))
                    docs[qualname] = doc
    return [docs[name] for name in sorted(docs)]


# ---------------------------------------------------------------- values and request text


def sample_value(schema: dict, rng: random.Random, name: str = "", integral_floats: float = 0.0):
    kind = schema["type"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if kind == "integer" and name.startswith("axis"):
        return rng.randint(0, 1)
    if kind == "integer" or (kind == "float" and integral_floats and rng.random() < integral_floats):
        # a whole number is written as an int ("45"), also for a float parameter (bfcl's checker takes an int
        # there); off by default: an SFT model trained on many such values copies the request's units too
        # ("mass=45 kg")
        return rng.choice([rng.randint(1, 12), rng.randint(2, 100), rng.randint(100, 5000)])
    if kind == "float":
        return round(rng.choice([rng.uniform(0.1, 10), rng.uniform(1, 1000)]), rng.choice([1, 2]))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return rng.choice(_WORDS) if rng.random() < 0.6 else rng.choice(_SENTENCES)
    if kind == "array":
        items = schema.get("items", {"type": "float"})
        return [sample_value(items, rng) for _ in range(rng.randint(2, 5))]
    if kind == "dict":
        return {rng.choice(_WORDS): rng.randint(1, 50) for _ in range(rng.randint(1, 3))}
    raise ValueError(f"no sampler for type {kind!r}")


def _say(value, rng: random.Random, natural: bool = False) -> str:
    if isinstance(value, bool):
        return rng.choice(["true", "True"]) if value else rng.choice(["false", "False"])
    if isinstance(value, str):
        if natural and " " not in value and rng.random() < 0.5:
            return value  # a single word needs no quotes in a sentence ("the weather in Boston")
        return rng.choice(["'{}'", '"{}"']).format(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _arg_phrase(name: str, schema: dict, value, rng: random.Random, natural: bool = False) -> str:
    said = _say(value, rng, natural)
    noun = schema.get("description", "").rstrip(".")
    # a short noun phrase, not the fallback description (it says nothing new) nor a condition ("If true, ...")
    usable = 3 <= len(noun) <= 60 and noun.lower() != f"the {name.replace('_', ' ')}" \
        and not noun.lower().startswith(("if ", "whether", "when "))
    noun = noun[0].lower() + noun[1:] if usable else ""
    if natural:  # the value named by what the parameter means, as BFCL's requests do; never by its name
        noun = noun or "the " + name.replace("_", " ")
        return rng.choice([f"{noun} {said}", f"{noun} of {said}", f"{said} for {noun}", f"{noun}: {said}"])
    options = [f"{name} = {said}", f"{name} set to {said}", f"{said} as {name}", f"{name}={said}"]
    if noun:
        options.append(f"{noun} ({name}) {said}")
    return rng.choice(options)


def _join(parts: list[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + rng.choice([" and ", ", and ", "; "]) + parts[-1]


_VERBS = {"return": "get", "returns": "get", "computes": "compute", "calculates": "calculate",
          "converts": "convert", "creates": "create", "generates": "generate", "tests": "test", "checks": "check"}


def _intent(doc: dict) -> str:
    """The doc's description as a request clause: "Return the square root of x." -> "get the square root of x"."""
    text = re.sub(r"^Returns? (True|true) (if|when|iff)\b", r"check \2", doc["description"].rstrip("."))
    words = text.split(" ")
    first = words[0].lower()
    if first not in _VERBS and first.endswith("s") and not first.endswith(("ss", "us", "is")) and len(first) > 3:
        first = first[:-3] + "y" if first.endswith("ies") else first[:-1]  # "Gives" -> "give"
    return " ".join([_VERBS.get(first, first)] + words[1:])


def _parameters(doc: dict, rng: random.Random) -> list[str]:
    """The parameters a call passes: every required one and some optional ones."""
    properties, required = doc["parameters"]["properties"], doc["parameters"]["required"]
    return [p for p in properties if p in required or rng.random() < 0.25]


def _call(doc: dict, rng: random.Random, integral_floats: float = 0.0, natural: bool = False,
          chosen: list[str] | None = None) -> tuple[dict, str]:
    """A call of `doc` with sampled values of `chosen` (default: `_parameters`) and its spoken args."""
    properties = doc["parameters"]["properties"]
    chosen = _parameters(doc, rng) if chosen is None else chosen
    args = {p: sample_value(properties[p], rng, p, integral_floats) for p in chosen}
    phrases = [_arg_phrase(p, properties[p], v, rng, natural) for p, v in args.items()]
    return {doc["name"]: args}, _join(phrases, rng)


_SINGLE = ("{Intent} with {args}.", "Can you {intent}? Use {args}.", "I have {args}. Please {intent}.",
           "Please {intent}, given {args}.", "Using {name}, {intent} for {args}.",
           "What do I get if I {intent} with {args}?", "Given {args}: {intent}.", "I need to {intent}; take {args}.")
_MORE = ("Also, {intent} with {args}.", "Then {intent} using {args}.", "After that, {intent} for {args}.",
         "And {intent} given {args}.")
_AGAIN = ("Do the same for {args}.", "Repeat it with {args}.", "Then again with {args}.", "Also for {args}.")


def _sentence(template: str, doc: dict, args: str) -> str:
    intent = _intent(doc)
    return template.format(intent=intent, Intent=intent[0].upper() + intent[1:], args=args,
                           name=doc["name"])


# ---------------------------------------------------------------- rows


def _content_words(doc: dict) -> set[str]:
    text = doc["name"].split(".")[-1].replace("_", " ") + " " + doc["description"]
    return {w for w in re.findall(r"[a-z]{4,}", text.lower())} - {"return", "returns", "given", "array", "input",
                                                                 "value", "values", "element", "wise", "along"}


def _unrelated(doc: dict, pool: list[dict], k: int, rng: random.Random) -> list[dict]:
    """Up to k docs that do not do what `doc` does: another name, and few description words in common."""
    words, leaf = _content_words(doc), doc["name"].split(".")[-1]
    picked = []
    for other in rng.sample(pool, min(len(pool), 12 * k)):
        if len(picked) == k:
            break
        other_words = _content_words(other)
        overlap = len(words & other_words) / max(1, len(words | other_words))
        if other["name"] != doc["name"] and other["name"].split(".")[-1] != leaf and overlap < 0.15 \
                and all(o["name"] != other["name"] for o in picked):
            picked.append(other)
    return picked


def make_row(kind: str, docs: list[dict], index: int, rng: random.Random, max_offered: int,
             family: list[dict] | None = None, integral_floats: float = 0.0,
             natural_requests: float = 0.0) -> dict | None:
    """One row of `kind` built around docs[index]. Functions that are called together (parallel_multiple) or
    offered together without a call (irrelevance) come from `family`, a fixed group of docs: stage 02 keeps
    functions linked that way in one split, and links across all docs would leave a single group."""
    doc, family = docs[index], family or docs
    natural = bool(natural_requests) and rng.random() < natural_requests
    single = [t for t in _SINGLE if "{name}" not in t] if natural else _SINGLE

    def spoken_call(d, chosen=None):
        return _call(d, rng, integral_floats, natural, chosen)

    if kind in ("simple", "multiple", "irrelevance"):
        call, args = spoken_call(doc)
        text = _sentence(rng.choice(single), doc, args)
        if kind == "simple":
            functions, target = [doc], [call]
        else:
            extra = _unrelated(doc, docs if kind == "multiple" else family,
                               rng.randint(1, max_offered - (kind == "multiple")), rng)
            if not extra:
                return None
            functions, target = ([doc] + extra, [call]) if kind == "multiple" else (extra, [])
    elif kind == "parallel":
        # the same parameters in every call: "Do the same for x = 2" says only what changes, so a call that
        # dropped an optional argument the first one passed would contradict the request
        chosen = _parameters(doc, rng)
        calls = [spoken_call(doc, chosen) for _ in range(rng.randint(2, 3))]
        text = " ".join([_sentence(rng.choice(single), doc, calls[0][1])]
                        + [rng.choice(_AGAIN).format(args=args) for _, args in calls[1:]])
        functions, target = [doc], [c for c, _ in calls]
        if len({json.dumps(c, sort_keys=True) for c in target}) < len(target):
            return None
    else:  # parallel_multiple: two or three different functions, each called once
        others = _unrelated(doc, family, rng.randint(1, 2), rng)
        if not others:
            return None
        chosen = [doc] + others
        calls = [spoken_call(d) for d in chosen]
        text = " ".join([_sentence(rng.choice(single), chosen[0], calls[0][1])]
                        + [_sentence(rng.choice(_MORE), d, args) for d, (_, args) in zip(chosen[1:], calls[1:])])
        extra = _unrelated(doc, [d for d in docs if d not in chosen], max(0, max_offered - len(chosen)), rng) \
            if rng.random() < 0.5 else []
        functions, target = chosen + extra, [c for c, _ in calls]
    functions = list(functions)
    rng.shuffle(functions)
    return {"id": f"{SOURCE}_{kind}_{index}_{rng.randrange(10**6):06d}", "source": SOURCE,
            "messages": [{"role": "user", "content": text}], "functions": functions, "target": target,
            "user_texts": [text], "api_kind": kind}


def build_rows(config: ApiSourceConfig | None = None) -> list[dict]:
    """`config.rows` stage-02 rows in the configured mix, each function used about equally often."""
    config = config or ApiSourceConfig()
    exclude = bfcl_function_names() if config.exclude_bfcl_functions else frozenset()
    docs = collect_functions(tuple(config.modules), exclude)
    if not docs:
        raise ValueError(f"no usable functions in modules {config.modules}")
    rng = random.Random(f"{SOURCE}:{config.seed}")
    shuffled = list(range(len(docs)))
    rng.shuffle(shuffled)
    family_of = {i: [docs[j] for j in shuffled[k - k % config.family_size:k - k % config.family_size
                                                + config.family_size]] for k, i in enumerate(shuffled)}
    total = sum(config.mix.values())
    exact = {kind: config.rows * share / total for kind, share in config.mix.items()}
    wanted = {kind: int(value) for kind, value in exact.items()}
    for kind in sorted(exact, key=lambda k: wanted[k] - exact[k])[:config.rows - sum(wanted.values())]:
        wanted[kind] += 1  # largest remainders: exactly `rows` in all
    order: list[int] = []
    rows = []
    for kind, count in wanted.items():
        made = 0
        for _ in range(count * 3):  # some draws cannot be built (no unrelated docs, repeated values)
            if made == count:
                break
            if not order:
                order = list(range(len(docs)))
                rng.shuffle(order)
            index = order.pop()
            row = make_row(kind, docs, index, rng, config.max_offered, family_of[index], config.integral_floats,
                           config.natural_requests)
            if row is not None:
                rows.append(row)
                made += 1
    return rows


def load_api_source(spec: dict | str, seed: int = 0) -> list[dict]:
    """A `synthetic_sources` entry of training_data.DataConfig as rows: "python_apis" or
    {"name": "python_apis", "rows": 4000, "seed": 0, "mix": {...}, "modules": [...]}."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    if spec.pop("name", SOURCE) != SOURCE:
        raise ValueError(f"unknown synthetic source {spec!r}; expected {SOURCE!r}")
    spec.setdefault("seed", seed)
    return build_rows(ApiSourceConfig(**spec))


def mix(rows: list[dict]) -> dict:
    """Rows per kind and distinct functions offered / called (the figures the data card reports)."""
    return {"rows": len(rows), "kinds": dict(Counter(r["api_kind"] for r in rows)),
            "functions_offered": len({d["name"] for r in rows for d in r["functions"]}),
            "functions_called": len({next(iter(c)) for r in rows for c in r["target"]})}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ApiSourceConfig.rows)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="print this many example rows")
    args = parser.parse_args(argv)
    rows = build_rows(ApiSourceConfig(rows=args.rows, seed=args.seed))
    print(json.dumps(mix(rows), indent=1))
    for row in rows[:: max(1, len(rows) // max(1, args.show))][: args.show]:
        print(json.dumps({k: row[k] for k in ("messages", "target")}))


if __name__ == "__main__":
    main()
