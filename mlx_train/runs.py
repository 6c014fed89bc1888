"""Runs and their checkpoint series: which checkpoint "the latest" is.

A run is one training process, or one pipeline invocation shared by its stages. It has a name
(``--run_name``, ``RUN_NAME``; by default its start time, ``20261206-103000``, with ``-2``,
``-3``… when that name is taken) and, inside a stage folder ``out_dir``, a folder of its own:
``out_dir/<run>/step_XXXXXXX/``. A run's series is its own: pruning, "latest" and ``--resume``
look only at it, so a re-run with fewer steps never picks, nor deletes, another run's weights.

The newest run of a stage folder is the one that saved last: the stage folder publishes each
save (``checkpoint.publish``), and its ``train_config.json`` names that run. Where nothing is
published (an interrupted first save, a folder copied by hand), it is the run whose newest
checkpoint was written last. Step folders directly in ``out_dir`` — checkpoints from before run
names — count as one run named ``""`` whose folder is ``out_dir`` itself.

Nothing here imports MLX: ``--check``, inference start-up and the tests use it cheaply.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mlx_train.config import is_run_name

__all__ = ["CheckpointError", "Run", "claim_run", "default_run_name", "describe", "find_checkpoint",
           "find_run", "is_checkpoint", "last_saved", "list_checkpoints", "list_runs", "newest_run", "step_of"]

STEP_RE = re.compile(r"step_(\d{7})")
REQUIRED = ("config.json", "model.safetensors")
RUN_CONFIG = "train_config.json"   # published in the stage folder: names the run that saved last


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for."""


@dataclass(frozen=True)
class Run:
    """A run's checkpoint series in a stage folder: ``path`` holds its ``step_XXXXXXX`` folders
    (``name`` is "" for checkpoints from before run names, kept directly in the stage folder)."""

    name: str
    path: Path


def is_checkpoint(path: Path) -> bool:
    """A folder mlx-lm can load: config.json and model.safetensors."""
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def step_of(ckpt: Path) -> int:
    """The step number of a ``step_XXXXXXX`` folder."""
    return int(Path(ckpt).name[5:])


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete ``step_XXXXXXX`` checkpoints directly in ``folder`` (a run's folder), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_RE.fullmatch(p.name) and is_checkpoint(p)]
    return sorted(found, key=step_of)


def list_runs(out_dir: Path) -> list[Run]:
    """The runs in stage folder ``out_dir`` that hold at least one complete checkpoint,
    sorted by name ("" — checkpoints from before run names — first)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    runs = [Run("", out_dir)] if list_checkpoints(out_dir) else []
    for path in sorted(out_dir.iterdir()):
        if is_run_name(path.name) and path.is_dir() and list_checkpoints(path):
            runs.append(Run(path.name, path))
    return runs


def last_saved(run: Run) -> int:
    """When the run's newest checkpoint was written (ns; its trainer_state.json, else the folder)."""
    newest = list_checkpoints(run.path)[-1]
    for path in (newest / "trainer_state.json", newest):
        try:
            return path.stat().st_mtime_ns
        except OSError:
            continue
    return 0


def published_run(out_dir: Path) -> str | None:
    """The run name in the stage folder's published train_config.json ("" for one from before run
    names; None when nothing readable is published)."""
    try:
        config = json.loads((Path(out_dir) / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("run_name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else ""


def newest_run(out_dir: Path) -> Run | None:
    """The run that saved last in stage folder ``out_dir`` (see the module docstring), or None."""
    runs = list_runs(out_dir)
    if not runs:
        return None
    published = published_run(out_dir)
    for run in runs:
        if run.name == published:
            return run
    return max(runs, key=last_saved)


def find_run(out_dir: Path, name: str | None) -> Run | None:
    """Run ``name`` in ``out_dir`` if it has a checkpoint; without a name, the newest run."""
    if name is None:
        return newest_run(out_dir)
    return next((run for run in list_runs(out_dir) if run.name == name), None)


def find_checkpoint(path: Path | str) -> Path:
    """The checkpoint ``path`` stands for: a stage folder → the newest run's latest step; a run's
    folder → its latest step; a model folder (a step folder, an ``mlx_lm.fuse`` output) → itself.

    A stage folder resolves to the step folder, not to its own published copy of it: a run
    started from it records a path whose weights never change."""
    path = Path(path)
    run = newest_run(path)
    if run is not None:
        return list_checkpoints(run.path)[-1]
    if is_checkpoint(path):
        return path
    what = "does not exist" if not path.exists() else "holds no checkpoint (config.json + " \
        "model.safetensors), no step_XXXXXXX folder with one and no run folder with such steps"
    raise CheckpointError(f"{path} {what}")


def describe(ckpt: Path) -> str:
    """``PATH (run NAME, step N)`` for a step folder (the run it recorded); ``PATH`` for another model."""
    ckpt = Path(ckpt)
    if not STEP_RE.fullmatch(ckpt.name):
        return str(ckpt)
    name = _run_name_in(ckpt)
    run = f"run {name}, " if name else ""
    return f"{ckpt} ({run}step {step_of(ckpt)})"


def _run_name_in(ckpt: Path) -> str:
    """The run name a checkpoint recorded (trainer_state.json), "" if none."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    name = state.get("run_name") if isinstance(state, dict) else None
    return name if isinstance(name, str) else ""


def default_run_name(now: float | None = None) -> str:
    """The start time as a sortable name, local time: ``20261206-103000``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def claim_run(out_dir: Path, *, name: str | None, logs: Path | None = None) -> Run:
    """Create the folder of a new run in stage folder ``out_dir`` (and in TensorBoard folder
    ``logs``, if given) and return the run.

    With ``name``, that run must not have checkpoints yet (an empty folder — reserved by a
    pipeline — is fine): ``CheckpointError`` otherwise, nothing is touched. Without, the name is
    the start time, with ``-2``, ``-3``… while either folder exists; both are created
    exclusively, so two runs starting in the same second get two names even when they share
    only the TensorBoard folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if logs is not None:
        Path(logs).mkdir(parents=True, exist_ok=True)
    if name is not None:
        path = out_dir / name
        if list_checkpoints(path):
            raise CheckpointError(f"run {name} already has checkpoints in {path}: --resume continues "
                                  "it; give another --run_name, or remove that folder to start it over")
        path.mkdir(exist_ok=True)
        if logs is not None:
            (Path(logs) / name).mkdir(exist_ok=True)
        return Run(name, path)
    base = default_run_name()
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if _claim(out_dir / candidate, None if logs is None else Path(logs) / candidate):
            return Run(candidate, out_dir / candidate)
    raise CheckpointError(f"{out_dir}: no free run name after {base}-9999")


def _claim(folder: Path, log_folder: Path | None) -> bool:
    """Create both folders, neither existing before; False (nothing left behind) if one did."""
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    if log_folder is None:
        return True
    try:
        log_folder.mkdir()
    except FileExistsError:
        folder.rmdir()
        return False
    return True
