"""Training data: sources (bfcl's unused data, user datasets, the generated Python-API source), converters,
the row filters and augmentation of stage 02, and the verified chosen/rejected pairs of stage 03.
"""
