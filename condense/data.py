"""From sources to tokenized samples: loading (synthetic, files, folders, the Hub),
tokenization and its cuts, the split's digests and checks, and the LightningDataModule
that owns the splits and their loaders (batching is condense.batches)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch.utils.data import DataLoader

from condense.batches import Collator, LengthGroupedBatchSampler, ResumableDataLoader, length_keys
from condense.config import DatasetConfig
from condense.model import IGNORE_INDEX
from condense.readers import KINDS, data_suffix, read_file, read_folder, read_hub
from condense.samples import DataError, DataReport, Sample, passage_key, split_train_val
from condense.synthetic import long_synthetic_samples, synthetic_samples

SYNTHETIC = "synthetic"
# Long contexts (~100-512 tokens) with short targets, shaped like the original's data.
SYNTHETIC_LONG = "synthetic-long"


def is_synthetic(source: str) -> bool:
    """Whether `source` names one of the embedded synthetic data sets."""
    return source in (SYNTHETIC, SYNTHETIC_LONG)


def load_samples(
    source: str | os.PathLike,
    cfg: DatasetConfig,
    seed: int,
    report: DataReport | None = None,
    every_task: bool = True,
    split: str | None = None,
) -> list[Sample]:
    """Samples from "synthetic", a local data file or folder of them (readers.KINDS; see
    readers.read_folder), or a Hub dataset id, with contexts cut to `max_characters` and
    only the configured tasks kept.

    An unusable row raises DataError unless `cfg.skip_bad_rows`; skipped rows and cut
    contexts are counted in `report`. A task in `cfg.tasks` that no sample has raises
    DataError too, unless not `every_task` (eval rebuilding a run's split from the tasks it
    recorded, as the run kept them: then only where none of them is left).

    `split` is eval's --split, read from a folder or Hub dataset; None is their train
    split, as training reads it.
    """
    report = report if report is not None else DataReport()
    skip = cfg.skip_bad_rows
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():  # `data: null`, `--data ""`
        raise DataError(
            f"--data {source!r}: no data source: give a data file ({KINDS}), a dataset"
            " folder or Hub id, or synthetic"
        )
    # A file or synthetic data is one set: none of its samples is of another split.
    unsplit = DataError(
        f"--split {split}: --data {source} has no splits (a folder or Hub dataset has)"
    )
    if is_synthetic(source):
        if split not in (None, "train"):
            raise unsplit
        if source == SYNTHETIC:
            samples = synthetic_samples(cfg.synthetic_passages, seed, cfg.synthetic_facts)
        else:
            samples = long_synthetic_samples(cfg.synthetic_passages, seed)
        report.rows_read += len(samples)  # each made sample stands for a row of a file
    elif Path(source).is_dir():
        samples = read_folder(Path(source), skip, report, split)
    elif data_suffix(Path(source)) or Path(source).exists():
        if not Path(source).exists():
            raise DataError(f"--data {source}: no such file")
        if not Path(source).is_file():
            # /dev/null, or the pipe <(cat f.jsonl) makes, was "no such file". A pipe is
            # read once, where a run reads its data again to resume, and eval to rebuild
            # the run's validation split.
            raise DataError(
                f"--data {source}: {_special_file(Path(source))}, not a data file or folder"
                " (write the rows to a file, and give that)"
            )
        if split not in (None, "train"):
            raise unsplit
        samples = read_file(Path(source), skip, report)
    else:
        samples = read_hub(source, split or "train", skip, report)
    if cfg.tasks:
        present = sorted({s.task for s in samples})
        # A misspelt name silently trained without that task.
        absent = [task for task in cfg.tasks if task not in present]
        if absent and every_task:
            raise DataError(
                f"dataset.tasks: no sample of {', '.join(map(repr, absent))} in --data {source}"
                f" (its tasks: {', '.join(present)})"
            )
        kept = [s for s in samples if s.task in cfg.tasks]
        # summary.json's rows_read counted them, and nothing said they were not trained on.
        report.rows_of_other_tasks += len(samples) - len(kept)
        samples = kept
        if not samples:
            # Only eval's rebuild of a run's split reaches this: its --data was not given.
            raise DataError(
                f"{source}: no sample of the tasks the run kept ({', '.join(cfg.tasks)});"
                f" its tasks now: {', '.join(present)}"
            )
    cut = [_cut(s, cfg.max_characters) for s in samples]
    report.contexts_cut_to_max_characters += sum(a is not b for a, b in zip(samples, cut))
    return cut


def _special_file(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is: a pipe, a device."""
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode):
        return "a pipe (as <(...) gives)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _cut(sample: Sample, max_characters: int) -> Sample:
    if len(sample.context) <= max_characters:
        return sample
    return replace(sample, context=sample.context[:max_characters])


@dataclass
class Tokenized:
    """A sample as token ids: the encoder's context and the decoder's prompt+completion."""

    context_ids: list[int]
    input_ids: list[int]
    labels: list[int]
    group: int  # passage_id: the samples of one passage share it

    def __len__(self) -> int:
        return len(self.context_ids) + len(self.input_ids)


def tokenize(
    samples: list[Sample],
    encoder_tok,
    decoder_tok,
    cfg: DatasetConfig,
    report: DataReport | None = None,
) -> list[Tokenized]:
    """Tokenize contexts with the encoder's tokenizer, prompts and completions with the
    decoder's; labels are the completion (and the prompt if `train_on_prompt`).

    A context keeps its first `max_tokens` tokens. A prompt and its target (completion +
    EOS) that do not fit in `max_tokens` together are cut as `cut_prompt` and `prompt_room`
    say: the target keeps at least its first min(its length, ceil(max_tokens / 2)) tokens,
    the prompt the rest of the room, from its end. What is cut is counted in `report` when
    one is given.
    """
    contexts = encoder_tok([s.context for s in samples], truncation=True, max_length=cfg.max_tokens)
    prompts = prompt_ids(decoder_tok, [s.prompt for s in samples])
    completions = decoder_tok([s.completion for s in samples], add_special_tokens=False)
    eos = [decoder_tok.eos_token_id] if decoder_tok.eos_token_id is not None else []
    opening = bos_added(decoder_tok)
    report = report if report is not None else DataReport()
    cut = _truncated(contexts, cfg.max_tokens)
    report.contexts_cut_to_max_tokens += sum(cut)
    for sample, was_cut in zip(samples, cut):
        if was_cut:
            by_task = report.contexts_cut_by_task
            by_task[sample.task] = by_task.get(sample.task, 0) + 1
    out = []
    for sample, ctx, prompt, completion in zip(
        samples, contexts["input_ids"], prompts, completions["input_ids"]
    ):
        target = completion + eos
        whole = len(prompt) + len(target)
        prompt = cut_prompt(prompt, prompt_room(cfg.max_tokens, len(target)), opening)
        target = target[: cfg.max_tokens - len(prompt)]
        report.targets_cut_to_max_tokens += len(prompt) + len(target) < whole
        prompt_labels = _prompt_labels(prompt, cfg.train_on_prompt, opening)
        out.append(Tokenized(ctx, prompt + target, prompt_labels + target, passage_id(sample)))
    return out


def prompt_room(max_tokens: int, target_tokens: int) -> int:
    """The most prompt tokens kept beside a target of `target_tokens` tokens, so that the
    two fill at most `max_tokens`: the target is guaranteed its first min(target_tokens,
    ceil(max_tokens / 2)) tokens, so that a long prompt never leaves it one token (or
    none) to learn from, and the prompt gets the rest. A prompt and target that fit are
    both kept whole."""
    return max_tokens - min(target_tokens, (max_tokens + 1) // 2)


def cut_prompt(prompt: list[int], room: int, opening: list[int]) -> list[int]:
    """`prompt`'s last `room` tokens, the tokenizer's `opening` BOS (if it opens the
    prompt) kept first among them. A too-long prompt is a conversation's history before
    its question, or a chat template around a long text: its end (the question, a
    closing marker such as Mistral's [/INST]) is what the completion follows from."""
    if len(prompt) <= room:
        return prompt
    head = opening if opening and prompt[: len(opening)] == opening else []
    head = head[:room]
    return head + prompt[len(prompt) - (room - len(head)) :]


def bos_added(tokenizer) -> list[int]:
    """[BOS] where the tokenizer opens every text with it (Llama, Mistral), else []."""
    opening = tokenizer("")["input_ids"][:1]
    bos = tokenizer.bos_token_id
    return opening if bos is not None and opening == [bos] else []


def eos_added(tokenizer) -> list[int]:
    """[EOS] where the tokenizer closes every text with it (a Llama tokenizer with
    add_eos_token), else []."""
    closing = tokenizer("")["input_ids"][len(bos_added(tokenizer)) :][-1:]
    eos = tokenizer.eos_token_id
    return closing if eos is not None and closing == [eos] else []


def prompt_ids(tokenizer, prompts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """The decoder's tokens of `prompts`, as training and generation read them: opened as
    the tokenizer opens a text (its BOS), but not closed. An EOS the tokenizer closes every
    text with would sit between the prompt and its completion, telling the frozen decoder
    the text is over just before the answer."""
    ids = tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]
    closing = eos_added(tokenizer) if add_special_tokens else []
    if not closing:
        return ids
    return [p[: -len(closing)] if p[-len(closing) :] == closing else p for p in ids]


def _prompt_labels(prompt: list[int], train_on_prompt: bool, opening: list[int]) -> list[int]:
    """The prompt's labels: none, or its tokens with `train_on_prompt`, except the BOS the
    tokenizer opened it with: the last condensed slot would learn to predict a token that
    is always there, a free target that dilutes the mean loss."""
    if not train_on_prompt:
        return [IGNORE_INDEX] * len(prompt)
    if opening and prompt[: len(opening)] == opening:
        return [IGNORE_INDEX] * len(opening) + prompt[len(opening) :]
    return list(prompt)


def passage_id(sample: Sample) -> int:
    """`passage_key` as an integer for the batch tensors, the same in every process: a
    60-bit prefix of its SHA-1, not Python's salted hash."""
    return int(hashlib.sha1(passage_key(sample).encode("utf-8")).hexdigest()[:15], 16)


def _truncated(batch, max_tokens: int) -> list[bool]:
    """Which sequences of a tokenizer's batch output truncation cut."""
    if batch.encodings:  # fast tokenizers keep what was cut off
        return [bool(e.overflowing) for e in batch.encodings]
    # Others do not say: a sequence that fills the limit exactly may have been cut.
    return [len(ids) >= max_tokens for ids in batch["input_ids"]]


def split_digest(seed: int, train_count: int, val_samples: list[Sample]) -> str:
    """A digest of a split: the seed, the training set's size and the validation samples
    themselves, which another seed, data source (a Hub dataset's new revision too), edit
    of a data file or dataset setting that picks or cuts samples changes."""
    digest = hashlib.blake2b(f"{seed} {train_count}".encode(), digest_size=8)
    _add_texts(digest, val_samples)
    return digest.hexdigest()


def samples_digest(samples: list[Sample]) -> str:
    """A digest of samples' texts, in their order."""
    digest = hashlib.blake2b(digest_size=8)
    _add_texts(digest, samples)
    return digest.hexdigest()


def _add_texts(digest: Any, samples: list[Sample]) -> None:
    for sample in samples:
        for text in (sample.context, sample.prompt, sample.completion):
            digest.update(text.encode() + b"\0")


# The dataset settings that pick or cut samples: what SPLIT_CHANGED names, beside the
# seed and data source.
SPLIT_SETTINGS = (
    "val_size",
    "tasks",
    "max_characters",
    "synthetic_passages",
    "synthetic_facts",
    "skip_bad_rows",
)


def source_digest(source: str, seed: int, cfg: DatasetConfig) -> str:
    """A digest of what a split is taken from: the seed, the data source (a local one by
    its resolved path) and SPLIT_SETTINGS, but not its contents, so that a split that
    changed with this the same tells that the data did."""
    where = source if is_synthetic(source) else _resolved(source)
    settings = {name: getattr(cfg, name) for name in SPLIT_SETTINGS}
    text = json.dumps([seed, where, settings], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _resolved(source: str) -> str:
    """A local data source's absolute path (the same file from another working folder);
    a Hub id as it is."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source


# Why check_same_split refuses a checkpoint, by the digest that differs.
SPLIT_CHANGED = (
    "split its data otherwise (another seed, data source or dataset setting: val_size,"
    " tasks, max_characters, synthetic_*, skip_bad_rows)"
)
# Where the data has a group column: a run started before condense read one (a8c093a)
# split without it, which a split digest alone cannot tell from changed data.
GROUPS_READ = (
    "; or it was started before condense read the data's group column (commit a8c093a),"
    " and split without it"
)
# Said where only the training samples changed (see check_same_split).
TRAINING_CHANGED = (
    "its training samples changed since the run started (not their count, nor the"
    " validation split): it goes on with them as they are now"
)
TARGETS_CHANGED = (
    "read its validation samples otherwise (another dataset.max_tokens or train_on_prompt,"
    " or another tokenizer)"
)
VALIDATED_CHANGED = (
    "validated other samples (another val_batches or dataset.batch_size: validation scores"
    " the first val_batches batches of its order, which the batch size makes)"
)


def no_split_reason(samples: list[Sample], val_size: int, validated: int) -> str:
    """Why split_train_val left one side empty (`validated`: the samples it held out): a
    passage is never in both splits, so rows that all share one context (30 questions on
    one document) cannot be split."""
    n, passages = len(samples), len(set(map(passage_key, samples)))
    if passages < 2:
        return (
            f"{n} sample{'s' if n != 1 else ''} of one passage (context) cannot make both a"
            " training and a validation split: a passage is never in both; give two or more"
        )
    if not validated:  # synthetic passages whose contexts repeat one another's
        return (
            f"none of {n} samples of {passages} passages can be held out for validation: each"
            " passage shares a context with another, and a context is never in both splits"
        )
    return (
        f"{n} samples of {passages} passages cannot make both a training and a validation"
        f" split: validation takes whole passages, up to dataset.val_size={val_size} samples;"
        " give more passages or a smaller val_size"
    )


class CondenseDataModule(L.LightningDataModule):
    """Loads, splits and tokenizes samples once; serves length-grouped padded batches."""

    def __init__(
        self,
        source: str,
        cfg: DatasetConfig,
        encoder_tok,
        decoder_tok,
        seed: int = 0,
        val_batches: int | None = None,
    ):
        super().__init__()
        self.source, self.cfg, self.seed = source, cfg, seed
        self.val_batches = val_batches
        self.encoder_tok, self.decoder_tok = encoder_tok, decoder_tok
        self.train_set: list[Tokenized] = []
        self.val_set: list[Tokenized] = []
        self.train_samples: list[Sample] = []
        self.val_samples: list[Sample] = []
        self.train_digest = ""  # samples_digest of train_samples, from setup
        self.report = DataReport()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        samples = load_samples(self.source, self.cfg, self.seed, self.report)
        self.train_samples, self.val_samples = split_train_val(
            samples, self.cfg.val_size, self.seed
        )
        if not self.train_samples or not self.val_samples:
            reason = no_split_reason(samples, self.cfg.val_size, len(self.val_samples))
            raise DataError(f"--data {self.source}: {reason}")
        if len(self.train_samples) < self.cfg.batch_size:
            raise DataError(
                f"--data {self.source}: {len(self.train_samples)} training samples (after"
                f" {len(self.val_samples)} for validation), fewer than one batch"
                f" (dataset.batch_size={self.cfg.batch_size})"
            )
        # Once: checkpoints keep it, and hashing a large training set takes a while.
        self.train_digest = samples_digest(self.train_samples)
        self.train_set, self.val_set = (
            tokenize(part, self.encoder_tok, self.decoder_tok, self.cfg, self.report)
            for part in (self.train_samples, self.val_samples)
        )
        # val_loss_wrong needs another passage to stand behind; without one among the
        # samples a validation scores (all, or val_batches' share) it is missing from
        # metrics.csv, and this says why.
        validated = {self.val_set[i].group for i in self.validated_indices()}
        self.report.one_validation_passage = len(validated) < 2

    def state_dict(self) -> dict[str, str | int]:
        # Kept in checkpoints for check_same_split, and only read there.
        return {
            "split": self.split_digest(),
            "train": self.train_digest,
            "source": source_digest(self.source, self.seed, self.cfg),
            "rows_read": self.report.rows_read,
            "targets": self.targets_digest(),
            "validated": self.validated_digest(),
        }

    def split_digest(self) -> str:
        """split_digest of this module's split."""
        return split_digest(self.seed, len(self.train_samples), self.val_samples)

    def targets_digest(self) -> str:
        """A digest of the validation set as the models read it: token ids and labels,
        which another max_tokens or tokenizer changes though the samples stay the same."""
        digest = hashlib.blake2b(digest_size=8)
        for item in self.val_set:
            for ids in (item.context_ids, item.input_ids, item.labels):
                digest.update(",".join(map(str, ids)).encode() + b";")
        return digest.hexdigest()

    def validated_indices(self) -> list[int]:
        """The validation samples a validation scores, by index: all of them, or with
        val_batches the first batches of the validation order, which the batch size
        changes. Over all ranks together, as the limit is (see val_dataloader)."""
        keys, size = length_keys(self.val_set), self.val_batch_size
        sampler = LengthGroupedBatchSampler(
            keys, size, self.seed, even=False, limit=self.val_batches
        )
        return sorted(i for batch in sampler for i in batch)

    def validated_digest(self) -> str:
        """A digest of validated_indices."""
        scored = ",".join(map(str, self.validated_indices()))
        return hashlib.blake2b(scored.encode(), digest_size=8).hexdigest()

    def check_same_split(self, saved: dict | None, path: str) -> None:
        """Refuse to continue a run from the checkpoint at `path` (its state of this module,
        `saved`) on another split, or on the same samples tokenized otherwise: its best
        val_loss, restored, would be compared with losses over other samples or targets,
        and samples it trained on might be validated on. What a checkpoint does not hold
        (it was saved before that digest was kept) is taken as it is."""
        saved = saved or {}
        fix = "resume with the run's own settings"
        if "split" in saved and saved["split"] != self.split_digest():
            reason = SPLIT_CHANGED
            # Synthetic data is made from the seed and settings alone: no file to change.
            same = saved.get("source") == source_digest(self.source, self.seed, self.cfg)
            if same and not is_synthetic(self.source):
                reason = self._data_changed(saved.get("rows_read"))
                # A Hub dataset's earlier revision cannot be asked for.
                fix = "restore its data" if Path(self.source).exists() else None
            if not is_synthetic(self.source) and any(s.group for s in self.val_samples):
                reason += GROUPS_READ
        elif "targets" in saved and saved["targets"] != self.targets_digest():
            reason = TARGETS_CHANGED
        elif "validated" in saved and saved["validated"] != self.validated_digest():
            reason = VALIDATED_CHANGED
        else:
            # Rows edited in place, their count the same: the split holds, and the run goes
            # on with the rows as they are now, which the user may have meant. Said, so
            # that it is not silent.
            if "train" in saved and saved["train"] != self.train_digest:
                self.report.training_samples_changed = True
                rank_zero_info(f"condense: note: --data {self.source}: {TRAINING_CHANGED}")
            return
        fixes = [fix] if fix else []
        fixes += ["start afresh with --resume never", "or carry its weights into a new run"]
        raise DataError(
            f"{path}: this run {reason}: resuming would compare val_loss over other samples"
            f" or targets with its best; {', '.join(fixes)} (--run-dir NEW --resume PATH)"
        )

    def _data_changed(self, rows_then: int | None) -> str:
        """Why check_same_split refuses where the seed, data source and settings are the
        run's: the data's contents, which SPLIT_CHANGED blamed on those."""
        rows_now = self.report.rows_read
        how = [f"{rows_then} rows then, {rows_now} now"] if rows_then != rows_now else []
        if not Path(self.source).exists():
            how.insert(0, "a new revision of the Hub dataset")
        return (
            "split its data otherwise, with the same seed, data source and dataset settings:"
            f" --data {self.source} has changed since the run started"
            + (f" ({'; '.join(how)})" if how else "")
        )

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.train_set, ResumableDataLoader, even=True)

    def val_dataloader(self) -> DataLoader:
        # Batched like training, but always as epoch 0: every validation sees the same
        # batches, and a `val_batches` limit takes a fair sample, not the shortest. All of
        # them under DDP too: val_loss is synced as a sum over target tokens at the end.
        # The limit is the sampler's, over all ranks: Lightning's limit_val_batches counts
        # each rank's, so 4 processes would validate on 4x the batches of one.
        # At least 2 a batch: val_loss_wrong puts each sample behind another's condensed
        # context from the same batch, so at batch_size 1 (the default job's) it was never
        # logged. Validation keeps no activations for a backward pass.
        replicas = self.trainer.world_size if self.trainer else 1
        if self.val_batches is not None and self.val_batches < replicas:
            raise DataError(
                f"val_batches={self.val_batches} is fewer than the processes ({replicas}),"
                f" each of which validates at least one batch: set it to {replicas} or more"
            )
        size = self.val_batch_size
        return self._loader(self.val_set, DataLoader, False, self.val_batches, size)

    @property
    def val_batch_size(self) -> int:
        """Validation's batch size: training's, and at least 2 (see val_dataloader)."""
        return max(2, self.cfg.batch_size)

    def _loader(
        self,
        dataset: list[Tokenized],
        kind: type[DataLoader],
        even: bool,
        limit: int | None = None,
        batch_size: int | None = None,
    ) -> DataLoader:
        if not self.train_set:
            raise RuntimeError("CondenseDataModule: call setup() before asking for a loader")
        # The sampler shards batches across DDP ranks itself; the Trainer is told not to
        # put a DistributedSampler in its place (use_distributed_sampler=False).
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        size = batch_size or self.cfg.batch_size
        sampler = LengthGroupedBatchSampler(
            length_keys(dataset), size, self.seed, 50, replicas, rank, even, limit
        )
        if len(sampler) == 0:
            raise DataError(
                f"--data {self.source}: {len(dataset)} samples make fewer batches of"
                f" {size} than there are processes ({replicas})"
            )
        return kind(
            dataset,
            batch_sampler=sampler,
            collate_fn=Collator(self.encoder_tok.pad_token_id, self.decoder_tok.pad_token_id),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            # Its own generator: making an iterator draws a worker seed, which would
            # otherwise move the global RNG that training (dropout) draws from, and a
            # resumed run makes its iterators at other points than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
        )
