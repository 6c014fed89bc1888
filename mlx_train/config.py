"""Training configuration: one dataclass with help per field, model presets, and the single
function that resolves command-line flags > environment (``MLX_TRAIN_<FIELD>``) > defaults."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["PRESETS", "RUN_NAME_RE", "TASKS", "ConfigError", "TrainConfig", "build_parser", "is_run_name",
           "model_dims", "resolve_config", "save_config"]

TASKS = ("pretrain", "sft", "dpo", "r1")
DTYPES = ("float32", "bfloat16", "float16")
ENV_PREFIX = "MLX_TRAIN_"
# a run's name is a folder name in out_dir and in the TensorBoard folder: letters, digits, . _ + -
RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
NOT_RUN_NAMES = re.compile(r"step_\d{7}|tokenizer")   # what else lives in a stage folder


def is_run_name(name: str) -> bool:
    """Whether ``name`` can name a run (a folder in a stage folder beside its step_* and tokenizer)."""
    return bool(RUN_NAME_RE.fullmatch(name)) and not NOT_RUN_NAMES.fullmatch(name)


# Model sizes. vocab_size is the size of the BPE tokenizer trained for the run; the model
# always takes the tokenizer's actual size.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                 intermediate_size=384, vocab_size=2048),                  # ~0.7M params
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8,
                  intermediate_size=1280, vocab_size=6400),                # ~27M params
    "200mb": dict(hidden_size=1024, num_layers=16, num_heads=16, num_kv_heads=16,
                  intermediate_size=2816, vocab_size=6400),                # ~212M params
}

# Task-specific defaults, used when neither a flag nor the environment sets the field.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": dict(learning_rate=1e-3),
    "sft": dict(learning_rate=5e-4),
    "r1": dict(learning_rate=5e-4),
    "dpo": dict(learning_rate=1e-4),
}


class ConfigError(ValueError):
    """A flag or environment value that can't be used; reported as one line, exit 2."""


def _f(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything a training stage needs; saved as train_config.json beside each checkpoint."""

    task: str = _f("pretrain", "training stage", choices=TASKS)
    data_path: str = _f("", "JSONL training data (format depends on --task)")
    out_dir: str = _f("out", "stage folder: each run's checkpoints in out_dir/<run>/step_XXXXXXX/, the "
                             "latest saved one as a model in out_dir itself, the cached tokenizer")
    tensorboard_dir: str | None = _f(None, "write TensorBoard logs into this folder's <run>/ subfolder, one "
                                           "TensorBoard run per run (none: no logs)")
    preset: str = _f("tiny", "model size preset", choices=tuple(PRESETS))
    hidden_size: int | None = _f(None, "override the preset's hidden size")
    num_layers: int | None = _f(None, "override the preset's number of layers")
    num_heads: int | None = _f(None, "override the preset's number of attention heads")
    num_kv_heads: int | None = _f(None, "override the preset's number of key/value heads")
    intermediate_size: int | None = _f(None, "override the preset's MLP size")
    vocab_size: int | None = _f(None, "tokenizer size when a new tokenizer is trained")
    seq_len: int = _f(256, "maximum tokens per training row")
    batch_size: int = _f(8, "rows per micro-batch (DPO: pairs per micro-batch)")
    accum_steps: int = _f(1, "micro-batches accumulated per optimizer step")
    epochs: int = _f(1, "passes over the data (ignored when --max_steps > 0)")
    max_steps: int = _f(0, "optimizer steps to run; 0: as many as --epochs give")
    learning_rate: float | None = _f(None, "peak learning rate")
    min_lr_ratio: float = _f(0.1, "final learning rate as a fraction of the peak (cosine)")
    warmup_steps: int = _f(10, "linear warm-up steps")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this value (0: off)")
    save_interval: int = _f(500, "save a checkpoint every N steps (and always at the end)")
    log_interval: int = _f(10, "print progress and log scalars every N steps")
    eval_interval: int = _f(100, "evaluate and log a text sample every N steps (and at the end)")
    eval_batches: int = _f(4, "micro-batches per evaluation")
    init_from: str | None = _f(None, "start from this checkpoint, a run's folder (its latest step) or a stage's "
                                     "out_dir (its newest run's latest step); with --resume: only when the "
                                     "run to resume has no checkpoint yet")
    resume: bool = _f(False, "continue the newest run in --out_dir (or the one --run_name names) "
                             "from its latest checkpoint")
    run_name: str | None = _f(None, "this run's name: its folder in --out_dir and in --tensorboard_dir "
                              "(also read from RUN_NAME; default: the start time, e.g. 20261206-103000)")
    seed: int = _f(42, "random seed (weights and data order)")
    dtype: str = _f("float32", "parameter dtype", choices=DTYPES)
    keep_last: int = _f(3, "keep only the last N checkpoints of this run")
    keep_runs: int = _f(0, "keep the checkpoints of only the newest N runs in --out_dir, this one "
                        "included, removing older runs' folders (0: keep every run)")
    beta: float = _f(0.1, "DPO temperature beta")
    packing: bool = _f(True, "SFT/R1: pack each batch's conversations into as few rows of seq_len+1 "
                              "tokens as hold them, attention kept within each (--batch_size still counts "
                              "conversations: same steps, less padding); DPO: batch pairs of similar length")
    reload_data: bool = _f(False, "re-read --data_path at each epoch boundary (growing files)")
    tokenizer_dir: str | None = _f(None, "use this tokenizer folder instead of the cached one")
    sample_tokens: int = _f(48, "tokens generated for the text sample at each evaluation")

    def to_json(self) -> str:
        """The resolved config as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)


def model_dims(cfg: TrainConfig) -> dict[str, int]:
    """The preset's model sizes with any per-flag overrides applied."""
    dims = dict(PRESETS[cfg.preset])
    for key in dims:
        value = getattr(cfg, key)
        if value is not None:
            dims[key] = value
    if cfg.num_heads is not None and cfg.num_kv_heads is None:
        dims["num_kv_heads"] = dims["num_heads"]
    return dims


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _caster(f: dataclasses.Field) -> Any:
    kind = str(f.type).replace(" | None", "")
    return {"int": int, "float": float, "bool": _bool}.get(kind, str)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m mlx_train.train`` argument parser (defaults left unset: see resolve_config)."""
    parser = OneLineParser(
        prog="python -m mlx_train.train",
        description="Train a small LLaMA-style model with MLX (pretrain, SFT, DPO or R1).",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<FLAG> in the environment "
               "(e.g. MLX_TRAIN_BATCH_SIZE=16); a flag beats the variable.",
        argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{f.name}"
        meta = f.metadata
        if _caster(f) is _bool:
            parser.add_argument(flag, action="store_true",
                                help=meta["help"] + (" (default: on)" if f.default else ""))
            if f.default:      # on by default: --no_<name> turns it off
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                                    help=f"turn --{f.name} off")
        else:
            parser.add_argument(flag, type=_caster(f), choices=meta.get("choices"),
                                metavar=f.name.upper(), help=meta["help"] + _default_text(f))
    parser.add_argument("--check", action="store_true",
                        help="validate the flags and the MLX_TRAIN_*/TB_* variables, then exit "
                             "(0, or one error line and 2) without reading data or loading a model")
    return parser


def _default_text(f: dataclasses.Field) -> str:
    """`` (default: X)`` for ``-h``; a task-dependent default is listed per task."""
    if f.name in TASK_DEFAULTS[TASKS[0]]:
        per_task = ", ".join(f"{task} {TASK_DEFAULTS[task][f.name]:g}" for task in TASKS)
        return f" (default: {per_task})"
    if f.default == "":
        return " (required)"
    choices = f.metadata.get("choices")
    if choices:
        return f" ({' | '.join(choices)}; default: {f.default})"
    return "" if f.default is None else f" (default: {f.default})"


def resolve_config(argv: Sequence[str] | None = None,
                   env: Mapping[str, str] | None = None) -> TrainConfig:
    """Flags beat ``MLX_TRAIN_<FIELD>`` variables, which beat task and field defaults.

    Raises ``ConfigError`` for a bad environment value or an inconsistent combination;
    argparse itself exits 2 with one line for a bad flag.
    """
    env = os.environ if env is None else env
    flags = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in flags:
            values[f.name] = flags[f.name]
            continue
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _caster(f)(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid "
                             f"{_caster(f).__name__.lstrip('_')}") from None
        choices = f.metadata.get("choices")
        if choices and values[f.name] not in choices:
            raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: choose from {', '.join(choices)}")
    if "run_name" not in values and env.get("RUN_NAME"):      # the pipelines' name for it
        values["run_name"] = env["RUN_NAME"]
    task = values.get("task", TrainConfig.task)
    for key, value in TASK_DEFAULTS.get(task, {}).items():
        values.setdefault(key, value)
    cfg = TrainConfig(**values)
    _check(cfg)
    return cfg


def _check(cfg: TrainConfig) -> None:
    if not cfg.data_path:
        raise ConfigError("--data_path is required (a JSONL file; see python -m mlx_train.data)")
    for name in ("seq_len", "batch_size", "accum_steps", "epochs", "log_interval",
                 "eval_interval", "save_interval", "keep_last", "eval_batches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name}={getattr(cfg, name)} must be at least 1")
    for name in ("max_steps", "warmup_steps", "sample_tokens", "keep_runs"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name}={getattr(cfg, name)} must not be negative")
    if cfg.learning_rate is None or cfg.learning_rate <= 0:
        raise ConfigError(f"--learning_rate={cfg.learning_rate} must be positive")
    if cfg.run_name is not None and not is_run_name(cfg.run_name):
        raise ConfigError(f"--run_name={cfg.run_name!r}: use up to 100 letters, digits and . _ + - "
                         "(not starting with one of . _ + -; not step_NNNNNNN or tokenizer)")
    dims = model_dims(cfg)
    if dims["hidden_size"] % dims["num_heads"]:
        raise ConfigError(f"hidden_size={dims['hidden_size']} is not divisible by "
                         f"num_heads={dims['num_heads']}")
    if dims["num_heads"] % dims["num_kv_heads"]:
        raise ConfigError(f"num_heads={dims['num_heads']} is not divisible by "
                         f"num_kv_heads={dims['num_kv_heads']}")


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as JSON."""
    Path(path).write_text(cfg.to_json() + "\n", encoding="utf-8")
