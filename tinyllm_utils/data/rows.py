"""The rows of stage 02 (stages/data_filtering.py): a clean, decontaminated, augmented function-calling training
set (notebooks/02_data_filtering).

    sources (bfcl-eval's unused datasets, user datasets via converters)
      -> filters, in order, each counted: decontamination, target_parses, function_exists,
         required_arguments, argument_types, checker_accepts, duplicate, near_duplicate, length
      -> split by function name (validation functions never called in train)
      -> augmentation inside each split (parallel, multiple, irrelevance), every new row flagged and checked
      -> `datasets` DatasetDict (save_to_disk) + rejected.jsonl + reports + data card

Rows are plain dicts while they move through the stage: `id`, `source`, `messages` ([{role, content}]),
`functions` (BFCL function docs), `target` ([{name: {arg: value}}], [] = no call), and `user_texts` (every user
turn of the source entry, for decontamination). A row that fails a rule is never dropped silently: it goes to
the rejected list with the rule, the field and the reason. Saved columns are strings (JSON for structures):
the contract stage 03 (`pairs.load_stage02`) and the trainers read.

Decontamination is measured, not listed: a row is contaminated when at least `contamination_threshold` of
the word n-grams of one of its user turns occur in a scored BFCL category's questions, or when one of its
function docs is identical to a doc offered in a scored category. Model-written text never enters here:
reference calls are parsed with tinyllm_utils.bfcl.decoding (literals only).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from tqdm import tqdm  # text bars: they reach the terminal through papermill too

from tinyllm_utils.bfcl import shim as bfcl
from tinyllm_utils.bfcl.data import ALL_CATEGORIES, Example
from tinyllm_utils.bfcl.decoding import DecodeError, decode_ast
from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.core.results import manifest
from tinyllm_utils.models import families
from tinyllm_utils.models.prompts import answer_text

if TYPE_CHECKING:  # the stage config a caller passes; imported for annotations only
    from tinyllm_utils.stages.data_filtering import DataConfig

# bfcl-eval's `data/unused_datasets`: offered to the study as a training pool. Every one goes through the same
# filters; `chatable` and `multi_turn_composite` are expected to fall to decontamination (measured, not listed).
BFCL_POOL = ("exec_simple", "exec_multiple", "exec_parallel", "exec_parallel_multiple", "sql", "rest",
             "chatable", "multi_turn_composite")
FILTERS = ("decontamination", "target_parses", "function_exists", "required_arguments", "argument_types",
           "checker_accepts", "duplicate", "near_duplicate", "length")
FILTER_DESCRIPTIONS = {
    "convert": "the source record could not be converted (field missing, malformed JSON, wrong type)",
    "decontamination": "question n-grams or a function doc overlap a scored BFCL category",
    "target_parses": "the reference answer is a list of calls with literal arguments",
    "function_exists": "every called function is among the offered functions",
    "required_arguments": "every required parameter is given",
    "argument_types": "every argument is a declared parameter of the right type, inside its enum",
    "checker_accepts": "bfcl-eval's official checker accepts the reference answer",
    "duplicate": "same question and same answer as an earlier row",
    "near_duplicate": "question shingles nearly identical to an earlier row with the same called functions",
    "length": "prompt and answer fit the model's token budget",
}
AUGMENTATIONS = ("parallel", "multiple", "irrelevance")
SYNTHETIC_SOURCES = ("python_apis",)  # tinyllm_utils.data.api_source
COLUMNS = ["id", "source", "category", "messages", "functions", "target", "augmentation"]
_PY_TYPES = {"string": (str,), "integer": (int,), "float": (int, float), "boolean": (bool,), "array": (list,),
             "tuple": (list,), "dict": (dict,), "any": (object,)}


def reject(row: dict, rule: str, field_name: str, reason: str) -> dict:
    """A rejected row: what it was, which rule removed it, on which field, and why."""
    return {"id": row.get("id"), "source": row.get("source"), "rule": rule, "field": field_name, "reason": reason,
            "row": json.dumps({k: v for k, v in row.items() if k != "user_texts"}, default=str)[:4000]}


# ---------------------------------------------------------------- sources: bfcl-eval's unused datasets


def _unused_file(kind: str, name: str) -> Path:
    return bfcl.PROMPT_PATH / "unused_datasets" / kind / f"{bfcl.VERSION_PREFIX}_{name}.json"


def _turns(question) -> list[list[dict]]:
    """A BFCL question as a list of turns: unused datasets store a string, one turn, or a list of turns."""
    if isinstance(question, str):
        return [[{"role": "user", "content": question}]]
    return question if question and isinstance(question[0], list) else [question]


def _user_texts(question) -> list[str]:
    return [m["content"] for turn in _turns(question) for m in turn if m.get("role") == "user"]


def _first_acceptable(options):
    """The first acceptable value of a BFCL possible answer (`""` means "may be omitted")."""
    value = next((o for o in options if o != ""), None)
    if isinstance(value, dict):  # dict parameters list their keys' options one level down
        return {k: _first_acceptable(v) if isinstance(v, list) else v for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_first_acceptable([v]) for v in value]
    return value


def possible_answer_as_calls(ground_truth: list[dict]) -> list[dict]:
    """BFCL possible answers ({name: {arg: [options]}}) as one concrete target: first option, omitted if optional."""
    return [{name: {arg: value for arg, options in args.items() if (value := _first_acceptable(options)) is not None}}
            for call in ground_truth for name, args in call.items()]


def load_bfcl_source(name: str) -> list[dict]:
    """One unused bfcl-eval dataset as rows. Reference answers that are call strings stay text (`target_text`)
    until the `target_parses` filter parses them; sources without a usable reference keep `target=None`."""
    if name not in BFCL_POOL:
        raise ValueError(f"unknown bfcl source {name!r}; expected one of {BFCL_POOL}")
    entries = bfcl.load_file(_unused_file("question", name))
    answers = {}
    if name == "rest":  # its possible_answer holds API responses; the calls are in the sanity-check file
        calls = bfcl.load_file(bfcl.PROMPT_PATH / "unused_datasets" / "executable_eval_sanity_check"
                               / "api_status_check_ground_truth_rest.json")
        answers = {f"rest_{a['idx']}": [a["ground_truth"]] for a in calls}
    elif name != "chatable":
        answers = {a["id"]: a["ground_truth"] for a in bfcl.load_file(_unused_file("possible_answer", name))}
    if name == "multi_turn_composite":  # function docs come from the involved API classes, as in BFCL
        entries = bfcl.populate_test_cases_with_predefined_functions(entries)

    rows = []
    for index, entry in enumerate(entries):
        entry_id = entry.get("id", f"{name}_{index}")
        question = entry["question"]
        row = {"id": f"bfcl_{entry_id}", "source": f"bfcl:{name}", "messages": _turns(question)[0],
               "functions": entry.get("function") or [], "target": None, "user_texts": _user_texts(question)}
        answer = answers.get(entry_id)
        if name == "multi_turn_composite" and answer is not None:
            answer = answer[0]  # the first turn's calls; later turns depend on simulated state
        if name == "sql" and answer is not None:
            row["target"] = possible_answer_as_calls(answer)
        elif answer is not None:
            row["target_text"] = answer
        rows.append(row)
    return rows


def load_sources(config: DataConfig, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Every configured source as rows, plus the records the converters could not read."""
    rows, rejected = [], []
    for name in tqdm(config.bfcl_sources, desc="bfcl sources", disable=not progress):
        rows.extend(load_bfcl_source(name))
    for spec in config.user_datasets:
        from tinyllm_utils.data.converters import load_user_dataset

        converted, bad = load_user_dataset(spec["path"], fmt=spec["format"], split=spec.get("split", "train"),
                                           limit=spec.get("limit"), source=spec.get("source"))
        for row in converted:
            row.setdefault("user_texts", [m["content"] for m in row["messages"] if m["role"] == "user"])
        rows.extend(converted)
        rejected.extend(bad)
    for spec in config.synthetic_sources:
        from tinyllm_utils.data.api_source import load_api_source

        rows.extend(load_api_source(spec, seed=config.seed))
    return rows, rejected


# ---------------------------------------------------------------- decontamination


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple]:
    if len(words) < n:  # short questions: the whole question is one gram
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _doc_key(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


class BenchmarkIndex:
    """Question n-grams, whole questions and function docs of every scored BFCL category (unhinted docs)."""

    def __init__(self, categories=ALL_CATEGORIES, n: int = 8):
        self.n, self.categories = n, list(categories)
        self.grams: dict[tuple, set[str]] = defaultdict(set)
        self.questions: dict[str, set[str]] = defaultdict(set)
        self.docs: dict[str, set[str]] = defaultdict(set)
        for category in self.categories:
            for entry in bfcl.load_dataset_entry(category, include_prereq=False, include_language_specific_hint=False):
                for text in _user_texts(entry["question"]):
                    words = _words(text)
                    self.questions[" ".join(words)].add(category)
                    for gram in _ngrams(words, n):
                        self.grams[gram].add(category)
                for doc in entry.get("function") or []:
                    self.docs[_doc_key(doc)].add(category)

    def overlap(self, text: str) -> dict[str, float]:
        """Per category: the share of this text's n-grams found in that category's questions."""
        grams = _ngrams(_words(text), self.n)
        counts = Counter(c for gram in grams for c in self.grams.get(gram, ()))
        return {c: k / len(grams) for c, k in counts.items()}

    def match(self, row: dict, threshold: float) -> dict:
        """Which categories a row overlaps, and how: n-gram share, an identical user turn, an identical doc."""
        ngram, exact, docs = {}, set(), set()
        for text in row.get("user_texts") or []:
            for category, share in self.overlap(text).items():
                ngram[category] = max(ngram.get(category, 0.0), share)
            exact |= self.questions.get(" ".join(_words(text)), set())
        for doc in row.get("functions") or []:
            docs |= self.docs.get(_doc_key(doc), set()) if isinstance(doc, dict) else set()
        flagged = {c for c, share in ngram.items() if share >= threshold}
        return {"ngram": ngram, "exact": exact, "docs": docs, "flagged": flagged | docs}


def decontaminate(rows: list[dict], index: BenchmarkIndex, threshold: float, progress: bool = True):
    """(kept, rejected, report): the report has one line per (source, BFCL category) with any overlap."""
    kept, rejected, report = [], [], Counter()
    sources = Counter(r["source"] for r in rows)
    for row in tqdm(rows, desc="decontamination", disable=not progress):
        found = index.match(row, threshold)
        for category in set(found["ngram"]) | found["exact"] | found["docs"]:
            report[(row["source"], category, "ngram>=threshold")] += found["ngram"].get(category, 0) >= threshold
            report[(row["source"], category, "identical_user_turn")] += category in found["exact"]
            report[(row["source"], category, "identical_function_doc")] += category in found["docs"]
        if found["flagged"]:
            # ties go to the category listed first, so the reason does not depend on set order (hash seed)
            worst = max(found["ngram"].items(), key=lambda kv: (kv[1], -index.categories.index(kv[0])),
                        default=(None, 0.0))
            why = (f"{worst[1]:.0%} of a user turn's {index.n}-grams occur in BFCL {worst[0]}"
                   if worst[1] >= threshold else f"a function doc is identical to one in BFCL {sorted(found['docs'])}")
            rejected.append(reject(row, "decontamination", "messages" if worst[1] >= threshold else "functions", why))
        else:
            kept.append(row)
    table = pd.DataFrame([{"source": s, "bfcl_category": c, "measure": m, "rows": k, "source_rows": sources[s]}
                          for (s, c, m), k in report.items() if k])
    if len(table):
        table = (table.pivot_table(index=["source", "source_rows", "bfcl_category"], columns="measure",
                                   values="rows", fill_value=0, aggfunc="sum").reset_index())
        table.columns.name = None
        table = table.sort_values(["source", "bfcl_category"]).reset_index(drop=True)
    return kept, rejected, table


# ---------------------------------------------------------------- filters on the reference answer


def _is_literal(value) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_literal(v) for k, v in value.items())
    return False


def _as_json(value):
    """Tuples (a `(1, 2)` in a reference call) become lists: JSON has no tuples and bfcl checks them as lists."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


def check_target_parses(row: dict) -> tuple[str, str] | None:
    """Parse `target_text` (reference call strings) into `target`, or check a converter's `target` shape."""
    if "target_text" in row:
        text = row.pop("target_text")
        source = "[" + ", ".join(text) + "]" if isinstance(text, list) else str(text)
        try:
            row["target"] = _as_json(decode_ast(source, "python"))
        except DecodeError as exc:  # UnsafeOutputError too: e.g. `p=1/6` is an expression, not a literal
            row["target"] = None
            return "target", f"reference {source[:200]!r} does not parse into literal calls: {exc}"
    target = row.get("target")
    if target is None:
        return "target", "the source has no reference answer for this question"
    if not isinstance(target, list):
        return "target", f"expected a list of calls, got {type(target).__name__}"
    for i, call in enumerate(target):
        if not (isinstance(call, dict) and len(call) == 1 and isinstance(next(iter(call.values())), dict)):
            return f"target[{i}]", f"expected {{name: {{arg: value}}}}, got {json.dumps(call, default=str)[:200]}"
        if not _is_literal(next(iter(call.values()))):
            return f"target[{i}]", "arguments must be JSON literals"
    if not isinstance(row.get("functions"), list) or not all(isinstance(d, dict) and "name" in d
                                                              for d in row["functions"]):
        return "functions", "expected a list of function docs with a name"
    # bfcl's prompt path (its language hint) reads each doc's description and parameters.properties
    if not all(isinstance(d.get("description"), str) and isinstance(d.get("parameters"), dict)
               and isinstance(d["parameters"].get("properties"), dict) for d in row["functions"]):
        return "functions", "every function doc needs a description and parameters.properties"
    return None


def _docs(row: dict) -> dict[str, dict]:
    return {doc["name"]: doc for doc in row["functions"]}


def check_function_exists(row: dict) -> tuple[str, str] | None:
    offered = _docs(row)
    for i, call in enumerate(row["target"]):
        name = next(iter(call))
        if name not in offered:
            return f"target[{i}]", f"calls {name!r}, which is not offered (offered: {sorted(offered)[:8]})"
    return None


def check_required_arguments(row: dict) -> tuple[str, str] | None:
    offered = _docs(row)
    for i, call in enumerate(row["target"]):
        name, args = next(iter(call.items()))
        missing = [p for p in offered[name].get("parameters", {}).get("required", []) if p not in args]
        if missing:
            return f"target[{i}].{name}", f"required parameter(s) {missing} not given"
    return None


def _type_error(value, schema: dict, path: str, nested: bool = False) -> str | None:
    kind = schema.get("type", "any")
    if kind not in _PY_TYPES:
        return f"{path}: the doc declares unknown type {kind!r}"
    allowed = (float,) if nested and kind == "float" else _PY_TYPES[kind]  # bfcl: int for float only at top level
    if kind in ("integer", "float") and isinstance(value, bool) or not isinstance(value, allowed):
        return f"{path}: expected {kind}, got {type(value).__name__} {json.dumps(value, default=str)[:80]}"
    if "enum" in schema and kind not in ("array", "tuple", "dict") and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum'][:10]}"
    if kind in ("array", "tuple") and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            if error := _type_error(item, schema["items"], f"{path}[{i}]", nested=True):
                return error
    if kind == "dict" and isinstance(schema.get("properties"), dict):
        for key, item in value.items():
            if key not in schema["properties"]:
                return f"{path}.{key}: not a declared key ({sorted(schema['properties'])[:8]})"
            if error := _type_error(item, schema["properties"][key], f"{path}.{key}"):
                return error
    return None


def check_argument_types(row: dict) -> tuple[str, str] | None:
    offered = _docs(row)
    for i, call in enumerate(row["target"]):
        name, args = next(iter(call.items()))
        properties = offered[name].get("parameters", {}).get("properties", {})
        for arg, value in args.items():
            if arg not in properties:
                return f"target[{i}].{name}.{arg}", f"not a parameter of {name} ({sorted(properties)[:8]})"
            if error := _type_error(value, properties[arg], arg):
                return f"target[{i}].{name}", error
    return None


def check_checker_accepts(row: dict) -> tuple[str, str] | None:
    """The last word: bfcl-eval's official checker accepts the reference answer (stage 03 relies on it)."""
    record = {"id": row["id"], "category": category_of(row), "messages": json.dumps(row["messages"]),
              "functions": json.dumps(row["functions"]), "target": json.dumps(row["target"])}
    scored = score_single_turn(row_example(record), answer_text(row["target"]))
    if not scored["valid"]:
        return "target", f"bfcl's checker rejects the reference ({scored['error_type']}): {str(scored['error'])[:200]}"
    return None


ROW_CHECKS = {"target_parses": check_target_parses, "function_exists": check_function_exists,
              "required_arguments": check_required_arguments, "argument_types": check_argument_types,
              "checker_accepts": check_checker_accepts}


def apply_check(rows: list[dict], rule: str) -> tuple[list[dict], list[dict]]:
    kept, rejected = [], []
    for row in rows:
        try:
            problem = ROW_CHECKS[rule](row)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a malformed doc or target: reject it
            problem = ("functions", f"malformed row ({type(exc).__name__}: {exc})")
        if problem:
            rejected.append(reject(row, rule, *problem))
        else:
            kept.append(row)
    return kept, rejected


# ---------------------------------------------------------------- saved rows as BFCL entries


def _field(row: dict, name: str):
    """A row field as a structure: saved rows hold JSON strings, rows inside stage 02 hold lists."""
    value = row[name]
    return json.loads(value) if isinstance(value, str) else value


def row_scoring_entry(row: dict) -> dict:
    """A row as the BFCL entry the checker scores: id, question (one turn), function docs without the hint,
    as evaluation scores (data.Example.scoring_entry). Accepts saved (JSON) and in-stage (list) rows."""
    return {"id": row["id"], "question": [_field(row, "messages")], "function": _field(row, "functions")}


def row_entry(row: dict) -> dict:
    """A row as the BFCL entry evaluation *prompts*: the function docs carry bfcl's Python language hint,
    exactly as bfcl's loader adds it (data.Example.entry). The one path row -> entry -> prompt for SFT rows,
    DPO pairs, GRPO prompts and stage-02 lengths (prompt_of)."""
    entry = row_scoring_entry(row)
    entry["function"] = bfcl.add_python_hint(entry["function"])
    return entry


def _possible_answer(value, schema: dict) -> list:
    """One concrete value in BFCL's possible-answer form: a one-element list of acceptable values; the
    checker reads dict parameters (and lists of dicts) one level deeper, key -> list of values."""
    if schema.get("type") == "dict" and isinstance(value, dict):
        return [{k: [v] for k, v in value.items()}]
    if schema.get("type") == "array" and schema.get("items", {}).get("type") == "dict" and isinstance(value, list) \
            and all(isinstance(v, dict) for v in value):
        return [[{k: [v] for k, v in item.items()} for item in value]]
    return [value]


def row_example(row: dict) -> Example:
    """A stage-02 row as an `Example` the official checker scores (target -> BFCL possible answers); like a
    BFCL example, `entry` is prompted (hinted docs) and `scoring_entry` is scored (docs as saved)."""
    scoring_entry = row_scoring_entry(row)
    ground_truth = None
    if row["category"] != "irrelevance":
        docs = {f["name"]: f["parameters"].get("properties", {}) for f in scoring_entry["function"]}
        ground_truth = [{name: {arg: _possible_answer(value, docs.get(name, {}).get(arg, {}))
                                for arg, value in args.items()}}
                        for call in _field(row, "target") for name, args in call.items()]
    return Example(row["id"], row["category"], row_entry(row), scoring_entry, ground_truth)



# ---------------------------------------------------------------- duplicates and length


def question_text(row: dict) -> str:
    """What the answer answers: the user turns and, in a multi-turn chat, the calls and results before it."""
    return "\n".join(m["content"] for m in row["messages"] if m["role"] != "system")


def _called(row: dict) -> tuple[str, ...]:
    return tuple(sorted({next(iter(call)) for call in row["target"]}))


def remove_duplicates(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    kept, rejected, seen = [], [], {}
    for row in rows:
        key = (" ".join(_words(question_text(row))), json.dumps(row["target"], sort_keys=True))
        if key in seen:
            rejected.append(reject(row, "duplicate", "messages", f"same question and answer as {seen[key]}"))
        else:
            seen[key] = row["id"]
            kept.append(row)
    return kept, rejected


def _shingles(text: str) -> set[tuple]:
    return _ngrams(_words(text), 3)


def remove_near_duplicates(rows: list[dict], threshold: float) -> tuple[list[dict], list[dict]]:
    """Jaccard similarity of word 3-gram shingles, compared only among rows calling the same functions."""
    kept, rejected = [], []
    groups: dict[tuple, list[tuple[str, set, str]]] = defaultdict(list)
    for row in rows:
        shingles, group = _shingles(question_text(row)), groups[_called(row)]
        # a chat's later turn repeats its earlier ones' history: it is the next answer, not a twin
        chat = row.get("conversation") or row["id"]
        twin = next((other for other, seen, other_chat in group if other_chat != chat
                     and shingles and len(shingles & seen) / len(shingles | seen) >= threshold), None)
        if twin:
            rejected.append(reject(row, "near_duplicate", "messages", f"question nearly identical to {twin}'s"))
        else:
            group.append((row["id"], shingles, chat))
            kept.append(row)
    return kept, rejected


def prompt_of(row: dict, spec="gemma", tokenizer=None) -> str:
    """The exact evaluation prompt for a row (hinted docs + messages, rendered for the model: `spec` is a
    registry.ModelSpec, or a bare prompt format 'gemma' | 'chat_template'): the text evaluate.py builds for a
    BFCL entry, by the same function (families.training_prompt; tests/test_prompt_identity.py)."""
    return families.training_prompt(row_entry(row), families.spec_of(spec), tokenizer)


def answer_of(row: dict, spec="gemma") -> str:
    """A row's reference answer in the model's own syntax (families.family_answer), without its end marker."""
    return families.family_answer(_field(row, "target"), families.spec_of(spec))


def token_counter(model: str):
    """A function text -> token count with the model's own tokenizer (llama.cpp vocab for GGUF models)."""
    from tinyllm_utils.backends.base import prompt_tokenizer
    from tinyllm_utils.models.registry import resolve_model

    spec = resolve_model(model)
    if spec.prompt_format == "gemma":
        from llama_cpp import Llama

        vocab = Llama(model_path=str(spec.gguf_path()), vocab_only=True, verbose=False)
        return spec, None, lambda text: len(vocab.tokenize(text.encode(), add_bos=True, special=True))
    tokenizer = prompt_tokenizer(spec)
    return spec, tokenizer, lambda text: len(tokenizer(text)["input_ids"])


def apply_length_limits(rows: list[dict], count_tokens, spec, tokenizer, max_prompt: int,
                        max_answer: int, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Rows whose prompt and answer, as the model sees and writes them (`spec`: a ModelSpec or a bare prompt
    format), fit the token budgets; the rest rejected with their counts."""
    kept, rejected = [], []
    for row in tqdm(rows, desc="token lengths", disable=not progress):
        row["prompt_tokens"] = count_tokens(prompt_of(row, spec, tokenizer))
        row["answer_tokens"] = count_tokens(answer_of(row, spec))
        if row["prompt_tokens"] > max_prompt:
            rejected.append(reject(row, "length", "messages",
                                   f"prompt has {row['prompt_tokens']} tokens > {max_prompt}"))
        elif row["answer_tokens"] > max_answer:
            rejected.append(reject(row, "length", "target", f"answer has {row['answer_tokens']} tokens > {max_answer}"))
        else:
            kept.append(row)
    return kept, rejected


# ---------------------------------------------------------------- categories, split, augmentation


def category_of(row: dict) -> str:
    """The BFCL category whose checker rules fit the row's shape (decides how stage 03 checks its answers)."""
    calls, functions = row["target"], row["functions"]
    if not calls:
        return "irrelevance"
    if len(calls) == 1:
        return "simple_python" if len(functions) == 1 else "multiple"
    return "parallel" if len(functions) == 1 else "parallel_multiple"


def split_by_function(rows: list[dict], validation_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Rows that share a called function (transitively) stay together; whole groups go to validation until it
    holds `validation_fraction` of the rows, so validation functions are never called in train."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    def names(row):  # no-call rows are tied to the functions they offer, a chat's rows to each other
        chat = (f"<chat {row['conversation']}>",) if row.get("conversation") else ()
        return (_called(row) or tuple(sorted(_docs(row)))) + chat

    for row in rows:
        first, *rest = names(row) or ("<none>",)
        for name in rest:
            parent[root(name)] = root(first)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[root((names(row) or ("<none>",))[0])].append(row)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    target, validation = validation_fraction * len(rows), set()
    size = 0
    for key in order:
        if size >= target:
            break
        if size + len(groups[key]) <= 1.25 * target or not validation:
            validation.add(key)
            size += len(groups[key])
    return {"train": [r for k in sorted(groups) if k not in validation for r in groups[k]],
            "validation": [r for k in sorted(groups) if k in validation for r in groups[k]]}


def _single_user_turn(row: dict) -> bool:
    return len(row["messages"]) == 1 and row["messages"][0]["role"] == "user"


def _new_row(kind: str, parents: list[dict], messages, functions, target) -> dict:
    row = {"id": None, "source": "+".join(dict.fromkeys(p["source"] for p in parents)),
           "messages": messages, "functions": functions, "target": target, "augmentation": kind,
           "parents": [p["id"] for p in parents]}
    row["category"] = category_of(row)
    return row


def _distractors(pool: dict[str, dict], exclude: set[str], k: int, rng: random.Random) -> list[dict]:
    names = sorted(set(pool) - exclude)
    return [pool[n] for n in rng.sample(names, min(k, len(names)))]


def augment(rows: list[dict], ratios: dict[str, float], max_distractors: int, seed: int, split: str = "") -> list[dict]:
    """New rows built from `rows` (one split), `round(ratio * len(rows))` of each kind when the pool allows:

    * parallel: two requests in one message answered by both rows' calls (same function -> `parallel`,
      different functions -> `parallel_multiple`);
    * multiple: 1..max_distractors unrelated function docs from the split added and the docs shuffled;
    * irrelevance: the called functions removed (distractors added if nothing is left), target = no call.
    """
    rng = random.Random(f"{seed}:{split}")
    pool = {}
    for row in rows:
        for doc in row["functions"]:
            pool.setdefault(doc["name"], doc)
    with_calls = [r for r in rows if r["target"] and _single_user_turn(r)]
    by_called = defaultdict(list)
    for row in with_calls:
        by_called[_called(row)].append(row)
    out = []
    for kind in AUGMENTATIONS:
        wanted = round(ratios.get(kind, 0) * len(rows))
        for _ in range(wanted * 5):  # a few tries per wanted row: some draws do not combine
            if sum(r["augmentation"] == kind for r in out) >= wanted or not with_calls:
                break
            base = rng.choice(with_calls)
            if kind == "parallel":
                # half the time a second request to the same function(s): BFCL's `parallel` shape
                same = [r for r in by_called[_called(base)] if r is not base]
                other = rng.choice(same) if same and rng.random() < 0.5 else rng.choice(with_calls)
                docs_a, docs_b = _docs(base), _docs(other)
                if other is base or any(docs_a[n] != docs_b[n] for n in set(docs_a) & set(docs_b)):
                    continue  # the same name with two different docs cannot be offered together
                text = base["messages"][0]["content"].rstrip() + "\n\nAlso: " + other["messages"][0]["content"]
                functions = base["functions"] + [d for d in other["functions"] if d["name"] not in docs_a]
                out.append(_new_row(kind, [base, other], [{"role": "user", "content": text}], functions,
                                    base["target"] + other["target"]))
            elif kind == "multiple":
                extra = _distractors(pool, set(_docs(base)), rng.randint(1, max_distractors), rng)
                if not extra:
                    continue
                functions = base["functions"] + extra
                rng.shuffle(functions)
                out.append(_new_row(kind, [base], base["messages"], functions, base["target"]))
            else:
                called = set(_called(base))
                functions = [d for d in base["functions"] if d["name"] not in called]
                if not functions:  # the row offered only what it called: offer unrelated functions instead
                    functions = _distractors(pool, set(_docs(base)), rng.randint(1, max_distractors), rng)
                if not functions:
                    continue
                out.append(_new_row(kind, [base], base["messages"], functions, []))
    for i, row in enumerate(out):
        row["id"] = f"aug_{split}_{row['augmentation']}_{i}"
    return out


def as_datasetdict(splits: dict[str, list[dict]]):
    """The saved form: string columns, structures as JSON (the stage-03 / trainer contract)."""
    from datasets import Dataset, DatasetDict, Features, Value

    features = Features({c: Value("string") for c in COLUMNS})

    def record(row):
        return {"id": row["id"], "source": row["source"], "category": row["category"],
                "messages": json.dumps(row["messages"]), "functions": json.dumps(row["functions"]),
                "target": json.dumps(row["target"]), "augmentation": row["augmentation"]}

    return DatasetDict({name: Dataset.from_list([record(r) for r in rows], features=features)
                        for name, rows in splits.items()})


def mix_table(splits: dict[str, list[dict]]) -> pd.DataFrame:
    """Rows per split x category x how they were made ("original" or the augmentation kind)."""
    frame = pd.DataFrame([{"split": s, "category": r["category"], "made": r["augmentation"] or "original"}
                          for s, rows in splits.items() for r in rows])
    return frame.value_counts().rename("rows").reset_index().sort_values(["split", "category", "made"],
                                                                          ignore_index=True)


def source_table(splits: dict[str, list[dict]], rejected: list[dict]) -> pd.DataFrame:
    kept = Counter(r["source"] for rows in splits.values() for r in rows if not r["augmentation"])
    lost = Counter(r["source"] for r in rejected)
    return pd.DataFrame([{"source": s, "kept": kept[s], "rejected": lost[s]} for s in sorted(set(kept) | set(lost))])


def data_card(result: dict) -> dict:
    splits = result["splits"]
    lengths = pd.DataFrame([{"split": s, "prompt": r["prompt_tokens"], "answer": r["answer_tokens"]}
                            for s, rows in splits.items() for r in rows])
    train_functions = {n for r in splits.get("train", []) for n in _called(r)}
    validation_functions = {n for r in splits.get("validation", []) for n in _called(r)}
    return manifest(
        result["config"].to_dict(),
        rows={s: len(rows) for s, rows in splits.items()},
        rejected=len(result["rejected"]),
        filters=result["filter_report"].to_dict("records"),
        sources=source_table(splits, result["rejected"]).to_dict("records"),
        category_mix=mix_table(splits).to_dict("records"),
        token_lengths={s: group.describe().round(1).to_dict() for s, group in lengths.groupby("split")[
            ["prompt", "answer"]]} if len(lengths) else {},
        functions_called={"train": len(train_functions), "validation": len(validation_functions),
                          "in_both": len(train_functions & validation_functions)},
        columns=COLUMNS,
    )


def card_markdown(card: dict) -> str:
    lines = ["# Stage-02 training data card", "", f"Rows: {card['rows']}; rejected: {card['rejected']}.", "",
             "## Filters", "", pd.DataFrame(card["filters"]).to_markdown(index=False), "",
             "## Sources", "", pd.DataFrame(card["sources"]).to_markdown(index=False), "",
             "## Category mix", "", pd.DataFrame(card["category_mix"]).to_markdown(index=False), "",
             f"Functions called: {card['functions_called']} (validation functions are never called in train).", ""]
    return "\n".join(lines)
