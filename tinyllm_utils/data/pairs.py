"""The pairs of stage 03 (stages/pair_construction.py): verified chosen/rejected preference pairs for DPO, from
the stage-02 dataset.

    python -m tinyllm_utils.pipeline --profile smoke --stages 03_pair_construction   # or the notebook:
    notebooks/03_pair_construction.ipynb (after stage 02; every step below is one function called there)

* chosen = the reference answer rendered as call text (`[f(a=1), g(b='x')]`, or a short no-call sentence on
  irrelevance rows), kept only when bfcl-eval's official checker accepts it;
* rejected = what a weaker model really writes for the same prompt (greedy, no early stop), kept only when the
  checker rejects it; when it writes nothing usable (empty, identical to chosen, or correct), seeded synthetic
  negatives (wrong function, missing required argument, wrong value or type, extra call, a call on an
  irrelevance prompt), each verified wrong by the checker too. A rejecter answering in another syntax (xLAM's
  JSON, Qwen's <tool_call> blocks, after its reasoning) is prompted and parsed as its evaluation does, and its
  calls kept as Python call text (families.canonical_answer): pairs are built and checked in one syntax.

Pairs are written as a `datasets` preference dataset (`prompt`, `chosen`, `rejected`, TRL's standard format)
in exactly the evaluation prompt format of the model trained on them (families.training_example: its renderer,
its answer syntax, its end of turn), with per-kind statistics and a stratified review sample whose verdicts, read
back with `apply_review`, drop disputed pairs. Model text is only ever decoded by tinyllm_utils.bfcl.decoding
(literals) or a family's JSON parser, never evaluated.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tinyllm_utils.bfcl.data import Example
from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.core.results import PredictionWriter, manifest, read_jsonl, write_json_atomic, write_text_atomic
from tinyllm_utils.core.work import replace_dir_atomic
from tinyllm_utils.data.rows import row_entry as _entry
from tinyllm_utils.data.rows import row_example
from tinyllm_utils.models import families
from tinyllm_utils.models.prompts import answer_text, render_calls
from tinyllm_utils.models.registry import resolve_model

if TYPE_CHECKING:  # the stage config a caller passes; imported for annotations only
    from tinyllm_utils.stages.pair_construction import PairConfig

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
MODEL_GENERATION = "model_generation"
SYNTHETIC_KINDS = ("wrong_function", "missing_required", "wrong_value", "extra_call", "call_on_irrelevance")
KINDS = (MODEL_GENERATION, *SYNTHETIC_KINDS)
AGREE = {"ok", "agree", "y", "yes", "good", "correct", "keep"}
DISPUTE = {"bad", "disagree", "n", "no", "wrong", "drop"}
REVIEW_COLUMNS = ["pair_id", "kind", "question", "chosen", "rejected", "checker_error", "verdict", "note"]
PAIR_COLUMNS = ["prompt", "chosen", "rejected", "pair_id", "id", "category", "kind", "checker_error"]
_MAX_TRIES = 8  # attempts per synthetic kind before giving up on it for a row


class MissingInputError(FileNotFoundError):
    """The stage-02 dataset this stage reads is not there."""


# ---------------------------------------------------------------- input: the stage-02 dataset


def default_data_dir(stage_dir: str | Path) -> Path:
    """Stage dirs are siblings: `<run>/03_pair_construction` reads `<run>/02_data_filtering/dataset`."""
    return Path(stage_dir).parent / "02_data_filtering" / "dataset"


def load_stage02(data_dir: str | Path):
    """The stage-02 `DatasetDict`; a clear error (not a traceback from `datasets`) when it is missing."""
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    if not (data_dir / "dataset_dict.json").exists():
        raise MissingInputError(
            f"no stage-02 dataset at {data_dir}: run stage 02 first (notebooks/02_data_filtering.ipynb, e.g. "
            "`python -m tinyllm_utils.pipeline --profile smoke --stages 02_data_filtering`)")
    return load_from_disk(str(data_dir))


def select_rows(dataset, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Rows of every split as dicts (with `split`); with `limit`, a seeded sample per split that takes the
    categories in turn, so a small sample still covers each of them. Order within a split is kept."""
    rows = []
    for split in dataset:
        data = dataset[split]
        indices = list(range(len(data)))
        if limit is not None and limit < len(data):
            rng = random.Random(f"{seed}:{split}")
            by_category: dict[str, list[int]] = {}
            for i, category in enumerate(data["category"]):
                by_category.setdefault(category, []).append(i)
            queues = [rng.sample(v, len(v)) for _, v in sorted(by_category.items())]
            rng.shuffle(queues)
            picked = []
            while len(picked) < limit:
                for queue in queues:
                    if queue and len(picked) < limit:
                        picked.append(queue.pop())
            indices = sorted(picked)
        rows.extend(dict(data[i], split=split) for i in indices)
    return rows


def reference_text(row: dict) -> str:
    return answer_text(json.loads(row["target"]))


def question_text(row: dict) -> str:
    """The user's request (last user message), for human review; in a multi-turn chat with the calls and
    results that came after it, which the answer continues from."""
    messages = json.loads(row["messages"])
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        return ""
    return "\n".join([messages[last_user]["content"]] + [f"[{m['role']}] {m['content']}"
                                                        for m in messages[last_user + 1:]])


def verify_chosen(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows whose reference answer the checker accepts (with `chosen_text`), and the ones it rejects."""
    kept, failed = [], []
    for row in rows:
        text = reference_text(row)
        scored = score_single_turn(row_example(row), text)
        if scored["valid"]:
            kept.append(dict(row, chosen_text=text))
        else:
            failed.append({"split": row["split"], "id": row["id"], "category": row["category"], "chosen": text,
                           "error_type": scored["error_type"], "error": str(scored["error"])})
    return kept, failed


# ---------------------------------------------------------------- rejected: the weaker model's own answers


def _row_key(row: dict) -> str:
    # the prompt's content is part of the key: a rerun of stage 02 that changes a row never reuses a stale answer
    content = hashlib.sha256((row["messages"] + row["functions"]).encode()).hexdigest()[:12]
    return f"{row['split']}/{row['id']}/{content}"


def generation_cache_path(stage_dir: str | Path, config: PairConfig) -> Path:
    """One JSONL per (rejecter, decoding settings): a rerun or an interrupted run reuses what was generated."""
    spec = resolve_model(config.rejecter)
    keys = {"rejecter": spec.name, "backend": config.backend, "max_new_tokens": config.rejecter_max_new_tokens,
            "seed": config.seed, "prompt_format": spec.prompt_format}
    if spec.family not in ("gemma", "generic"):  # its prompts are its family's (Gemma and generic keep old keys)
        keys.update(family=spec.family, reasoning=spec.reasoning)
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:10]
    return Path(stage_dir) / "generations" / f"{spec.name}-{digest}.jsonl"


def generate_rejections(rows: list[dict], config: PairConfig, cache_path: str | Path | None = None,
                        backend=None, progress: bool = True) -> dict[str, str]:
    """The rejecter's raw answer for every row ({split/id: text}), generated in batches without stopping
    early (the rejected text must be what the model really writes). The model is loaded only if some row
    is not cached yet; an unavailable model raises `ModelUnavailableError` with one clear message."""
    from tqdm import tqdm

    from tinyllm_utils.backends.factory import make_backend

    spec = resolve_model(config.rejecter)
    writer = PredictionWriter(cache_path) if cache_path else None
    done = {key: row["text"] for key, row in (writer.done if writer else {}).items()}
    todo = [row for row in rows if _row_key(row) not in done]
    if todo and backend is None:
        backend = make_backend(spec, config.backend, config.rejecter_max_new_tokens, config.seed, config.batch_size)
    bar = tqdm(total=len(todo), desc=f"rejecter {spec.name}", unit="row", disable=not progress or not todo)
    # llama.cpp answers one prompt at a time anyway: single-prompt chunks keep the bar live and cache each row
    # as soon as it is done; transformers batches for real.
    step = config.batch_size if getattr(backend, "name", "") == "transformers" else 1
    for start in range(0, len(todo), step):
        chunk = todo[start:start + step]
        prompts = [families.training_prompt(_entry(row), spec, backend.tokenizer) for row in chunk]
        for row, generation in zip(chunk, backend.generate(prompts, stop_when_hopeless=False)):
            done[_row_key(row)] = generation.text
            if writer:
                writer.append({"id": _row_key(row), **generation.to_dict()})
            bar.update()
    bar.close()
    # the raw text stays in the cache; pairs hold it as Python call text (what the checks here score), and
    # to_preference_dataset writes it in the policy's syntax
    return {_row_key(row): families.canonical_answer(done[_row_key(row)], spec) for row in rows}


# ---------------------------------------------------------------- synthetic negatives


def _docs(row: dict) -> dict[str, dict]:
    return {f["name"]: f for f in json.loads(row["functions"])}


def _placeholder(schema: dict):
    """A plausible-looking argument for a parameter nobody asked for (extra or irrelevant calls)."""
    if "default" in schema and schema["default"] not in (None, ""):
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    return {"string": "unknown", "integer": 1, "float": 1.0, "number": 1.0, "boolean": True, "array": [],
            "tuple": [], "dict": {}}.get(schema.get("type"), "unknown")


def _call_with_placeholders(doc: dict) -> dict:
    properties = doc.get("parameters", {}).get("properties", {})
    required = doc.get("parameters", {}).get("required", [])
    return {doc["name"]: {arg: _placeholder(properties.get(arg, {})) for arg in required}}


def _made_up_name(name: str, taken: set[str], rng: random.Random) -> str:
    head, _, tail = name.rpartition(".")
    words = tail.split("_")
    options = [f"{tail}_{suffix}" for suffix in ("info", "details", "v2", "lookup")]
    if len(words) > 1:
        options.append("_".join(words[:-1]))
        options.append("_".join(reversed(words)))
    options = [f"{head}.{o}" if head else o for o in options]
    options = [o for o in options if o not in taken]
    return rng.choice(options) if options else f"{name}_v2"


def _other_string(value: str, strings: list[str], rng: random.Random) -> str:
    options = [s for s in strings if s.lower() != value.lower()]
    words = value.split()
    if len(words) > 1:
        options.append(" ".join(words[:-1]))
    if re.search(r"\d", value):
        options.append(re.sub(r"\d", lambda m: str((int(m.group()) + 1) % 10), value, count=1))
    return rng.choice(options) if options else "unknown"


def _wrong_value(value, schema: dict, strings: list[str], rng: random.Random):
    """Another value of the right type, or the right value with the wrong type (both common model errors)."""
    others = [e for e in schema.get("enum", []) if e != value]
    if others:
        return rng.choice(others)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + rng.randint(1, 9), str(value)])
    if isinstance(value, float):
        return rng.choice([round(value * 2 + 1, 2), str(value)])
    if isinstance(value, str):
        return _other_string(value, strings, rng)
    if isinstance(value, list):
        return value[:-1] if len(value) > 1 else (value * 2 if value else ["unknown"])
    if isinstance(value, dict) and value:
        return {k: v for k, v in list(value.items())[:-1]}
    return "unknown"


def _mutate(kind: str, calls: list[dict], docs: dict[str, dict], rng: random.Random) -> list[dict] | None:
    """One candidate wrong call list of the given kind, or None when the kind does not apply to the row."""
    calls = json.loads(json.dumps(calls))  # deep copy: mutations never touch the reference answer
    if kind == "call_on_irrelevance":
        return [_call_with_placeholders(docs[rng.choice(sorted(docs))])] if not calls and docs else None
    if not calls:
        return None
    index = rng.randrange(len(calls))
    (name, args), = calls[index].items()
    if kind == "wrong_function":
        others = sorted(set(docs) - {name})
        new_name = rng.choice(others) if others and rng.random() < 0.7 else _made_up_name(name, set(docs), rng)
        calls[index] = {new_name: args}
        return calls
    if kind == "missing_required":
        required = [a for a in docs.get(name, {}).get("parameters", {}).get("required", []) if a in args]
        if not required:
            return None
        del args[rng.choice(required)]
        return calls
    if kind == "wrong_value":
        if not args:
            return None
        arg = rng.choice(sorted(args))
        schema = docs.get(name, {}).get("parameters", {}).get("properties", {}).get(arg, {})
        strings = [v for c in calls for a in c.values() for v in a.values() if isinstance(v, str)]
        args[arg] = _wrong_value(args[arg], schema, strings, rng)
        return calls
    if kind == "extra_call":
        uncalled = sorted(set(docs) - {n for c in calls for n in c})
        if uncalled and rng.random() < 0.5:
            calls.append(_call_with_placeholders(docs[rng.choice(uncalled)]))
        else:
            calls.insert(index + 1, {name: dict(args)})  # the same call twice
        return calls
    raise ValueError(f"unknown synthetic kind {kind!r}")


def _one_negative(kind: str, example: Example, calls: list[dict], docs: dict, rng: random.Random,
                  seen: set[str]) -> dict | None:
    for _ in range(_MAX_TRIES):
        mutated = _mutate(kind, calls, docs, rng)
        if mutated is None:
            return None  # the kind does not apply to this row
        text = render_calls(mutated)
        if text in seen:
            continue
        scored = score_single_turn(example, text)
        if not scored["valid"]:  # e.g. a changed string the checker normalises back to the answer is not kept
            return {"kind": kind, "text": text, "checker_error": scored["error_type"]}
    return None


def synthetic_negatives(row: dict, n: int, kinds, rng: random.Random, exclude=()) -> list[dict]:
    """Up to `n` distinct wrong answers for a row, each checked wrong by the official checker.

    Kinds are taken in a seeded order, one negative per kind before any kind repeats."""
    example, docs, calls = row_example(row), _docs(row), json.loads(row["target"])
    seen = {row.get("chosen_text", reference_text(row)), *exclude}
    active = list(kinds)
    rng.shuffle(active)
    negatives: list[dict] = []
    while len(negatives) < n and active:
        for kind in list(active):
            if len(negatives) >= n:
                break
            negative = _one_negative(kind, example, calls, docs, rng, seen)
            if negative is None:
                active.remove(kind)
            else:
                seen.add(negative["text"])
                negatives.append(negative)
    return negatives


# ---------------------------------------------------------------- pairs


def rejecter_outcome(row: dict, text: str) -> tuple[str, dict | None]:
    """What the weaker model's answer is good for: `used` (a verified wrong answer) or why it is not."""
    if not text:
        return "empty", None
    if text == row["chosen_text"]:
        return "same_as_chosen", None
    scored = score_single_turn(row_example(row), text)
    return ("correct", scored) if scored["valid"] else ("used", scored)


def build_pairs(rows: list[dict], generations: dict[str, str], config: PairConfig) -> tuple[list[dict], list[dict]]:
    """Verified pairs for rows with a verified chosen; also each row's rejecter outcome (for the statistics)."""
    pairs, outcomes = [], []
    for row in rows:
        rejected = generations.get(_row_key(row), "").rstrip()  # trailing whitespace only: keep what it wrote
        outcome, scored = rejecter_outcome(row, rejected)
        outcomes.append({"split": row["split"], "id": row["id"], "category": row["category"], "outcome": outcome})
        rng = random.Random(f"{config.seed}:{_row_key(row)}")  # per row: a sample does not shift other rows
        row_pairs = []
        if outcome == "used":
            row_pairs.append({"kind": MODEL_GENERATION, "text": rejected, "checker_error": scored["error_type"]})
            wanted = config.negatives_per_row if rng.random() < config.synthetic_ratio else 0
        else:
            wanted = config.negatives_per_row
        irrelevant = row["category"] == "irrelevance"
        kinds = [k for k in config.synthetic_kinds if (k == "call_on_irrelevance") == irrelevant]
        row_pairs += synthetic_negatives(row, wanted, kinds, rng, exclude=[rejected])
        for number, negative in enumerate(row_pairs):
            pairs.append({"pair_id": f"{_row_key(row)}/{number}", "split": row["split"], "id": row["id"],
                          "category": row["category"], "source": row.get("source", ""),
                          "messages": row["messages"], "functions": row["functions"], "target": row["target"],
                          "question": question_text(row), "chosen": row["chosen_text"],
                          "rejected": negative["text"], "kind": negative["kind"],
                          "checker_error": negative["checker_error"] or ""})
    return pairs, outcomes


def verify_pairs(pairs: list[dict]) -> list[str]:
    """Pair ids that break the contract: chosen not accepted, or rejected not refused, by the checker."""
    broken = []
    for pair in pairs:
        example = row_example(pair)
        chosen_ok = score_single_turn(example, pair["chosen"])["valid"]
        rejected_wrong = not score_single_turn(example, pair["rejected"])["valid"]
        if not (chosen_ok and rejected_wrong):
            broken.append(pair["pair_id"])
    return broken


# ---------------------------------------------------------------- statistics and figure


def pair_stats(pairs: list[dict]) -> pd.DataFrame:
    """Long format: pairs per (split, category, kind)."""
    frame = pd.DataFrame(pairs, columns=["split", "category", "kind"])
    return frame.value_counts(["split", "category", "kind"]).rename("pairs").reset_index() \
        .sort_values(["split", "category", "kind"], ignore_index=True)


def kind_table(pairs: list[dict]) -> pd.DataFrame:
    """Pairs per rejection kind and category, with totals and each kind's share."""
    frame = pd.DataFrame(pairs, columns=["kind", "category"])
    table = pd.crosstab(frame["kind"], frame["category"]).reindex(index=[k for k in KINDS if k in set(frame["kind"])])
    table["total"] = table.sum(axis=1)
    table["share %"] = (100 * table["total"] / max(table["total"].sum(), 1)).round(1)
    return table


def error_table(pairs: list[dict]) -> pd.DataFrame:
    """The checker's error kinds behind each rejection kind."""
    frame = pd.DataFrame(pairs, columns=["kind", "checker_error"])
    return frame.value_counts(["kind", "checker_error"]).rename("pairs").reset_index()


def outcome_table(outcomes: list[dict]) -> pd.DataFrame:
    """What the weaker model's answers were: used as rejected, empty, identical to chosen, or correct."""
    frame = pd.DataFrame(outcomes, columns=["category", "outcome"])
    return pd.crosstab(frame["category"], frame["outcome"])


# ---------------------------------------------------------------- human review


def review_sample(pairs: list[dict], per_kind: int, seed: int = 0) -> pd.DataFrame:
    """Up to `per_kind` pairs of each rejection kind (seeded), with empty verdict and note columns."""
    frame = pd.DataFrame(pairs, columns=["pair_id", "kind", "question", "chosen", "rejected", "checker_error"])
    picked = [group.sample(min(per_kind, len(group)), random_state=seed) for _, group in frame.groupby("kind")]
    sample = pd.concat(picked) if picked else frame
    sample = sample.assign(verdict="", note="")
    order = {k: i for i, k in enumerate(KINDS)}
    return sample.sort_values(["kind", "pair_id"], key=lambda s: s.map(order) if s.name == "kind" else s,
                              ignore_index=True)[REVIEW_COLUMNS]


def _write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    write_text_atomic(path, frame.to_csv(index=False))


def read_review(csv_path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = {"pair_id", "verdict"} - set(frame.columns)
    if missing:
        raise ValueError(f"{csv_path}: review CSV lacks columns {sorted(missing)}; expected {REVIEW_COLUMNS}")
    return frame


def export_review(pairs: list[dict], path: str | Path, per_kind: int, seed: int = 0) -> pd.DataFrame:
    """Write the review sample; verdicts and notes already in a file at `path` are carried over, never lost."""
    path = Path(path)
    sample = review_sample(pairs, per_kind, seed)
    if path.exists():
        previous = read_review(path).set_index("pair_id")
        for column in ("verdict", "note"):
            if column in previous:
                carried = sample["pair_id"].map(previous[column])
                sample[column] = carried.where(carried.notna(), sample[column])
    _write_csv_atomic(sample, path)
    return sample


def _verdict(text: str) -> bool | None:
    """True = reviewer agrees with the pair, False = disputes it, None = not reviewed."""
    word = text.strip().lower()
    if not word:
        return None
    if word in AGREE:
        return True
    if word in DISPUTE:
        return False
    raise ValueError(f"unknown review verdict {text!r}; use one of {sorted(AGREE)} or {sorted(DISPUTE)}, "
                     "or leave it blank")


def check_review_csv(path: str | Path | None, stage_dir: str | Path) -> None:
    """A filled review must live outside the stage's folder: a new review changes the stage's key, and the
    pipeline then moves the whole folder aside (`.stale/`) before the stage runs, so a path inside it would be
    read back as the fresh, blank sample this run writes, and every disputed pair kept."""
    if path is None:
        return
    path, stage_dir = Path(path), Path(stage_dir)
    if path.resolve().is_relative_to(stage_dir.resolve()):
        raise ValueError(f"review_csv {path} is inside the stage's folder {stage_dir}: a new review reruns the "
                         f"stage, which first sets that folder aside (a filled file there is now under "
                         f"{stage_dir.parent / '.stale'}); copy it out, e.g. to {stage_dir.parent / 'review.csv'}, "
                         "and pass that path")
    if not path.is_file():
        raise FileNotFoundError(f"review_csv {path}: no such file (a filled copy of review_sample.csv)")


def apply_review(pairs: list[dict], csv_path: str | Path) -> tuple[list[dict], dict]:
    """Drop pairs the reviewer disputes; report agreement = agree / reviewed (blank verdicts = not reviewed)."""
    review = read_review(csv_path)
    verdicts = {row.pair_id: _verdict(row.verdict) for row in review.itertuples()}
    reviewed = {pid: v for pid, v in verdicts.items() if v is not None}
    disputed = {pid for pid, v in reviewed.items() if v is False}
    known = {p["pair_id"] for p in pairs}
    kept = [p for p in pairs if p["pair_id"] not in disputed]
    agree = len(reviewed) - len(disputed)
    report = {"csv": str(csv_path), "reviewed": len(reviewed), "agree": agree, "disputed": len(disputed),
              "agreement": agree / len(reviewed) if reviewed else None,
              "dropped": sorted(disputed & known), "unknown_pair_ids": sorted(set(verdicts) - known)}
    return kept, report


# ---------------------------------------------------------------- output: the preference dataset


def to_preference_dataset(pairs: list[dict], spec, tokenizer=None, splits=("train", "validation")):
    """TRL's standard preference format in the evaluation prompt format of the policy `spec` (a ModelSpec, or a
    bare prompt format): `prompt` is what evaluation feeds the model (families.training_prompt), `chosen` /
    `rejected` the pair's answers in the family's syntax, ended as its turns end (families.training_example).

    Pairs are built and verified as Python call text; a pair whose rewritten answers no longer keep the
    contract under the family's own parser (chosen accepted, rejected refused, the two different) is left out
    with a warning, never trained on."""
    from datasets import Dataset, DatasetDict, Features, Value

    spec = families.spec_of(spec)
    parse = None if families.parser_name(spec) == "python_ast" else families.parser_for(spec)
    features = Features({column: Value("string") for column in PAIR_COLUMNS})
    by_split: dict[str, list[dict]] = {split: [] for split in splits}
    broken = []
    for pair in pairs:
        entry = _entry(pair)  # hinted docs: the evaluation prompt (row_entry)
        chosen = families.training_example(entry, pair["chosen"], spec, tokenizer)
        rejected = families.training_example(entry, pair["rejected"], spec, tokenizer)
        if parse is not None and not _keeps_contract(pair, chosen["completion"], rejected["completion"], spec,
                                                     tokenizer, parse):
            broken.append(pair["pair_id"])
            continue
        by_split.setdefault(pair["split"], []).append(
            {"prompt": chosen["prompt"], "chosen": chosen["completion"], "rejected": rejected["completion"],
             **{c: pair[c] for c in PAIR_COLUMNS[3:]}})
    if broken:
        warnings.warn(f"to_preference_dataset: {len(broken)} pair(s) lose the chosen-right / rejected-wrong "
                      f"contract in {spec.name}'s syntax and are left out, e.g. {broken[:3]}", stacklevel=2)
    return DatasetDict({split: Dataset.from_list(rows, features=features) if rows
                        else Dataset.from_dict({c: [] for c in PAIR_COLUMNS}, features=features)
                        for split, rows in by_split.items()})


def _keeps_contract(pair: dict, chosen: str, rejected: str, spec, tokenizer, parse) -> bool:
    """The pair's completions, as the family's evaluation reads them: chosen right, rejected wrong."""
    end = families.end_of_turn(spec, tokenizer)
    example = row_example(pair)

    def valid(text: str) -> bool:
        return score_single_turn(example, text[:-len(end)] if end and text.endswith(end) else text, parse)["valid"]

    return chosen != rejected and valid(chosen) and not valid(rejected)


def save_pairs(stage_dir: str | Path, dataset, stats: pd.DataFrame, card: dict):
    """Write the pairs dataset (renamed into place whole), pair_stats.csv and pairs_card.json. Whether the
    stage as a whole is finished is the pipeline's marker (tinyllm_utils.core.work). Returns the saved dataset."""
    from datasets import load_from_disk

    stage_dir = Path(stage_dir)
    replace_dir_atomic(lambda path: dataset.save_to_disk(str(path)), stage_dir / "pairs")
    _write_csv_atomic(stats, stage_dir / "pair_stats.csv")
    write_json_atomic(stage_dir / "pairs_card.json", card)
    return load_from_disk(str(stage_dir / "pairs"))


def pairs_card(config: PairConfig, rows: list[dict], chosen_failures: list[dict], outcomes: list[dict],
               pairs: list[dict], review_report: dict | None, data_dir: str | Path) -> dict:
    """A short description of what was built from what, with the run manifest (versions, commit, hardware)."""
    kinds = pd.Series([p["kind"] for p in pairs], dtype=str).value_counts()
    outcome_counts = pd.Series([o["outcome"] for o in outcomes], dtype=str).value_counts()
    return manifest(config.to_dict(), input=str(data_dir), rows=len(rows),
                    chosen_verified=len(rows) - len(chosen_failures), chosen_failed=chosen_failures,
                    rejecter_outcomes={k: int(v) for k, v in outcome_counts.items()},
                    pairs=len(pairs), pairs_per_kind={k: int(kinds.get(k, 0)) for k in KINDS},
                    pairs_per_split={s: sum(p["split"] == s for p in pairs)
                                     for s in dict.fromkeys(r["split"] for r in rows)},
                    review=review_report, format={"columns": PAIR_COLUMNS, "prompt": "families.training_example"})


def read_generations(cache_path: str | Path) -> list[dict]:
    """The cached rejecter generations (raw text plus token counts and timing) for inspection."""
    return read_jsonl(cache_path)


def bfcl_rows_as_stage02(categories=CATEGORIES, per_category: int = 3, seed: int = 0,
                         splits=("train", "validation")):
    """A tiny stage-02-shaped DatasetDict made from BFCL entries (first acceptable answer as target).

    For tests and for trying this stage before stage 02 exists only: BFCL is the evaluation set, never
    train on it. Rows go to the splits in turn."""
    from datasets import Dataset, DatasetDict

    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.data.rows import possible_answer_as_calls

    rows: dict[str, list[dict]] = {split: [] for split in splits}
    for category in categories:
        for number, example in enumerate(load_category(category, per_category, seed)):
            target = possible_answer_as_calls(example.ground_truth or [])
            rows[splits[number % len(splits)]].append({
                "id": example.id, "source": "bfcl", "category": category,
                "messages": json.dumps(example.entry["question"][0]),
                # rows keep docs unhinted, as stage 02 saves them; row_entry adds bfcl's hint when prompting
                "functions": json.dumps(example.scoring_entry["function"]), "target": json.dumps(target),
                "augmentation": ""})
    return DatasetDict({split: Dataset.from_list(split_rows) for split, split_rows in rows.items()})
