"""Training-step throughput and peak memory on the real gemma-3-270m (the de-quantized embedded GGUF).

    .venv/bin/python benchmarks/train_step.py                  # every variant, prints a table
    .venv/bin/python benchmarks/train_step.py --variants head_only_fp32 trl_default --steps 2

Rows are shaped like BFCL training rows: batch 2 x (720 prompt + 40 answer) tokens, the prompt in the
evaluation format. LoRA r 16 on all linear layers unless the variant says full fine-tuning:

  trl_default      TRL's SFTTrainer as shipped (its fused LM head scores every position off Triton)
  full_logits_*    the model's own loss on the full (B, T, 262k) logits (transformers' ForCausalLMLoss)
  head_only_*      the study's head-only loss (head_only.add_head_only_lm_head: answer positions only)
  *_end_row        ... with the end-of-turn embedding row trained too (trainers.train_end_token), as the stages'
                   LoRA runs do (dpo and grpo below too)
  full_ft_sft      head-only SFT, every weight trained (AdamW)
  dpo              head-only DPO step, LoRA (reference = adapter disabled), 2 pairs
  grpo             GRPO step, LoRA, 2 prompts x 2 generations of up to 40 tokens (generation dominates)

Each variant runs in its own process (peak RSS: that child's VmHWM, see results.peak_rss_mb); a step's time is the
median over `--steps` measured steps after `--warmup` untimed ones (default 1). tokens/s counts every token of the batch
(prompt + answer; for GRPO prompt + generated). On a CPU shared with other jobs the figures are pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ["trl_default", "full_logits_fp32", "full_logits_bf16", "head_only_fp32", "head_only_bf16",
            "head_only_fp32_end_row", "full_ft_sft", "dpo", "grpo"]
FUNCTIONS = [{"name": f"tool_{i}", "description": f"Tool number {i}: looks things up in catalogue {i}.",
              "parameters": {"type": "dict", "properties": {
                  "query": {"type": "string", "description": "what to look up"},
                  "limit": {"type": "integer", "description": "how many results"}}, "required": ["query"]}}
             for i in range(40)]


def _rows(tokenizer, prompt_tokens: int, answer_tokens: int, n: int) -> list[dict]:
    """Stage-02-shaped rows whose formatted prompt (with BOS) / answer (with end of turn) have the requested
    token counts: function docs are added, then filler words, until the prompt is long enough."""
    from tinyllm_utils.models.prompts import answer_text
    from tinyllm_utils.train import formats, loading
    def count(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def answer(filler):
        calls = [{"tool_0": {"query": "weather in Paris tomorrow" + " please" * filler, "limit": 3}},
                 {"tool_1": {"query": "flights from Oslo to Rome", "limit": 5}}]
        return calls, answer_text(calls) + loading.END_OF_TURN

    rows = []
    for i in range(n):
        n_functions, words = 1, 0
        while True:
            row = {"id": f"bench_{i}", "category": "parallel",
                   "messages": json.dumps([{"role": "user", "content": f"Request {i}:" + " please" * words}]),
                   "functions": json.dumps(FUNCTIONS[:n_functions]), "target": "[]"}
            prompt = formats.prompt_and_answer(row, "gemma", tokenizer)["prompt"]
            have = count(prompt) + 1  # + BOS
            if have >= prompt_tokens:
                break
            if have < prompt_tokens - 180 and n_functions < len(FUNCTIONS):
                n_functions += 1
            else:
                words += 1
        filler = 0
        while count(answer(filler + 1)[1]) <= answer_tokens:
            filler += 1
        calls, completion = answer(filler)
        rows.append({"prompt": prompt, "completion": completion, "row": dict(row, target=json.dumps(calls))})
    return rows


class _Timer:
    def __init__(self):
        self.times, self.start = [], None

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter() - timer.start)

        return StepTimer()


def child(variant: str, steps: int, batch: int, prompt_tokens: int, answer_tokens: int, warmup: int = 1) -> dict:
    import torch
    from datasets import Dataset
    from transformers import Trainer
    from trl import SFTTrainer

    from tinyllm_utils.core.results import peak_rss_mb
    from tinyllm_utils.train import formats, head_only, loading, reward, trainers
    torch.manual_seed(0)
    model, tokenizer = loading.load_for_training("gemma-3-270m")
    rows = _rows(tokenizer, prompt_tokens, answer_tokens, batch * (steps + warmup))
    bf16 = variant.endswith("bf16")
    lora = None if variant == "full_ft_sft" else loading.default_lora()
    if variant.endswith("_end_row") or variant in ("dpo", "grpo"):  # as trainers.train_sft/dpo/grpo configure it
        lora = trainers.train_end_token(lora, tokenizer)
    common = {"max_steps": steps + warmup, "per_device_train_batch_size": batch, "save_strategy": "no",
              "bf16": bf16, "logging_steps": 1, "max_length": prompt_tokens + answer_tokens + 8}
    timer = _Timer()
    if variant in ("dpo",):
        data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["completion"],
                                   "rejected": r["completion"].replace("Paris", "Rome")} for r in rows])
        config = trainers.dpo_config_from_dict({**common, "output_dir": "/tmp/bench-dpo"})
        trainer = head_only.trainer_classes()["dpo"](model=model, args=config, train_dataset=data,
                                                    processing_class=tokenizer, peft_config=lora)
        tokens_per_step = 2 * batch * (prompt_tokens + answer_tokens)  # chosen and rejected sequences
    elif variant == "grpo":
        data = formats.grpo_dataset([r["row"] for r in rows], "gemma", tokenizer)
        config = trainers.grpo_config_from_dict({
            "max_steps": steps + warmup, "per_device_train_batch_size": batch, "num_generations": 2,
            "max_completion_length": answer_tokens, "save_strategy": "no", "output_dir": "/tmp/bench-grpo"})
        trainer = head_only.trainer_classes()["grpo"](model=model, reward_funcs=[reward.checker_reward], args=config,
                                                     train_dataset=data, processing_class=tokenizer, peft_config=lora)
        tokens_per_step = None  # measured from the logged completion lengths
    else:
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        config = trainers.sft_config_from_dict({**common, "output_dir": "/tmp/bench-sft"})
        if variant == "trl_default":
            cls = SFTTrainer
        elif variant.startswith("full_logits"):
            class FullLogitsSFTTrainer(SFTTrainer):
                def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                    # transformers' Trainer.compute_loss: the model's own loss on the full logits
                    return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            cls = FullLogitsSFTTrainer
        else:
            cls = head_only.trainer_classes()["sft"]
        trainer = cls(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
        tokens_per_step = batch * (prompt_tokens + answer_tokens)
    trainer.add_callback(timer.callback())
    trainer.train()
    measured = timer.times[warmup:] or timer.times
    seconds = statistics.median(measured)
    if tokens_per_step is None:
        lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
        tokens_per_step = batch * (prompt_tokens + (statistics.mean(lengths) if lengths else answer_tokens))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"variant": variant, "seconds_per_step": seconds, "tokens_per_s": tokens_per_step / seconds,
            "steps_timed": len(measured), "first_loss": losses[0] if losses else None,
            "threads": torch.get_num_threads(), "peak_rss_gb": (peak_rss_mb() or 0) / 1024}


def run_variant(variant: str, args) -> dict:
    import tempfile

    cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--batch", str(args.batch),
           "--prompt-tokens", str(args.prompt_tokens), "--answer-tokens", str(args.answer_tokens),
           "--warmup", str(args.warmup)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        status = proc.wait()
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if status or not lines:
        return {"variant": variant, "error": (stderr.strip().splitlines() or ["?"])[-1][:200]}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=2, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (0: time every step)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=720)
    parser.add_argument("--answer-tokens", type=int, default=40)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch, args.prompt_tokens, args.answer_tokens,
                               args.warmup)))
        return
    results = []
    for variant in args.variants:
        results.append(run_variant(variant, args))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    by_name = {r["variant"]: r for r in results}
    print(f"\ngemma-3-270m, batch {args.batch} x ({args.prompt_tokens} prompt + {args.answer_tokens} answer) tokens, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'variant':<18} {'s/step':>8} {'tokens/s':>9} {'peak RSS GB':>12} {'vs full fp32':>13} {'vs TRL':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<18} error: {r['error']}")
            continue
        ratios = []
        for base in ("full_logits_fp32", "trl_default"):
            b = by_name.get(base, {})
            ratios.append(f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}x" if "tokens_per_s" in b else "-")
        print(f"{r['variant']:<18} {r['seconds_per_step']:>8.2f} {r['tokens_per_s']:>9.1f} {r['peak_rss_gb']:>12.2f} "
              f"{ratios[0]:>13} {ratios[1]:>7}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
