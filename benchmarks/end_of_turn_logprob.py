"""How well a checkpoint has learned to end its answer: log p(<end_of_turn>) right after the reference call.

    .venv/bin/python benchmarks/end_of_turn_logprob.py outputs/quick/04_sft/sft-lora/final gemma-3-270m \
        --dataset outputs/quick/02_data_filtering/dataset --rows 8

Base gemma-3-270m gives the end-of-turn token a very low log-prob after a call, and LoRA leaves its (tied)
embedding row frozen; unless SFT lifts it near 0, answers run on past the call and the checker rejects them.
Rows are stage-02 training rows in the evaluation format (formats.sft_dataset), scored with the model's own
full logits.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from tinyllm_utils.data.pairs import load_stage02
from tinyllm_utils.train import formats, loading


def end_of_turn_logprobs(model_name: str, dataset: str, rows: int) -> list[float]:
    model, tokenizer = loading.load_for_training(model_name)
    model.eval()
    end_id = tokenizer.convert_tokens_to_ids(loading.END_OF_TURN)
    data = formats.sft_dataset(load_stage02(dataset)["train"].select(range(rows)), "gemma", tokenizer)
    out = []
    for row in data:
        ids = tokenizer(row["prompt"] + row["completion"], return_tensors="pt")["input_ids"]
        assert ids[0, -1].item() == end_id, "the completion should end with <end_of_turn>"
        with torch.no_grad():
            out.append(model(ids).logits[0, -2].log_softmax(-1)[end_id].item())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="checkpoint folders or registry names")
    parser.add_argument("--dataset", required=True, help="a stage-02 dataset folder")
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    for name in args.models:
        values = end_of_turn_logprobs(name, args.dataset, args.rows)
        print(f"{name}: log p(<end_of_turn>) after the call, median {statistics.median(values):.2f} "
              f"(min {min(values):.2f}, max {max(values):.2f}, {len(values)} rows)")


if __name__ == "__main__":
    main()
