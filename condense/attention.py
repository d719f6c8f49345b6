"""Causal self-attention that is fast in compiled blocks on CPU, registered with
transformers as "condense".

PyTorch's CPU flash-attention kernel runs the bench job's shapes at 70-100 GFLOP/s, a
tenth of the same machine's bf16 matmul peak, and took a quarter of its training step.
`blocked_causal_attention` is plain tensor operations for torch.compile to fuse: the
queries are cut into QUERY_BLOCKS blocks, each attending only to the keys up to its own
end (most of the masked half of the scores is never computed), and the query heads that
share a key head are stacked into one matmul. Compiled, it ran 166-193 GFLOP/s forward
and backward at those shapes; eager, no faster than the kernel.

Its price is memory: like eager attention it keeps the bf16 probabilities for backward
(10/16 of the scores), where the kernel keeps none. Recomputing them in backward, as the
kernel does, measured no faster than the kernel here, so the blocks are used only where
that memory stays small (MAX_SCORES) and where they pay: inside torch.compile, on CPU, for
the full-sequence causal attention of training and scoring (no padding mask, no KV cache,
no dropout). Every other call (eager, a GPU, a mask, generation's cache) is transformers'
own SDPA attention, and masks are built as for SDPA.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "condense"
QUERY_BLOCKS = 4
# Scores per layer (batch x heads x length^2) above which the kernel is used: at this many
# the blocks keep 20 MB of probabilities per layer for backward.
MAX_SCORES = 2**24


def causal_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query (B, H, S, D), key and value (B, KV, S, D);
    returns the output as (B, S, H, D)."""
    batch, heads, length, dim = query.shape
    extras = ("softcap", "s_aux", "position_bias", "cache")  # SDPA handles (or refuses) these
    blocked = (
        torch.compiler.is_compiling()
        and query.device.type == "cpu"
        and attention_mask is None
        and not dropout
        and all(kwargs.get(k) is None for k in extras)
        and is_causal is not False
        and getattr(module, "is_causal", True)
        and key.shape[2] == length
        and key.shape[3] == value.shape[3] == dim  # values as wide as queries (not DeepSeek-V3)
        and length >= QUERY_BLOCKS
        and batch * heads * length * length <= MAX_SCORES
    )
    if not blocked:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs
        )
    scale = scaling if scaling is not None else dim**-0.5
    out = blocked_causal_attention(query, key, value, scale)
    return out.transpose(1, 2).contiguous(), None


def blocked_causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> torch.Tensor:
    """Causal attention of query (B, H, S, D) over key and value (B, KV, S, D), H a
    multiple of KV (grouped-query heads, query head h reading key head h // (H / KV))."""
    batch, heads, length, dim = query.shape
    groups = key.shape[1]
    grouped = query.reshape(batch, groups, heads // groups, length, dim)
    return _BlockedCausal.apply(grouped, key, value, scale).view(batch, heads, length, dim)


class _BlockedCausal(torch.autograd.Function):
    """Query (B, KV, G, S, D), key and value (B, KV, S, D): output (B, KV, G, S, D)."""

    @staticmethod
    def forward(ctx, query, key, value, scale):
        batch, groups, per_group, length, dim = query.shape
        outs, kept = [], []
        for start, end in _blocks(length):
            scores = _scores(query[:, :, :, start:end], key[:, :, :end], start, scale)
            probs = scores.softmax(-1).to(value.dtype)  # (B, KV, G*Q, K)
            outs.append((probs @ value[:, :, :end]).view(batch, groups, per_group, -1, dim))
            kept.append(probs)
        ctx.save_for_backward(query, key, value, *kept)
        ctx.scale = scale
        return torch.cat(outs, 3)

    @staticmethod
    def backward(ctx, grad):
        query, key, value, *kept = ctx.saved_tensors
        batch, groups, per_group, length, dim = query.shape
        grad_query = []
        # Keys and values are read by every block after them: their gradients accumulate.
        grad_key = torch.zeros(key.shape, dtype=torch.float32, device=key.device)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        for (start, end), probs in zip(_blocks(length), kept):
            block = query[:, :, :, start:end].reshape(batch, groups, -1, dim)  # (B, KV, G*Q, D)
            grad_out = grad[:, :, :, start:end].reshape(batch, groups, -1, dim)
            grad_value[:, :, :end] += probs.transpose(-1, -2) @ grad_out
            grad_probs = (grad_out @ value[:, :, :end].transpose(-1, -2)).float()
            # The softmax's backward: p * (dp - sum_j p_j dp_j) per query.
            p = probs.float()
            grad_scores = p * (grad_probs - (p * grad_probs).sum(-1, keepdim=True))
            flat = (grad_scores * ctx.scale).to(query.dtype)  # (B, KV, G*Q, K)
            grad_block = flat @ key[:, :, :end]
            grad_query.append(grad_block.view(batch, groups, per_group, end - start, dim))
            grad_key[:, :, :end] += flat.transpose(-1, -2) @ block
        return torch.cat(grad_query, 3), grad_key.to(key.dtype), grad_value.to(value.dtype), None


def _blocks(length: int) -> list[tuple[int, int]]:
    return [
        (length * i // QUERY_BLOCKS, length * (i + 1) // QUERY_BLOCKS) for i in range(QUERY_BLOCKS)
    ]


def _scores(query: torch.Tensor, key: torch.Tensor, start: int, scale: float) -> torch.Tensor:
    """Scaled fp32 scores (B, KV, G*Q, K) of queries start..start+Q-1 (each of the G
    query heads over a key head stacked, Q rows a head) over keys 0..K-1, -inf where a
    query would see a key after it.

    The mask is a float bias over the stacked rows, not a boolean (Q, K) mask over a
    (B, KV, G, Q, K) view: compiled, that one's softmax also copied the probabilities
    twice into the stacked layout. This one's kernels took 20-37% less time in 5 of 6
    runs (4 rows of 258-547 tokens, 9 heads over 3 key heads; 2% in the sixth)."""
    batch, groups, per_group, queries, dim = query.shape
    keys = key.shape[2]
    stacked = query.reshape(batch, groups, per_group * queries, dim)
    scores = (stacked @ key.transpose(-1, -2)).float()
    rows = start + torch.arange(per_group * queries, device=query.device) % queries
    ahead = torch.arange(keys, device=query.device) - rows[:, None]  # key index - query's
    bias = torch.where(ahead > 0, float("-inf"), 0.0)
    return scores * scale + bias


def implementation_for(config) -> str:
    """The attention a model of `config` loads with: condense's where its architecture
    declares that it takes a registered attention function (_supports_attention_backend);
    else its SDPA, else its eager attention; and eager where it soft-caps attention scores
    (Gemma 2), which SDPA refuses. Bloom and XGLM, which do not declare it, ran condense's
    without their causal mask; Falcon and StableLM, which do not either, would take it,
    and run their own SDPA (the same logits; no compiled CPU blocks)."""
    from transformers import AutoModelForCausalLM

    if getattr(config.get_text_config(), "attn_logit_softcapping", None):
        return "eager"
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is None or getattr(model_class, "_supports_attention_backend", False):
        return NAME
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


AttentionInterface.register(NAME, causal_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
