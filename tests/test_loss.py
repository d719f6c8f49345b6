import math

import pytest
import torch
import torch.nn.functional as F

from condense.loss import labelled_cross_entropy


def _head(vocab: int = 11, hidden: int = 6) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)


@pytest.mark.parametrize("chunk_logits", [1, 11, 30, 10_000])
def test_chunks_give_the_loss_and_gradient_of_full_logits(chunk_logits):
    """Whatever the chunk size (one row, several, all), value and gradient are the
    textbook cross-entropy's, and a scaled loss scales the gradient."""
    head = _head()
    hidden = torch.randn(7, 6, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    expected = F.cross_entropy(head(hidden) * 0.5, targets)
    (3 * expected).backward()
    want = hidden.grad.clone()
    hidden.grad = None

    loss = labelled_cross_entropy(hidden, targets, lambda h: head(h) * 0.5, 11, chunk_logits)
    (3 * loss).backward()

    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(hidden.grad, want)


def test_no_gradient_is_taken_where_none_is_wanted():
    head = _head()
    hidden, targets = torch.randn(5, 6), torch.randint(0, 11, (5,))
    with torch.no_grad():
        loss = labelled_cross_entropy(hidden, targets, head, 11, 22)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(head(hidden), targets))


def test_no_labels_give_nan_like_cross_entropy_and_still_backpropagate():
    hidden = torch.randn(0, 6, requires_grad=True)
    loss = labelled_cross_entropy(hidden, torch.zeros(0, dtype=torch.long), _head(), 11)
    assert math.isnan(loss.item())
    loss.backward()  # the training step's non-finite check comes after backward
    assert hidden.grad.shape == (0, 6)


def test_fp16_gradients_keep_the_small_probabilities():
    """Under 16-mixed (V100, T4) each chunk's gradient is taken in forward, before
    GradScaler's factor reaches it: over a 49k vocabulary most probabilities are below
    fp16's smallest normal number (6e-5), and what they add up to must still arrive.
    As is, the gradient is 4.0e-4 off; taken in forward from the mean over 256 labels (a
    batch of a few samples) and scaled back in backward, it would be 2.1e-3 off."""
    torch.manual_seed(0)
    vocab, hidden_size, rows = 49152, 64, 32
    weight = torch.randn(vocab, hidden_size) * 0.4
    hidden = torch.randn(rows, hidden_size)
    targets = torch.randint(0, vocab, (rows,))
    exact = hidden.double().requires_grad_()
    F.cross_entropy(exact @ weight.double().T, targets).backward()

    half = hidden.half().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = labelled_cross_entropy(half, targets, lambda h: F.linear(h, weight.half()), vocab)
    (loss * 2.0**16).backward()  # GradScaler's initial scale

    got = half.grad.double() / 2.0**16
    assert torch.isfinite(got).all()
    assert (got - exact.grad).norm() / exact.grad.norm() < 1e-3
