"""Generation with the frozen decoder from condensed embeddings plus a prompt."""

from __future__ import annotations

import torch

from condense.model import Condenser


@torch.no_grad()
def generate(
    condenser: Condenser, condensed: torch.Tensor, prompts: list[str], max_new_tokens: int = 64
) -> list[str]:
    """Greedy completions of `prompts`, each after its row of `condensed` (B, N, Hd).

    Rows are left-padded to one width and masked, so a batch gives what each row would
    give alone; `condensed` may have N = 0 (no context).
    """
    tokenizer = condenser.decoder_tokenizer
    decoder = condenser.decoder
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(i) for i in ids)
    embed = decoder.get_input_embeddings()
    n, device = condensed.shape[1], condensed.device
    rows, masks = [], []
    for row, prompt_ids in zip(condensed, ids):
        pad = width - len(prompt_ids)
        tokens = embed(torch.tensor(prompt_ids, device=device))  # (t, Hd)
        rows.append(
            torch.cat([tokens.new_zeros(pad, tokens.shape[-1]), row.to(tokens.dtype), tokens])
        )
        masks.append([0] * pad + [1] * (n + len(prompt_ids)))
    out = decoder.generate(
        inputs_embeds=torch.stack(rows),  # (B, pad + N + t, Hd)
        attention_mask=torch.tensor(masks, device=device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]
