"""Generation with the frozen decoder from condensed embeddings plus a prompt."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig

from condense.config import ConfigError
from condense.data import bos_added, cut_prompt, prompt_ids, prompt_room
from condense.model import Condenser, token_embeddings


@torch.no_grad()
def generate(
    condenser: Condenser,
    prefixes: torch.Tensor | list[torch.Tensor],
    prompts: Sequence[str | list[int]],
    max_new_tokens: int | Sequence[int] = 64,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy completions of `prompts`, each after its prefix of decoder input embeddings:
    condensed (B, N, Hd), or a list of (n_i, Hd) of any lengths (n_i = 0: no context).
    `max_new_tokens` is one budget for every row or one per row; no row runs past the
    decoder's positions (weights.max_positions). `add_special_tokens=False`
    reads the prompts without the BOS their tokenizer would open them with, for prefixes
    that are a text's token embeddings already opening with it (the full context of
    `condense eval`): one BOS per row, first.

    A prompt too long for training's `max_tokens` (the condenser's `max_context_tokens`)
    is cut as training cut a prompt before a completion of its budget (`prompt_tokens`):
    it loses its beginning. A prompt given as token ids is read as it is (`condense eval`
    passes the prompts it scored, cut as training cut them).

    Rows are left-padded to one width and masked, and each is cut to its own budget, so a
    batch gives what each row would give alone.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of prompts, not one string")
    _check_prefixes(condenser, prefixes)
    if len(prefixes) != len(prompts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(prompts)} prompts: give one each")
    if not prompts:
        return []
    if isinstance(max_new_tokens, Sequence):
        budgets = list(max_new_tokens)
        if len(budgets) != len(prompts):
            raise ValueError(f"{len(budgets)} budgets for {len(prompts)} prompts")
    else:
        budgets = [max_new_tokens] * len(prompts)
    if any(budget < 1 for budget in budgets):
        raise ConfigError(f"max_new_tokens must be 1 or more, got {min(budgets)}")
    rows = [
        _input_row(condenser, prefix, prompt, budget, add_special_tokens)
        for prefix, prompt, budget in zip(prefixes, prompts, budgets)
    ]
    width = max(len(r) for r in rows)
    limit = condenser.decoder_positions
    if limit is not None:
        budgets = [min(budget, limit - len(row)) for budget, row in zip(budgets, rows)]
        if min(budgets) < 1:
            raise ConfigError(
                f"the context and prompt fill {width} of the decoder's {limit} positions: "
                "no room to generate"
            )
        if width + max(budgets) > limit:
            # Batched, every row would run to the longest budget and the widest row past
            # the last position; near the limit, each row goes alone.
            return [_greedy(condenser, [row], [budget])[0] for row, budget in zip(rows, budgets)]
    return _greedy(condenser, rows, budgets)


def _check_prefixes(condenser: Condenser, prefixes: torch.Tensor | list[torch.Tensor]) -> None:
    """Refuse prefixes of the wrong shape: one context's (N, Hd) given as the batch was
    read as N contexts of one vector each ("8 prefixes for 1 prompts")."""
    hidden = condenser.decoder.get_input_embeddings().embedding_dim
    batched = isinstance(prefixes, torch.Tensor)
    rows, dims = ([prefixes], 3) if batched else (list(prefixes), 2)
    for prefix in rows:
        if prefix.dim() != dims or prefix.shape[-1] != hidden:
            form = "(batch, N, hidden)" if batched else "a list of (n, hidden)"
            raise ValueError(
                f"a prefix of shape {tuple(prefix.shape)}: give {form}, hidden being the"
                f" decoder's {hidden}, as condense() gives (batch, N, hidden)"
            )


def prompt_tokens(
    condenser: Condenser, prompt: str, budget: int, add_special_tokens: bool = True
) -> list[int]:
    """`prompt`'s decoder tokens as `generate` reads them before `budget` new tokens: cut,
    where the condenser records training's max_tokens, as training cut a prompt before a
    completion of `budget` tokens (data.prompt_room), so that the decoder reads no longer
    a prompt than it was trained on beside such a completion."""
    tokenizer = condenser.decoder_tokenizer
    ids = prompt_ids(tokenizer, [prompt], add_special_tokens)[0]
    # The artifact's dataset.max_tokens: the context's limit and the prompt+completion's.
    limit = condenser.max_context_tokens
    if limit is None:
        return ids
    opening = bos_added(tokenizer) if add_special_tokens else []
    return cut_prompt(ids, prompt_room(limit, budget), opening)


def _input_row(
    condenser: Condenser,
    prefix: torch.Tensor,
    prompt: str | list[int],
    budget: int,
    add_special_tokens: bool,
) -> torch.Tensor:
    """The decoder input embeddings of one row: its prefix, then its prompt's tokens."""
    tokenizer = condenser.decoder_tokenizer
    if isinstance(prompt, str):
        ids = prompt_tokens(condenser, prompt, budget, add_special_tokens)
    else:
        ids = list(prompt)
    if not ids and not len(prefix):
        # Nothing to read (no context, an empty prompt, no BOS added): start where
        # generating from nothing starts, at the BOS (or EOS) token.
        ids = [
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ]
    token_ids = torch.tensor(ids, dtype=torch.long, device=condenser.device)  # long if empty
    tokens = token_embeddings(condenser.decoder, token_ids)  # (t, Hd)
    return torch.cat([prefix.to(tokens.device, tokens.dtype), tokens])  # (n + t, Hd)


def stop_ids(eos: int | None, model_eos: int | list[int] | None) -> list[int]:
    """The tokens that end an answer: the EOS training put after each completion, then any
    other the decoder's generation_config stops at (Llama-3-Instruct's <|eot_id|> and
    <|end_of_text|>), so an answer that ends in another of them stops there too."""
    others = model_eos if isinstance(model_eos, list) else [model_eos]
    return list(dict.fromkeys(i for i in (eos, *others) if i is not None))


def _greedy(condenser: Condenser, rows: list[torch.Tensor], budgets: list[int]) -> list[str]:
    """Greedy decoding of left-padded, masked rows, each cut to its own budget."""
    tokenizer = condenser.decoder_tokenizer
    width = max(len(r) for r in rows)
    embeds = torch.stack([torch.cat([r.new_zeros(width - len(r), r.shape[-1]), r]) for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=embeds.device)
    # Compiled blocks (model.compile) run eagerly here: the KV cache fails their guards at
    # every new length, so they would recompile up to torch's limit (8), warning each time,
    # before falling back to eager (the test job's compiled model on a 2-core CPU, first
    # condense + generate: 61.5 s, 14.9 s with eager decoding).
    # Plain greedy decoding: generate() fills whatever a config leaves unset from the
    # decoder's own generation_config, whose repetition penalty, banned n-grams or minimum
    # length (chat models ship such settings) would make exact match and ROUGE-L score
    # something other than the decoder's most likely answer. Swapped out meanwhile.
    decoder = condenser.decoder
    own = decoder.generation_config
    greedy = GenerationConfig(
        max_new_tokens=max(budgets),
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids(tokenizer.eos_token_id, own.eos_token_id),
    )
    decoder.generation_config = greedy
    try:
        with condenser.autocast(), torch.compiler.set_stance("force_eager"):
            out = decoder.generate(
                inputs_embeds=embeds,  # (B, width, Hd); the output holds only the new tokens
                attention_mask=mask,
                generation_config=greedy,
            )
    finally:
        decoder.generation_config = own
    texts = tokenizer.batch_decode(
        [ids[:budget] for ids, budget in zip(out, budgets)], skip_special_tokens=True
    )
    return [text.strip() for text in texts]


def context_notes(condenser: Condenser, context: str) -> list[str]:
    """What the condenser will not read of `context`, as training would not have."""
    if not context.strip():
        return [
            "the context file is empty: the decoder answers from the condensed vectors of an empty text"
        ]
    chars, tokens = condenser.max_context_characters, condenser.max_context_tokens
    if chars is not None and len(context) > chars:
        context = context[:chars]
        cut = f"cut to its first {chars} characters (dataset.max_characters)"
    else:
        cut = None
    length = len(condenser.encoder_tokenizer(context)["input_ids"])
    if tokens is not None and length > tokens:
        cut = f"{cut + ', then' if cut else 'cut'} to {tokens} of its {length} tokens (dataset.max_tokens)"
    return [f"the context is {cut}, as in training"] if cut else []


def prompt_notes(condenser: Condenser, prompt: str, max_new_tokens: int) -> list[str]:
    """What the decoder will not read of `prompt`, as training would not have."""
    kept = len(prompt_tokens(condenser, prompt, max_new_tokens))
    length = len(prompt_ids(condenser.decoder_tokenizer, [prompt])[0])
    notes = []
    if kept < length:
        room = "dataset.max_tokens, with room for --max-new-tokens"
        notes.append(
            f"the prompt is cut to {kept} of its {length} tokens, its end kept ({room}),"
            " as in training"
        )
    # generate() stops every row at the decoder's last position, which said nothing.
    limit = condenser.decoder_positions
    left = limit - condenser.num_condense_tokens - kept if limit else max_new_tokens
    if 0 < left < max_new_tokens:
        notes.append(
            f"at most {left} new tokens, not --max-new-tokens {max_new_tokens}: the decoder"
            f" reads {limit} positions, and the condensed context and prompt fill the rest"
        )
    return notes
