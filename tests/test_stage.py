"""The one completion/resume mechanism (tinyllm_utils.core.work) and the profile/parameter plumbing of the pipeline."""

import json
import tempfile
from pathlib import Path

import pytest

from tinyllm_utils import pipeline
from tinyllm_utils.core import params, profiles
from tinyllm_utils.core import work as work_folders


def material(**parameters):
    return {"parameters": parameters, "inputs": {"02_data_filtering": "abc"}, "code": {"package": "v1"}}


def test_run_then_done_then_resume_rules(tmp_path):
    folder = tmp_path / "03_pair_construction"
    work = work_folders.open_work(folder, material(limit=6))
    assert work.status == "run" and (folder / work_folders.RUNNING).exists()
    (folder / "partial.jsonl").write_text('{"id": 1}\n')
    again = work_folders.open_work(folder, material(limit=6))  # killed before finishing: same key resumes
    assert again.status == "resume" and (folder / "partial.jsonl").exists()
    work_folders.finish_work(again, seconds=1.0)
    assert not (folder / work_folders.RUNNING).exists() and work_folders.completed_key(folder) == again.key
    assert work_folders.open_work(folder, material(limit=6)).status == "done"


def test_changed_parameters_inputs_or_code_move_old_results_aside(tmp_path):
    folder = tmp_path / "03_pair_construction"
    work_folders.finish_work(work_folders.open_work(folder, material(limit=6)))
    (folder / "pairs.txt").write_text("old")
    changed = dict(material(limit=10), inputs={"02_data_filtering": "def"}, code={"package": "v2"})
    work = work_folders.open_work(folder, changed)
    assert work.status == "rerun"
    assert work.changes == ["limit: 6 -> 10", "input 02_data_filtering changed", "package code changed"]
    assert "rerun (limit: 6 -> 10;" in work.describe()
    assert not (folder / "pairs.txt").exists() and (work.moved_to / "pairs.txt").read_text() == "old"
    assert work.moved_to.parent == tmp_path / ".stale" and work_folders.completed_key(folder) is None


def test_refuse_names_the_difference_and_keeps_the_files(tmp_path):
    work_folders.open_work(tmp_path, {"parameters": {"max_new_tokens": 256}}, on_mismatch="refuse")
    (tmp_path / "predictions.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="max_new_tokens: 256 -> 64"):
        work_folders.open_work(tmp_path, {"parameters": {"max_new_tokens": 64}}, on_mismatch="refuse")
    assert (tmp_path / "predictions.jsonl").exists()


def test_unkeyed_leftovers_are_never_taken_as_results(tmp_path):
    (tmp_path / "stage" / "predictions").mkdir(parents=True)
    work = work_folders.open_work(tmp_path / "stage", material())
    assert work.status == "rerun" and work.changes == ["folder holds files from an unkeyed run"]


def test_force_reruns_a_finished_stage_and_keeps_the_normal_key(tmp_path):
    folder = tmp_path / "s"
    first = work_folders.open_work(folder, material())
    work_folders.finish_work(first)
    forced = work_folders.open_work(folder, material(), force=True)
    assert forced.status == "rerun" and forced.changes == ["--force"] and forced.key == first.key
    work_folders.finish_work(forced)
    assert work_folders.open_work(folder, material()).status == "done"  # a later plain run does not rerun it again


def test_torn_marker_counts_as_absent(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / work_folders.DONE).write_text('{"key": "x"')  # never produced by the atomic writer, but be safe
    assert work_folders.completed_key(folder) is None


def test_edited_file_parameter_changes_the_key(tmp_path):
    review = tmp_path / "review.csv"
    review.write_text("pair_id,verdict\n1,ok\n")
    before = work_folders.file_digests({"review_csv": str(review), "limit": 6})
    review.write_text("pair_id,verdict\n1,bad\n")
    after = work_folders.file_digests({"review_csv": str(review), "limit": 6})
    assert set(before) == {str(review)} and before != after


def test_a_folder_parameter_edited_in_place_changes_the_key(tmp_path):
    """A user dataset saved with `save_to_disk`, a checkpoint folder: their files count like a file's."""
    dataset = tmp_path / "my_dataset"
    (dataset / "train").mkdir(parents=True)
    (dataset / "train" / "data-00000-of-00001.arrow").write_bytes(b"rows v1")
    before = work_folders.file_digests({"user_datasets": [{"path": str(dataset)}]})
    (dataset / "train" / "data-00000-of-00001.arrow").write_bytes(b"rows v2")
    after = work_folders.file_digests({"user_datasets": [{"path": str(dataset)}]})
    assert set(before) == {str(dataset)} and before != after
    project = Path(work_folders.__file__).resolve().parents[2]  # "." names the project, not a parameter's folder
    assert work_folders.file_digests({"where": "."}, resolve=lambda v: project / v) == {}


def test_the_key_covers_the_libraries_a_stage_runs_on():
    code = profiles.stage_material("01_baseline_evaluation", {}, {})["code"]
    assert {"bfcl-eval", "llama-cpp-python", "torch", "transformers", "trl"} <= set(code["libraries"])
    assert code["libraries"]["bfcl-eval"]  # installed: its version, so an upgrade reruns the stages


def test_a_stage_opened_outside_the_pipeline_sets_the_later_stages_aside(tmp_path):
    """`training_stages --stage 04_sft` (accelerate) reruns 04: 06-08, trained or scored from the old 04, must not
    stay beside its new results for the analysis to mix."""
    plan = profiles.resolve_profile("smoke")["stages"]
    (tmp_path / "06_hybrid" / "sft-dpo").mkdir(parents=True)
    (tmp_path / "08_analysis").mkdir()
    work = profiles.open_stage(tmp_path, "04_sft", plan["04_sft"], plan)
    assert work.status == "run"
    assert not (tmp_path / "06_hybrid").exists() and not (tmp_path / "08_analysis").exists()
    assert sorted(p.name.split("-")[0] for p in (tmp_path / ".stale").iterdir()) == ["06_hybrid", "08_analysis"]
    work_folders.finish_work(work)
    (tmp_path / "06_hybrid").mkdir()  # a done stage opened again sets nothing aside
    assert profiles.open_stage(tmp_path, "04_sft", plan["04_sft"], plan).status == "done"
    assert (tmp_path / "06_hybrid").exists()


# ---------------------------------------------------------------- parameters: one home each


def test_profiles_inherit_and_only_list_changes():
    smoke = profiles.resolve_profile("smoke")["stages"]
    quick = profiles.resolve_profile("quick")["stages"]
    for name in smoke:
        assert smoke[name] == profiles.default_parameters(name)  # the dataclass defaults are the smoke workload
    assert quick["01_baseline_evaluation"]["limit"] == 100 and quick["01_baseline_evaluation"]["parallel"] == 8
    assert quick["03_pair_construction"]["seed"] == smoke["03_pair_construction"]["seed"]  # inherited, not copied
    assert quick["02_data_filtering"]["ngram"] == smoke["02_data_filtering"]["ngram"]
    full = profiles.resolve_profile("full")["stages"]
    assert full["01_baseline_evaluation"]["limit"] is None and full["03_pair_construction"]["rejecter_max_new_tokens"] == 128
    raw = profiles.load_profiles()
    for name, profile in raw.items():
        for stage_name, changes in (profile.get("parameters") or {}).items():
            parent = raw[name].get("inherits")
            inherited = profiles.resolve_profile(parent)["stages"].get(stage_name) if parent else None
            inherited = inherited or profiles.default_parameters(stage_name)
            for key, value in changes.items():
                assert inherited[key] != value, f"{name}.{stage_name}.{key} repeats what it inherits"


def test_stages_can_add_a_stage_the_profile_leaves_out():
    assert "07_edge_profile" not in profiles.resolve_profile("smoke")["stages"]
    plan = profiles.resolve_profile("smoke", include=["07_edge_profile"])["stages"]
    assert list(plan)[-2:] == ["07_edge_profile", "08_analysis"]  # the analysis reads the edge profile too
    assert plan["07_edge_profile"] == profiles.default_parameters("07_edge_profile")
    with pytest.raises(SystemExit, match="09_nothing"):
        pipeline.run_pipeline("smoke", run_id="x", stages=["09_nothing"], progress=False)


def test_downstream_is_every_stage_computed_from_a_stage():
    quick = profiles.resolve_profile("quick")["stages"]
    assert profiles.downstream("02_data_filtering", quick) == [
        "03_pair_construction", "04_sft", "05_dpo", "06_hybrid", "07_edge_profile", "08_analysis"]
    assert profiles.downstream("06_hybrid", quick) == ["07_edge_profile", "08_analysis"]
    assert profiles.stage_inputs("08_analysis", quick)[-1] == "07_edge_profile"
    assert profiles.downstream("08_analysis", quick) == []
    # a leftover 08 of a smoke run (`--stages 07_edge_profile`) is stale too when 06 reruns
    assert profiles.downstream("06_hybrid", profiles.resolve_profile("smoke")["stages"]) == [
        "07_edge_profile", "08_analysis"]


def test_set_aside_moves_a_folder_under_stale_and_keeps_its_files(tmp_path):
    folder = tmp_path / "run" / "05_dpo"
    (folder / "dpo").mkdir(parents=True)
    (folder / "dpo" / "result.json").write_text("{}")
    moved = work_folders.set_aside(folder)
    assert not folder.exists() and moved.parent == tmp_path / "run" / ".stale"
    assert (moved / "dpo" / "result.json").read_text() == "{}"
    assert work_folders.set_aside(folder) is None


def test_unknown_parameter_is_refused_with_its_name():
    with pytest.raises(SystemExit, match="limitt"):
        profiles.resolve_profile("smoke", {"03_pair_construction": {"limitt": 3}})


def test_set_overrides_parse_yaml_values():
    assert profiles.parse_overrides(["02_data_filtering.max_distractors=2", "01_baseline_evaluation.limit=null"]) == {
        "02_data_filtering": {"max_distractors": 2}, "01_baseline_evaluation": {"limit": None}}
    with pytest.raises(SystemExit, match="STAGE.NAME=VALUE"):
        profiles.parse_overrides(["limit=3"])


def test_evaluate_cli_is_generated_from_the_dataclass(capsys):
    from tinyllm_utils.evaluation import evaluate

    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    out = capsys.readouterr().out
    for name in ("--categories", "--limit", "--multi_turn_limit", "--max_new_tokens", "--stop_when_hopeless", "--out"):
        assert name in out
    with pytest.raises(SystemExit):
        evaluate.main(["--limit", "3"])  # --out missing
    assert "--out is required" in capsys.readouterr().err


def test_stage_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setattr(params, "OUTPUT_ROOT", tmp_path)
    assert params.resolve_stage_dir("outputs/smoke/01_baseline_evaluation") == tmp_path / "smoke/01_baseline_evaluation"
    assert params.resolve_stage_dir("/abs/x") == Path("/abs/x")


def test_pipeline_json_records_the_resolved_parameters(tmp_path):
    run_root = pipeline.run_pipeline("smoke", run_id="empty", output_root=tmp_path, stages=[], progress=False)
    recorded = json.loads((run_root / "pipeline.json").read_text())
    assert recorded["parameters"]["stages"] == profiles.resolve_profile("smoke")["stages"]
    assert recorded["git"]["commit"] and recorded["hardware"]["cpu_count"]


@pytest.mark.parametrize("runtime_name, sockets_in", [("runtime", "runtime"), ("d" * 100, "tmp")],
                         ids=["in-runtime-folder", "runtime-folder-too-deep-for-a-socket"])
def test_notebook_kernel_sockets_live_outside_the_checkout(tmp_path, monkeypatch, runtime_name, sockets_in):
    # jupyter_client's default socket path is relative ("kernel-ipc-N" in the kernel's cwd, the project root):
    # a killed run (SIGKILL, no cleanup) left its sockets in the checkout. A socket path over 107 bytes cannot
    # be bound: a deep runtime folder gives way to the temp folder.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / runtime_name))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    in_checkout_before = set(params.PROJECT_ROOT.glob("kernel-ipc-*"))
    manager = pipeline.local_kernel_manager()(kernel_name="python3")
    manager.start_kernel(cwd=str(params.PROJECT_ROOT))
    client = manager.client()
    sockets = Path(manager.ip).name + "-*"
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)  # the kernel has bound its sockets
        assert len(list((tmp_path / sockets_in).glob(sockets))) == 5  # one per channel
        assert set(params.PROJECT_ROOT.glob("kernel-ipc-*")) == in_checkout_before
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert not list((tmp_path / sockets_in).glob(sockets))  # removed when the kernel stops


def test_notebook_kernels_start_with_the_malloc_settings_unless_the_environment_has_its_own(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")  # the user's value wins over the pipeline's
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    manager = pipeline.local_kernel_manager()(kernel_name="python3")
    manager.start_kernel(cwd=str(params.PROJECT_ROOT))
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        names = list(pipeline.KERNEL_MALLOC_ENV)
        reply = client.execute_interactive("import os", timeout=60, user_expressions={
            "env": f"[os.environ.get(name) for name in {names!r}]"})
        seen = reply["content"]["user_expressions"]["env"]["data"]["text/plain"]
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    expected = [pipeline.KERNEL_MALLOC_ENV[name] if name != "MALLOC_TOP_PAD_" else "4096" for name in names]
    assert seen == repr(expected)
