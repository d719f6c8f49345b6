"""Generation with the frozen decoder from condensed embeddings plus a prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from condense.config import ConfigError
from condense.model import Condenser


@torch.no_grad()
def generate(
    condenser: Condenser,
    prefixes: torch.Tensor | list[torch.Tensor],
    prompts: list[str],
    max_new_tokens: int | Sequence[int] = 64,
) -> list[str]:
    """Greedy completions of `prompts`, each after its prefix of decoder input embeddings:
    condensed (B, N, Hd), or a list of (n_i, Hd) of any lengths (n_i = 0: no context).
    `max_new_tokens` is one budget for every row or one per row.

    Rows are left-padded to one width and masked, and each is cut to its own budget, so a
    batch gives what each row would give alone. No row runs past the decoder's positions
    (its config's max_position_embeddings).
    """
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else max_new_tokens
    tokenizer = condenser.decoder_tokenizer
    decoder = condenser.decoder
    embed = decoder.get_input_embeddings()
    device = embed.weight.device
    rows = []
    for prefix, prompt in zip(prefixes, prompts):
        ids = tokenizer(prompt)["input_ids"]
        if not ids and not len(prefix):
            # Nothing to read (no context, an empty prompt, no BOS added): start where
            # generating from nothing starts, at the BOS (or EOS) token.
            ids = [
                tokenizer.bos_token_id
                if tokenizer.bos_token_id is not None
                else tokenizer.eos_token_id
            ]
        tokens = embed(torch.tensor(ids, dtype=torch.long, device=device))  # (t, Hd)
        rows.append(torch.cat([prefix.to(device, tokens.dtype), tokens]))  # (n + t, Hd)
    width = max(len(r) for r in rows)
    limit = getattr(decoder.config, "max_position_embeddings", None)
    room = max(budgets) if limit is None else min(max(budgets), limit - width)
    if room < 1:
        raise ConfigError(
            f"the context and prompt fill {width} of the decoder's {limit} positions: "
            "no room to generate"
        )
    budgets = [min(budget, room) for budget in budgets]
    embeds = torch.stack([torch.cat([r.new_zeros(width - len(r), r.shape[-1]), r]) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    with condenser.autocast():
        out = decoder.generate(
            inputs_embeds=embeds,  # (B, width, Hd)
            attention_mask=mask,
            max_new_tokens=room,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    texts = tokenizer.batch_decode(
        [ids[:budget] for ids, budget in zip(out, budgets)], skip_special_tokens=True
    )
    return [text.strip() for text in texts]
