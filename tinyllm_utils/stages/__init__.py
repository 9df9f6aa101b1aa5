"""One module per pipeline stage: its config dataclass (the stage's parameters, whose defaults are the smoke
workload) and its run function, which is what the pipeline's notebook calls. `cli` runs a stage without its
notebook (e.g. under `accelerate launch`).
"""
