"""Training on TRL: SFT (full and LoRA), DPO, GRPO with bfcl's checker as reward (the self-improvement cycle
that strings them together is stage 06's, stages/hybrid.py).

    from tinyllm_utils.train import formats, loading, trainers
    model, tokenizer = loading.load_for_training("gemma-3-270m")        # the de-quantized embedded GGUF
    config = trainers.sft_config_from_dict({"max_steps": 100, "learning_rate": 5e-5})
    result = trainers.train_sft(model, tokenizer, formats.sft_dataset(stage02["train"]), None, config,
                                loading.default_lora(), "outputs/run/04_sft/gemma-3-270m")
    result["path"]   # <out_dir>/final: merged weights + tokenizer + model_spec.json (resolve_model(path) reads it)

Every loop is TRL's own (SFTTrainer, DPOTrainer, GRPOTrainer); this module adds what the study needs around
them:

* **Head-only loss.** TRL 1.16 patches the model with a fused LM head (`add_fused_lm_head`) that returns
  per-token log-probs in tiles instead of (batch, seq, 262k) logits, but off Triton (this CPU) it still runs
  the head on *every* position. Answers are ~40 tokens after ~720 prompt tokens, so `add_head_only_lm_head`
  re-patches the same interface (`model(..., labels=..., fused_lm_head=True)`) to project only the positions
  whose label is not -100 (what TRL itself does on CUDA), through TRL's own tiled kernel. SFT, DPO and GRPO all
  reach the head through that call, so the `HeadOnly*Trainer` subclasses change nothing else: same losses, same
  metrics, ~18x fewer head FLOPs per SFT row.
* **Gemma's end of turn.** For `gemma`-format models `<end_of_turn>` is made the tokenizer's EOS, as the
  evaluation stops there: TRL then appends nothing after the answers (format_example already ends them with it)
  and GRPO's sampling stops at the end of the turn.
* **Outputs** under `out_dir`: `checkpoints/` (TRL checkpoints; a rerun resumes from the last one),
  `curves.csv` (trainer.state.log_history, one row per step), `final/` (LoRA merged into the base, tied
  embeddings kept, `model_spec.json` with the lineage), `result.json`, then the completion marker of
  tinyllm_utils.core.work (a rerun with the same parameters returns the result without training; other
  parameters in the same folder are refused).

Model output is never executed: GRPO's reward decodes completions with tinyllm_utils.bfcl.decoding (literals only)
and asks bfcl-eval's checker (tinyllm_utils.bfcl.scoring).
"""

from __future__ import annotations

import copy
import ctypes
import gc
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from tinyllm_utils.core.results import manifest, write_json_atomic, write_text_atomic
from tinyllm_utils.core.work import finish_work, open_work, replace_dir_atomic
from tinyllm_utils.models.registry import ModelSpec
from tinyllm_utils.train.formats import drop_too_long
from tinyllm_utils.train.head_only import is_peft, trainer_classes
from tinyllm_utils.train.progress import attach as attach_progress
from tinyllm_utils.train.reward import checker_reward

STEP_CURVES = ("loss", "eval_loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies",
               "reward", "reward_std")




# ---------------------------------------------------------------- configs (TRL's own classes from a dict)


def _defaults(kind: str) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    common = {
        "report_to": "none", "logging_steps": 1, "save_strategy": "steps", "save_steps": 50, "save_total_limit": 2,
        "use_cpu": not cuda,
        # bf16 autocast only on a GPU that has it; on this CPU fp32 (benchmarks/train_step.py measures both)
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        # off on CPU: small LoRA steps fit in memory without it, and recomputing activations only slows them
        # (transformers 5's name: TRL's configs default the deprecated `gradient_checkpointing` to True, a
        # FutureWarning every run)
        "activation_checkpointing": cuda,
        "dataloader_pin_memory": cuda, "seed": 0, "disable_tqdm": True, "per_device_train_batch_size": 2,
    }
    specific = {
        "sft": {"completion_only_loss": True, "max_length": 2048, "learning_rate": 5e-5},
        "dpo": {"max_length": 2048, "beta": 0.1, "loss_type": ["sigmoid"], "learning_rate": 5e-6},
        "grpo": {"num_generations": 4, "max_completion_length": 128, "per_device_train_batch_size": 4,
                 "learning_rate": 1e-6, "temperature": 1.0},
    }[kind]
    return {**common, **specific}


def training_config(kind: str, d: dict | None = None, output_dir: str | Path | None = None):
    """TRL's `SFTConfig` / `DPOConfig` / `GRPOConfig` from a plain dict (a profile block) over the study's
    defaults (report_to none, log every step, checkpoints every 50 steps, CPU: use_cpu, fp32, no gradient
    checkpointing). Unknown keys raise TRL's own TypeError."""
    import trl

    cls = {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}[kind]
    values = {**_defaults(kind), **(d or {})}
    if "gradient_checkpointing" in (d or {}) and "activation_checkpointing" not in d:
        del values["activation_checkpointing"]  # a block's old name still decides (transformers maps it)
    values["output_dir"] = str(output_dir or values.get("output_dir") or "checkpoints")
    return cls(**values)


def sft_config_from_dict(d: dict | None = None, output_dir=None):
    return training_config("sft", d, output_dir)


def dpo_config_from_dict(d: dict | None = None, output_dir=None):
    return training_config("dpo", d, output_dir)


def grpo_config_from_dict(d: dict | None = None, output_dir=None):
    return training_config("grpo", d, output_dir)


# ---------------------------------------------------------------- runs: checkpoints, curves, final model


def curves_frame(log_history: list[dict]) -> pd.DataFrame:
    """trainer.state.log_history as one row per step (train and eval logs of a step merged)."""
    frame = pd.DataFrame([h for h in log_history if "step" in h])
    if frame.empty:
        return frame
    return frame.groupby("step", as_index=False).first()


def _config_key(config) -> dict:
    """The parameters a finished run depends on (logging and saving options left out)."""
    skip = {"output_dir", "logging_dir", "logging_steps", "save_steps", "save_total_limit", "disable_tqdm",
            "report_to", "eval_steps", "save_strategy", "logging_strategy", "eval_strategy"}
    values = {k: v for k, v in config.to_dict().items() if k not in skip and not k.startswith("_")}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def _dataset_key(dataset) -> str | None:
    return None if dataset is None else getattr(dataset, "_fingerprint", None)


def _run_key(method: str, config, lora, train_ds, eval_ds, spec: ModelSpec | None) -> dict:
    return {"method": method, "config": _config_key(config),
            "lora": None if lora is None else json.loads(json.dumps(lora.to_dict(), default=str, sort_keys=True)),
            "train": _dataset_key(train_ds), "eval": _dataset_key(eval_ds), "model": spec.name if spec else None}


def _open(out_dir: Path, key: dict):
    """The run's folder, keyed like every folder of the study (tinyllm_utils.core.work): returns (the saved result,
    work) when a run with these parameters finished, (None, work) to train or resume from the last checkpoint;
    a folder holding a run with other parameters is refused, naming what differs."""
    work = open_work(out_dir, {"parameters": key}, on_mismatch="refuse")
    if work.status == "done":
        result = json.loads((out_dir / "result.json").read_text())
        # the files are where the folder is now (outputs move; result.json keeps where they were written)
        return {**result, "path": str(out_dir / "final"), "curves": str(out_dir / "curves.csv")}, work
    return None, work


def save_final(model, tokenizer, folder: str | Path, spec: ModelSpec | None, method: str,
               stage_key: str | None = None, name: str | None = None) -> Path:
    """The trained model for evaluation and export: LoRA merged into the base (ties kept), weights, tokenizer
    and `model_spec.json` (source local, prompt format inherited, lineage: base_model, method, parent,
    stage_key), written to a temporary folder first so an interrupted save never looks finished.

    Weights are stored at the precision they are evaluated at (`store_as_evaluated`), so the model changes
    in place: it is not trained further after this."""
    folder = Path(folder)
    if is_peft(model):
        model = model.merge_and_unload()
    computed_in = str(model.dtype).removeprefix("torch.")
    store_as_evaluated(model)
    trained = None
    if spec is not None:
        parent = spec.path if spec.source == "local" and spec.path else spec.name
        trained = replace(spec, name=name or f"{spec.name}-{method}", base_model=spec.base_model or spec.name,
                          method=method, parent=parent, stage_key=stage_key)

    def build(path: Path) -> None:
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        # transformers writes the stored dtype as the one to load in; load in the dtype it was trained in
        config = json.loads((path / "config.json").read_text())
        config["dtype"] = computed_in
        (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    replace_dir_atomic(build, folder)
    if trained is not None:
        trained.save(folder)  # after the rename: model_spec.json names the final folder
    return folder


def store_as_evaluated(model) -> None:
    """Matrices in F16 and the rest (norms, biases) as they are: what the F16 GGUF export keeps of each tensor,
    so the exported file is the same as from full precision, at half the disk (a 270M model's fp32 copy is
    1.07 GB, and a run keeps one per trained model). Stages that train on from a saved model (DPO from SFT)
    load it in fp32 again (`loading.load_for_training`), starting from exactly the weights that were evaluated.
    16-bit weights (a model trained in bf16) are left as they are."""
    import torch

    for parameter in model.parameters():  # a tied matrix is one parameter: converted once, still tied
        if parameter.dtype == torch.float32 and parameter.dim() > 1:
            parameter.data = parameter.data.to(torch.float16)


def release_memory() -> None:
    """Hand the memory training freed back to the OS before what follows it (merge, save, GGUF export, evaluation).

    The pipeline's kernels keep freed memory for reuse (pipeline.KERNEL_MALLOC_ENV: training steps run faster
    reusing it), so without this the heap a training run grew stays resident under the export, and the stage's
    peak memory comes after training instead of during it. glibc's malloc_trim; else a no-op."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


CLOCK_FILE = "training_seconds.json"


def training_clock(seconds_before: float):
    """A callback that writes the training seconds so far into each checkpoint it follows (CLOCK_FILE), so a
    resumed run adds its own to those: a model's `seconds` is then the training that produced it, from step 0
    (the time between the last checkpoint and a kill was lost, not spent on this model, and is not counted)."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class TrainingClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):  # called right after the checkpoint's files
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                write_json_atomic(folder / CLOCK_FILE, {"seconds": seconds_before + time.perf_counter() - self.start})

    return TrainingClock()


def resume_checkpoint(checkpoints: str | Path) -> str | None:
    """The newest `checkpoint-<step>` folder whose trainer state is readable, or None; newer folders without one
    (a run killed while saving: transformers writes the state last) are removed. `get_last_checkpoint` would take
    the half-written one and fail on every rerun, and checkpoint rotation would keep it and delete a whole one."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    def step(folder: Path) -> int:
        suffix = folder.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        return int(suffix) if suffix.isdigit() else -1

    folders = [f for f in Path(checkpoints).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if f.is_dir() and step(f) >= 0]
    for folder in sorted(folders, key=step, reverse=True):
        try:
            json.loads((folder / "trainer_state.json").read_text())
            return str(folder)
        except (OSError, ValueError):
            shutil.rmtree(folder)
    return None


def _train(trainer, method: str, out_dir: Path, key: dict, tokenizer, spec: ModelSpec | None,
           stage_key: str | None, name: str | None, work, **extra) -> dict:
    last = resume_checkpoint(trainer.args.output_dir)
    # what the checkpoint a run resumes from had trained: TRL's state carries the token count on; the seconds are
    # the clock's (None from a checkpoint written without it: `seconds` then counts only this process's)
    tokens_at_resume, seconds_at_resume = 0, None
    if last:
        tokens_at_resume = json.loads((Path(last) / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
        clock = Path(last) / CLOCK_FILE
        seconds_at_resume = json.loads(clock.read_text())["seconds"] if clock.exists() else None
    trainer.add_callback(training_clock(seconds_at_resume or 0.0))
    attach_progress(trainer, method)  # text lines and a curve table, not transformers' per-step dicts
    start = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=last)
    seconds = (seconds_at_resume or 0.0) + time.perf_counter() - start
    release_memory()  # the steps' activations are freed: give them back before the merge, save and export
    curves = curves_frame(trainer.state.log_history)
    write_text_atomic(out_dir / "curves.csv", curves.to_csv(index=False))
    final = save_final(trainer.model, tokenizer, out_dir / "final", spec, method, stage_key, name)
    result = manifest(key["config"], method=method, path=str(final), seconds=seconds, resumed_from=last,
                      tokens_seen_at_resume=tokens_at_resume, seconds_at_resume=seconds_at_resume,
                      global_step=trainer.state.global_step, epoch=trainer.state.epoch,
                      train_metrics=train_output.metrics,
                      final_metrics={k: float(curves[k].dropna().iloc[-1]) for k in STEP_CURVES
                                     if k in curves and curves[k].notna().any()},
                      run_key=key, curves=str(out_dir / "curves.csv"), rows=len(trainer.train_dataset), **extra)
    write_json_atomic(out_dir / "result.json", result)
    finish_work(work)  # the completion marker, last
    return result


def train_end_token(lora, tokenizer):
    """`lora` with the answers' end token (the tokenizer's EOS: `<end_of_turn>` for Gemma) made trainable, unless
    it names its own `trainable_token_indices`. LoRA leaves the (tied) embedding frozen, and a base model's
    `<end_of_turn>` row is untrained: LoRA SFT then gives `<end_of_turn>` after a correct call no more
    probability than unused tokens, so greedy decoding runs on into junk
    (`[f(x=1)]eleSp[`). peft trains that one row (tied: input and output) and merges it like the adapter."""
    end_id = getattr(tokenizer, "eos_token_id", None)
    if lora is None or end_id is None or getattr(lora, "trainable_token_indices", None) is not None:
        return lora
    lora = copy.copy(lora)
    lora.trainable_token_indices = [end_id]
    return lora


def _prepare(method: str, model, tokenizer, config, lora, train_ds, eval_ds, out_dir, spec):
    if not len(train_ds):
        raise ValueError(f"{method}: the training set is empty (no rows or pairs to train on)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = spec or getattr(model, "_tinyllm_spec", None)
    config.output_dir = str(out_dir / "checkpoints")
    lora = train_end_token(lora, tokenizer)
    key = _run_key(method, config, lora, train_ds, eval_ds, spec)
    return out_dir, spec, key, lora


def train_sft(model, tokenizer, train_ds, eval_ds, sft_config, lora=None, out_dir="sft", *, spec=None,
              stage_key=None, name=None) -> dict:
    """Supervised fine-tuning on prompt/completion rows (sft_dataset), loss on the completion only, full
    (lora=None) or LoRA (`default_lora()`); returns result.json's content (`path` = the final model)."""
    out_dir, spec, key, lora = _prepare("sft", model, tokenizer, sft_config, lora, train_ds, eval_ds, out_dir, spec)
    done, work = _open(out_dir, key)
    if done is not None:
        return done
    train_ds, dropped = drop_too_long(train_ds, tokenizer, sft_config.max_length)
    eval_ds, _ = drop_too_long(eval_ds, tokenizer, sft_config.max_length)
    trainer = trainer_classes()["sft"](model=model, args=sft_config, train_dataset=train_ds, eval_dataset=eval_ds,
                                       processing_class=tokenizer, peft_config=lora)
    return _train(trainer, "sft" if lora is None else "sft_lora", out_dir, key, tokenizer, spec, stage_key, name, work,
                  dropped_too_long=dropped)


def train_dpo(model, tokenizer, train_ds, eval_ds, dpo_config, lora=None, out_dir="dpo", *, ref_model=None,
              spec=None, stage_key=None, name=None) -> dict:
    """DPO on stage-03 pairs (dpo_dataset), from the base or an SFT checkpoint (load_for_training(path)).

    Reference: with LoRA, the policy with its adapter disabled; else `ref_model`, or precomputed reference
    log-probs (`precompute_ref_log_probs=True` in the config), or a frozen copy of the starting model (TRL
    cannot reload a GGUF-loaded model by name). beta, loss_type (sigmoid, ipo, apo_zero, [sigmoid, sft] with
    loss_weights), learning_rate: DPOConfig fields."""
    if is_peft(model):  # TRL refuses a PeftModel with a new peft_config; the adapter is part of the start
        model = model.merge_and_unload()
    out_dir, spec, key, lora = _prepare("dpo", model, tokenizer, dpo_config, lora, train_ds, eval_ds, out_dir, spec)
    done, work = _open(out_dir, key)
    if done is not None:
        return done
    train_ds, dropped = drop_too_long(train_ds, tokenizer, dpo_config.max_length, ("chosen", "rejected"))
    eval_ds, _ = drop_too_long(eval_ds, tokenizer, dpo_config.max_length, ("chosen", "rejected"))
    if ref_model is None and lora is None and not dpo_config.precompute_ref_log_probs:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    trainer = trainer_classes()["dpo"](model=model, ref_model=ref_model, args=dpo_config, train_dataset=train_ds,
                                       eval_dataset=eval_ds, processing_class=tokenizer, peft_config=lora)
    return _train(trainer, "dpo" if lora is None else "dpo_lora", out_dir, key, tokenizer, spec, stage_key, name,
                  work, dropped_too_long=dropped)


def train_grpo(model, tokenizer, train_ds, eval_ds, grpo_config, lora=None, out_dir="grpo", *, reward_funcs=None,
               max_prompt_length: int | None = None, spec=None, stage_key=None, name=None) -> dict:
    """GRPO on stage-02 prompts (grpo_dataset) with `checker_reward` (bfcl's verdict, 0/1) unless
    `reward_funcs` says otherwise. beta=0 (TRL's default) needs no reference model; with beta > 0 and no
    LoRA, TRL builds one from the model's folder (load_for_training gives a loadable folder).

    Prompts longer than `max_prompt_length` tokens are left out (`dropped_too_long`): TRL 1.16 removed its own
    option, and a step's memory grows with them (benchmarks/train_step.py's grpo variant at several `--prompt-tokens`)."""
    if is_peft(model):
        model = model.merge_and_unload()
    out_dir, spec, key, lora = _prepare("grpo", model, tokenizer, grpo_config, lora, train_ds, eval_ds, out_dir, spec)
    if max_prompt_length:
        key["max_prompt_length"] = max_prompt_length
    done, work = _open(out_dir, key)
    if done is not None:
        return done
    train_ds, dropped = drop_too_long(train_ds, tokenizer, max_prompt_length, ())
    eval_ds, _ = drop_too_long(eval_ds, tokenizer, max_prompt_length, ())
    tokenizer.padding_side = "left"
    trainer = trainer_classes()["grpo"](model=model, reward_funcs=reward_funcs or [checker_reward],
                                        args=grpo_config, train_dataset=train_ds, eval_dataset=eval_ds,
                                        processing_class=tokenizer, peft_config=lora)
    return _train(trainer, "grpo" if lora is None else "grpo_lora", out_dir, key, tokenizer, spec, stage_key, name,
                  work, dropped_too_long=dropped)
