"""Generate tokens from a causal model with its KV-cache decode (:meth:`Stack.decode_step`).

The prompt fills the cache in one step; each new token then extends it by one position.
The model never sees more than `context` tokens at once, as in training: once the window is
full it slides by one token, and the cache is refilled from the last `context` tokens (the
prediction for the next token then conditions on exactly the window a training position
saw). Temperature 0 picks the most likely token (greedy); above 0 it samples from
softmax(logits / temperature) with `generator`, so a seed fixes the output.
"""

from __future__ import annotations

import torch


def next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """One token from the logits (V,) of the last position."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model, prompt: list[int], length: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, context: int | None = None,
             loops: int | None = None) -> list[int]:
    """`length` tokens after `prompt` (its last `context` tokens are what the model sees)."""
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    generator = generator or torch.Generator().manual_seed(0)
    context = context or model.max_len
    tokens = list(prompt)
    window = tokens[-context:]
    cache = model.new_cache(loops)
    logits = model.decode_step(torch.tensor([window]), 0, cache, loops)
    pos = len(window)
    out: list[int] = []
    for _ in range(length):
        tok = next_token(logits[0, -1], temperature, generator)
        out.append(tok)
        tokens.append(tok)
        if pos < context:
            logits = model.decode_step(torch.tensor([[tok]]), pos, cache, loops)
            pos += 1
        else:  # the window is full: slide it by one token
            cache = model.new_cache(loops)
            logits = model.decode_step(torch.tensor([tokens[-context:]]), 0, cache, loops)
    return out
