"""The bfcl-eval shim: the checkers import without the hosted-API handlers and write nothing in site-packages."""

import json
import subprocess
import sys

PROBE = """
import json, sys, time
start = time.time()
import tinyllm_utils.bfcl.shim as b
import bfcl_eval
from pathlib import Path
print(json.dumps({
    "seconds": time.time() - start,
    "handlers_imported": sorted(m for m in sys.modules if m.startswith("bfcl_eval.model_handler.api_inference")),
    "soundfile": "soundfile" in sys.modules,
    "project_root": str(b.os.environ["BFCL_PROJECT_ROOT"]),
    "package_dir": str(Path(bfcl_eval.__file__).parent),
}))
"""


def test_checker_import_skips_hosted_api_handlers():
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
    assert out["handlers_imported"] == [] and not out["soundfile"]
    assert not out["project_root"].startswith(out["package_dir"])


def test_clear_api_state_forgets_cached_instances():
    from tinyllm_utils.bfcl import shim as bfcl

    bfcl.execute_multi_turn_func_call(["mkdir(dir_name='x')"], {"GorillaFileSystem": {"root": {"r": {
        "type": "directory", "contents": {}}}}}, ["GorillaFileSystem"], "tinyllm_probe", "entry_0")
    assert bfcl.clear_api_state("tinyllm_probe") == 1
    assert bfcl.clear_api_state("tinyllm_probe") == 0
