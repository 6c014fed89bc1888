"""One training step, compiled: forward and backward with gradient accumulation, the ranks'
gradient average and clipping, then the optimizer update.

Where a step's time goes on a CPU (see benchmarks/bench_mlx_train.py's profile): the update
and the gradient norm read and write every parameter, gradient and Adam moment, so they run at
the speed of memory, on one thread. Two things follow:

- The update runs as two compiled halves of the parameters, each on its own CPU stream (MLX
  gives each stream its own thread), so both cores stream memory. The result is what
  ``optimizer.update`` computes: each parameter's update is the optimizer's own
  ``apply_single``, the step counter moves once.
- The global gradient norm is computed only when clipping needs it or the caller asks for it
  (a step that is logged): without clipping, nothing else reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_train.distributed import SINGLE, World
from mlx_train.stages import LossFn

__all__ = ["global_norm", "make_step", "split_update"]


def _leaf(tree: Any, key: str) -> Any:
    """The node of a parameter-shaped tree at a flattened key like ``model.layers.0.mlp``."""
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def global_norm(grads: Any) -> mx.array:
    """The L2 norm of every gradient in the tree together (what ``optim.clip_grad_norm`` clips)."""
    return mx.sqrt(sum(mx.square(g).sum() for _, g in tree_flatten(grads)))


@lru_cache(maxsize=None)
def _cpu_stream(i: int) -> mx.Stream:
    """The i-th extra CPU stream of this process (a thread of its own), made once and reused."""
    return mx.new_stream(mx.cpu)


def split_update(model: nn.Module, optimizer: optim.Optimizer, *, parts: int = 2) -> Callable:
    """``update(grads, scale)``: ``optimizer.update(model, grads * scale)``, in ``parts`` compiled
    groups of parameters (balanced by size), each on a stream of its own when the default device
    is the CPU (one stream elsewhere: a GPU runs each group wide anyway)."""
    optimizer.init(model.trainable_parameters())         # the state the groups refer to (kept if there)
    sizes = {k: v.size for k, v in tree_flatten(model.trainable_parameters())}
    groups: list[list[str]] = [[] for _ in range(parts)]
    load = [0] * parts
    for key in sorted(sizes, key=lambda k: -sizes[k]):
        g = load.index(min(load))
        groups[g].append(key)
        load[g] += sizes[key]
    groups = [g for g in groups if g]
    device = mx.default_device()
    streams = [mx.default_stream(device)] + \
        [_cpu_stream(i) if device == mx.cpu else mx.default_stream(device) for i in range(1, len(groups))]
    state = [model.state, optimizer.state]

    def compiled(keys: list[str]) -> Callable:
        @partial(mx.compile, inputs=state, outputs=state)
        def update(grads: list[mx.array], scale: mx.array) -> None:
            params = dict(tree_flatten(model.trainable_parameters()))
            new = [(k, optimizer.apply_single(g * scale.astype(g.dtype), params[k], _leaf(optimizer.state, k)))
                   for k, g in zip(keys, grads, strict=True)]
            model.update(tree_unflatten(new), strict=False)
        return update

    updates = [compiled(keys) for keys in groups]

    def update(grads: Any, scale: mx.array) -> None:
        optimizer.state["step"] = optimizer.step + 1      # as Optimizer.apply_gradients does
        flat = dict(tree_flatten(grads))
        for fn, keys, stream in zip(updates, groups, streams, strict=True):
            with mx.stream(stream):
                fn([flat[k] for k in keys], scale)

    return update


def make_step(model: nn.Module, optimizer: optim.Optimizer, loss_fn: LossFn, *,
              accum_steps: int, grad_clip: float, frozen: Sequence[Any] = (),
              world: World = SINGLE) -> Callable:
    """The training step ``step(batch, grad_acc, update, norm=True) -> (loss, ntoks, metrics,
    grad_norm, grad_acc)``; ``frozen`` are extra read-only states (the DPO reference model).
    Gradients are averaged over the ranks of ``world`` before clipping (as mlx-lm does: each
    rank's loss is the mean over its own slice). ``grad_norm`` is None on a micro-batch that
    does not update, and on an update without clipping unless ``norm``."""
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, mx.random.state]

    @partial(mx.compile, inputs=[*state, *frozen], outputs=state)
    def gradients(batch: dict[str, mx.array], grad_acc: Any, update: bool, norm: bool):
        (loss, ntoks, metrics), grad = loss_and_grad(model, batch)
        if grad_acc is not None:
            grad = tree_map(lambda g, a: g + a, grad, grad_acc)
        if not update:
            return loss, ntoks, metrics, grad, None, None
        if accum_steps > 1:
            grad = tree_map(lambda g: g / accum_steps, grad)
        if world.size > 1:
            grad = nn.average_gradients(grad, group=world.group)
        if not norm:
            return loss, ntoks, metrics, grad, None, mx.array(1.0)
        total = global_norm(grad)
        # optim.clip_grad_norm's rule, applied inside the update
        scale = mx.minimum(grad_clip / (total + 1e-6), 1.0) if grad_clip > 0 else mx.array(1.0)
        return loss, ntoks, metrics, grad, total, scale

    apply = split_update(model, optimizer)

    def step(batch: dict[str, mx.array], grad_acc: Any, update: bool, norm: bool = True):
        loss, ntoks, metrics, grad, total, scale = gradients(batch, grad_acc, update,
                                                             norm or grad_clip > 0)
        if not update:
            return loss, ntoks, metrics, None, grad
        apply(grad, scale)
        return loss, ntoks, metrics, total, None

    return step
