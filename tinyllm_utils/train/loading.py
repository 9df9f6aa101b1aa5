"""A model ready to train: loaded (the embedded GGUF de-quantized) with the end-of-turn token as EOS, families
that cannot be trained refused with the reason, and the LoRA defaults (embeddings stay tied).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tinyllm_utils.models.registry import ModelSpec, ModelUnavailableError, resolve_model

END_OF_TURN = "<end_of_turn>"
LORA_DEFAULTS = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


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
