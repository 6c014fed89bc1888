"""Runs never mix: each run has a name, its own checkpoint series and its own TensorBoard folder;
"the latest" is the newest run's latest step, never the highest step number across runs.

The first tests lay out checkpoint folders by hand (what `mlx_train.runs` reads is only
folders and small JSON files); the last ones train real tiny MLX runs into one stage folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_train import runs, train
from mlx_train.checkpoint import prune_runs
from mlx_train.datagen import write_all
from mlx_train.runs import (
    CheckpointError,
    Run,
    claim_run,
    describe,
    find_checkpoint,
    list_checkpoints,
    list_runs,
    newest_run,
)

TINY = ["--preset", "tiny", "--hidden_size", "64", "--num_heads", "4", "--intermediate_size", "128",
        "--seq_len", "64", "--batch_size", "8", "--vocab_size", "512", "--warmup_steps", "1",
        "--log_interval", "1", "--eval_interval", "100", "--eval_batches", "1", "--sample_tokens", "0"]


def step(folder: Path, n: int, *, run: str | None = None, mtime: float | None = None) -> Path:
    """A complete checkpoint folder ``folder/step_N`` (as far as finding it goes)."""
    path = folder / f"step_{n:07d}"
    path.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (path / name).write_text("{}")
    state = path / "trainer_state.json"
    state.write_text(json.dumps({"step": n, **({"run_name": run} if run is not None else {})}))
    if mtime is not None:
        os.utime(state, (mtime, mtime))
    return path


def publish_run(out: Path, name: str) -> None:
    """What a save publishes into the stage folder that names its run."""
    (out / "train_config.json").write_text(json.dumps({"run_name": name}))


def test_latest_is_the_newest_run_not_the_highest_step(tmp_path):
    out = tmp_path / "pretrain"
    old = step(out / "20261201-090000", 40, run="20261201-090000", mtime=1_000)
    new = step(out / "20261201-100000", 5, run="20261201-100000", mtime=2_000)
    publish_run(out, "20261201-100000")
    assert find_checkpoint(out) == new
    assert find_checkpoint(out / "20261201-090000") == old          # a run's folder: its latest step
    assert find_checkpoint(old) == old                              # a step folder: itself
    # the run that saved last wins even with the older name: a resumed earlier run
    publish_run(out, "20261201-090000")
    assert find_checkpoint(out) == old


def test_without_a_published_run_the_last_saved_run_counts(tmp_path):
    out = tmp_path / "sft"
    step(out / "b-run", 40, mtime=1_000)
    newest = step(out / "a-run", 2, mtime=2_000)                     # fewer steps, earlier name, saved last
    assert find_checkpoint(out) == newest
    publish_run(out, "gone")                                          # names a run that was removed
    assert find_checkpoint(out) == newest


def test_steps_from_before_run_names_are_a_run_too(tmp_path):
    out = tmp_path / "sft"
    legacy = step(out, 7, mtime=1_000)                                # out/step_0000007
    assert list_runs(out) == [Run("", out)] and find_checkpoint(out) == legacy
    new = step(out / "r2", 3, run="r2", mtime=2_000)
    assert [r.name for r in list_runs(out)] == ["", "r2"]
    assert find_checkpoint(out) == new
    publish_run(out, "")                                              # older versions' published config
    (out / "train_config.json").write_text(json.dumps({"task": "sft"}))
    assert newest_run(out) == Run("", out)


def test_what_is_not_a_run(tmp_path):
    out = tmp_path / "sft"
    (out / "tokenizer").mkdir(parents=True)
    (out / "empty-run").mkdir()
    incomplete = out / "half" / "step_0000009"
    incomplete.mkdir(parents=True)
    (incomplete / "config.json").write_text("{}")                     # no weights: not a checkpoint
    (out / ".tmp_step_0000020_123_0123abcd").mkdir()
    assert list_runs(out) == []
    with pytest.raises(CheckpointError, match="no run folder"):
        find_checkpoint(out)
    with pytest.raises(CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")


def test_describe_names_run_and_step(tmp_path):
    ckpt = step(tmp_path / "sft" / "r7", 12, run="r7")
    assert describe(ckpt) == f"{ckpt} (run r7, step 12)"
    legacy = step(tmp_path / "old", 3)
    assert describe(legacy) == f"{legacy} (step 3)"
    assert describe(tmp_path / "fused") == str(tmp_path / "fused")


def test_two_runs_started_in_the_same_second_get_two_names(tmp_path, monkeypatch):
    # the clock is the one thing simulated: both runs "start" at 10:30:00
    monkeypatch.setattr(runs, "default_run_name", lambda now=None: "20261206-103000")
    first = claim_run(tmp_path / "out", name=None, logs=tmp_path / "tb")
    second = claim_run(tmp_path / "out", name=None, logs=tmp_path / "tb")
    assert (first.name, second.name) == ("20261206-103000", "20261206-103000-2")
    # only the TensorBoard folder is shared (another out_dir): still a name of its own
    third = claim_run(tmp_path / "other_out", name=None, logs=tmp_path / "tb")
    assert third.name == "20261206-103000-3"
    assert not (tmp_path / "other_out" / "20261206-103000").exists(), "a failed claim leaves nothing"
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == \
        ["20261206-103000", "20261206-103000-2", "20261206-103000-3"]


def test_a_named_run_is_never_trained_over(tmp_path):
    out = tmp_path / "out"
    (out / "mine").mkdir(parents=True)                                # reserved by a pipeline: fine
    assert claim_run(out, name="mine") == Run("mine", out / "mine")
    step(out / "mine", 4, run="mine")
    with pytest.raises(CheckpointError, match="run mine already has checkpoints .* --resume continues it"):
        claim_run(out, name="mine")
    assert list_checkpoints(out / "mine")                             # untouched


def test_keep_runs_removes_only_the_oldest_runs(tmp_path):
    out = tmp_path / "out"
    for i, name in enumerate(["a", "b", "c", "d"]):
        step(out / name, 10 - i, run=name, mtime=1_000 + i)           # d saved last, with the fewest steps
    legacy = step(out, 99, mtime=500)
    current = Run("d", out / "d")
    assert prune_runs(out, keep=0, current=current) == []             # the default: keep every run
    removed = prune_runs(out, keep=2, current=current)
    assert sorted(r.name for r in removed) == ["", "a", "b"]
    assert [r.name for r in list_runs(out)] == ["c", "d"] and not legacy.exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# ---- real runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("data"), seed=0, scale=0.05)


@pytest.fixture(autouse=True)
def no_tensorboard(monkeypatch):
    monkeypatch.setenv("TB_AUTO", "0")
    monkeypatch.delenv("RUN_NAME", raising=False)


def train_run(data: Path, out: Path, *args: str, task: str = "pretrain") -> int:
    return train.main(["--task", task, "--data_path", str(data), "--out_dir", str(out), *TINY, *args])


def test_a_shorter_second_run_keeps_and_uses_its_own_checkpoints(tmp_path, data, capsys):
    """The issue's case: 6 steps, then 2 steps into the same out_dir with --keep_last 2 (no --resume)."""
    out, tb = tmp_path / "out" / "pretrain", tmp_path / "tf_dir" / "pretrain"
    common = ["--tensorboard_dir", str(tb), "--save_interval", "2", "--keep_last", "2"]
    assert train_run(data["pretrain"], out, "--max_steps", "6", "--run_name", "first", *common) == 0
    capsys.readouterr()
    assert train_run(data["pretrain"], out, "--max_steps", "2", *common) == 0
    err = capsys.readouterr().err
    [second] = [r for r in list_runs(out) if r.name != "first"]
    assert f"[pretrain] run {second.name}: checkpoints in {second.path}, logs in {tb / second.name}" in err
    assert f"earlier runs in {out}: first (kept; --keep_runs N keeps only the newest N)" in err

    latest = second.path / "step_0000002"
    assert list_checkpoints(second.path) == [latest], "saved, and not pruned"
    assert [p.name for p in list_checkpoints(out / "first")] == ["step_0000004", "step_0000006"]
    assert find_checkpoint(out) == latest
    assert (out / "model.safetensors").stat().st_ino == (latest / "model.safetensors").stat().st_ino
    _, meta = mx.load(str(out / "model.safetensors"), return_metadata=True)
    assert (meta["run"], meta["step"]) == (second.name, "2")
    state = json.loads((latest / "trainer_state.json").read_text())
    assert (state["run_name"], state["step"]) == (second.name, 2)
    assert json.loads((latest / "train_config.json").read_text())["run_name"] == second.name
    # each run logged into a folder of its own: two TensorBoard runs, every point kept
    assert sorted(p.name for p in tb.iterdir()) == sorted(["first", second.name])

    # the next stage starts from the second run's step 2, and says so
    sft = tmp_path / "out" / "sft"
    assert train_run(data["sft"], sft, "--max_steps", "1", "--init_from", str(out), task="sft") == 0
    assert f"from {latest} (run {second.name}, step 2)" in capsys.readouterr().err
    assert json.loads((find_checkpoint(sft) / "trainer_state.json").read_text())["init_from"] == str(latest)


def test_resume_continues_the_newest_run_and_keep_runs_prunes_by_flag(tmp_path, data, capsys):
    out = tmp_path / "out"
    assert train_run(data["pretrain"], out, "--max_steps", "2", "--run_name", "a") == 0
    assert train_run(data["pretrain"], out, "--max_steps", "2", "--run_name", "b") == 0
    capsys.readouterr()
    assert train_run(data["pretrain"], out, "--max_steps", "3", "--resume") == 0      # b: the newest
    err = capsys.readouterr().err
    assert f"resuming {out / 'b' / 'step_0000002'} (run b, step 2)" in err
    assert [p.name for p in list_checkpoints(out / "b")] == ["step_0000002", "step_0000003"]
    assert [p.name for p in list_checkpoints(out / "a")] == ["step_0000002"]
    # a named run that exists: one line, exit 2, nothing touched
    assert train_run(data["pretrain"], out, "--max_steps", "1", "--run_name", "a") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run a already has checkpoints in {out / 'a'}: --resume continues it; give another "
        "--run_name, or remove that folder to start it over"]
    assert train_run(data["pretrain"], out, "--max_steps", "1", "--run_name", "c", "--keep_runs", "2") == 0
    assert f"--keep_runs 2: removed the checkpoints of a from {out}" in capsys.readouterr().err
    assert [r.name for r in list_runs(out)] == ["b", "c"]


@pytest.mark.parametrize("name", ["../up", ".hidden", "step_0000001", "tokenizer", "a b", "x" * 101])
def test_a_bad_run_name_is_one_line_and_exit_2(tmp_path, capsys, name):
    rc = train.main(["--check", "--task", "sft", "--data_path", str(tmp_path / "d.jsonl"), "--run_name", name])
    assert rc == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --run_name={name!r}: use up to 100 letters")


def test_a_run_on_other_data_trains_its_own_tokenizer(tmp_path, data, capsys):
    """The tokenizer cached in out_dir is reused only for the texts it was trained on."""
    out = tmp_path / "out"
    other = tmp_path / "other.jsonl"
    other.write_text("".join(data["pretrain"].read_text(encoding="utf-8").splitlines(keepends=True)[::2]),
                     encoding="utf-8")
    assert train_run(data["pretrain"], out, "--max_steps", "1", "--run_name", "a") == 0
    assert train_run(data["pretrain"], out, "--max_steps", "1", "--run_name", "b") == 0
    assert f"tokenizer: reusing {out / 'tokenizer'}" in capsys.readouterr().err
    assert train_run(other, out, "--max_steps", "1", "--run_name", "c") == 0
    assert "(the cached one was trained on other data)" in capsys.readouterr().err
    tokenizer = {name: (out / name / "step_0000001" / "tokenizer.json").read_bytes() for name in "abc"}
    assert tokenizer["a"] == tokenizer["b"] != tokenizer["c"]
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == tokenizer["c"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
