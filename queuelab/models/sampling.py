"""Token sampling: one next token per sequence from its row of logits, greedy or drawn with the
sequence's own seeded generator (so a request's draws do not depend on its neighbours in a batch)."""

from __future__ import annotations

import torch

from queuelab.generation import GenerationParams
from queuelab.sequence import Sequence

#: Temperatures below this are greedy (vLLM's rule too). Dividing logits by a tiny temperature
#: (1e-40, say) overflows to inf, the softmax of inf is NaN, and one request's NaN would fail the
#: whole batch's step; greedy is the limit of sampling as the temperature goes to 0.
GREEDY_BELOW = 1e-5


def generator_for(params: GenerationParams, device: torch.device | str) -> torch.Generator | None:
    """The generator a sampled sequence draws from (None for greedy decoding)."""
    if params.temperature <= 0:
        return None
    g = torch.Generator(device=device)
    # An unseeded request still samples from its own generator, seeded from torch's global RNG.
    g.manual_seed(params.seed if params.seed is not None else int(torch.randint(2**62, ())))
    return g


def pick_tokens(seqs: list[Sequence], logits: torch.Tensor, eos_id: int | None) -> list[int]:
    """One token per sequence from its row of logits (n, V): greedy, or sampled with its own generator.

    A sequence short of its `min_tokens` cannot end yet: its end-of-sequence logit is masked (as vLLM does).
    """
    early = [i for i, s in enumerate(seqs) if len(s.output_ids) < s.params.min_tokens]
    if early and eos_id is not None:
        logits = logits.clone()
        logits[early, eos_id] = float("-inf")
    tokens = logits.argmax(dim=-1).tolist()
    for i, s in enumerate(seqs):
        if s.params.temperature >= GREEDY_BELOW:
            probs = torch.softmax(logits[i].float() / s.params.temperature, dim=-1)
            tokens[i] = int(torch.multinomial(probs, 1, generator=s.rng))
    return tokens
