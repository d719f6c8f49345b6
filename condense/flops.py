"""Training FLOPs of a condenser step, counted from the models' shapes.

Shared by `condense bench` (achieved FLOP/s and MFU) and `condense plan` (step time at a
stated MFU). A matmul of (m, k) by (k, n) is 2mkn FLOPs. Backward through a frozen weight
computes only the activation gradient (1x the forward); through a trained one, also the
weight gradient (2x). Attention is counted causal: a sequence of S tokens has S(S+1)/2
query-key pairs, each 4 x (heads x head_dim) FLOPs forward (scores and the weighted sum)
and twice that backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Dims:
    """What the FLOP count needs of one causal LM.

    Args:
        block_weights: Elements of the 2-D weights inside the transformer blocks (LoRA
            excluded): each token costs 2x this many FLOPs through them.
        layers: Transformer blocks.
        attention_width: Query heads x head dim.
        hidden: Hidden size (the LM head's input).
        vocab: Vocabulary size (the LM head's output).
    """

    block_weights: int
    layers: int
    attention_width: int
    hidden: int
    vocab: int


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a causal LM: its longest ModuleList (model.layers, h, ...)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return max(lists, key=len)


def dims(model: nn.Module) -> Dims:
    """The FLOP-relevant shapes of a (possibly LoRA-wrapped, possibly meta) causal LM."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    weights = sum(
        p.numel()
        for name, p in blocks(model).named_parameters()
        if p.ndim == 2 and "lora_" not in name
    )
    return Dims(
        weights, len(blocks(model)), heads * head_dim, config.hidden_size, config.vocab_size
    )


def lora_weights(model: nn.Module) -> int:
    """Elements of the LoRA matrices A and B (each token costs 2x this forward)."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


def causal_pairs(lengths: list[int]) -> int:
    """Query-key pairs of causal attention over sequences of these lengths."""
    return sum(s * (s + 1) // 2 for s in lengths)


def step_flops(
    encoder: Dims,
    decoder: Dims,
    lora: int,
    head: int,
    encoder_lengths: list[int],
    decoder_lengths: list[int],
    slots: int,
    logits: int,
) -> dict[str, int]:
    """FLOPs of one training step (forward + backward), by part, and in "recompute" what
    gradient checkpointing adds to them.

    Args:
        encoder, decoder: The two models' shapes.
        lora: LoRA weight elements in the encoder.
        head: Weight elements of the projection after the LayerNorm.
        encoder_lengths: Tokens each row of the encoder computes (context + N slots).
        decoder_lengths: Tokens each row of the decoder computes (N + prompt + completion).
        slots: Condensed slots in the batch (rows x N): the projection runs on these.
        logits: Rows of the LM head computed (labelled positions, or all of them).
    """
    enc_tokens, dec_tokens = sum(encoder_lengths), sum(decoder_lengths)
    enc_linear = 2 * encoder.block_weights * enc_tokens
    enc_attention = 4 * encoder.attention_width * encoder.layers * causal_pairs(encoder_lengths)
    lora_fwd = 2 * lora * enc_tokens
    head_fwd = 2 * head * slots
    dec_linear = 2 * decoder.block_weights * dec_tokens
    dec_attention = 4 * decoder.attention_width * decoder.layers * causal_pairs(decoder_lengths)
    logits_fwd = 2 * decoder.hidden * decoder.vocab * logits
    parts = {
        # forward + backward: frozen weights 1x + 1x, trained ones 1x + 2x, attention 1x + 2x
        "encoder": 2 * enc_linear + 3 * enc_attention,
        "lora": 3 * lora_fwd,
        "projection": 3 * head_fwd,
        "decoder": 2 * dec_linear + 3 * dec_attention,
        "logits": 2 * logits_fwd,
    }
    parts["total"] = sum(parts.values())
    # Not in the total (model FLOPs, which MFU counts): what gradient checkpointing adds,
    # the blocks' forward run again in backward.
    parts["recompute"] = enc_linear + enc_attention + lora_fwd + dec_linear + dec_attention
    return parts


def condenser_step_flops(
    condenser: nn.Module,
    encoder_lengths: list[int],
    decoder_lengths: list[int],
    slots: int,
    logits: int,
) -> dict[str, int]:
    """step_flops of a condenser (real or on the meta device), the shapes read from its
    encoder, decoder and projection; the other arguments as step_flops takes them."""
    return step_flops(
        dims(condenser.encoder),
        dims(condenser.decoder),
        lora_weights(condenser.encoder),
        condenser.projection.weight.numel(),
        encoder_lengths,
        decoder_lengths,
        slots,
        logits,
    )
