"""From tokenized samples to batches: padding each side to the batch's longest
(Collator), a length-grouped batch order that resumes mid-epoch (LengthGroupedBatchSampler,
ResumableDataLoader), and each row's wrong-context partner (other_context)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader, Sampler

from condense.model import IGNORE_INDEX

if TYPE_CHECKING:  # data.py imports this module
    from condense.data import Tokenized


def other_context(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the next row (cyclically) from another passage, and whether one exists.

    `groups` (B,) is the batch's passage ids (passage_id). Samples cut from one
    passage sit side by side in length-grouped batches, and a different context is not
    enough: a continuation's context is a prefix of the passage that its reconstruction and
    question read whole, so "another context" from the same passage would hand the
    continuation its own target.
    """
    batch = groups.shape[0]
    rows = torch.arange(batch, device=groups.device)
    if batch < 2:
        return rows, torch.zeros_like(rows, dtype=torch.bool)
    others = (rows[:, None] + rows[None, 1:]) % batch  # (B, B-1): the other rows, in order
    differs = groups[others] != groups[:, None]
    partner = others.gather(1, differs.float().argmax(1, keepdim=True))[:, 0]
    return partner, differs.any(1)


class Collator:
    """Pads a batch to its own longest sample, each side with its own tokenizer's pad id."""

    def __init__(self, encoder_pad_id: int, decoder_pad_id: int):
        self.encoder_pad_id = encoder_pad_id
        self.decoder_pad_id = decoder_pad_id

    def __call__(self, items: list[Tokenized]) -> dict[str, torch.Tensor]:
        context_ids, context_mask = _pad([t.context_ids for t in items], self.encoder_pad_id)
        input_ids, attention_mask = _pad([t.input_ids for t in items], self.decoder_pad_id)
        labels, _ = _pad([t.labels for t in items], IGNORE_INDEX)
        return {
            "context_ids": context_ids,
            "context_mask": context_mask,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "group": torch.tensor([t.group for t in items], dtype=torch.long),
        }


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def length_keys(dataset: list[Tokenized]) -> list[tuple[int, int]]:
    """What batches are grouped by: context length, then prompt+completion length. Each side
    is padded on its own, so sorting by the context first (the encoder's side, the longer
    and costlier one) pads less than sorting by the sum: 5% of the positions instead of 8%
    on the benchmark job's data (jobs/bench.yaml)."""
    return [(len(t.context_ids), len(t.input_ids)) for t in dataset]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar lengths, so dynamic padding pads little, in a seeded order.

    Indices are shuffled, cut into windows of `batch_size * window`, sorted by length
    inside each window, batched, and the batches shuffled again: random enough for
    training, tight enough that padding stays small. `set_epoch` gives a new order.

    With several processes (DDP), every rank builds the same epoch from the same seed and
    keeps every `num_replicas`-th batch from its `rank` on, so the ranks' shares are
    disjoint. With `even` (training) they are also equally long: the last
    `len % num_replicas` batches of an epoch are left out, so no rank waits on another in
    the gradient all-reduce. Without it (validation, where nothing is all-reduced per
    batch) every batch is kept and the first ranks get one more, so a validation loss is
    over the same samples whatever the number of processes. `limit` keeps the first
    `limit` batches of an epoch before they are shared out (validation's `val_batches`), so
    a limited validation too covers the same samples on any number of processes.
    """

    def __init__(
        self,
        lengths: list[int] | list[tuple[int, int]],
        batch_size: int,
        seed: int = 0,
        window: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        even: bool = True,
        limit: int | None = None,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.num_replicas = num_replicas
        self.rank = rank
        self.even = even
        self.limit = limit
        self.epoch = 0
        self.start = 0  # the batch (this rank's count) the next pass begins at

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order the batches for `epoch`; the next pass begins at its batch `start` (this
        rank's count), to continue an epoch that a restart cut short."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed * 100_003 + self.epoch)
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            window = sorted(order[start : start + span], key=self.lengths.__getitem__)
            batches += [
                window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)
            ]
        # torch.compile treats a dimension of size 1 as a constant, so a lone sample left
        # over would compile every block once more, mid-run (91 s on the bench job's 2-core
        # CPU): the batch before gives it a sample (size - 1 and 2; same batch count). Only
        # the last window can leave one, and it may be all that window holds (801 samples in
        # batches of 4), so the batch before can be the previous window's.
        if self.batch_size > 2 and len(batches) > 1 and len(batches[-1]) == 1:
            batches[-1].insert(0, batches[-2].pop())
        rng.shuffle(batches)
        del batches[self._batches() :]
        end = self._batches() // self.num_replicas * self.num_replicas if self.even else None
        # Skipped as lists of indices: no sample of a skipped batch is read or collated.
        first = self.rank + self.start * self.num_replicas
        yield from batches[first : end : self.num_replicas]

    def __len__(self) -> int:
        """Batches this rank gets per epoch."""
        if self.even:
            return self._batches() // self.num_replicas
        return len(range(self.rank, self._batches(), self.num_replicas))

    def _batches(self) -> int:
        """Batches per epoch over all ranks together."""
        count = math.ceil(len(self.lengths) / self.batch_size)
        return count if self.limit is None else min(count, self.limit)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `LengthGroupedBatchSampler` that keeps its own place in the
    sequence of epochs and puts it in Lightning's checkpoints, so a resumed run trains on
    exactly the batches an uninterrupted one would have: none twice, none skipped.

    Lightning's fit loop saves `state_dict()` of every train loader that has one (in the
    checkpoint's `loops.fit_loop.state_dict.combined_loader`) and calls `load_state_dict`
    on resume before it asks for a batch. The place is (epoch, batches handed out): it
    counts what this loader handed to training, not what its sampler yielded (worker
    processes take batches of indices ahead of use; Lightning fetches none ahead of a
    loader with a length). A pass that begins after a finished epoch begins the next one,
    so Lightning's epoch counter plays no part: resumed right at an epoch's end, Lightning
    runs one empty epoch and counts it, and a sampler set from that count would skip an
    epoch's worth of samples. All ranks are at the same place; it is saved as a count
    over all of them, so a resume with another number of processes starts right after
    what they had trained together (to within a batch per process).
    """

    def __init__(self, dataset, batch_sampler: LengthGroupedBatchSampler, **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.epoch, self.handed_out = batch_sampler.epoch, batch_sampler.start

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # A generator: the place is read at the first batch asked for, after Lightning has
        # restored it, not when Lightning makes the iterator.
        sampler = self.batch_sampler
        if self.handed_out >= len(sampler):
            self.epoch, self.handed_out = self.epoch + 1, 0
        sampler.set_epoch(self.epoch, self.handed_out)
        for batch in super().__iter__():
            self.handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch, how many of its batches all ranks together have trained on, and the
        size of a batch (each rank's)."""
        sampler = self.batch_sampler
        return {
            "epoch": self.epoch,
            "batches_trained": self.handed_out * sampler.num_replicas,
            "batch_size": sampler.batch_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a `state_dict()`: the next batch is the first one not trained.
        Saved at another batch size, part-way through an epoch, it goes on from the next
        epoch's start: an epoch's order depends on the batch size, so the rest of the epoch
        in batches of the new size would hold samples already trained and miss others."""
        sampler = self.batch_sampler
        self.epoch = state["epoch"]
        self.handed_out = state["batches_trained"] // sampler.num_replicas
        saved_size = state.get("batch_size", sampler.batch_size)  # older checkpoints: the same
        if saved_size != sampler.batch_size and self.handed_out:
            # The batches of the saved size in an epoch, on every rank together.
            batches = math.ceil(len(sampler.lengths) / saved_size)
            left = state["batches_trained"] < batches // sampler.num_replicas * sampler.num_replicas
            rank_zero_info(
                f"condense: the checkpoint trained in batches of {saved_size}, this run in"
                f" batches of {sampler.batch_size}: training goes on from the start of the next"
                f" epoch ({self.epoch + 1})"
                + (f"; the rest of epoch {self.epoch} is not trained" if left else "")
            )
            self.epoch, self.handed_out = self.epoch + 1, 0
