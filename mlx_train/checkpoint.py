"""Checkpoints: ``out_dir/step_XXXXXXX/`` in mlx-lm's layout (config.json, model.safetensors,
tokenizer files with the chat template) plus what ``--resume`` needs (optimizer.safetensors,
trainer_state.json; the MLX RNG is re-seeded from
(seed, step) at every save and resume, so it needs no saving) and the resolved train_config.json.

Saves are atomic: everything is written into a hidden temporary folder, ``.tmp_step_XXXXXXX_PID_TOKEN``,
that is renamed into place, so an interrupted save never leaves a half checkpoint for --init_from
to pick. What an interrupted save (or prune) leaves behind is removed by the next save or run once
its writer is gone (`clean_leftovers`); a live writer's temporary is never touched."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlx_train import atomic
from mlx_train.config import TrainConfig, save_config
from mlx_train.tokenizer import Tok

__all__ = ["CheckpointError", "clean_leftovers", "find_checkpoint", "list_checkpoints", "load_config",
           "load_optimizer", "load_trainer_state", "load_weights", "save_checkpoint"]

STEP_RE = re.compile(r"step_(\d{7})")
OURS_RE = re.compile(r"step_\d{7}|tokenizer")    # what train.py writes into out_dir through a temporary
REQUIRED = ("config.json", "model.safetensors")


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for."""


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in REQUIRED)


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete step_XXXXXXX checkpoints under ``out_dir``, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if STEP_RE.fullmatch(p.name) and _is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(path: Path | str) -> Path:
    """``path`` itself if it is a checkpoint, else the latest step_* inside it."""
    path = Path(path)
    if _is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if not found:
        what = "does not exist" if not path.exists() else "holds no checkpoint (config.json + " \
            "model.safetensors) and no step_XXXXXXX folder with one"
        raise CheckpointError(f"{path} {what}")
    return found[-1]


def clean_leftovers(out_dir: Path) -> list[Path]:
    """Tidy what interrupted saves left in ``out_dir`` once their writer is gone: temporaries and
    half-pruned folders are removed; a checkpoint set aside to be replaced by a re-save of its
    step is put back if the new one never arrived. Returns the paths removed or restored."""
    done = []
    for leftover in atomic.find_leftovers(Path(out_dir), names=OURS_RE):
        if not atomic.is_stale(leftover):
            continue                      # a live writer's (or unknown): never touched
        final = leftover.path.with_name(leftover.name)
        if leftover.kind == "old" and not final.exists() and _is_checkpoint(leftover.path):
            try:
                leftover.path.rename(final)
            except OSError:               # another run restored it first, or saved the step anew
                continue
        else:
            atomic.remove(leftover.path)
        done.append(leftover.path)
    return done


def save_checkpoint(out_dir: Path, *, step: int, model: nn.Module, model_cfg: dict[str, Any],
                    tok: Tok, optimizer: optim.Optimizer, trainer_state: dict[str, Any],
                    train_cfg: TrainConfig, keep_last: int) -> Path:
    """Write ``out_dir/step_{step:07d}`` atomically and prune to the last ``keep_last``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out_dir)
    final = out_dir / f"step_{step:07d}"
    tmp = atomic.temp_path(final)
    tmp.mkdir()
    try:
        weights = dict(tree_flatten(model.parameters()))
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(model_cfg, indent=2) + "\n", encoding="utf-8")
        tok.save(tmp, max_length=model_cfg.get("max_position_embeddings", 2048))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        state = dict(trainer_state, step=step)
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
    for stale in list_checkpoints(out_dir)[:-keep_last]:
        _delete(stale)
    return final


def _delete(folder: Path) -> None:
    """Rename, then remove: a prune cut short leaves a hidden leftover, never a half checkpoint."""
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
