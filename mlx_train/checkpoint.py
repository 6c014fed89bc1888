"""Checkpoints: ``out_dir/<run>/step_XXXXXXX/`` in mlx-lm's layout (config.json,
model.safetensors, tokenizer files with the chat template) plus what ``--resume`` needs
(optimizer.safetensors, trainer_state.json; the MLX RNG is re-seeded from (seed, step) at every
save and resume, so it needs no saving) and the resolved train_config.json. Each run has its own
series (`mlx_train.runs`: names, which run and step is the latest).

Saves are atomic: everything is written into a hidden temporary folder, ``.tmp_step_XXXXXXX_PID_TOKEN``,
that is renamed into place, so an interrupted save never leaves a half checkpoint for --init_from
to pick. What an interrupted save (or prune) leaves behind is removed by the next save or run once
its writer is gone (`recover_interrupted_saves`); a live writer's temporary is never touched.

After each save the stage folder itself becomes the latest checkpoint as a model (`publish`):
``out_dir/config.json``, ``model.safetensors``, the tokenizer files and train_config.json (which
names the run: `mlx_train.runs` reads it to know the newest run), so that
``mlx_lm.load``/``generate``/``server``/``lora --model out_dir`` work. Optimizer and trainer state
stay in the step folders only (mlx-lm loads ``model*.safetensors``, but they aren't the model).
A reader never sees two steps mixed: within a run config and tokenizer are the same bytes at
every step and are left alone; the weights file is replaced by one ``os.replace`` of a hard link
to the step's file (no copy of the weights). When another run into the same folder brings a
different config or tokenizer, the old weights are taken away before those are replaced, so
they are never paired with old weights (a reader in between finds no weights: an error)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlx_train.config import RUN_NAME_RE, TrainConfig, save_config
from mlx_train.errors import save_arrays
from mlx_train.runs import CheckpointError, Run, is_checkpoint, last_saved, list_checkpoints, list_runs, newest_run
from mlx_train.tokenizer import TOKENIZER_FILES, Tok
from tb_lazy import atomic

__all__ = ["load_config", "load_optimizer", "load_trainer_state", "load_weights", "prune_runs", "publish",
           "recover_interrupted_saves", "save_checkpoint"]

WEIGHTS = "model.safetensors"
MODEL_FILES = ("config.json", *TOKENIZER_FILES)   # what the weights must be read with
# what the stage folder gets from the latest step, besides the weights (written before them)
PUBLISHED = (*MODEL_FILES, "train_config.json")
# what train.py writes into out_dir (and a run's folder) through a temporary; run folders are
# renamed away when --keep_runs prunes them
OURS_RE = re.compile(r"step_\d{7}|tokenizer|" + "|".join(re.escape(n) for n in (*PUBLISHED, WEIGHTS))
                     + "|" + RUN_NAME_RE.pattern)


def recover_interrupted_saves(out_dir: Path) -> list[Path]:
    """Tidy what interrupted saves left in ``out_dir`` once their writer is gone: temporaries and
    half-pruned folders are removed; a checkpoint set aside to be replaced by a re-save of its
    step is put back if the new one never arrived. Returns the paths removed or restored."""
    done = []
    for leftover in atomic.find_leftovers(Path(out_dir), names=OURS_RE):
        if not atomic.is_stale(leftover):
            continue                      # a live writer's (or unknown): never touched
        final = leftover.path.with_name(leftover.name)
        if leftover.kind == "old" and not final.exists() and is_checkpoint(leftover.path):
            try:
                leftover.path.rename(final)
            except OSError:               # another run restored it first, or saved the step anew
                continue
        else:
            atomic.remove(leftover.path)
        done.append(leftover.path)
    return done


def save_checkpoint(run: Run, *, out_dir: Path, step: int, model: nn.Module, model_cfg: dict[str, Any],
                    tok: Tok, optimizer: optim.Optimizer, trainer_state: dict[str, Any],
                    train_cfg: TrainConfig, keep_last: int) -> Path:
    """Write ``run.path/step_{step:07d}`` atomically, publish it as stage folder ``out_dir``'s
    model and prune the run's series to its last ``keep_last`` (other runs are not touched)."""
    out_dir, folder = Path(out_dir), Path(run.path)
    folder.mkdir(parents=True, exist_ok=True)
    recover_interrupted_saves(folder)
    final = folder / f"step_{step:07d}"
    tmp = atomic.temp_path(final)
    tmp.mkdir()
    try:
        weights = dict(tree_flatten(model.parameters()))
        save_arrays(tmp / WEIGHTS, weights, metadata={"format": "mlx", "step": str(step), "run": run.name})
        (tmp / "config.json").write_text(json.dumps(model_cfg, indent=2) + "\n", encoding="utf-8")
        tok.save(tmp, max_length=model_cfg.get("max_position_embeddings", 2048))
        save_arrays(tmp / "optimizer.safetensors", dict(tree_flatten(optimizer.state)))
        state = dict(trainer_state, step=step, run_name=run.name)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        save_config(train_cfg, tmp / "train_config.json")
        if final.exists():                       # re-saving a step: swap, then drop the old one
            old = atomic.temp_path(final, kind="old")
            final.rename(old)
            tmp.rename(final)
            atomic.remove(old)
        else:
            tmp.rename(final)
    except BaseException:
        atomic.remove(tmp)
        raise
    publish(final, out_dir)
    for stale in list_checkpoints(folder)[:-keep_last]:
        _delete(stale)
    return final


def prune_runs(out_dir: Path, *, keep: int, current: Run) -> list[Run]:
    """Remove the checkpoint folders of all but the newest ``keep`` runs in stage folder
    ``out_dir``, ``current`` always kept (``keep`` 0: none removed). Returns the runs removed.
    Newest: the runs that saved last (see `mlx_train.runs`); their TensorBoard logs are kept."""
    if keep < 1:
        return []
    others = [run for run in list_runs(out_dir) if run.path != current.path]
    newest = newest_run(out_dir)
    others.sort(key=lambda run: (run == newest, last_saved(run)), reverse=True)
    doomed = others[max(keep - 1, 0):]
    for run in doomed:
        if run.name:
            _delete(run.path)
        else:                                  # steps kept directly in out_dir (before run names)
            for ckpt in list_checkpoints(run.path):
                _delete(ckpt)
    return doomed


def publish(ckpt: Path, out_dir: Path) -> None:
    """Make ``out_dir`` itself a model folder holding checkpoint ``ckpt`` (see the module docstring).

    Files already equal to the step's are not touched; the weights are swapped in last, as one
    hard link (a copy where the file system has none) put in place by ``os.replace``."""
    changed = [name for name in PUBLISHED
               if (ckpt / name).is_file() and not _same_bytes(ckpt / name, out_dir / name)]
    weights = out_dir / WEIGHTS
    if set(changed) & set(MODEL_FILES):  # another model: its files must never meet these weights
        _delete(weights)
    for name in changed:
        tmp = atomic.temp_path(out_dir / name)
        try:
            shutil.copyfile(ckpt / name, tmp)
            os.replace(tmp, out_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    tmp = atomic.temp_path(weights)
    try:
        try:
            os.link(ckpt / WEIGHTS, tmp)
        except OSError:                  # no hard links here (some network/FAT file systems)
            shutil.copyfile(ckpt / WEIGHTS, tmp)
        os.replace(tmp, weights)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except FileNotFoundError:
        return False


def _delete(folder: Path) -> None:
    """Rename, then remove: a prune cut short leaves a hidden leftover, never a half checkpoint
    (works for a file too)."""
    doomed = atomic.temp_path(folder, kind="del")
    try:
        folder.rename(doomed)
    except FileNotFoundError:             # pruned by another run meanwhile
        return
    atomic.remove(doomed)


def load_config(ckpt: Path) -> dict[str, Any]:
    """The model config.json of a checkpoint."""
    return json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8"))


def load_weights(model: nn.Module, ckpt: Path) -> None:
    """Load a checkpoint's weights into ``model`` (shapes must match)."""
    model.load_weights(str(Path(ckpt) / "model.safetensors"), strict=True)
    mx.eval(model.parameters())


def load_optimizer(optimizer: optim.Optimizer, model: nn.Module, ckpt: Path) -> None:
    """Restore the optimizer state saved with a checkpoint."""
    path = Path(ckpt) / "optimizer.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no optimizer.safetensors: it can't be resumed "
                              "(use --init_from to start a new run from it)")
    optimizer.state = tree_unflatten(list(mx.load(str(path)).items()))
    optimizer.init(model.trainable_parameters())


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Step, data position and starting weights of a checkpoint's run."""
    path = Path(ckpt) / "trainer_state.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no trainer_state.json: it can't be resumed")
    return json.loads(path.read_text(encoding="utf-8"))
