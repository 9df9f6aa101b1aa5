"""Run one stage without its notebook, with a profile's parameters: what `accelerate launch` needs on a
multi-GPU machine.

    python -m tinyllm_utils.stages.cli --stage 04_sft --profile quick
"""

from __future__ import annotations

from tinyllm_utils.stages.common import summary_table
from tinyllm_utils.stages.dpo import run_dpo_stage
from tinyllm_utils.stages.edge_profile import run_edge_profile_stage
from tinyllm_utils.stages.hybrid import run_hybrid_stage
from tinyllm_utils.stages.sft import run_sft_stage

STAGE_RUNNERS = {"04_sft": run_sft_stage, "05_dpo": run_dpo_stage, "06_hybrid": run_hybrid_stage,
                 "07_edge_profile": run_edge_profile_stage}


def main(argv=None) -> None:
    """Run one stage without its notebook, with a profile's parameters: what `accelerate launch` needs on a
    multi-GPU machine (the notebook path runs in one Jupyter kernel). The stage folder is opened under the
    pipeline's own key but not marked finished: the pipeline then resumes it (finished training folders are
    returned as they are) and runs the notebook."""
    import argparse

    from tinyllm_utils.core.params import OUTPUT_ROOT
    from tinyllm_utils.core.profiles import build_config, open_stage, parse_overrides, resolve_profile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--stage", required=True, choices=sorted(STAGE_RUNNERS))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.NAME=VALUE")
    args = parser.parse_args(argv)
    plan = resolve_profile(args.profile, parse_overrides(args.overrides))["stages"]
    work = open_stage(OUTPUT_ROOT / (args.run_id or args.profile), args.stage, plan[args.stage], plan)
    print(f"{args.stage}: {work.describe()} -> {work.folder}")
    results = STAGE_RUNNERS[args.stage](build_config(args.stage, plan[args.stage]), work.folder)
    print(summary_table(results).to_string() if args.stage != "07_edge_profile" else results["recommendation"])


if __name__ == "__main__":
    main()
