"""Sequence packing for SFT and R1: the conversations of a batch share rows of up to seq_len+1
tokens, and attention stays within each (a block-diagonal causal mask). DPO, whose loss needs each
answer on a row of its own, gets length-grouped batches instead (less padding).

Packing changes how a batch is laid out, never what it holds: ``--batch_size`` counts
conversations, packed or not, so an epoch has the same batches and optimizer steps either way, and
each step the same loss and gradients (up to float rounding) on fewer padded positions.

Positions run on through a row: conversation 2 of a row sits at positions 40..75 rather than
0..35. With rotary embeddings that changes nothing — a query-key score depends only on the two
positions' difference — so under the block-diagonal mask each conversation's logits are those it
gets alone in a row (tests/test_mlx_train_packing.py checks this numerically).

A data parallel run shards a batch's conversations over the ranks, and each rank packs its own.
The data position a checkpoint records (batches consumed) means the same packed or not, so a run
may be resumed with or without --packing.

Batches (see mlx_train.data): tokens (R, L+1), weights (R, L), real_tokens (R,) as unpacked, plus
    segments (R, L) int32  which conversation (1, 2, ...) each input position belongs to; 0: padding
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from mlx_train.data import PAD_MULTIPLE, R1_TAG_WEIGHT, ChatData, Dataset, PackedText, PairData
from mlx_train.tokenizer import Tok

__all__ = ["GROUP_BATCHES", "GroupedPairs", "PackedChat", "epoch_batches", "group_by_length", "make_dataset",
           "pack", "segment_mask"]

GROUP_BATCHES = 16   # length grouping sorts windows of this many batches of the shuffled order


def pack(lengths: Sequence[int], *, capacity: int) -> list[list[int]]:
    """The fewest rows (lists of positions in ``lengths``) that hold samples of these lengths,
    at most ``capacity`` tokens a row, as even as it goes: longest first into the row with most
    room, one row more whenever one overflows. Within a row the samples keep their order."""
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise ValueError(f"a sample has {too_long[0]} tokens, more than a row's {capacity}")
    if not lengths:
        return []
    n_rows = -(-sum(lengths) // capacity)
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        free = [capacity] * n_rows
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            r = max(range(n_rows), key=lambda r: free[r])       # the first with the most room
            rows[r].append(i)
            free[r] -= lengths[i]
        if min(free) >= 0:
            return [sorted(row) for row in rows]
        n_rows += 1


def epoch_batches(data: Dataset, order: Sequence[int], *, batch_size: int) -> list[list[Any]]:
    """An epoch's micro-batches (global, before sharding) from its shuffled sample ``order``:
    what ``data.collate`` takes. Consecutive samples (a remainder short of a batch left out),
    unless the dataset plans its own: `PackedChat` conversations to pack, `GroupedPairs` length
    groups."""
    plan = getattr(data, "plan", None)
    if plan is not None:
        return plan(order, batch_size=batch_size)
    return [list(order[b * batch_size:(b + 1) * batch_size]) for b in range(len(order) // batch_size)]


def group_by_length(order: Sequence[int], lengths: Sequence[int], *, batch_size: int,
                    window: int = GROUP_BATCHES) -> list[list[int]]:
    """Batches of samples of similar length: the whole batches of ``order`` (a remainder short
    of a batch is left out, as without grouping) are taken ``window`` batches at a time, sorted
    by length and cut into batches, which are then shuffled within their window (seeded by the
    window's samples: the same order gives the same batches)."""
    usable = list(order[:len(order) // batch_size * batch_size])
    batches: list[list[int]] = []
    for w in range(0, len(usable), window * batch_size):
        chunk = usable[w:w + window * batch_size]
        by_length = sorted(chunk, key=lambda i: lengths[i])
        cut = [by_length[b:b + batch_size] for b in range(0, len(by_length), batch_size)]
        batches += [cut[k] for k in np.random.default_rng(chunk).permutation(len(cut))]
    return batches


class GroupedPairs(PairData):
    """DPO pairs batched with pairs of similar length (`group_by_length` on the longer answer)."""

    def plan(self, order: Sequence[int], *, batch_size: int) -> list[list[int]]:
        """The epoch's micro-batches of ``batch_size`` pairs."""
        lengths = [max(len(chosen[0]), len(rejected[0])) for chosen, rejected in self.pairs]
        return group_by_length(order, lengths, batch_size=batch_size)


class PackedChat(ChatData):
    """SFT/R1 conversations whose batches are packed into rows of up to ``seq_len + 1`` tokens
    for training.

    ``plan`` gives the batches of unpacked training (``batch_size`` conversations each), every
    conversation as a 1-tuple: ``collate`` packs a list of such tuples (a rank's share of a
    batch) into rows, and takes plain sample indices one conversation per row, as `ChatData`
    (what evaluation uses)."""

    def plan(self, order: Sequence[int], *, batch_size: int) -> list[list[tuple[int]]]:
        """The epoch's batches of ``batch_size`` conversations, as unpacked (a remainder short
        of a batch left out)."""
        return [[(i,) for i in order[b * batch_size:(b + 1) * batch_size]]
                for b in range(len(order) // batch_size)]

    def collate(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        if not items or not isinstance(items[0], tuple):
            return super().collate(items)
        samples = [self.rows[i] for item in items for i in item]
        rows = pack([len(ids) for ids, _ in samples], capacity=self.seq_len + 1)
        return _collate_packed([[samples[k] for k in row] for row in rows],
                               pad_id=self.tok.pad_id, seq_len=self.seq_len)


def _collate_packed(rows: Sequence[Sequence[tuple[list[int], list[float]]]], *, pad_id: int,
                    seq_len: int) -> dict[str, np.ndarray]:
    """Rows of conversations, each ``(ids, weights)``, laid end to end and padded like
    unpacked rows (to a multiple of PAD_MULTIPLE, at most seq_len)."""
    longest = max(max(sum(len(ids) for ids, _ in row) for row in rows) - 1, 1)
    L = min(seq_len, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
    tokens = np.full((len(rows), L + 1), pad_id, np.int32)              # (R, L+1)
    weights = np.zeros((len(rows), L), np.float32)                      # (R, L)
    segments = np.zeros((len(rows), L), np.int32)                       # (R, L)
    real = np.zeros(len(rows), np.int32)                                # (R,)
    for r, row in enumerate(rows):
        at = 0
        for s, (ids, w) in enumerate(row, start=1):
            n = len(ids)
            tokens[r, at:at + n] = ids
            weights[r, at:at + n - 1] = w[1:]    # its last token's target is the next one's first
            segments[r, at:at + n] = s             # (its last token may fall past L)
            real[r] += n - 1
            at += n
    return {"tokens": tokens, "weights": weights, "real_tokens": real, "segments": segments}


def make_dataset(task: str, tok: Tok, seq_len: int, *, packing: bool = False) -> Dataset:
    """An empty dataset of the right kind for ``task``; with ``packing``, SFT and R1 pack
    each batch's conversations into few rows and DPO batches pairs of similar length."""
    if task == "pretrain":
        return PackedText(tok, seq_len)
    if task == "dpo":
        return GroupedPairs(tok, seq_len) if packing else PairData(tok, seq_len)
    kind = PackedChat if packing else ChatData
    return kind(tok, seq_len, tag_weight=R1_TAG_WEIGHT if task == "r1" else 1.0)


def segment_mask(segments: mx.array) -> mx.array:
    """Block-diagonal causal attention mask (R, 1, L, L), True where a query may attend a key:
    same segment, key not after query."""
    L = segments.shape[1]
    causal = mx.tril(mx.ones((L, L), dtype=mx.bool_))                          # (L, L)
    same = segments[:, :, None] == segments[:, None, :]                         # (R, L, L)
    return (same & causal)[:, None]                                             # (R, 1, L, L)
