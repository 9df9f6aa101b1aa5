"""The ground floor: result files written atomically, run manifests, work folders keyed by what they depend
on, stage parameters and profiles, the code version a stage key covers, and the notebook pairing check.
"""
