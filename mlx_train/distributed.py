"""Data parallelism through MLX's own distributed engine (``mlx.launch``).

Under ``mlx.launch`` every rank runs the same training command; `World` is what a rank needs
to know about the others: its rank, how many there are, and two collectives — a sum of
metrics, and a check that every rank holds the same things (tokenizer, data, position). With
one process (no launcher) the world has size 1 and nothing here calls a collective, so the
numbers are bit for bit those of a plain run.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

__all__ = ["RANK_LOG", "SINGLE", "RankMismatch", "World", "init_world"]

RANK_LOG = "MLX_TRAIN_RANK_LOG"    # a folder: each rank appends its decisions to rank<N>.log


class RankMismatch(ValueError):
    """The ranks don't hold the same tokenizer, data or checkpoint; every rank says so."""


@dataclass(frozen=True)
class World:
    """This rank's place among the ranks of a data-parallel run."""

    rank: int = 0
    size: int = 1
    group: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, prints progress and writes checkpoints."""
        return self.rank == 0

    def shard(self, items: Sequence[Any]) -> Sequence[Any]:
        """This rank's contiguous, disjoint slice of a global batch (ValueError unless its
        length divides by the number of ranks)."""
        if len(items) % self.size:
            raise ValueError(f"a batch of {len(items)} does not split over {self.size} ranks")
        n = len(items) // self.size
        return items[self.rank * n:(self.rank + 1) * n]

    def sum(self, values: dict[str, mx.array]) -> dict[str, mx.array]:
        """Each value summed over the ranks (unchanged when there is one)."""
        if self.size == 1:
            return values
        return {k: mx.distributed.all_sum(v, group=self.group) for k, v in values.items()}

    def mean(self, values: dict[str, mx.array]) -> dict[str, mx.array]:
        """Each value averaged over the ranks (unchanged when there is one)."""
        if self.size == 1:
            return values
        return {k: v / self.size for k, v in self.sum(values).items()}

    def least(self, value: int) -> int:
        """The smallest of the ranks' ``value`` (``value`` itself when there is one rank)."""
        if self.size == 1:
            return value
        return int(mx.distributed.all_min(mx.array(value), group=self.group).item())

    def agreed(self, what: str) -> Callable[[int], int]:
        """``n -> least(n)``, noting both in this rank's log (`note`) as ``what``: how ranks
        agree on a count each found for itself (lines read from a growing file)."""
        def agree(value: int) -> int:
            least = self.least(value)
            self.note(f"{what}: {value} here, {least} on every rank")
            return least
        return agree

    def note(self, message: str) -> None:
        """Append ``message`` to ``$MLX_TRAIN_RANK_LOG/rank<N>.log`` when that variable names a
        folder (each rank's own record of what it decided; nothing otherwise)."""
        folder = os.environ.get(RANK_LOG, "")
        if not folder:
            return
        try:
            with open(Path(folder) / f"rank{self.rank}.log", "a", encoding="utf-8") as log:
                log.write(message + "\n")
        except OSError:
            pass          # a diagnostic: never the reason a run fails

    def same_everywhere(self, **facts: Any) -> list[str]:
        """The names of ``facts`` (anything with a stable ``repr``) that differ between ranks."""
        if self.size == 1:
            return []
        names = sorted(facts)
        crc = [zlib.crc32(repr(facts[k]).encode()) for k in names]
        mine = mx.array([[c >> 16, c & 0xFFFF] for c in crc], dtype=mx.int32)     # (F, 2)
        total = mx.distributed.all_sum(mine, group=self.group)
        differ = (total != mine * self.size).any(axis=1).tolist()
        return [name for name, bad in zip(names, differ, strict=True) if bad]


SINGLE = World()   # a plain run: one process, no collectives


def init_world() -> World:
    """Join the ranks started by ``mlx.launch`` (a world of one without a launcher)."""
    group = mx.distributed.init()
    return World(rank=group.rank(), size=group.size(), group=group)
