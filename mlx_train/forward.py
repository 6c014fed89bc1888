"""The training forward pass: mlx-lm's LLaMA (`mlx_lm.models.llama.Model`) layer by layer, with
its own modules and weights, and two differences that change where time goes, not what is
computed:

- the attention mask: causal, or for packed rows the block-diagonal causal mask of
  `mlx_train.packing.segment_mask`;
- SwiGLU's sigmoid takes its exp from ``fast_exp``, a polynomial in fused arithmetic, with a
  gradient of its own. MLX's CPU ``exp`` costs about 13 ns a float on one thread (see
  ``benchmarks/bench_mlx_train.py``'s layer profile); SwiGLU takes one per hidden activation of
  the MLP, which made it cost about half what the MLP's three matmuls cost. (Attention's softmax
  takes one exp per score too, but written out with ``fast_exp`` it ran slower inside the
  compiled model than MLX's own scaled dot-product attention, so that stays.)

Inference, sampling and checkpoints use mlx-lm's own model: the same weights, the same function
up to float rounding (tests/test_mlx_train_forward.py compares logits and gradients)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_train.packing import segment_mask

__all__ = ["EXP_RANGE", "fast_exp", "forward", "swiglu"]

EXP_RANGE = 80.0      # |x| above this is clamped: e^-80 is still a normal float32


def fast_exp(x: mx.array) -> mx.array:
    """e^x for float32 ``x`` clamped to ±EXP_RANGE, relative error below 2e-7 (MLX's CPU exp:
    about 1e-6): x = n·ln2 + r with |r| ≤ ln2/2 (ln2 in two parts, so r is exact), e^r by its
    degree-7 Taylor polynomial, 2^n by building the float's exponent bits. Only arithmetic,
    so ``mx.compile`` fuses it into one loop. No gradient of its own: use it in functions that
    define theirs."""
    x = mx.clip(x, -EXP_RANGE, EXP_RANGE)
    n = mx.floor(x * 1.4426950408889634 + 0.5)
    r = x - n * 0.693145751953125            # ln2 = 0.693145751953125 + 1.4286068203094172e-06
    r = r - n * 1.4286068203094172e-06
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r / 5040))))))
    return p * mx.view((n.astype(mx.int32) + 127) << 23, mx.float32)


def _sigmoid(x: mx.array) -> mx.array:
    return 1.0 / (1.0 + fast_exp(-x))


@mx.custom_function
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up, as mlx-lm's MLP computes it, with ``fast_exp``."""
    return gate * _sigmoid(gate) * up


@swiglu.vjp
def _swiglu_vjp(primals, cotangent, output):
    gate, up = primals
    s = _sigmoid(gate)
    silu = gate * s
    return cotangent * up * (s + silu * (1.0 - s)), cotangent * silu


def _block(layer: nn.Module, x: mx.array, mask: mx.array | str) -> mx.array:
    """`mlx_lm.models.llama.TransformerBlock.__call__` with ``swiglu`` in its MLP."""
    h = x + layer.self_attn(layer.input_layernorm(x), mask)
    mlp = layer.mlp
    y = layer.post_attention_layernorm(h)
    return h + mlp.down_proj(swiglu(mlp.gate_proj(y), mlp.up_proj(y)))


def forward(model: nn.Module, inputs: mx.array, segments: mx.array | None = None) -> mx.array:
    """Logits (R, L, V) of ``model`` on ``inputs`` (R, L); with ``segments`` (R, L) (packed
    rows), attention stays within each conversation of a row."""
    if getattr(model.args, "sliding_window", None):     # per-layer masks: mlx-lm's own forward
        if segments is not None:
            raise ValueError("packing does not support sliding-window attention (train without --packing)")
        return model(inputs)
    inner = model.model
    h = inner.embed_tokens(inputs)                                              # (R, L, D)
    mask = "causal" if segments is None else segment_mask(segments)
    for layer in inner.layers:
        h = _block(layer, h, mask)
    h = inner.norm(h)
    if model.args.tie_word_embeddings:
        return inner.embed_tokens.as_linear(h)
    return model.lm_head(h)
