"""What makes pretrain, SFT, R1 and DPO different: their loss. (Their batches come from
`mlx_train.packing.make_dataset`.) Every loss takes ``(model, batch)`` and returns
``(loss, n_target_tokens, metrics)`` with metrics a dict of TensorBoard tag -> scalar array.

Batches: tokens (R, L+1) int32, weights (R, L) float32 (see mlx_train.data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_train.forward import forward

__all__ = ["LossFn", "STAGES", "Stage", "lm_loss", "make_dpo_loss", "sequence_logps"]

Batch = dict[str, mx.array]
LossFn = Callable[[nn.Module, Batch], tuple[mx.array, mx.array, dict[str, mx.array]]]


def _token_logps(model: nn.Module, tokens: mx.array, segments: mx.array | None = None) -> mx.array:
    inputs = tokens[:, :-1]                                         # (R, L)
    # packed rows (mlx_train.packing): attention kept within each conversation of a row
    logits = forward(model, inputs, segments)
    logits = logits.astype(mx.float32)                              # (R, L, V)
    targets = tokens[:, 1:]                                         # (R, L)
    return -nn.losses.cross_entropy(logits, targets)               # (R, L)


def lm_loss(model: nn.Module, batch: Batch) -> tuple[mx.array, mx.array, dict[str, mx.array]]:
    """Weighted mean next-token cross-entropy (weights: 0 on padding/prompt, >1 on R1 tags)."""
    w = batch["weights"]                                            # (R, L)
    nll = -_token_logps(model, batch["tokens"], batch.get("segments"))   # (R, L)
    loss = (nll * w).sum() / mx.maximum(w.sum(), 1e-6)
    return loss, (w > 0).sum(), {}


def sequence_logps(model: nn.Module, tokens: mx.array, mask: mx.array) -> mx.array:
    """Sum of log-probabilities of the masked targets of each row: (R,)."""
    return (_token_logps(model, tokens) * mask).sum(axis=1)


def make_dpo_loss(ref_model: nn.Module, *, beta: float) -> LossFn:
    """DPO loss against a frozen reference: -log sigmoid(beta * (Δchosen - Δrejected))."""

    def dpo_loss(model: nn.Module, batch: Batch) -> tuple[mx.array, mx.array, dict[str, mx.array]]:
        tokens, mask = batch["tokens"], (batch["weights"] > 0).astype(mx.float32)
        B = tokens.shape[0] // 2                                    # rows: B chosen, B rejected
        policy = sequence_logps(model, tokens, mask)                # (2B,)
        ref = mx.stop_gradient(sequence_logps(ref_model, tokens, mask))  # (2B,)
        chosen_reward = beta * (policy[:B] - ref[:B])               # (B,)
        rejected_reward = beta * (policy[B:] - ref[B:])             # (B,)
        margin = chosen_reward - rejected_reward
        loss = mx.logaddexp(0.0, -margin).mean()                    # -log sigmoid(margin)
        chosen_nll = -policy[:B].sum() / mx.maximum(mask[:B].sum(), 1.0)
        metrics = {"dpo/accuracy": (margin > 0).astype(mx.float32).mean(),
                   "dpo/reward_margin": margin.mean(),
                   "dpo/chosen_nll": chosen_nll}
        return loss, mask.sum(), metrics

    return dpo_loss


@dataclass(frozen=True)
class Stage:
    """A training stage: its name and how to build its loss (given the model being trained
    and a frozen copy of its starting weights, which only DPO uses)."""

    name: str
    make_loss: Callable[[nn.Module | None, float], LossFn]
    needs_reference: bool = False


STAGES: dict[str, Stage] = {
    "pretrain": Stage("pretrain", lambda ref, beta: lm_loss),
    "sft": Stage("sft", lambda ref, beta: lm_loss),
    "r1": Stage("r1", lambda ref, beta: lm_loss),      # R1's tag weights live in its batches
    "dpo": Stage("dpo", lambda ref, beta: make_dpo_loss(ref, beta=beta), needs_reference=True),
}
