"""The run-directory and interruption contract, checked over every command that writes outputs.

Each command is one row of :data:`COMMANDS`. For every row:

* ``--out`` naming a file, or a non-empty directory, is refused with exit status 2 and one line
  (no traceback), before any work, and leaves what was there untouched (``evaluate`` and
  ``reproduce``, which continue a run of their own when re-run, included);
* a real SIGINT sent to a ``lopt`` subprocess at start-up (right after it says "compiling")
  and mid-run (once progress shows) ends it with status 130, a final one-line message that
  tells the truth, and a directory whose contents match that message (a result marked
  ``interrupted``, metrics consistent with the work reported done, no temporary files);
* then ``--resume`` (meta-train) or a re-run with ``--overwrite`` finishes cleanly.

Runs are kept tiny (quadratic tasks, a few steps); what still needs a minute is marked slow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lopt
from lopt.cli.main import main

SRC = str(Path(lopt.__file__).resolve().parents[1])
HUGE = "10000000"  # a run that only an interruption ends

TINY_META = [
    "--optimizer", "star", "--tasks", "quadratic_family", "--truncation", "5",
    "--horizon-min", "10", "--horizon-max", "20", "--num-slots", "2", "--eval-every", "2",
    "--eval-tasks", "2", "--eval-horizon", "10", "--checkpoint-every", "1000",
    "--opt", "hidden_sizes=[2]", "--seed", "1",
]

#: name -> (argv of a run that never ends by itself, argv of a short complete run)
COMMANDS = {
    "train": (
        ["train", "--task", "quadratic", "--optimizer", "adam", "--steps", HUGE],
        ["train", "--task", "quadratic", "--optimizer", "adam", "--steps", "20",
         "--no-progress"],
    ),
    "meta-train": (
        ["meta-train", *TINY_META, "--outer-steps", HUGE],
        ["meta-train", *TINY_META, "--outer-steps", "2", "--no-progress"],
    ),
    "stability-map-learned": (
        # 400 x 400 points: ~100 s of work once compiled (the map runs ~1,500 points/s), so
        # that Ctrl-C lands mid-map and not after it (60 x 60 finished in 2 s with a warm cache)
        ["stability", "map", "--optimizer", "star", "--dim", "2", "--warmup", "1",
         "--resolution", "400"],
        ["stability", "map", "--optimizer", "star", "--dim", "2", "--warmup", "1",
         "--resolution", "2", "--no-progress"],
    ),
    "stability-map-analytic": (
        ["stability", "map", "--optimizer", "aggmo", "--resolution", "1000"],
        ["stability", "map", "--optimizer", "sgd", "--resolution", "4", "--no-progress"],
    ),
    "stability-meta-linear": (
        ["stability", "meta-linear", "--outer-steps", HUGE],
        ["stability", "meta-linear", "--outer-steps", "3"],
    ),
}


# -- bad --out, in-process (the same code path, without a subprocess's start-up cost) ----------
def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lopt: error: "), err
    return lines[0]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys, name):
    path = tmp_path / "results.txt"
    path.write_text("mine")
    line = _refused(capsys, [*COMMANDS[name][1], "--out", str(path)])
    assert "is a file, not a directory" in line
    assert path.read_text() == "mine"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_non_empty_out_is_refused_and_never_emptied_unless_lopt_wrote_it(tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _refused(capsys, [*COMMANDS[name][1], "--out", str(out)])
    assert "is not empty (notes.txt)" in line and "--overwrite" in line
    # --overwrite does not delete a directory that lopt did not write
    line = _refused(capsys, [*COMMANDS[name][1], "--out", str(out), "--overwrite"])
    assert "was not written by lopt" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


#: commands that continue a run when re-run on the same --out (no --overwrite/--resume flags)
CONTINUING = {
    "evaluate": ["evaluate", "--optimizer", "adam", "--suite", "quick", "--no-progress"],
    "reproduce": ["reproduce", "--quick", "--no-progress"],
}


@pytest.mark.parametrize("name", sorted(CONTINUING))
def test_continuing_commands_refuse_a_file_or_a_directory_of_something_else(tmp_path, capsys,
                                                                            name):
    path = tmp_path / "results.txt"
    path.write_text("mine")
    line = _refused(capsys, [*CONTINUING[name], "--out", str(path)])
    assert re.search(r"is a file, not a (directory|folder)", line)
    assert path.read_text() == "mine"
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = _refused(capsys, [*CONTINUING[name], "--out", str(out)])
    assert "non-empty" in line or "not empty" in line
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    short = COMMANDS["meta-train"][1]
    line = _refused(capsys, [*short, "--out", str(tmp_path / "none"), "--resume"])
    assert "nothing to resume" in line and "does not exist" in line
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.pkl").write_bytes(b"\x80\x04N.")
    line = _refused(capsys, [*short, "--out", str(tmp_path / "old"), "--resume"])
    assert "pickle" in line and "no longer loaded" in line
    with pytest.raises(SystemExit) as exc:  # train cannot resume: argparse's usage error
        main([*COMMANDS["train"][1], "--out", str(tmp_path / "t"), "--resume"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --resume" in capsys.readouterr().err


# -- real SIGINT to a subprocess ------------------------------------------------------------
class Run:
    """A ``lopt`` subprocess whose stdout/stderr go to files (tqdm writes ``\\r``, not lines)."""

    def __init__(self, tmp_path: Path, argv: list[str], tag: str):
        self.out_file = tmp_path / f"{tag}.stdout"
        self.err_file = tmp_path / f"{tag}.stderr"
        env = dict(os.environ, MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
        with open(self.out_file, "w") as out, open(self.err_file, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lopt.cli.main", *argv], stdout=out, stderr=err, env=env
            )

    @property
    def err(self) -> str:
        return self.err_file.read_text()

    @property
    def out(self) -> str:
        return self.out_file.read_text()

    def wait_for(self, ready, what: str, timeout: float = 120.0) -> None:
        end = time.monotonic() + timeout
        while not ready(self):
            if self.proc.poll() is not None:
                pytest.fail(f"lopt exited ({self.proc.returncode}) before {what}:\n{self.err}")
            if time.monotonic() > end:
                self.proc.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.err}")
            time.sleep(0.05)

    def interrupt(self, timeout: float = 120.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"lopt did not stop within {timeout}s of Ctrl-C:\n{self.err}")

    def finish(self, timeout: float = 300.0) -> int:
        return self.proc.wait(timeout)


def compiling(run: Run) -> bool:
    return "compiling" in run.err


def progress_count(run: Run) -> int:
    """The last ``n/total`` tqdm shows (0 before the bar moves)."""
    counts = re.findall(r"\b(\d+)/\d+ \[", run.err)
    return int(counts[-1]) if counts else 0


def final_line(run: Run) -> str:
    lines = [x.strip() for x in re.split(r"[\r\n]", run.err) if x.strip()]
    return lines[-1]


def contents(out: Path) -> set[str]:
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.endswith(".tmp")], names  # no half-written file left
    return names - {".lopt-run.json"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def check_interrupted(name: str, run: Run, out: Path) -> None:
    """Exit 130, no traceback, and a directory that holds exactly what the message says."""
    assert run.proc.returncode == 130, run.err
    assert "Traceback" not in run.err and "Segmentation" not in run.err
    msg = final_line(run)
    assert "interrupted" in msg and str(out) in msg, msg
    files = contents(out)
    config = json.loads((out / "config.json").read_text())
    if name == "train":
        assert files == {"config.json", "metrics.jsonl", "loss.png"}
        res = config["result"]
        assert res["status"] == "interrupted" and 0 <= res["steps_done"] < int(HUGE)
        recs = read_jsonl(out / "metrics.jsonl")
        assert (recs[-1]["step"] if recs else 0) == res["steps_done"]
        assert f"after {res['steps_done']} of {HUGE} steps" in msg
        assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    elif name == "meta-train":
        assert {"config.json", "checkpoint.safetensors", "meta_training.png"} <= files
        step = checkpoint_step(out)
        steps = [r["outer_step"] for r in read_jsonl(out / "metrics.jsonl")]
        assert steps == list(range(1, step + 1))  # nothing recorded past the checkpoint
        assert f"the checkpoint holds outer step {step}" in msg and "--resume" in msg
        for f in files:
            assert f in msg  # it names every file it left
    elif name.startswith("stability-map"):
        metrics = json.loads((out / "metrics.json").read_text())
        res = config["result"]
        assert res["status"] == metrics["status"] == "interrupted"
        done = res["rows_done"]
        assert 0 <= done < res["rows"]
        if done:
            assert files == {"config.json", "metrics.json", "map.png", "map.json", "map.csv"}
            assert len(json.loads((out / "map.json").read_text())["y_values"]) == done
            assert f"the {done} finished rows" in msg
        else:
            assert files == {"config.json", "metrics.json"} and "no row was finished" in msg
    else:  # meta-linear
        res = config["result"]
        assert res["status"] == "interrupted"
        steps = res["outer_steps_done"]
        if steps:
            assert files == {"config.json", "metrics.json", "e1.png", "e1.json"}
            e1 = json.loads((out / "e1.json").read_text())
            assert {k: len(v["meta_loss"]) for k, v in e1.items()} == steps
        else:
            assert files == {"config.json", "metrics.json"} and "no e1.png" in msg


def checkpoint_step(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "checkpoint.safetensors"), framework="numpy") as fh:
        return json.loads(fh.metadata()["meta"])["outer_step"]


def rerun_cleanly(name: str, tmp_path: Path, out: Path) -> None:
    """What a user does next: --resume (meta-train) or a fresh run with --overwrite."""
    short = COMMANDS[name][1]
    if name == "meta-train":
        target = max(2, checkpoint_step(out) + 1)
        argv = [*short[:-3], "--outer-steps", str(target), "--no-progress", "--resume"]
        run = Run(tmp_path, [*argv, "--out", str(out)], "resume")
        assert run.finish() == 0, run.err
        steps = [r["outer_step"] for r in read_jsonl(out / "metrics.jsonl")]
        assert steps == list(range(1, target + 1))
        assert {"theta.safetensors", "best.safetensors", "meta_training.png"} <= contents(out)
        assert json.loads(run.out.strip().splitlines()[-1])["outer_step"] == target
        return
    run = Run(tmp_path, [*short, "--out", str(out), "--overwrite"], "rerun")
    assert run.finish() == 0, run.err
    config = json.loads((out / "config.json").read_text())
    assert config["result"]["status"] == "ok"


FAST_START = ["train", "meta-train", "stability-meta-linear"]
FAST_MID = ["train", "stability-map-analytic", "stability-meta-linear"]


def _slow_unless(name, fast):
    return name if name in fast else pytest.param(name, marks=pytest.mark.slow)


@pytest.mark.parametrize("name", [_slow_unless(n, FAST_START) for n in COMMANDS
                                  if n != "stability-map-analytic"])
def test_ctrl_c_at_start_up_stops_cleanly_and_says_what_was_saved(tmp_path, name):
    out = tmp_path / "out"
    run = Run(tmp_path, [*COMMANDS[name][0], "--out", str(out)], "start")
    run.wait_for(compiling, '"compiling ..."')
    run.interrupt()
    check_interrupted(name, run, out)
    if name in ("meta-train", "stability-map-learned"):  # the others re-run in the mid-run case
        return
    rerun_cleanly(name, tmp_path, out)


def _moved(name):
    if name == "meta-train":
        return lambda run: len(read_jsonl(run.out_dir / "metrics.jsonl")) >= 1
    if name == "train":
        return lambda run: len(read_jsonl(run.out_dir / "metrics.jsonl")) >= 2
    if name == "stability-map-learned":
        return lambda run: progress_count(run) >= 400  # one finished row of 400 points
    return lambda run: progress_count(run) >= 1


@pytest.mark.parametrize("name", [_slow_unless(n, FAST_MID) for n in COMMANDS])
def test_ctrl_c_mid_run_keeps_the_work_done_then_resume_or_rerun(tmp_path, name):
    out = tmp_path / "out"
    run = Run(tmp_path, [*COMMANDS[name][0], "--out", str(out)], "mid")
    run.out_dir = out
    run.wait_for(_moved(name), "progress")
    run.interrupt()
    check_interrupted(name, run, out)
    if name == "train":
        assert json.loads((out / "config.json").read_text())["result"]["steps_done"] > 0
    rerun_cleanly(name, tmp_path, out)


@pytest.mark.slow
def test_meta_train_interrupted_at_start_up_resumes_to_the_end(tmp_path):
    out = tmp_path / "out"
    run = Run(tmp_path, [*COMMANDS["meta-train"][0], "--out", str(out)], "start")
    run.wait_for(compiling, '"compiling ..."')
    run.interrupt()
    check_interrupted("meta-train", run, out)
    rerun_cleanly("meta-train", tmp_path, out)
