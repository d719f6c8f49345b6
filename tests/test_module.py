"""The LightningModule's validation: a wrong-context loss beside the real one."""

from __future__ import annotations

import torch

from condense.module import other_context
from condense.train import train
from tests.conftest import tiny_config


def test_wrong_context_partner_is_never_a_sample_with_the_same_context():
    # Rows 0, 1 and 3 share a context (say, two tasks cut from one passage).
    ids = torch.tensor([[1, 2, 0], [1, 2, 0], [3, 4, 5], [1, 2, 0]])
    partner, found = other_context(ids, (ids > 0).long())
    assert partner.tolist() == [2, 2, 3, 2] and found.all()


def test_padding_alone_does_not_make_a_context_different():
    ids = torch.tensor([[1, 2, 0], [1, 2, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the 9 is padding
    assert not other_context(ids, mask)[1].any()


def test_a_batch_of_one_or_of_one_context_has_no_wrong_partner():
    assert not other_context(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long))[1].any()
    ids = torch.tensor([[1, 2], [1, 2]])
    assert not other_context(ids, torch.ones_like(ids))[1].any()


def test_validation_logs_the_wrong_context_loss(tiny_pair, tmp_path):
    train(tiny_config(*tiny_pair, tmp_path / "run", max_steps=2))
    header, *rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("val_loss_wrong")
    values = [float(r.split(",")[column]) for r in rows if r.split(",")[column]]
    assert len(values) == 2 and all(v > 0 for v in values)  # before step 1, and at step 2
