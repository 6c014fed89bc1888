"""The compiled training step (mlx_train.step): its split, two-stream optimizer update and its
gradient norm give what MLX's own value_and_grad + clip_grad_norm + optimizer.update give."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlx_train.model import build_model, model_config
from mlx_train.stages import lm_loss
from mlx_train.step import make_step

VOCAB, L = 64, 24
DIMS = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64)


def model_and_optimizer() -> tuple[nn.Module, optim.Optimizer]:
    mx.random.seed(3)
    model = build_model(model_config(DIMS, vocab_size=VOCAB, max_len=L, eos_token_ids=[0]))
    optimizer = optim.AdamW(learning_rate=1e-2, weight_decay=0.1)
    optimizer.init(model.trainable_parameters())
    return model, optimizer


def batches(n: int) -> list[dict[str, mx.array]]:
    rng = np.random.default_rng(0)
    return [{"tokens": mx.array(rng.integers(0, VOCAB, (3, L + 1), dtype=np.int32)),
             "weights": mx.array((rng.random((3, L)) < 0.7).astype(np.float32))} for _ in range(n)]


def reference_steps(data: list[dict[str, mx.array]], *, clip: float) -> tuple[nn.Module, optim.Optimizer, list[float]]:
    """The same training, the plain MLX way."""
    model, optimizer = model_and_optimizer()
    loss_and_grad = nn.value_and_grad(model, lm_loss)
    norms = []
    for batch in data:
        _, grad = loss_and_grad(model, batch)
        grad, norm = optim.clip_grad_norm(grad, clip if clip > 0 else float("inf"))
        optimizer.update(model, grad)
        mx.eval(model.state, optimizer.state, norm)
        norms.append(norm.item())
    return model, optimizer, norms


def assert_same_training(model, optimizer, ref_model, ref_optimizer) -> None:
    ours = dict(tree_flatten(model.parameters()))
    theirs = dict(tree_flatten(ref_model.parameters()))
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_allclose(np.array(ours[key]), np.array(theirs[key]), rtol=1e-5, atol=1e-6, err_msg=key)
    ours_state = dict(tree_flatten(optimizer.state))
    theirs_state = dict(tree_flatten(ref_optimizer.state))
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        np.testing.assert_allclose(np.array(ours_state[key]), np.array(theirs_state[key]), rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    assert optimizer.step.item() == ref_optimizer.step.item()


@pytest.mark.parametrize("clip", [0.05, 0.0])
def test_the_step_updates_like_clip_grad_norm_and_optimizer_update(clip):
    """Clipping on (0.05: every step clips, checked below) and off; the norm asked for on
    every step. Parameters, Adam moments and the step counter end where MLX's own path does."""
    data = batches(4)
    ref_model, ref_optimizer, ref_norms = reference_steps(data, clip=clip)
    model, optimizer = model_and_optimizer()
    step = make_step(model, optimizer, lm_loss, accum_steps=1, grad_clip=clip)
    norms = []
    for batch in data:
        _, _, _, norm, acc = step(batch, None, True, norm=True)
        assert acc is None
        mx.eval(model.state, optimizer.state, norm)
        norms.append(norm.item())
    np.testing.assert_allclose(norms, ref_norms, rtol=1e-5)
    if clip:
        assert min(ref_norms) > clip                    # so every step did clip
    assert_same_training(model, optimizer, ref_model, ref_optimizer)


def test_without_clipping_the_norm_is_computed_only_when_asked():
    """A step that is not logged skips the norm (None) and still updates as MLX does."""
    data = batches(3)
    ref_model, ref_optimizer, ref_norms = reference_steps(data, clip=0.0)
    model, optimizer = model_and_optimizer()
    step = make_step(model, optimizer, lm_loss, accum_steps=1, grad_clip=0.0)
    got = []
    for n, batch in enumerate(data):
        _, _, _, norm, _ = step(batch, None, True, norm=n == 2)
        mx.eval(model.state, optimizer.state, *([norm] if norm is not None else []))
        got.append(None if norm is None else norm.item())
    assert got[:2] == [None, None]
    assert got[2] == pytest.approx(ref_norms[2], rel=1e-5)
    assert_same_training(model, optimizer, ref_model, ref_optimizer)


def test_accumulated_micro_batches_update_like_their_mean_gradient():
    """Two micro-batches then the update: the same as one update on the mean of both gradients."""
    data = batches(2)
    ref_model, ref_optimizer = model_and_optimizer()
    loss_and_grad = nn.value_and_grad(ref_model, lm_loss)
    grads = [loss_and_grad(ref_model, b)[1] for b in data]
    mean = {k: (a + b) / 2 for (k, a), (_, b) in zip(tree_flatten(grads[0]), tree_flatten(grads[1]), strict=True)}
    mean_grad, _ = optim.clip_grad_norm(tree_unflatten(list(mean.items())), 1.0)
    ref_optimizer.update(ref_model, mean_grad)
    mx.eval(ref_model.state, ref_optimizer.state)

    model, optimizer = model_and_optimizer()
    step = make_step(model, optimizer, lm_loss, accum_steps=2, grad_clip=1.0)
    _, _, _, norm, acc = step(data[0], None, False)
    assert norm is None and acc is not None
    _, _, _, norm, acc = step(data[1], acc, True)
    mx.eval(model.state, optimizer.state, norm)
    assert acc is None
    assert_same_training(model, optimizer, ref_model, ref_optimizer)
