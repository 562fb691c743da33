"""The run-folder contract (sfr_ds.run_dir) and the atomic writes under it (sfr_ds.io)."""

import json
import os
import shutil

import pytest

from sfr_ds.io import atomic_file, atomic_write, atomic_write_json, new_folder, partial_dir, sha256_files
from sfr_ds.run_dir import (
    META,
    RunDir,
    RunDirError,
    content_digest,
    find_model_folder,
    locate_checkpoint,
    model_folder,
)


def test_atomic_file_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write(target, "first")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("half of a second version")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]  # no temporary left
    atomic_write_json(target, {"a": 1}, durable=True)
    assert json.loads(target.read_text()) == {"a": 1}


def test_new_folder_replaces_only_an_empty_folder_and_never_mixes(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(ValueError), new_folder(out) as part:
        (part / "weights").write_text("new")
        raise ValueError("failed build")
    assert not out.exists() and not partial_dir(out).exists()
    out.mkdir()
    with new_folder(out) as part:
        (part / "weights").write_text("new")
    assert (out / "weights").read_text() == "new" and not partial_dir(out).exists()
    with pytest.raises(OSError), new_folder(out) as part:  # out holds files: refused, out untouched
        (part / "weights").write_text("newer")
    assert (out / "weights").read_text() == "new" and not partial_dir(out).exists()


def test_sha256_files_hashes_names_and_contents_not_places(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "a" / "y").write_text("2")
    before = sha256_files((tmp_path / "a").iterdir())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert sha256_files((tmp_path / "b").iterdir()) == before
    (tmp_path / "b" / "y").write_text("3")
    assert sha256_files((tmp_path / "b").iterdir()) != before
    os.rename(tmp_path / "a" / "y", tmp_path / "a" / "z")
    assert sha256_files((tmp_path / "a").iterdir()) != before


def _model(folder, **meta):
    folder.mkdir(parents=True)
    (folder / META).write_text(json.dumps({"pooling": "last", **meta}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def test_model_folder_of_a_run_or_its_final_and_digest_by_content(tmp_path):
    run = RunDir(tmp_path / "run")
    _model(run.final, random_init={"model_type": "llama"}, base_model_dir="../base_model")
    run.base_model.mkdir()
    (run.base_model / "model.safetensors").write_bytes(b"base")
    assert model_folder(run.root) == run.final == model_folder(run.final) == find_model_folder(run.root)
    assert model_folder(tmp_path) is None
    with pytest.raises(RunDirError, match="no sfr_ds.json"):
        find_model_folder(tmp_path)
    digest = content_digest(run.final)
    shutil.copytree(run.root, tmp_path / "moved")
    assert content_digest(tmp_path / "moved" / "final") == digest  # a copied run is the same model
    (run.base_model / "model.safetensors").write_bytes(b"another base")
    assert content_digest(run.final) != digest  # the random base is part of the model
    shutil.rmtree(run.base_model)
    with pytest.raises(RunDirError, match="base model .* is gone"):
        content_digest(run.final)


def test_merged_digest_skips_weight_shards_but_not_metadata(tmp_path):
    merged = _model(tmp_path / "merged", merged=True, source_digest="abc")
    (merged / "model.safetensors").write_bytes(b"14 GB of weights")
    digest = content_digest(merged)
    (merged / "model.safetensors").write_bytes(b"other weights")
    assert content_digest(merged) == digest
    (merged / META).write_text(json.dumps({"merged": True, "source_digest": "def"}))
    assert content_digest(merged) != digest


def test_checkpoints_latest_and_locate(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.latest_tag() is None and run.complete_tags() == [] and not run.has_state()
    for step in (2, 4):
        (run.checkpoint(run.tag(step))).mkdir(parents=True)
        (run.checkpoint(run.tag(step)) / "complete.json").write_text("{}")
    run.checkpoint(run.tag(6)).mkdir()  # a save that never completed
    run.latest_file.write_text(run.tag(4))
    run.config_file.write_text("{}")
    assert run.complete_tags() == ["step-00000002", "step-00000004"] and run.latest_tag() == "step-00000004"
    for given in (run.root, run.checkpoints, run.checkpoint("step-00000004")):
        assert locate_checkpoint(given) == (RunDir(run.root.resolve()), run.checkpoint("step-00000004"))
    assert locate_checkpoint(run.checkpoint("step-00000002"))[1].name == "step-00000002"
    with pytest.raises(RunDirError, match="no complete.json"):
        locate_checkpoint(run.checkpoint("step-00000006"))
    run.latest_file.write_text(run.tag(6))
    with pytest.raises(RunDirError, match="names 'step-00000006'"):
        run.latest_tag()


def test_plan_start_resumes_starts_or_refuses(tmp_path):
    from sfr_ds.run_dir import plan_start

    run = RunDir(tmp_path / "run")
    assert (
        plan_start(run, resume=False, save_every=2) == plan_start(run, resume=True, save_every=2).__class__()
    )
    # killed during its first save (step 2): a half-written checkpoint, metrics up to step 2
    run.checkpoint(run.tag(2)).mkdir(parents=True)
    run.metrics_file.write_text('{"step": 1}\n{"step": 2}\n')
    start = plan_start(run, resume=True, save_every=2)
    assert start.tag is None and "starting from step 1" in start.note
    with pytest.raises(RunDirError, match="pass --resume"):
        plan_start(run, resume=False, save_every=2)
    # a step past the first save was logged: a complete checkpoint existed, and is gone
    run.metrics_file.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    with pytest.raises(RunDirError, match="no complete checkpoint to resume from"):
        plan_start(run, resume=True, save_every=2)
    (run.checkpoint(run.tag(2)) / "complete.json").write_text("{}")
    run.latest_file.write_text(run.tag(2))
    assert plan_start(run, resume=True, save_every=2).tag == "step-00000002"
    run.final.mkdir()
    (run.final / META).write_text("{}")
    assert plan_start(run, resume=True, save_every=2).finished
    with pytest.raises(RunDirError, match="finished run"):
        plan_start(run, resume=False, save_every=2)


def test_a_rank_scoped_plan_refuses_another_rank_count(tmp_path):
    """``data.homogeneous_scope: rank`` plans each batch over the rank count: a checkpoint written by
    2 ranks resumes on 2, and on 1 it stops with one line naming the checkpoint."""
    from sfr_ds.engine.checkpoints import CheckpointError, check_world

    run = RunDir(tmp_path / "run")
    (run.checkpoint("step-4")).mkdir(parents=True)
    (run.checkpoint("step-4") / "complete.json").write_text('{"step": 4, "world": 2}')
    check_world(run, "step-4", 2, "plans per rank")
    with pytest.raises(CheckpointError, match=r"step-4 was written by 2 ranks, not 1: plans per rank"):
        check_world(run, "step-4", 1, "plans per rank")
