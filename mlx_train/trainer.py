"""The training loop shared by every stage: the compiled step of `mlx_train.step` (gradient
accumulation and clipping; one ``mx.eval`` per step; host sync only when logging), warm-up +
cosine learning rate, evaluation with a text sample, checkpoints.

Data parallel (`mlx_train.distributed`): every rank takes its own slice of each global batch,
gradients are averaged across ranks before clipping, and metrics are reduced so that rank 0
logs global figures; only rank 0 reports, logs and generates the text sample.

A stage is the loss it passes in and the dataset it batches from; this loop never asks which
stage it runs."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlx_train.config import PRESETS, TrainConfig
from mlx_train.data import DataError, Dataset, JsonlSource
from mlx_train.distributed import SINGLE, World
from mlx_train.heldout import split_indices
from mlx_train.packing import epoch_batches
from mlx_train.stages import LossFn
from mlx_train.step import make_step
from mlx_train.tblog import TBLogger
from mlx_train.tokenizer import Tok

__all__ = ["Position", "epoch_plan", "evaluate", "fit", "generate_sample", "get_lr", "micro_batches"]


@dataclass
class Position:
    """Where training is: what --resume restores."""

    step: int = 0             # optimizer steps done
    epoch: int = 0            # current epoch
    batch: int = 0            # micro-batches of this epoch already consumed
    epoch_samples: int = 0    # dataset size this epoch's order was drawn from
    tokens_seen: int = 0      # real (non-padding) tokens trained on so far, all ranks together


def get_lr(step: int, *, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if step >= total:
        return peak * min_ratio
    progress = (step - warmup) / max(1, total - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))            # 1 -> 0
    return peak * (min_ratio + coeff * (1.0 - min_ratio))


def _order(n_samples: int, *, seed: int, epoch: int) -> list[int]:
    train, _ = split_indices(n_samples)
    perm = np.random.default_rng([seed, epoch]).permutation(len(train))
    return [train[i] for i in perm]


def epoch_plan(data: Dataset, n_samples: int, *, batch_size: int, seed: int,
               epoch: int) -> list[list[Any]]:
    """Epoch ``epoch``'s global micro-batches over the first ``n_samples``, in order: what
    ``data.collate`` takes (sample indices, or packed rows of them). Raises DataError if
    there is not one whole batch."""
    order = _order(n_samples, seed=seed, epoch=epoch)
    batches = epoch_batches(data, order, batch_size=batch_size)
    if not batches:
        raise DataError(f"batch_size={batch_size} but only {len(order)} training samples")
    return batches


def micro_batches(data: Dataset, source: JsonlSource | None, pos: Position, *,
                  batch_size: int, seed: int, reload: bool,
                  world: World = SINGLE) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled micro-batches forever, epoch after epoch, advancing ``pos`` as they are taken.

    ``batch_size`` is the global batch: each rank of ``world`` gets its own slice of it.
    With ``reload``, new complete lines of the source file join at each epoch boundary.
    """
    while True:
        if pos.batch == 0:
            if reload and source is not None:   # every rank keeps the lines all of them read
                data.extend(source.read_new(growing=True, agree=world.agreed(f"epoch {pos.epoch} new lines")))
            pos.epoch_samples = world.least(len(data))
            world.note(f"epoch {pos.epoch}: {pos.epoch_samples} samples")
        plan = epoch_plan(data, pos.epoch_samples, batch_size=batch_size, seed=seed, epoch=pos.epoch)
        while pos.batch < len(plan):
            b = pos.batch
            pos.batch += 1
            yield data.collate(world.shard(plan[b]))    # packed first, then sharded by row
        pos.epoch, pos.batch = pos.epoch + 1, 0


def evaluate(model: nn.Module, loss_fn: LossFn, data: Dataset, *, batch_size: int,
             num_batches: int, world: World = SINGLE) -> dict[str, float]:
    """Mean loss (and perplexity) over up to ``num_batches`` held-out micro-batches (global
    batches: each rank evaluates its slice, the sums are reduced).

    Uses training samples when the data is too small to hold out a batch."""
    train, val = split_indices(world.least(len(data)))     # the same pool on every rank
    pool = val if len(val) >= batch_size else train
    world.note(f"eval pool: {len(pool)} samples")
    total, count, nll = 0.0, 0.0, 0.0
    for b in range(min(num_batches, len(pool) // batch_size)):
        rows = world.shard(pool[b * batch_size:(b + 1) * batch_size])
        batch = {k: mx.array(v) for k, v in data.collate(rows).items()}
        loss, ntoks, metrics = loss_fn(model, batch)
        mx.eval(loss, ntoks, metrics)
        n = ntoks.item()
        total += loss.item() * n
        nll += metrics["dpo/chosen_nll"].item() * n if "dpo/chosen_nll" in metrics else 0.0
        count += n
    if world.size > 1:
        sums = world.sum({"total": mx.array(total), "nll": mx.array(nll), "count": mx.array(count)})
        total, nll, count = (sums[k].item() for k in ("total", "nll", "count"))
    if count == 0:
        return {}
    loss = total / count
    ppl_of = nll / count if nll else loss          # DPO: perplexity of the chosen answers
    return {"eval/loss": loss, "eval/ppl": math.exp(min(ppl_of, 50.0))}


def generate_sample(model: nn.Module, tok: Tok, prompt: Sequence[int], *, max_tokens: int) -> str:
    """Greedy continuation of ``prompt`` (KV cache via mlx_lm), as prompt + completion text."""
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    stop = {tok.eos_id, tok.endoftext_id}
    out: list[int] = []
    if max_tokens > 0 and prompt:
        for token, _ in generate_step(mx.array(list(prompt)), model, max_tokens=max_tokens,
                                      sampler=make_sampler(temp=0.0)):
            token = int(token)
            if token in stop:
                break
            out.append(token)
    # the last token may end inside a multi-byte character (max_tokens reached): show only whole ones
    return tok.decode(prompt) + tok.decode(out).rstrip("\ufffd")


def _run_description(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """The resolved config, with the model's actual sizes in place of the preset overrides
    (which are None unless given, and with --init_from the checkpoint's sizes count): what
    TensorBoard shows as ``config`` and in HPARAMS."""
    from mlx_train.model import count_params

    args = getattr(model, "args", None)
    sizes = {k: getattr(args, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                           "num_key_value_heads", "intermediate_size", "vocab_size")
             if hasattr(args, k)}
    overrides = PRESETS[cfg.preset]
    resolved = {k: v for k, v in asdict(cfg).items() if k not in overrides}
    return {**resolved, "model": {**sizes, "params": count_params(model)}}


def _epoch_progress(pos: Position, n_batches: int) -> float:
    """Epochs done, with the fraction of the current one (1.5: half-way through the second)."""
    return pos.epoch + pos.batch / max(n_batches, 1)


def _peak_memory_gb() -> float:
    """MLX's peak memory so far, in GB (1e9 bytes, as mlx-lm prints it)."""
    get_peak = getattr(mx, "get_peak_memory", None) or mx.metal.get_peak_memory   # MLX < 0.24: mx.metal
    return get_peak() / 1e9


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _say(message: str) -> None:
    """Progress goes to stderr: stdout is for what a caller pipes."""
    print(message, file=sys.stderr, flush=True)


def fit(*, model: nn.Module, optimizer: optim.Optimizer, loss_fn: LossFn, data: Dataset,
        source: JsonlSource | None, tok: Tok, cfg: TrainConfig, pos: Position, log: TBLogger,
        save: Callable[[Position], Path], frozen: Sequence[Any] = (),
        report: Callable[[str], None] = _say, world: World = SINGLE) -> Position:
    """Train until ``cfg.max_steps`` (or ``cfg.epochs``) optimizer steps are done.

    Every rank of ``world`` runs this loop (the collectives need all of them); ``log``,
    ``report`` and ``save`` are the caller's to make silent on ranks other than 0."""
    B, accum = cfg.batch_size, cfg.accum_steps

    @lru_cache(maxsize=4)
    def batches_in(n_samples: int, epoch: int) -> int:
        return len(epoch_plan(data, n_samples, batch_size=B, seed=cfg.seed, epoch=epoch))

    def total_steps() -> int:      # (later epochs are taken to have as many steps as this one)
        if cfg.max_steps > 0:
            return cfg.max_steps
        done_epochs = pos.epoch + (pos.batch > 0)
        n_samples = pos.epoch_samples if pos.batch > 0 else world.least(len(data))
        per_epoch = batches_in(n_samples, pos.epoch) // accum
        return pos.step + max(0, cfg.epochs - done_epochs) * per_epoch + \
            (per_epoch - pos.batch // accum if pos.batch > 0 else 0)

    total = total_steps()
    if total <= pos.step:
        report(f"[{cfg.task}] nothing to do: step {pos.step} of {total}")
        return pos
    step = make_step(model, optimizer, loss_fn, accum_steps=accum, grad_clip=cfg.grad_clip,
                     frozen=frozen, world=world)
    state = [model.state, optimizer.state, mx.random.state]
    batches = micro_batches(data, source, pos, batch_size=B, seed=cfg.seed, reload=cfg.reload_data,
                            world=world)
    lr_of = partial(get_lr, peak=cfg.learning_rate, warmup=cfg.warmup_steps,
                    min_ratio=cfg.min_lr_ratio)

    win_loss, win_metrics, win_micro, win_trained = mx.array(0.0), {}, 0, mx.array(0)
    win_start = time.perf_counter()
    # real (non-padding) tokens: this rank's not yet counted in pos.tokens_seen, and the
    # global count of this log window
    pending_real, win_real = 0, 0

    def count_real() -> int:
        """Add every rank's pending real tokens to pos.tokens_seen (a collective); returns them."""
        nonlocal pending_real
        new = pending_real if world.size == 1 else \
            int(world.sum({"t": mx.array(pending_real)})["t"].item())
        pos.tokens_seen += new
        pending_real = 0
        return new

    def logs_at(step: int) -> bool:
        """Whether the step that ends at ``step`` is logged."""
        return step % cfg.log_interval == 0 or step >= total

    log.describe(_run_description(cfg, model))
    epoch_before = pos.epoch
    model.train()
    while pos.step < total:
        # ---- one optimizer step: accum micro-batches, the last one updates ----
        lr = lr_of(pos.step, total=total)
        optimizer.learning_rate = mx.array(lr, dtype=mx.float32)
        grad_acc = None
        for micro in range(accum):
            host = next(batches)
            pending_real += int(host.pop("real_tokens").sum())       # padding excluded
            batch = {k: mx.array(v) for k, v in host.items()}
            loss, ntoks, metrics, grad_norm, grad_acc = step(batch, grad_acc, micro == accum - 1,
                                                             norm=logs_at(pos.step + 1))
            win_loss = win_loss + loss
            win_trained = win_trained + ntoks                    # loss-bearing targets
            win_metrics = {k: win_metrics.get(k, 0.0) + v for k, v in metrics.items()}
            win_micro += 1
            mx.eval(state, win_loss, win_metrics, win_trained,
                    *(a for a in (grad_norm, grad_acc) if a is not None))
        pos.step += 1
        if cfg.max_steps == 0 and pos.epoch != epoch_before:    # data may have grown
            total, epoch_before = max(total_steps(), pos.step), pos.epoch
        last = pos.step >= total

        # ---- log ----
        if logs_at(pos.step):
            if world.size > 1:     # global figures: mean loss and metrics, summed tokens
                reduced = world.mean({"train/loss": win_loss, **win_metrics})
                win_loss = reduced.pop("train/loss")
                win_metrics = reduced
                win_trained = world.sum({"t": win_trained})["t"]
            win_real += count_real()
            elapsed = time.perf_counter() - win_start
            steps_in_window = win_micro / accum
            values = {"train/loss": win_loss.item() / win_micro, "train/lr": lr,
                      "train/tokens_per_sec": win_real / max(elapsed, 1e-9),
                      "train/trained_tokens_per_sec": win_trained.item() / max(elapsed, 1e-9),
                      "train/step_time": elapsed / max(steps_in_window, 1e-9),
                      "train/epoch": _epoch_progress(pos, batches_in(pos.epoch_samples, pos.epoch)),
                      "train/tokens_seen": pos.tokens_seen,
                      "train/peak_memory_gb": _peak_memory_gb()}
            if grad_norm is not None:   # (None only if the step count changed since the step began)
                values["train/grad_norm"] = grad_norm.item()
            values.update({k: v.item() / win_micro for k, v in win_metrics.items()})
            log.scalars(pos.step, values)
            eta = (total - pos.step) * elapsed / max(steps_in_window, 1e-9)
            extra = "".join(f" | {k.split('/')[-1]} {v:.3f}" for k, v in values.items()
                            if k.startswith("dpo/"))
            report(f"[{cfg.task}] step {pos.step}/{total} | loss {values['train/loss']:.4f}{extra}"
                   f" | lr {lr:.2e}"
                   + (f" | grad {values['train/grad_norm']:.2f}" if "train/grad_norm" in values else "") +
                   f" | {values['train/tokens_per_sec']:,.0f} tok/s (real)"
                   f" | {values['train/trained_tokens_per_sec']:,.0f} tok/s (trained)"
                   f" | ETA {_fmt_time(eta)}")
            win_loss, win_metrics, win_micro, win_trained = mx.array(0.0), {}, 0, mx.array(0)
            win_real = 0
            win_start = time.perf_counter()

        # ---- evaluate, with a generated text sample ----
        if pos.step % cfg.eval_interval == 0 or last:
            tic = time.perf_counter()
            model.eval()
            values = evaluate(model, loss_fn, data, batch_size=B, num_batches=cfg.eval_batches,
                              world=world)
            if values:
                log.scalars(pos.step, {**values, "eval/runtime": time.perf_counter() - tic})
            if data.example_prompt and world.is_main:
                sample = generate_sample(model, tok, data.example_prompt,
                                         max_tokens=cfg.sample_tokens)
                log.text("sample", f"```\n{sample}\n```", pos.step)   # verbatim in markdown
            model.train()
            if values:
                report(f"[{cfg.task}] eval step {pos.step} | loss {values['eval/loss']:.4f}"
                       f" | ppl {values['eval/ppl']:.2f}")
            win_start += time.perf_counter() - tic   # don't count eval time as training

        # ---- checkpoint ----
        if pos.step % cfg.save_interval == 0 or last:
            tic = time.perf_counter()
            win_real += count_real()             # the checkpoint holds every token trained on
            path = save(pos)
            report(f"[{cfg.task}] saved {path}")
            win_start += time.perf_counter() - tic
    return pos
