"""The sample schema, the sources samples come from, and the train/validation split."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# The original trainer's column names, mapped to ours.
ORIGINAL_COLUMNS = {"activation_prompt": "prompt", "expected_completion": "completion"}
FIELDS = ("context", "prompt", "completion")


@dataclass(frozen=True)
class Sample:
    """One training example: condense `context`, then answer `prompt` with `completion`."""

    context: str
    prompt: str
    completion: str
    task: str = "unknown"
    group: str | None = None  # samples sharing a group stay on one side of the split


class DataError(ValueError):
    """Data that cannot be used, named by its origin and row."""


def from_rows(rows: list[dict], origin: str) -> list[Sample]:
    """Samples from dict rows in either our columns or the original's."""
    samples = []
    for number, row in enumerate(rows, start=1):
        row = {ORIGINAL_COLUMNS.get(k, k): v for k, v in row.items()}
        missing = [f for f in FIELDS if not isinstance(row.get(f), str)]
        if missing:
            raise DataError(f"{origin}: row {number}: missing or non-text field(s) {missing}")
        samples.append(
            Sample(
                row["context"], row["prompt"], row["completion"], str(row.get("task") or "unknown")
            )
        )
    return samples


def read_file(path: Path) -> list[Sample]:
    """Samples from a local .jsonl or .parquet file."""
    if path.suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{path}: line {number}: not a JSON object ({err.msg})"
                    ) from None
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl or .parquet)")
    return from_rows(rows, str(path))


def read_hub(dataset_id: str, split: str = "train") -> list[Sample]:
    """Samples from a Hugging Face dataset (a Hub id or a local dataset folder) in the
    original's columns."""
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, split=split).to_list()
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"--data {dataset_id}: cannot load it as a dataset ({first_line})") from err
    return from_rows(rows, dataset_id)


def split_train_val(
    samples: list[Sample], val_size: int, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split so that no context is in both halves.

    Samples are grouped by their `group` (the synthetic set puts a passage's full text
    and its prefix in one) or else by their exact context. Whole groups go to validation,
    in a seeded random order, until it holds at least `val_size` samples.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.group or hashlib.sha1(s.context.encode("utf-8")).hexdigest()].append(s)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    train, val = [], []
    for key in keys:
        (val if len(val) < val_size else train).extend(groups[key])
    return train, val
