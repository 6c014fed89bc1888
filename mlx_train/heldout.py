"""Which samples are held out for evaluation: every 20th line of a data file, so the split is
stable when the file grows. Training, evaluation and ``mlx_train.data export`` (mlx-lm's
``valid.jsonl``) all follow this rule."""

from __future__ import annotations

__all__ = ["VAL_EVERY", "split_indices"]

VAL_EVERY = 20         # every 20th sample is held out for evaluation


def split_indices(n: int) -> tuple[list[int], list[int]]:
    """Train and held-out sample indices of ``n`` samples (every 20th is held out)."""
    val = [i for i in range(n) if i % VAL_EVERY == VAL_EVERY - 1]
    train = [i for i in range(n) if i % VAL_EVERY != VAL_EVERY - 1]
    return train, val
