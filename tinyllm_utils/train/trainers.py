"""Training on TRL: SFT (full and LoRA), DPO, GRPO with bfcl's checker as reward (the self-improvement cycle
that strings them together is stage 06's, stages/hybrid.py).

    from tinyllm_utils.train import trainers
    model, tokenizer = trainers.load_for_training("gemma-3-270m")        # the de-quantized embedded GGUF
    config = trainers.sft_config_from_dict({"max_steps": 100, "learning_rate": 5e-5})
    result = trainers.train_sft(model, tokenizer, trainers.sft_dataset(stage02["train"]), None, config,
                                trainers.default_lora(), "outputs/run/04_sft/gemma-3-270m")
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

import contextlib
import copy
import ctypes
import functools
import gc
import json
import shutil
import time
import types
import warnings
from dataclasses import replace
from pathlib import Path

import pandas as pd

from tinyllm_utils.bfcl.scoring import score_single_turn
from tinyllm_utils.core.results import manifest, write_json_atomic, write_text_atomic
from tinyllm_utils.core.work import finish_work, open_work, replace_dir_atomic
from tinyllm_utils.data.rows import row_entry, row_example
from tinyllm_utils.models.prompts import answer_text, first_turn_messages, format_example, format_prompt
from tinyllm_utils.models.registry import ModelSpec, ModelUnavailableError, resolve_model

END_OF_TURN = "<end_of_turn>"
# Per-token fields the policy's head computes: log-probs for the losses, the rest for TRL's logged metrics.
HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
LORA_DEFAULTS = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
STEP_CURVES = ("loss", "eval_loss", "learning_rate", "grad_norm", "rewards/margins", "rewards/accuracies",
               "reward", "reward_std")


# ---------------------------------------------------------------- models


class UntrainableFamilyError(ValueError):
    """A model whose evaluation prompt comes from bfcl's own handler: the trainers cannot render its rows."""


def check_trainable(spec: ModelSpec) -> None:
    """Training rows are rendered with the Gemma turns or the tokenizer's chat template and answered with Python
    call lists (prompts.format_example). A family whose evaluation prompt bfcl's handler renders (Qwen's and
    xLAM's, some answering in JSON or <tool_call> syntax) would be trained on text its evaluation never shows."""
    from tinyllm_utils.models.families import family_of

    family = family_of(spec)
    if family.render == "handler":
        raise UntrainableFamilyError(
            f"model {spec.name!r} (family {family.key!r}) is evaluated on bfcl's {family.handler} prompt "
            f"({family.mode} mode): the trainers render Gemma turns or the tokenizer's chat template with Python "
            "call answers, so it would train on prompts it is never evaluated on; train a gemma or generic "
            "(chat-template) model")


def load_for_training(spec_or_name: ModelSpec | str, dtype=None):
    """(model, tokenizer) ready for the trainers. The embedded GGUF is de-quantized once to safetensors
    (backends.embedded_hf_copy): that fp32 copy IS the study's base model offline. Hub ids and local
    folders load with `from_pretrained`; a local `.gguf` is de-quantized on load. `dtype` defaults to fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinyllm_utils.models.embedded import embedded_hf_copy

    spec = resolve_model(spec_or_name) if isinstance(spec_or_name, str) else spec_or_name
    check_trainable(spec)
    dtype = dtype or torch.float32
    if spec.source == "embedded":
        source, extra = str(embedded_hf_copy(spec)), {}
    elif spec.path and spec.path.endswith(".gguf"):
        source, extra = str(Path(spec.path).parent), {"gguf_file": Path(spec.path).name}
    else:
        source, extra = spec.path or spec.hf_id, ({"revision": spec.revision} if spec.revision else {})
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    except OSError as exc:
        raise ModelUnavailableError(f"cannot load {spec.name!r} for training from {source!r} "
                                    f"({str(exc).splitlines()[0]})") from None
    model.hf_quantizer = None  # a GGUF load leaves its (de-)quantizer attached; the weights are plain tensors
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if spec.prompt_format == "gemma":
        use_end_of_turn_as_eos(model, tokenizer)
    model._tinyllm_spec = spec  # read by the train_* functions for model_spec.json
    return model, tokenizer


def use_end_of_turn_as_eos(model, tokenizer) -> None:
    """Gemma-format answers end with `<end_of_turn>` (prompts.format_example); make it the EOS everywhere so
    TRL appends no `<eos>` after it and generation (GRPO, self-improvement) stops at the end of the turn."""
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end_id is None or end_id == tokenizer.unk_token_id:
        return
    tokenizer.eos_token = END_OF_TURN
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    model.generation_config.eos_token_id = [end_id] + [i for i in configured if i != end_id]
    model.config.eos_token_id = end_id


def default_lora(**overrides):
    """LoRA r 16, alpha 32 on every linear layer but the (tied) output head; `ensure_weight_tying` keeps the
    embeddings tied (never `modules_to_save` on lm_head/embeddings: that unties them, peft#2777)."""
    from peft import LoraConfig

    return LoraConfig(**{**LORA_DEFAULTS, "ensure_weight_tying": True, **overrides})


# With `ensure_weight_tying` and neither embedding nor head adapted (the end-of-turn row is trained through
# `trainable_token_indices`, which peft ties itself), peft warns on every LoRA run that it had nothing to tie.
warnings.filterwarnings("ignore", message="You have requested `ensure_weight_tying`, but no tied modules are added",
                        category=UserWarning)


# ---------------------------------------------------------------- the head-only LM head


def add_head_only_lm_head(model, temperature: float = 1.0, cast_lm_head_to_fp32: bool = False,
                          outputs: tuple[str, ...] = HEAD_OUTPUTS) -> None:
    """Patch `model` so `model(..., labels=labels, fused_lm_head=True)` projects only the positions whose next
    label is not -100 through the output head, with TRL's tiled log-prob kernel; returns TRL's
    `FusedCausalLMOutput` (per-token fields zero on ignored positions). Other calls (generation) are unchanged.

    Applied over TRL's own patch (which scores every position off Triton), to the unwrapped model (PEFT's base
    model), after the trainer is built."""
    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, FusedCausalLMOutput, maybe_gather_lm_head_ctx

    text_config = model.config.get_text_config()
    scaled = [k for k in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
              if getattr(text_config, k, None) is not None]
    if scaled:
        raise NotImplementedError(f"{type(model).__name__} scales its logits ({scaled}); use TRL's own head")
    softcap = getattr(text_config, "final_logit_softcapping", None)
    inner = model.forward  # TRL's fused forward or the model's own: both pass plain calls through

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                **kwargs):
        if not fused_lm_head:
            extra = {k: v for k, v in (("labels", labels), ("shift_labels", shift_labels),
                                       ("num_items_in_batch", num_items_in_batch)) if v is not None}
            return inner(*args, **kwargs, **extra)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        lm_head = self.get_output_embeddings()
        weight, bias = _head_weight_and_bias(lm_head)
        hidden, labels = hidden.to(weight.device), labels.to(weight.device)
        mask = labels != -100
        selected = hidden[mask]  # (answer tokens, hidden): the only rows that reach the 262k-wide head
        precision = contextlib.nullcontext()
        if cast_lm_head_to_fp32:
            selected, precision = selected.float(), torch.autocast(selected.device.type, enabled=False)
        with precision, maybe_gather_lm_head_ctx(weight, bias):
            per_token = ChunkedLogProbFunction.apply(selected, weight, bias, labels[mask], temperature,
                                                      _CHUNKED_LOGPROB_CHUNK_SIZE, softcap, 1.0, outputs)
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero)
        log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / denominator, log_probs=log_probs, entropy=entropy,
                                   log_sum_sq_probs=log_sum_sq_probs, mean_logits=mean_logits, is_top1=is_top1,
                                   label_mask=mask, aux_loss=None)

    model.forward = types.MethodType(forward, model)


def _head_weight_and_bias(lm_head):
    """The output head's (weight, bias) as the model's forward uses them. Under peft's TrainableTokensWrapper
    (train_end_token), `.weight` is the base weight with the trained rows merged in (the base weight alone while
    adapters are disabled: DPO's LoRA reference) and the bias is the wrapped layer's."""
    return lm_head.weight, getattr(lm_head, "original_module", lm_head).bias


class _HeadOnly:
    """Mixin: after TRL builds the trainer (and patches its fused head), switch policy and reference to the
    head-only head with the same temperature / fp32 options TRL chose."""

    def _use_head_only(self):
        temperature = getattr(self, "temperature", 1.0)  # GRPO samples and scores at its temperature
        cast = getattr(self.args, "cast_lm_head_to_fp32", False)
        outputs = HEAD_OUTPUTS + (("log_sum_sq_probs",) if getattr(self, "use_weighting", False) else ())
        policy = self.model.get_base_model() if _is_peft(self.model) else self.model
        add_head_only_lm_head(policy, temperature, cast, outputs)
        if getattr(self, "ref_model", None) is not None:
            add_head_only_lm_head(self.ref_model, temperature, cast, ("log_probs",))


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _trainer_classes():
    from trl import DPOTrainer, GRPOTrainer, SFTTrainer

    class HeadOnlySFTTrainer(_HeadOnly, SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._use_head_only()

    class HeadOnlyDPOTrainer(_HeadOnly, DPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._use_head_only()

    class HeadOnlyGRPOTrainer(_HeadOnly, GRPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._use_head_only()

    return HeadOnlySFTTrainer, HeadOnlyDPOTrainer, HeadOnlyGRPOTrainer


@functools.cache
def trainer_classes() -> dict:
    """{"sft", "dpo", "grpo"} -> the head-only subclasses of TRL's trainers (built lazily: TRL imports slowly)."""
    return dict(zip(("sft", "dpo", "grpo"), _trainer_classes()))


def full_logits_loss(model, batch) -> "torch.Tensor":  # noqa: F821
    """transformers' own causal-LM loss on the full logits (the reference the head-only loss must equal)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def head_only_loss(model, batch) -> "torch.Tensor":  # noqa: F821
    """The loss through a head-only patched model (`add_head_only_lm_head`)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 fused_lm_head=True).loss


# ---------------------------------------------------------------- datasets (stage 02 / 03 -> TRL formats)


def _rows(data) -> list[dict]:
    return [dict(row) for row in data] if not isinstance(data, list) else data


def _prompt_and_answer(row: dict, prompt_format: str, tokenizer=None) -> dict:
    messages = first_turn_messages(row_entry(row))[0]
    return format_example(messages, answer_text(json.loads(row["target"])), prompt_format, tokenizer)


def sft_dataset(data, prompt_format: str = "gemma", tokenizer=None):
    """Stage-02 rows (a split or a list of dicts) as TRL prompt/completion rows in the evaluation format: the
    prompt ends on `<start_of_turn>model\\n`, the completion is the reference call list (or the no-call sentence)
    plus the end-of-turn marker. Loss on the completion only (`completion_only_loss`)."""
    from datasets import Dataset

    rows = [_prompt_and_answer(row, prompt_format, tokenizer) for row in _rows(data)]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"prompt": [], "completion": []})


def dpo_dataset(pairs):
    """Stage-03 pairs (already in the evaluation format) reduced to TRL's preference columns."""
    return pairs.select_columns(["prompt", "chosen", "rejected"])


GRPO_COLUMNS = ("id", "category", "messages", "functions", "target")


def grpo_dataset(data, prompt_format: str = "gemma", tokenizer=None):
    """Stage-02 rows as GRPO prompts; the columns the checker needs (id, category, messages, functions, target:
    JSON strings) ride along and reach `checker_reward` as keyword lists."""
    from datasets import Dataset

    rows = []
    for row in _rows(data):
        prompt = format_prompt(first_turn_messages(row_entry(row))[0], prompt_format, tokenizer)
        rows.append({"prompt": prompt, **{c: row[c] for c in GRPO_COLUMNS}})
    return Dataset.from_list(rows)


class NothingFitsError(ValueError):
    """Every row is longer than the trainer's max_length: training would see nothing."""


def drop_too_long(dataset, tokenizer, max_length: int | None, answer_columns=("completion",)):
    """Rows whose prompt + each answer (SFT: the completion; DPO: chosen and rejected; GRPO, no answer column:
    the prompt alone) fit `max_length` tokens, and how many were dropped. The trainers would truncate the rest: a
    cut answer teaches a call that does not parse, and one cut away entirely trains on nothing with a silent zero
    loss (trl#6668). No dataset (an absent eval set) gives (None, 0)."""
    if dataset is None or not max_length:
        return dataset, 0

    def fits(row) -> bool:
        texts = [row["prompt"] + row[column] for column in answer_columns] or [row["prompt"]]
        return all(len(tokenizer(text).input_ids) <= max_length for text in texts)

    kept = dataset.filter(fits)
    if len(dataset) and not len(kept):
        raise NothingFitsError(f"none of the {len(dataset)} rows fits max_length={max_length} tokens (prompt + "
                               f"{' / '.join(answer_columns)}): raise max_length in the stage's training block")
    return kept, len(dataset) - len(kept)


# ---------------------------------------------------------------- reward (GRPO)


def _completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    text = str(completion)
    return text.split(END_OF_TURN)[0].strip()


def checker_reward(prompts, completions, *, category, messages, functions, target, id=None, **_) -> list[float]:
    """1.0 when bfcl-eval's checker accepts the completion, else 0.0 (no shaping term).

    The completion is decoded by tinyllm_utils.bfcl.decoding (literals only, never evaluated); unparseable,
    unsafe (calls, attributes, names as arguments) or otherwise malformed text scores 0, and so does a text
    the checker itself fails on. Columns are the stage-02 row's JSON strings (grpo_dataset)."""
    rewards, crashes = [], []
    for i, completion in enumerate(completions):
        row = {"id": (id[i] if id else str(i)), "category": category[i], "messages": messages[i],
               "functions": functions[i], "target": target[i]}
        try:
            valid = score_single_turn(row_example(row), _completion_text(completion))["valid"]
        except Exception as exc:  # noqa: BLE001 (a checker crash on an odd output is that output's failure)
            valid = False
            crashes.append(f"{row['id']}: {type(exc).__name__}: {exc}")
        rewards.append(1.0 if valid else 0.0)
    if crashes and len(crashes) == len(completions):  # not odd outputs but a broken row or scorer: say so
        raise RuntimeError(f"checker_reward: scoring failed on every completion, e.g. {crashes[0][:300]}")
    if crashes:
        warnings.warn(f"checker_reward: {len(crashes)} of {len(completions)} completions crashed the checker "
                      f"(scored 0), e.g. {crashes[0][:300]}", stacklevel=2)
    return rewards


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
    stage_key), written to a temporary folder first so an interrupted save never looks finished."""
    folder = Path(folder)
    if _is_peft(model):
        model = model.merge_and_unload()
    trained = None
    if spec is not None:
        parent = spec.path if spec.source == "local" and spec.path else spec.name
        trained = replace(spec, name=name or f"{spec.name}-{method}", base_model=spec.base_model or spec.name,
                          method=method, parent=parent, stage_key=stage_key)

    def build(path: Path) -> None:
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))

    replace_dir_atomic(build, folder)
    if trained is not None:
        trained.save(folder)  # after the rename: model_spec.json names the final folder
    return folder


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
    if _is_peft(model):  # TRL refuses a PeftModel with a new peft_config; the adapter is part of the start
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
    if _is_peft(model):
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
