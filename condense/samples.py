"""The sample schema, what makes a row one (or a bad row), what reading the data did
(DataReport), and the train/validation split. The readers of files, folders and Hub
datasets are condense.readers."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class Unreadable:
    """What a reader yields in a row's place for a line it could not read as one (not
    JSON, not UTF-8, a CSV record of the wrong width): not a plain string, since a row
    may itself be a JSON string, which row_fields names as the wrong kind of row."""

    problem: str


@dataclass
class DataReport:
    """What reading and cutting the data did to it, for summary.json.

    Rows that cannot be used stop the run unless `dataset.skip_bad_rows` is set; then they
    are counted here, with the first few named. Rows of tasks that `dataset.tasks` leaves
    out, and cut contexts and targets, are counted too.
    """

    rows_read: int = 0
    rows_skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    rows_of_other_tasks: int = 0  # usable, but left out by dataset.tasks
    contexts_cut_to_max_characters: int = 0
    contexts_cut_to_max_tokens: int = 0
    # The same, by task: a cut context keeps its start, so a continuation's completion
    # follows text the encoder did not read, and a reconstruction's holds it.
    contexts_cut_by_task: dict[str, int] = field(default_factory=dict)
    targets_cut_to_max_tokens: int = 0
    files_left_out: list[str] = field(default_factory=list)  # of a --data folder
    one_validation_passage: bool = False  # so no val_loss_wrong
    training_samples_changed: bool = False  # since the run started: resumed on edited rows

    def skip(self, problem: str) -> None:
        self.rows_skipped += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def notes(self) -> list[str]:
        """One line per thing a user should know happened to the data."""
        by_task = sorted(self.contexts_cut_by_task.items())
        cut_to_tokens = "contexts cut to dataset.max_tokens" + (
            f" ({', '.join(f'{task} {n}' for task, n in by_task)}), keeping their start:"
            " their completions may need text the encoder did not read"
            if by_task
            else ""
        )
        cuts = {
            "contexts cut to dataset.max_characters": self.contexts_cut_to_max_characters,
            cut_to_tokens: self.contexts_cut_to_max_tokens,
            "prompt+completion cut to dataset.max_tokens": self.targets_cut_to_max_tokens,
        }
        notes = self.reading_notes()
        if self.rows_of_other_tasks:
            notes.append(
                f"{self.rows_of_other_tasks} of {self.rows_read} rows left out by dataset.tasks"
                " (of other tasks)"
            )
        notes += [f"{count} {what}" for what, count in cuts.items() if count]
        if self.training_samples_changed:
            notes.append(
                "the training samples changed while the run was stopped (not their count,"
                " nor the validation split): it went on with them as they were at the resume"
            )
        if self.one_validation_passage:
            notes.append(
                "val_loss_wrong: none, as every validated sample is of one passage, with no"
                " other passage's context to stand behind (a larger dataset.val_size, or"
                " val_batches, takes more)"
            )
        return notes

    def reading_notes(self) -> list[str]:
        """The notes on reading the data: files left out, rows skipped."""
        notes = []
        if self.files_left_out:
            notes.append(f"files left out of the data folder: {', '.join(self.files_left_out)}")
        if self.rows_skipped:
            notes.append(
                f"{self.rows_skipped} of {self.rows_read} rows skipped as unusable"
                f" (first: {self.skipped_examples[0]})"
            )
        return notes


def row_fields(row: Any) -> dict[str, str] | str:
    """A row's context, prompt, completion and task by our names, or what makes it
    unusable: a missing, null or non-text field, an empty context or completion, text
    that is not valid unicode (a lone surrogate), a field given in both sets of columns, a
    task that is not text. A missing, null or empty task is "unknown"."""
    if not isinstance(row, dict):
        return f"expected an object with {', '.join(FIELDS)}, got {type(row).__name__}"
    keys = _field_keys(row)
    if isinstance(keys, str):
        return keys
    fields = {}
    for name in FIELDS:
        key = keys.get(name)
        if key is None:
            alias = next((k for k, v in ORIGINAL_COLUMNS.items() if v == name), None)
            return f"missing field {name!r}" + (f" (or {alias!r})" if alias else "")
        problem = _text_problem(key, row[key], may_be_empty=name == "prompt")
        if problem is not None:
            return problem
        fields[name] = row[key]
    # Optional labels, null where a table (parquet, a Hub dataset) has a row without one.
    # group: the rows of one document (its chunks, its questions) that must stay on one
    # side of the split, and never be each other's wrong context; without it, a row's
    # context is its group.
    labels = {}
    for name in ("task", "group"):
        labels[name], problem = _label(row, name)
        if problem is not None:
            return problem
    return fields | {"task": labels["task"] or "unknown", "group": labels["group"] or None}


def _label(row: dict, name: str) -> tuple[str | None, str | None]:
    """An optional label field as text, or what makes it unusable. A number is an id, in
    text: a table's ids, or a task trained on as "3", whose runs must still resume."""
    value = row.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if value is None:
        return None, None
    problem = _text_problem(name, value, may_be_empty=True)
    return (None, problem) if problem else (value, None)


def _field_keys(row: dict) -> dict[str, str] | str:
    """Our name -> the row's own key for each field it gives, or why that cannot be told:
    a field given in both sets of columns. A null or empty value beside a value in the
    other set is taken for none, as a table of rows in either set holds null (parquet, a
    Hub dataset) or an empty cell (CSV) in the other set's columns."""
    keys = {ORIGINAL_COLUMNS.get(k, k): k for k in row}
    for original, ours in ORIGINAL_COLUMNS.items():
        if original not in row or ours not in row:
            continue
        if row[original] in (None, ""):
            keys[ours] = ours
        elif row[ours] in (None, ""):
            keys[ours] = original
        else:
            # One of the two was picked by key order, and trained on without a word.
            return (
                f"fields {ours!r} and {original!r} both given (the original trainer's name"
                " for the same field): keep one"
            )
    return keys


def _text_problem(key: str, value: Any, may_be_empty: bool) -> str | None:
    """What makes a field's value unusable as text, or None."""
    if value is None:
        return f"field {key!r} is null"
    if not isinstance(value, str):
        return f"field {key!r} is {type(value).__name__}, not text"
    if not may_be_empty and not value.strip():
        return f"field {key!r} is empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"field {key!r} is not valid unicode (at character {err.start + 1})"
    return None


def from_rows(
    rows: Iterable[tuple[int, Any]],
    origin: str,
    unit: str = "row",
    skip_bad: bool = False,
    report: DataReport | None = None,
) -> list[Sample]:
    """Samples from numbered rows, each a dict in either our columns or the original's, or
    an Unreadable saying why that row could not even be read.

    A row that cannot be used raises DataError naming `origin`, the row and the problem,
    unless `skip_bad`: then it is counted in `report`. No usable row at all is a DataError.
    """
    report = report if report is not None else DataReport()
    return some_samples(row_samples(rows, origin, unit, skip_bad, report), origin, report)


def row_samples(
    rows: Iterable[tuple[int, Any]], origin: str, unit: str, skip_bad: bool, report: DataReport
) -> list[Sample]:
    """from_rows without its check that some row was usable (a folder's files are read
    one by one, and checked together)."""
    samples = []
    for number, row in rows:
        report.rows_read += 1
        fields = row.problem if isinstance(row, Unreadable) else row_fields(row)
        if isinstance(fields, str):
            where = f"{origin}: {unit} {number}: {fields}"
            if not skip_bad:
                raise DataError(
                    where + " (skip such rows: dataset.skip_bad_rows=true, or eval --skip-bad-rows)"
                )
            report.skip(where)
            continue
        samples.append(Sample(**fields))
    return samples


def some_samples(samples: list[Sample], origin: str, report: DataReport) -> list[Sample]:
    """`samples`, or a DataError where `origin` gave none: no rows, or no usable one."""
    if report.rows_read == 0:
        raise DataError(f"{origin}: no rows")
    if not samples:
        raise DataError(
            f"{origin}: none of its {report.rows_read} rows is usable"
            f" (first: {report.skipped_examples[0]})"
        )
    return samples


def passage_key(sample: Sample) -> str:
    """What ties the samples of one passage together: their `group` (the synthetic set puts
    a passage's full text and its prefix in one), else their exact context."""
    return sample.group or hashlib.sha1(sample.context.encode("utf-8")).hexdigest()


def split_train_val(
    samples: list[Sample], val_size: int, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split so that no context is in both halves.

    Samples are grouped by `passage_key`. Whole groups go to validation, in a seeded
    random order, until it holds at least `val_size` samples; a group that shares a
    context with another group (two synthetic passages of the same sentence) stays in
    training, since holding it out would leave the other's copy behind.
    """
    groups: dict[str, list[Sample]] = defaultdict(list)
    keys_of: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        groups[passage_key(s)].append(s)
        keys_of[s.context].add(passage_key(s))
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    train, val = [], []
    for key in keys:
        alone = all(len(keys_of[s.context]) == 1 for s in groups[key])
        (val if len(val) < val_size and alone else train).extend(groups[key])
    return train, val
