"""The run-directory contract (lopt.utils.rundir), rule by rule."""

from __future__ import annotations

import json
import os
import stat

import pytest

from lopt.utils.io import atomic_write_json
from lopt.utils.rundir import MARKER, RunDirError, check_run_dir, prepare_run_dir


def test_new_and_empty_directories_are_used_and_marked(tmp_path):
    new = prepare_run_dir(tmp_path / "a" / "b", command="train")
    assert new.is_dir() and json.loads((new / MARKER).read_text())["command"] == "train"
    (tmp_path / "empty").mkdir()
    assert check_run_dir(tmp_path / "empty", command="train") == "new"
    assert prepare_run_dir(tmp_path / "empty", command="x") == tmp_path / "empty"


def test_a_file_is_refused_in_one_line(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory") as err:
        prepare_run_dir(f, command="train", overwrite=True)
    assert "\n" not in str(err.value) and f.read_text() == "x"


def test_overwrite_empties_only_what_lopt_wrote(tmp_path):
    run = prepare_run_dir(tmp_path / "run", command="train")
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "sub").mkdir()
    (run / "sub" / "x").write_text("x")
    with pytest.raises(RunDirError, match=r"not empty \(metrics.jsonl, sub\)"):
        prepare_run_dir(run, command="train")
    assert prepare_run_dir(run, command="train", overwrite=True) == run
    assert sorted(p.name for p in run.iterdir()) == [MARKER]
    # a run of an earlier lopt (no marker, an lopt config.json) may be overwritten too
    old = tmp_path / "old"
    old.mkdir()
    atomic_write_json(old / "config.json", {"environment": {}, "command": "train"})
    prepare_run_dir(old, command="train", overwrite=True)
    assert not (old / "config.json").exists()
    # someone else's directory never is, config.json or not
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"name": "my app"}')
    with pytest.raises(RunDirError, match="was not written by lopt"):
        prepare_run_dir(theirs, command="train", overwrite=True)
    assert (theirs / "config.json").exists()


def test_resume_needs_the_file_it_resumes_from(tmp_path):
    run = prepare_run_dir(tmp_path / "run", command="meta-train")
    (run / "config.json").write_text("{}")
    kw = dict(command="meta-train", resume=True, resumable="checkpoint.safetensors")
    with pytest.raises(RunDirError, match="nothing to resume: .* holds no checkpoint"):
        prepare_run_dir(run, **kw)
    with pytest.raises(RunDirError, match="does not exist"):
        prepare_run_dir(tmp_path / "missing", **kw)
    (run / "checkpoint.safetensors").write_bytes(b"")
    assert prepare_run_dir(run, **kw) == run
    assert (run / "config.json").read_text() == "{}"  # kept
    with pytest.raises(RunDirError, match="contradict"):
        prepare_run_dir(run, **kw, overwrite=True)
    with pytest.raises(RunDirError, match="cannot resume"):
        prepare_run_dir(run, command="train", resume=True)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    mode = stat.S_IMODE((tmp_path / "x.json").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
