"""Training with TRL and peft (SFT, DPO, GRPO) on the shared prompt path, with a head-only loss, resumable
checkpoints and bookkeeping; export of a trained checkpoint to GGUF.
"""
