"""Models: the registry (one ModelSpec per model), each family's prompt rendering and answer parser, the
prompt formatter shared by training and evaluation, the embedded model's de-quantized copy, and a dry run that
shows how a model is prompted and parsed.
"""
