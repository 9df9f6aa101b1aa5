"""Training with TRL and peft on the shared prompt path: a model loaded for training (`loading`), the head-only
loss (`head_only`), rows and pairs in TRL's formats (`formats`), the checker as GRPO reward (`reward`), the SFT / DPO /
GRPO runs with resumable checkpoints and bookkeeping (`trainers`), and export of a checkpoint to GGUF (`export`).
"""
