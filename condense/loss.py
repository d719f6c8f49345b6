"""Cross-entropy through a frozen LM head, a chunk of rows at a time.

The (M, V) logits of M labelled positions over a large vocabulary (Llama-3's 128k) are the
largest tensors of a step, and their fp32 log-probabilities are kept for backward. Here
each chunk's logits live only inside one loop iteration: its gradient with respect to the
hidden states is taken right there, in the forward pass, since the loss is the end of the
graph and the head's weights are frozen. Backward then only scales those gradients, so no
logit is computed twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# Logits per chunk: 16 MB in fp32, small beside a step's activations on any device.
CHUNK_LOGITS = 2**22


def labelled_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    chunk_logits: int = CHUNK_LOGITS,
) -> torch.Tensor:
    """Mean cross-entropy of `logits_of(hidden)` (M, V) against `targets` (M,), computed
    in chunks of rows with at most `chunk_logits` logits each. `logits_of` must not train
    anything (a frozen head; only `hidden` gets a gradient) nor call a module: the gradients
    are taken inside forward, where module backward hooks cannot run."""
    rows = max(1, chunk_logits // vocab_size)
    return _ChunkedCrossEntropy.apply(hidden, targets, logits_of, rows)


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, targets, logits_of, rows):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        wanted = ctx.needs_input_grad[0]
        # One buffer the chunks write into: no second copy from concatenating them.
        grad = torch.zeros_like(hidden) if wanted else None
        for start in range(0, len(targets), rows):
            h, t = hidden[start : start + rows], targets[start : start + rows]
            if not wanted:
                total += _summed(logits_of, h, t)
                continue
            with torch.enable_grad():
                h = h.detach().requires_grad_()
                loss = _summed(logits_of, h, t)
                grad[start : start + rows] = torch.autograd.grad(loss, h)[0]
            total += loss.detach()
        if wanted:
            ctx.save_for_backward(grad)
        ctx.count = len(targets)
        # An empty batch of labels gives 0 / 0 = NaN, as F.cross_entropy's mean does.
        return total / len(targets)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        # The factor is rounded to the gradient's dtype: one scalar for the whole gradient,
        # which AdamW's update does not see.
        return grad * (grad_output / ctx.count).to(grad.dtype), None, None, None


def _summed(
    logits_of: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(logits_of(hidden).float(), targets, reduction="sum")
