"""Why no-call training rows do not teach declining: the first-token call/no-call margin of a model, per group.

    python benchmarks/decline_margins.py --model outputs/quick/04_sft/sft-lora/gguf/gemma-3-270m-sft-lora-F16.gguf \
        --run outputs/quick --limit 100

For each prompt, at the answer's first position: margin = the highest logit of any other token minus the logit
of the no-call answer's first token (greedy declines where it is below 0; `decline_bias` moves that threshold).
Groups: stage 02's validation rows that need a call and those that need none (held out from training, the same
kind of rows it trained on), and BFCL's `irrelevance` and `simple_python` entries. If the model declines its
own kind of no-call rows but not BFCL's irrelevance entries, the rows teach declining, for prompts unlike
BFCL's; if it declines neither, declining itself is not learned. Prints each group's share declined by greedy
decoding, the margin's quartiles, and the threshold calibrated on the validation rows with what it would do to
each group. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a GGUF (a trained model's gguf/*-F16.gguf) or registry name")
    parser.add_argument("--run", required=True, help="the run folder whose 02_data_filtering rows to use")
    parser.add_argument("--limit", type=int, default=100, help="entries per group")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from tinyllm_utils.backends.llama_cpp import LlamaCppBackend
    from tinyllm_utils.bfcl.data import load_category
    from tinyllm_utils.data.pairs import load_stage02
    from tinyllm_utils.data.rows import row_example
    from tinyllm_utils.evaluation.decline import calibrate_threshold
    from tinyllm_utils.models.families import entry_prompt
    from tinyllm_utils.models.registry import resolve_model
    from tinyllm_utils.stages.common import sample_rows

    spec = resolve_model(args.model)
    backend = LlamaCppBackend(spec, max_new_tokens=1)
    validation = list(sample_rows(load_stage02(f"{args.run}/02_data_filtering/dataset")["validation"],
                                  None, args.seed))
    groups = {
        "validation rows needing a call": [r for r in validation if json.loads(r["target"])][:args.limit],
        "validation rows needing no call": [r for r in validation if not json.loads(r["target"])][:args.limit],
    }
    prompts = {name: [entry_prompt(row_example(r).entry, spec, None) for r in rows] for name, rows in groups.items()}
    for category in ("irrelevance", "simple_python"):
        prompts[f"BFCL {category}"] = [entry_prompt(e.entry, spec, None)
                                       for e in load_category(category, args.limit, args.seed)]
    margins = {name: backend.decline_margins(p) for name, p in prompts.items()}
    calibration = calibrate_threshold(margins["validation rows needing a call"],
                                      margins["validation rows needing no call"])
    report = {"model": str(spec.gguf_path()), "calibrated_bias": calibration["bias"], "groups": {}}
    for name, values in margins.items():
        values = np.array(values)
        report["groups"][name] = {
            "n": len(values), "declined_greedy": round(float((values < 0).mean()), 3),
            "declined_calibrated": round(float((values < calibration["bias"]).mean()), 3),
            "margin_quartiles": [round(float(q), 2) for q in np.percentile(values, [25, 50, 75])]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
