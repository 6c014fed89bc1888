"""The model: mlx-lm's own LLaMA (`mlx_lm.models.llama.Model`), built from a config dict that
is also what a checkpoint's config.json holds."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models.llama import Model, ModelArgs

__all__ = ["DTYPES", "build_model", "count_params", "model_config", "set_dtype"]

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def model_config(dims: dict[str, int], *, vocab_size: int, max_len: int,
                 eos_token_ids: list[int], dtype: str = "float32") -> dict[str, Any]:
    """config.json content for a LLaMA with ``dims`` (hidden_size, num_layers, num_heads, ...)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": dims["hidden_size"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "num_key_value_heads": dims["num_kv_heads"],
        "intermediate_size": dims["intermediate_size"],
        "vocab_size": vocab_size,
        "max_position_embeddings": max_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "eos_token_id": eos_token_ids,
        "torch_dtype": dtype,
    }


def build_model(config: dict[str, Any], *, dtype: str = "float32") -> nn.Module:
    """A freshly initialised `mlx_lm.models.llama.Model` for ``config`` (seed mx.random first)."""
    model = Model(ModelArgs.from_dict(config))
    set_dtype(model, dtype)
    return model


def set_dtype(model: nn.Module, dtype: str) -> None:
    """Cast every parameter to ``dtype`` (a DTYPES name)."""
    target = DTYPES[dtype]
    model.update(tree_map(lambda p: p if p.dtype == target else p.astype(target), model.parameters()))
    mx.eval(model.parameters())


def count_params(model: nn.Module) -> int:
    """Number of parameters (tied embeddings counted once)."""
    return sum(p.size for _, p in tree_flatten(model.parameters()))
