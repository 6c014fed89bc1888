"""``python -m mlx_train.train --task pretrain|sft|dpo|r1 --data_path FILE ...``

Order of work, so that nothing half-trains on bad data: resolve the config and check the ``TB_*``
variables (``--check`` stops here), read and validate every line of the data (an error names
file and line, exit 2, before any tokenizer, checkpoint or event file is written), then
tokenizer, model and optimizer, then the training loop. Progress goes to stderr: stdout is left
to what a caller would pipe (the TensorBoard URL line).

Under ``mlx.launch`` (see ``python -m mlx_train.launch``) every rank runs this same command:
``--batch_size`` is the global batch and must divide by the number of ranks (checked first,
exit 2); rank 0 alone prints progress, writes the tokenizer cache, TensorBoard logs and
checkpoints; the others compute and write nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from mlx_train.blas import blas_note, reexec_with_fast_blas
from mlx_train.checkpoint import (
    load_config,
    load_optimizer,
    load_trainer_state,
    load_weights,
    prune_runs,
    recover_interrupted_saves,
    save_checkpoint,
)
from mlx_train.config import ConfigError, TrainConfig, build_parser, model_dims, resolve_config
from mlx_train.data import DataError, JsonlSource, tokenizer_texts
from mlx_train.distributed import SINGLE, RankMismatch, World, init_world
from mlx_train.errors import quiet_background_writes, report_os_error
from mlx_train.heldout import split_indices
from mlx_train.packing import make_dataset
from mlx_train.runs import (
    CheckpointError,
    Run,
    claim_run,
    describe,
    find_checkpoint,
    find_run,
    list_checkpoints,
    list_runs,
)
from mlx_train.tokenizer import Tok, render_chat, train_tokenizer
from tb_lazy import atomic

__all__ = ["main", "prepare_tokenizer", "run"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SIGINT = 0, 1, 2, 130
QUICK_FLAGS = ("-h", "--help", "--check")   # no BLAS re-exec (and no [blas] line) for these
RANK_SETTLE = 2.0   # seconds a rank other than 0 waits before exiting on an error rank 0 reports


def say(message: str) -> None:
    """A progress line or note: stderr, so that stdout stays pipeable."""
    print(message, file=sys.stderr, flush=True)


def check_tensorboard_environment(cfg: TrainConfig) -> None:
    """Bad ``TB_*`` values fail now, as a ConfigError, rather than in the watcher after training
    has started; only checked when this run logs (``--tensorboard_dir``) and tb_lazy is installed."""
    if cfg.tensorboard_dir is None:
        return
    try:
        from tb_lazy.config import UsageError, check_environment
    except ImportError:
        return  # no tb_lazy: nothing will be started, nothing to check
    try:
        check_environment()
    except UsageError as e:
        raise ConfigError(str(e)) from None


def silent(message: str) -> None:
    """What ranks other than 0 do with progress lines."""


def prepare_tokenizer(cfg: TrainConfig, records: Sequence[dict], *, start: Path | None,
                      report=say, cache: bool = True) -> Tok:
    """The run's tokenizer: the starting checkpoint's, --tokenizer_dir, the one cached in
    ``out_dir/tokenizer`` if it was trained on the same texts with the same sizes, or a new one
    trained on ``records`` and cached there (without ``cache``, as on ranks other than 0,
    trained in a temporary folder and not kept: training is deterministic, so every rank gets
    the same one).

    The cache records what it was trained on (``source.sha256``): a later run on other data
    trains its own and replaces the cache, rather than reusing one that doesn't fit its data.
    The cache is written into a temporary folder and renamed into place: a run killed while
    writing it leaves no half tokenizer, and of two runs caching at once the first one wins
    (the other uses the winner's, as if it had been cached before)."""
    if start is not None:
        return Tok.load(start)
    if cfg.tokenizer_dir:
        return Tok.load(Path(cfg.tokenizer_dir))
    vocab = model_dims(cfg)["vocab_size"]
    texts = tokenizer_texts(cfg.task, records, render_chat)
    key = _tokenizer_key(texts, vocab=vocab, max_length=cfg.seq_len)
    cached = Path(cfg.out_dir) / "tokenizer"
    if _cached_key(cached) == key:
        report(f"[{cfg.task}] tokenizer: reusing {cached}")
        return Tok.load(cached)
    if not cache:
        with tempfile.TemporaryDirectory() as scratch:
            return train_tokenizer(texts, vocab_size=vocab, out_dir=Path(scratch), max_length=cfg.seq_len)
    cached.parent.mkdir(parents=True, exist_ok=True)
    stale = (cached / "tokenizer.json").is_file()
    tmp = atomic.temp_path(cached)
    old = atomic.temp_path(cached, kind="old")
    try:
        tok = train_tokenizer(texts, vocab_size=vocab, out_dir=tmp, max_length=cfg.seq_len)
        (tmp / TOKENIZER_KEY).write_text(key + "\n", encoding="utf-8")
        try:
            if stale:                             # trained on other data: set aside, then replaced
                with contextlib.suppress(FileNotFoundError):
                    cached.rename(old)
            tmp.rename(cached)
        except OSError:                           # another run cached one meanwhile
            if _cached_key(cached) != key:
                return tok                        # not for our data: ours stays ours, uncached
            report(f"[{cfg.task}] tokenizer: another run cached one first; reusing {cached}")
            return Tok.load(cached)
    finally:
        atomic.remove(tmp)
        atomic.remove(old)
    why = " (the cached one was trained on other data)" if stale else ""
    report(f"[{cfg.task}] tokenizer: trained {tok.vocab_size} tokens -> {cached}{why}")
    return tok


TOKENIZER_KEY = "source.sha256"   # in the cached tokenizer: what it was trained on


def _tokenizer_key(texts: Sequence[str], *, vocab: int, max_length: int) -> str:
    """A digest of what a new tokenizer would be trained on (texts and sizes)."""
    digest = hashlib.sha256(f"{vocab} {max_length} {len(texts)}\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


def _cached_key(cached: Path) -> str | None:
    """The digest a cached tokenizer was trained on (None: none cached, or from before digests)."""
    try:
        if not (cached / "tokenizer.json").is_file():
            return None
        return (cached / TOKENIZER_KEY).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _rng_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 2**32


def check_world(cfg: TrainConfig, world: World) -> None:
    """The global batch must split evenly over the ranks."""
    if cfg.batch_size % world.size:
        raise ConfigError(f"--batch_size={cfg.batch_size} (the global batch) is not divisible by "
                         f"the {world.size} ranks of this run")


def run(cfg: TrainConfig, *, report=say, world: World = SINGLE) -> Path | None:
    """Run one training stage; returns the last checkpoint written (None on ranks other than 0)."""
    if not world.is_main:
        report = silent
    out_dir = Path(cfg.out_dir)
    # ---- which run, and where we start from ----
    resumed: Run | None = None
    resume_from = init_from = None
    if cfg.resume:
        resumed = find_run(out_dir, cfg.run_name)
        if resumed is not None:
            resume_from = list_checkpoints(resumed.path)[-1]
        else:
            which = f"of run {cfg.run_name} " if cfg.run_name else ""
            start = f"from {cfg.init_from}" if cfg.init_from else "fresh"
            report(f"[{cfg.task}] --resume: no checkpoint {which}in {cfg.out_dir} yet, starting {start}")
    if cfg.init_from and resume_from is None:
        init_from = find_checkpoint(cfg.init_from)

    # ---- data: every line validated before anything is written ----
    source = JsonlSource(Path(cfg.data_path), cfg.task)
    records = source.read_new(growing=cfg.reload_data, agree=world.agreed("lines"))
    if not records:
        raise DataError(f"{cfg.data_path}: no samples")
    n_lines = len(split_indices(len(records))[0])
    if n_lines < cfg.batch_size:   # said before a tokenizer is trained for nothing
        raise DataError(f"batch_size={cfg.batch_size} but only {n_lines} training samples "
                        f"in {cfg.data_path} ({len(records)} lines)")
    if world.is_main:
        recover_interrupted_saves(out_dir)    # what interrupted saves of earlier runs left
        run_ = resumed or claim_run(out_dir, name=cfg.run_name, logs=cfg.tensorboard_dir)
        _say_run(cfg, run_, resumed=resumed is not None, report=report)
    else:     # writes nothing: the name only labels what rank 0 saves
        name = resumed.name if resumed else cfg.run_name or ""
        run_ = Run(name, out_dir / name)
    cfg = dataclasses.replace(cfg, run_name=run_.name)     # saved with every checkpoint
    note = blas_note()
    if note:
        report(note)
    tok = prepare_tokenizer(cfg, records, start=resume_from or init_from, report=report,
                            cache=world.is_main)
    data = make_dataset(cfg.task, tok, cfg.seq_len, packing=cfg.packing)
    data.extend(records)
    n_train = len(split_indices(len(data))[0])
    if n_train < cfg.batch_size:
        raise DataError(f"batch_size={cfg.batch_size} but only {n_train} training samples "
                        f"in {cfg.data_path} (seq_len={cfg.seq_len}, {len(records)} lines)")
    dropped = getattr(data, "dropped", 0)
    if dropped:
        report(f"[{cfg.task}] note: {dropped} samples skipped (no assistant tokens within "
               f"seq_len={cfg.seq_len})")

    # ---- model, optimizer, loss (MLX model code is imported only now: after the BLAS
    # re-exec and after the data proved valid) ----
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_map

    from mlx_train.model import build_model, count_params, model_config, set_dtype
    from mlx_train.stages import STAGES
    from mlx_train.tblog import TBLogger, autostart_tensorboard
    from mlx_train.trainer import Position, fit

    mx.random.seed(cfg.seed)
    state = load_trainer_state(resume_from) if resume_from else {}
    start = resume_from or init_from
    if start is not None:
        mcfg = load_config(start)
        if mcfg.get("vocab_size") != tok.vocab_size:
            raise CheckpointError(f"{start}: model vocab_size={mcfg.get('vocab_size')} but its "
                                  f"tokenizer has {tok.vocab_size} tokens")
        mcfg["max_position_embeddings"] = max(mcfg.get("max_position_embeddings") or 0, cfg.seq_len)
    else:
        mcfg = model_config(model_dims(cfg), vocab_size=tok.vocab_size, max_len=cfg.seq_len,
                            eos_token_ids=[tok.eos_id, tok.endoftext_id], dtype=cfg.dtype)
    mcfg["torch_dtype"] = cfg.dtype
    model = build_model(mcfg, dtype=cfg.dtype)

    # The run's starting weights: --init_from, or on resume the run's original init_from
    # (DPO's frozen reference is a copy of them; a run from scratch re-creates them by seed).
    base = init_from or (Path(state["init_from"]) if state.get("init_from") else None)
    stage = STAGES[cfg.task]
    if base is not None and (init_from is not None or stage.needs_reference):
        load_weights(model, base)
        set_dtype(model, cfg.dtype)
    reference = None
    if stage.needs_reference:
        reference = build_model(mcfg, dtype=cfg.dtype)
        reference.update(tree_map(lambda p: p, model.parameters()))
        reference.freeze()
    if resume_from is not None:
        load_weights(model, resume_from)
        set_dtype(model, cfg.dtype)

    optimizer = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
    optimizer.init(model.trainable_parameters())
    pos = Position()
    if resume_from is not None:
        load_optimizer(optimizer, model, resume_from)
        # (tokens_seen is missing from checkpoints written before it was counted: 0)
        pos = Position(**{k: int(state[k]) for k in asdict(pos) if k in state})
        mx.random.seed(_rng_seed(cfg.seed, pos.step))
    loss_fn = stage.make_loss(reference, cfg.beta)
    differ = world.same_everywhere(tokenizer=tok.tok.to_str(), samples=len(data), position=pos,
                                   start=str(start))
    if differ:
        raise RankMismatch(f"rank {world.rank}: {', '.join(differ)} differ between the ranks "
                           "(every rank must read the same data and checkpoints)")

    dims = f"hidden={mcfg['hidden_size']} layers={mcfg['num_hidden_layers']} " \
           f"heads={mcfg['num_attention_heads']} vocab={mcfg['vocab_size']}"
    origin = f"resuming {describe(resume_from)}" if resume_from else \
        f"from {describe(init_from)}" if init_from else f"from scratch (preset {cfg.preset})"
    ranks = f", {world.size} ranks x {cfg.batch_size // world.size} samples" if world.size > 1 else ""
    report(f"[{cfg.task}] model {count_params(model) / 1e6:.2f}M params ({dims}), "
           f"{len(data)} samples, {origin}{ranks}")

    last: list[Path] = []

    def save(p: Position) -> Path:
        if not world.is_main:                   # rank 0 writes; every rank re-seeds the same
            mx.random.seed(_rng_seed(cfg.seed, p.step))
            return run_.path / f"step_{p.step:07d}"
        last.append(save_checkpoint(
            run_, out_dir=out_dir, step=p.step, model=model, model_cfg=mcfg, tok=tok,
            optimizer=optimizer, trainer_state={**asdict(p), "init_from": str(base) if base else None},
            train_cfg=cfg, keep_last=cfg.keep_last))
        pruned = prune_runs(out_dir, keep=cfg.keep_runs, current=run_)
        if pruned:
            report(f"[{cfg.task}] --keep_runs {cfg.keep_runs}: removed the checkpoints of "
                   f"{', '.join(r.name or '(steps from before run names)' for r in pruned)} from {out_dir}")
        mx.random.seed(_rng_seed(cfg.seed, p.step))   # a resumed run continues the same stream
        return last[-1]

    frozen = [reference.state] if reference is not None else []
    logdir = _run_logdir(cfg, run_) if world.is_main else None
    with TBLogger(logdir) as log, contextlib.ExitStack() as cleanup:
        # watches the folder of every run: one TensorBoard shows this run beside the earlier ones
        board = autostart_tensorboard(cfg.tensorboard_dir if world.is_main else None)  # before the first log step
        if board is not None:
            cleanup.callback(board.stop)
        fit(model=model, optimizer=optimizer, loss_fn=loss_fn, data=data, source=source,
            tok=tok, cfg=cfg, pos=pos, log=log, save=save, frozen=frozen, report=report,
            world=world)
    return last[-1] if last else None


def _run_logdir(cfg: TrainConfig, run_: Run) -> Path | None:
    """The run's TensorBoard folder: ``tensorboard_dir/<run>`` (one TensorBoard run per run)."""
    if cfg.tensorboard_dir is None:
        return None
    return Path(cfg.tensorboard_dir) / run_.name if run_.name else Path(cfg.tensorboard_dir)


def _say_run(cfg: TrainConfig, run_: Run, *, resumed: bool, report) -> None:
    """The run's name and folders, once at its start; and where earlier runs' checkpoints are."""
    logs = f", logs in {_run_logdir(cfg, run_)}" if cfg.tensorboard_dir is not None else ""
    what = "resuming run" if resumed else "run"
    report(f"[{cfg.task}] {what} {run_.name or '(from before run names)'}: checkpoints in {run_.path}{logs}")
    earlier = [r.name or "(steps from before run names)" for r in list_runs(Path(cfg.out_dir))
               if r.path != run_.path]
    if earlier:
        shown = ", ".join(earlier[-3:]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
        keep = f"--keep_runs {cfg.keep_runs} removes all but the newest" if cfg.keep_runs else \
            "kept; --keep_runs N keeps only the newest N"
        report(f"[{cfg.task}] earlier runs in {cfg.out_dir}: {shown} ({keep})")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    world, cfg = SINGLE, None
    quiet_background_writes()     # a full disk is said once, below, not by each writer thread
    try:
        check_only = getattr(build_parser().parse_args(argv), "check", False)
        cfg = resolve_config(argv)
        check_tensorboard_environment(cfg)
        if check_only:
            if cfg.init_from:
                find_checkpoint(cfg.init_from)   # exists and holds a finished checkpoint
            return EXIT_OK
        world = init_world()
        check_world(cfg, world)
        run(cfg, world=world)
    except (ConfigError, DataError, CheckpointError, RankMismatch) as e:
        if world.is_main or isinstance(e, RankMismatch):   # the same inputs fail on every rank: said once
            print(f"error: {e}", file=sys.stderr)
        else:   # let rank 0 say it before the launcher, seeing this rank end, stops the others
            time.sleep(RANK_SETTLE)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except OSError as e:
        return report_os_error(e, out_dir=cfg and cfg.out_dir, run_name=cfg and cfg.run_name,
                               tensorboard_dir=cfg and cfg.tensorboard_dir)
    return EXIT_OK


if __name__ == "__main__":
    if not set(QUICK_FLAGS) & set(sys.argv[1:]):
        reexec_with_fast_blas(["-m", "mlx_train.train", *sys.argv[1:]])
    sys.exit(main())
