"""What `condense eval` scores: by default the validation split an artifact trained
against, rebuilt from the data source, seed and sizes its config records; else --data's
samples, cut as its training cut them. And what it says of them: notes where they are
samples the artifact trained on, found by their source or by their contexts."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from condense.config import ConfigError, DatasetConfig
from condense.data import GROUPS_READ, is_synthetic, load_samples, split_digest
from condense.readers import data_suffix, files_read
from condense.samples import DataError, DataReport, Sample, split_train_val


def eval_samples(
    config: dict[str, Any],
    data: str | None,
    limit: int | None,
    skip_bad_rows: bool = False,
    report: DataReport | None = None,
    split: str = "train",
) -> list[Sample]:
    """`data`'s samples (its `split`, where it is a folder or Hub dataset), or by default
    the validation split the artifact was trained against (rebuilt from the data source,
    seed and sizes its config records); a ConfigError for no `data` where the config
    records no training data (an imported checkpoint of the original trainer). A bad row of `data` stops it, or with
    `skip_bad_rows` is skipped and counted in `report`.

    A synthetic `data` source gives passages the artifact never saw: those of the seed
    after its training seed. With the same seed, "synthetic" would open with the very
    passages it was trained on, and a large `--limit` would score memory, not condensing.
    """
    cut = _eval_cut(config, skip_bad_rows)
    seed = config.get("seed", 0)
    check_split(data, split)
    if data is None:
        if config.get("train_data") is None:
            # Default synthetic passages would be no validation split of anything it
            # trained on, and its results would say they were.
            raise ConfigError(
                "this artifact records no training data to take a validation split from"
                " (an imported checkpoint?): say what to score with --data (a file,"
                " a dataset, or synthetic)"
            )
        recorded = Path(config["train_data"])
        # A data file recorded relative to the working folder training ran in.
        if data_suffix(recorded) and not recorded.is_file():
            raise ConfigError(
                f"this artifact's training data {recorded} is not found from here: give"
                " --data to say what to score"
            )
        every, trained, samples = _run_split(config, cut, report)
        recorded_digest = config.get("split_digest")  # artifacts before it: not checked
        if recorded_digest and recorded_digest != split_digest(seed, len(trained), samples):
            grouped = not is_synthetic(config["train_data"]) and any(s.group for s in every)
            raise DataError(
                f"this artifact's training data {config['train_data']} has changed since the"
                f" run{GROUPS_READ if grouped else ''}: what it splits off now is not the"
                " run's validation split (it may hold samples the run trained on); give"
                " --data to score it as it is"
            )
    else:
        samples = load_samples(data, cut, _data_seed(config, data), report, split=split)
        if is_synthetic(data) and data == config.get("train_data"):
            # Another seed's passages can still repeat a trained context word for word:
            # one-fact passages share sentences ("Their house had a red door and 5
            # windows.") and sentence starts. Those were seen, not condensed afresh.
            seen = {s.context for s in _run_samples(config, cut)}
            samples = [s for s in samples if s.context not in seen]
    return samples[:limit] if limit else samples


def _eval_cut(config: dict[str, Any], skip_bad_rows: bool = False) -> DatasetConfig:
    """How eval reads samples for an artifact of `config`: contexts cut as its training
    cut them, fresh synthetic passages of the shape it trained on."""
    # No max_characters (an artifact saved from Python, or imported): the condenser it
    # loads cuts no context, and its scores must be of the contexts it would condense.
    # (Tokens are cut, to max_tokens, or where none is recorded to what the models'
    # positions hold: evaluate.positions_limit.)
    return DatasetConfig(
        max_characters=config.get("max_characters") or sys.maxsize,
        synthetic_facts=config.get("synthetic_facts"),
        skip_bad_rows=skip_bad_rows,
    )


def check_split(data: str | None, split: str) -> None:
    """A ConfigError for a split asked of no --data."""
    if data is None and split != "train":
        raise ConfigError(
            f"--split {split} needs --data: without it, eval scores the run's validation split"
        )


def _run_samples(
    config: dict[str, Any], cut: DatasetConfig, report: DataReport | None = None
) -> list[Sample]:
    """Every sample the artifact's run loaded, both splits: its recorded training data,
    seed and number of synthetic passages, and the tasks it kept and the bad rows it
    skipped (from its training config, where the artifact records one)."""
    # null (read_config lets it be): an artifact that records no training config.
    trained = (config.get("training_config") or {}).get("dataset") or {}
    sized = replace(
        cut,
        synthetic_passages=config.get("synthetic_passages", cut.synthetic_passages),
        # Without these a task-filtered run's split is rebuilt from every task (scoring
        # tasks it never trained on), and a run that skipped a bad row fails on it.
        # An empty list, which dataset.tasks now refuses, trained a run on every task.
        tasks=trained.get("tasks") or None,
        # Or eval's --skip-bad-rows: a run's data may have gained a bad row since.
        skip_bad_rows=trained.get("skip_bad_rows", False) or cut.skip_bad_rows,
    )
    # A run from before a misspelt task was refused kept the tasks it found: so does this.
    return load_samples(config["train_data"], sized, config.get("seed", 0), report, False)


def _run_split(
    config: dict[str, Any], cut: DatasetConfig, report: DataReport | None = None
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Every sample the artifact's run loaded, and its training and validation splits, as
    the run split them (its val_size and seed)."""
    every = _run_samples(config, cut, report)
    return every, *split_train_val(every, config.get("val_size", 100), config.get("seed", 0))


def _data_seed(config: dict[str, Any], data: str) -> int:
    """The seed `eval_samples` loads `data` with: for synthetic data, the one after the
    artifact's training seed."""
    seed = config.get("seed", 0)
    return seed + 1 if is_synthetic(data) else seed


def data_description(config: dict[str, Any], data: str | None, split: str = "train") -> str:
    """What `eval_samples` scored, in words, for the results and the model card."""
    if data is None:
        return f"{config.get('train_data')} (validation split)"
    if is_synthetic(data):
        return f"{data} (fresh passages, seed {_data_seed(config, data)})"
    return data if split == "train" else f"{data} ({split} split)"


def trained_on_note(config: dict[str, Any], data: str | None, split: str = "train") -> list[str]:
    """A note where `data` (its `split`) is the very file, folder or Hub dataset the
    artifact trained on, or holds some of the files it trained on: those samples are mostly
    training samples, and the scores say how well it learned them."""
    trained = config.get("train_data")
    if data is None or is_synthetic(data) or not trained:
        return []
    if Path(data).exists() and Path(trained).exists():
        # A local path is recorded absolute (train._as_recorded). The same files may be
        # named another way: a file of the folder it trained on, or the other way round.
        scored, read = files_read(Path(data), split), files_read(Path(trained))
        same, shared = bool(read) and scored == read, sorted(scored & read)
    else:  # a Hub id, recorded as it was given
        same, shared = data == trained and split == "train", []
    if same:
        what = "is what this artifact trained on: most of these samples were trained on"
    elif shared:
        names = ", ".join(f.name for f in shared[:3]) + (", ..." if len(shared) > 3 else "")
        what = (
            f"holds {len(shared)} of the files this artifact trained on ({names}): most of"
            " their samples were trained on"
        )
    else:
        return []
    return [f"--data {data} {what}; without --data, eval scores the run's validation split alone"]


def seen_context_note(config: dict[str, Any], data: str | None, samples: list[Sample]) -> list[str]:
    """A note where some of `samples` (read from `data`) have a context the artifact
    trained on, found by their text: a renamed or converted copy of its training file
    (data.jsonl.gz, rows.csv) was scored as held out. Only where the run's data is a local
    file or folder that still reads: a Hub dataset is not fetched again for this."""
    trained = config.get("train_data")
    if data is None or not trained or is_synthetic(trained) or not Path(trained).exists():
        return []
    try:
        _, train, _ = _run_split(config, _eval_cut(config))
    except DataError:  # changed since, and unreadable as the run read it
        return []
    seen = {s.context for s in train}
    count = sum(s.context in seen for s in samples)
    if not count:
        return []
    note = (
        f"--data {data}: {count} of the {len(samples)} samples scored have a context this"
        " artifact trained on: their scores say how well it learned them, not how it"
        " condenses text it never read"
    )
    return [note]
