"""Hermetic test runs (unit tests, nbval on notebooks/, the smoke pipeline): nothing is written into the
repository or the user's home. Set before anything is imported, so notebook kernels inherit it too."""

import atexit
import os
import shutil
import tempfile

_scratch = tempfile.mkdtemp(prefix="tinyllm-tests-")
atexit.register(shutil.rmtree, _scratch, ignore_errors=True)  # it holds a 1.3 GB model copy: never leave it behind
os.environ.setdefault("TINYLLM_OUTPUTS", os.path.join(_scratch, "outputs"))  # notebooks' `outputs/...`
os.environ.setdefault("TINYLLM_CACHE", os.path.join(_scratch, "cache"))  # the embedded model's copies
os.environ.setdefault("HF_HOME", os.path.join(_scratch, "hf"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; fail fast instead of timing out
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_scratch, "matplotlib"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("JUPYTER_RUNTIME_DIR", os.path.join(_scratch, "jupyter-runtime"))  # kernel connection files
