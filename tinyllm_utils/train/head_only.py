"""The head-only loss: the LM head (262k rows for Gemma) runs on the answer positions only, through TRL's
trainers subclassed once; equal to the full-logits loss (tested) at a fraction of the memory.
"""

from __future__ import annotations

import contextlib
import functools
import types

# Per-token fields the policy's head computes: log-probs for the losses, the rest for TRL's logged metrics.
HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


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
        policy = self.model.get_base_model() if is_peft(self.model) else self.model
        add_head_only_lm_head(policy, temperature, cast, outputs)
        if getattr(self, "ref_model", None) is not None:
            add_head_only_lm_head(self.ref_model, temperature, cast, ("log_probs",))


def is_peft(model) -> bool:
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
