"""How a model is prompted, parsed and trained, printed without loading it:

    python -c "from tinyllm_utils.models.dry_run import dry_run; print(dry_run('Salesforce/xLAM-2-1b-fc-r'))"
"""

from __future__ import annotations

import json

from tinyllm_utils.models.families import (
    PARSER_SOURCES,
    entry_prompt,
    family_of,
    parser_name,
    raw_answer_is_call_list,
    scoring_path,
    training_path,
)


def dry_run(model: str, category: str = "simple_python") -> str:
    """What an evaluation of `model` would do, without weights or a tokenizer: mode, family, bfcl handler,
    parser, revision, how its training rows are rendered and answered, and the rendered prompt of the category's
    first BFCL entry."""
    from tinyllm_utils.bfcl.data import is_multi_turn, load_category
    from tinyllm_utils.models.registry import resolve_model, revision_missing

    spec = resolve_model(model)
    family = family_of(spec)
    example = load_category(category)[0]
    lines = [
        f"model:     {spec.name} ({spec.source}{', ' + spec.hf_id if spec.hf_id else ''})",
        f"revision:  {spec.revision or revision_missing(spec)}",
        f"BFCL row:  {spec.bfcl_name or 'none (not on the leaderboard)'}",
        f"mode:      {spec.mode}",
        f"family:    {family.key} ({family.note})",
        f"handler:   {('bfcl ' + family.handler) if family.handler else 'none (bfcl has no handler for this family)'}",
        f"parser:    {parser_name(spec)} = {PARSER_SOURCES[family.parser]}",
        f"reasoning: {spec.reasoning}",
        f"early stop (Python categories): {'on' if raw_answer_is_call_list(spec) else 'off'}",
        f"run.json:  {scoring_path(spec)}",
        f"training:  {training_path(spec)}",
    ]
    if spec.reasoning == "strip_think":
        lines.append("note:      the model reasons before answering; bfcl allows 4096 new tokens "
                     "(--max_new_tokens 4096), the default 256 ends most answers inside <think>")
    turn = " (first turn of a multi-turn entry)" if is_multi_turn(category) else ""
    if family.render == "chat_template":
        from tinyllm_utils.models.prompts import first_turn_messages

        lines.append(f"prompt of {example.id}{turn}: rendered at run time by the tokenizer's chat template "
                     "from these messages:")
        lines.append(json.dumps(first_turn_messages(example.entry)[0], indent=2))
    else:
        lines.append(f"prompt of {example.id}{turn} (the tokenizer adds BOS):")
        lines.append(entry_prompt(example.entry, spec))
    return "\n".join(lines)


# stages whose `model` is the one trained, and what they do for it (06 trains from 04's checkpoint)
TRAINING_STAGES = {"02_data_filtering": "its rows (02)", "03_pair_construction": "its pairs (03)",
                   "04_sft": "trained by SFT (04; 06 from it: SFT->DPO, SFT->GRPO)", "05_dpo": "trained by DPO (05)"}


def profile_paths(stages: dict) -> str:
    """For a resolved profile (core.profiles.resolve_profile's `stages`), each model it evaluates or trains: its
    revision, and its evaluation and training paths (renderer, parser, mode), without weights; what
    `python -m tinyllm_utils.pipeline --profile NAME --show` prints after the parameters."""
    from tinyllm_utils.models.registry import resolve_model, revision_missing

    baseline = stages.get("01_baseline_evaluation", {})
    backend = baseline.get("backend", "?")
    roles: dict[str, list[str]] = {}
    for model in baseline.get("models", []):
        roles.setdefault(model, []).append("evaluated (01)")
    for stage, role in TRAINING_STAGES.items():
        if stage in stages and stages[stage].get("model"):
            roles.setdefault(stages[stage]["model"], []).append(role)
    if "03_pair_construction" in stages:
        roles.setdefault(stages["03_pair_construction"]["rejecter"], []).append("rejecter (03)")
    lines = [f"models: evaluation backend {backend}; trained models (04-06) are evaluated like their bases, with "
             "stage 01's protocol"]
    for model, what in roles.items():
        spec = resolve_model(model)
        lines += [f"  {model}: {', '.join(what)}",
                  f"    revision:   {spec.revision or ('embedded PyPI package' if spec.source == 'embedded' else revision_missing(spec))}",
                  f"    evaluation: {scoring_path(spec)}",
                  f"    training:   {training_path(spec)}"]
    return "\n".join(lines)
