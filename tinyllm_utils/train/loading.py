"""A model ready to train: loaded (the embedded GGUF de-quantized) with its family's end-of-turn token as EOS,
what cannot be trained as it is scored refused with the reason, and the LoRA defaults (embeddings stay tied).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tinyllm_utils.models.registry import ModelSpec, ModelUnavailableError, resolve_model

END_OF_TURN = "<end_of_turn>"
LORA_DEFAULTS = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


# ---------------------------------------------------------------- models


class UntrainableFamilyError(ValueError):
    """A model the trainers cannot train as it is evaluated; the message says why."""


def check_trainable(spec: ModelSpec, tokenizer=None) -> None:
    """Refuse only what cannot be trained the way it is scored. Every family's rows, pairs and GRPO prompts are
    rendered by the function that renders its evaluation prompt, answered in its own syntax
    (models.families.training_example), so a family is trainable when:

    * it has a training target for its parser (families.TARGETS);
    * (with the tokenizer) its end of turn is one token of the vocabulary, so the answer can end as its
      evaluation stops; a chat-template family has a chat template; a reasoning family has `<think>` and
      `</think>` (the empty reasoning block its answers start with)."""
    from tinyllm_utils.models.families import TARGETS, end_of_turn, family_of

    family = family_of(spec)
    if family.parser not in TARGETS:
        raise UntrainableFamilyError(f"model {spec.name!r} (family {family.key!r}): no training target is defined "
                                     f"for its parser {family.parser!r} (models.families.TARGETS)")
    if tokenizer is None:
        return
    vocab = tokenizer.get_vocab()
    marker = end_of_turn(spec, tokenizer)
    if not marker or marker not in vocab:
        raise UntrainableFamilyError(
            f"model {spec.name!r} (family {family.key!r}): its tokenizer has no single token {marker!r} to end an "
            "answer with, so a trained answer could not stop where its evaluation stops")
    if family.render == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise UntrainableFamilyError(f"model {spec.name!r}: the chat-template family needs a tokenizer with a chat "
                                     "template (its rows are rendered by it)")
    if spec.reasoning == "strip_think" and not {"<think>", "</think>"} <= set(vocab):
        raise UntrainableFamilyError(f"model {spec.name!r}: reasoning 'strip_think' but the tokenizer has no "
                                     "<think> / </think> tokens for the empty reasoning block of its answers")


def load_for_training(spec_or_name: ModelSpec | str, dtype=None):
    """(model, tokenizer) ready for the trainers. The embedded GGUF is de-quantized once to safetensors
    (backends.embedded_hf_copy): that fp32 copy IS the study's base model offline. Hub ids and local
    folders load with `from_pretrained`; a local `.gguf` is de-quantized on load. `dtype` defaults to fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tinyllm_utils.models.embedded import embedded_hf_copy
    from tinyllm_utils.models.families import end_of_turn

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
    check_trainable(spec, tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    use_end_of_turn_as_eos(model, tokenizer, end_of_turn(spec, tokenizer))
    model._tinyllm_spec = spec  # read by the train_* functions for model_spec.json
    return model, tokenizer


def use_end_of_turn_as_eos(model, tokenizer, marker: str = END_OF_TURN) -> None:
    """Answers end with the family's end of turn (`<end_of_turn>` for Gemma, `<|im_end|>` for Qwen and xLAM-2:
    families.completion_for); make it the EOS everywhere so TRL appends no other EOS after it and generation
    (GRPO, self-improvement) stops at the end of the turn."""
    end_id = tokenizer.convert_tokens_to_ids(marker)
    if end_id is None or end_id == tokenizer.unk_token_id:
        return
    tokenizer.eos_token = marker
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
