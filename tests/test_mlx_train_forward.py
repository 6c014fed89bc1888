"""The training forward pass (mlx_train.forward) computes what mlx-lm's own model computes:
fast_exp against float64 exp, swiglu against mlx-lm's, logits and gradients against
mlx_lm.models.llama.Model's own forward."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.activations import swiglu as mlx_lm_swiglu

from mlx_train.forward import EXP_RANGE, fast_exp, forward, swiglu
from mlx_train.model import build_model, model_config

VOCAB = 97
DIMS = dict(hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96)


def test_fast_exp_is_exact_to_float32_rounding_over_its_range():
    x = np.concatenate([np.linspace(-EXP_RANGE, EXP_RANGE, 200_001),
                        np.random.default_rng(0).normal(0, 3, 100_000)]).astype(np.float32)
    got = np.array(mx.compile(fast_exp)(mx.array(x))).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 3e-7
    assert np.all(np.isfinite(got)) and got.min() > 0
    # beyond the range: clamped to the ends, still normal floats (no denormal slow path, no inf)
    ends = np.array(fast_exp(mx.array([-1e4, -100.0, 100.0, 1e4], dtype=mx.float32)))
    np.testing.assert_allclose(ends, np.exp([-EXP_RANGE, -EXP_RANGE, EXP_RANGE, EXP_RANGE]), rtol=3e-7)
    assert ends[0] >= np.finfo(np.float32).tiny


def test_swiglu_and_its_gradient_match_mlx_lm():
    rng = np.random.default_rng(1)
    gate = mx.array(rng.normal(0, 4, (64, 96)).astype(np.float32))
    up = mx.array(rng.normal(0, 1, (64, 96)).astype(np.float32))
    cot = mx.array(rng.normal(0, 1, (64, 96)).astype(np.float32))
    np.testing.assert_allclose(np.array(swiglu(gate, up)), np.array(mlx_lm_swiglu(gate, up)), rtol=2e-6, atol=1e-6)

    def grads(f):
        return mx.grad(lambda g, u: (f(g, u) * cot).sum(), argnums=(0, 1))(gate, up)

    for ours, theirs in zip(grads(swiglu), grads(mlx_lm_swiglu), strict=True):
        np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=2e-5, atol=2e-6)


def test_forward_gives_mlx_lm_logits_and_gradients():
    mx.random.seed(0)
    model = build_model(model_config(DIMS, vocab_size=VOCAB, max_len=64, eos_token_ids=[0]))
    tokens = mx.array(np.random.default_rng(2).integers(0, VOCAB, (3, 33), dtype=np.int32))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    np.testing.assert_allclose(np.array(forward(model, inputs)), np.array(model(inputs)), rtol=1e-4, atol=2e-5)

    def loss_with(fn):
        return nn.value_and_grad(model, lambda m: nn.losses.cross_entropy(fn(m), targets).mean())(model)

    (ours, ours_grad), (theirs, theirs_grad) = loss_with(lambda m: forward(m, inputs)), loss_with(lambda m: m(inputs))
    assert abs(ours.item() - theirs.item()) < 1e-5
    theirs_grad = dict(tree_flatten(theirs_grad))
    for key, g in tree_flatten(ours_grad):
        np.testing.assert_allclose(np.array(g), np.array(theirs_grad[key]), rtol=1e-3, atol=1e-6, err_msg=key)
