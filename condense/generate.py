"""Generation with the frozen decoder from condensed embeddings plus a prompt."""

from __future__ import annotations

import torch

from condense.model import Condenser


@torch.no_grad()
def generate(
    condenser: Condenser,
    prefixes: torch.Tensor | list[torch.Tensor],
    prompts: list[str],
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy completions of `prompts`, each after its prefix of decoder input embeddings:
    condensed (B, N, Hd), or a list of (n_i, Hd) of any lengths (n_i = 0: no context).

    Rows are left-padded to one width and masked, so a batch gives what each row would
    give alone.
    """
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
    embeds = torch.stack([torch.cat([r.new_zeros(width - len(r), r.shape[-1]), r]) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    with condenser.autocast():
        out = decoder.generate(
            inputs_embeds=embeds,  # (B, width, Hd)
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]
