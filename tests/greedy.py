"""Greedy decoding by hand, token by token, with a model and tokenizer loaded by mlx-lm: what
``mlx_lm.generate`` must return for a checkpoint whose weights, config and tokenizer agree."""

from __future__ import annotations


def greedy_tokens(model, tokenizer, prompt: str, *, max_tokens: int) -> list[int]:
    """The argmax continuation of ``prompt`` (at most ``max_tokens`` tokens, up to an EOS token)."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    bos = tokenizer.bos_token
    ids = tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos))
    cache = make_prompt_cache(model)
    logits = model(mx.array([ids]), cache=cache)  # (1, T, V)
    tokens: list[int] = []
    while len(tokens) < max_tokens:
        token = int(mx.argmax(logits[0, -1]).item())
        if token in tokenizer.eos_token_ids:
            break
        tokens.append(token)
        logits = model(mx.array([[token]]), cache=cache)
    return tokens


def greedy_text(model, tokenizer, prompt: str, *, max_tokens: int) -> str:
    """``greedy_tokens`` decoded; asserts there was at least one (an untrained-to-EOS model)."""
    tokens = greedy_tokens(model, tokenizer, prompt, max_tokens=max_tokens)
    assert tokens, "the model ended the text at once: nothing to compare"
    return tokenizer.decode(tokens)
