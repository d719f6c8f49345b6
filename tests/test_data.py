"""Sources, splits, padding and batching."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from condense.batches import Collator, LengthGroupedBatchSampler, other_context
from condense.config import ConfigError, DatasetConfig
from condense.data import CondenseDataModule, load_samples, no_split_reason, tokenize
from condense.model import IGNORE_INDEX
from condense.samples import DataError, DataReport, Sample, split_train_val
from condense.synthetic import CONTINUATION, synthetic_samples
from condense.weights import load_tokenizer
from tests.conftest import document_rows, write_jsonl

ORIGINAL_ROWS = [
    {
        "task": "reconstruction",
        "id": 1,
        "context": "[INST] Alpha beta gamma. [/INST]",
        "activation_prompt": "Repeat:",
        "expected_completion": "Alpha beta gamma.",
        "model_id": "m",
        "max_characters": 10000,
    },
    {
        "task": "question_answering",
        "id": 2,
        "context": "Delta is 4. Epsilon is 5.",
        "activation_prompt": "What is delta?",
        "expected_completion": "4",
        "model_id": "m",
        "max_characters": 10000,
    },
]


@pytest.mark.parametrize(
    "facts, passages, val_size",
    # The test job's one-fact passages repeat sentences ("Their house had a red door and
    # 5 windows.") and sentence starts: 51 of its 240 validation samples were in training.
    [(None, 200, 60), ([1, 1], 2000, 240)],
)
def test_train_and_validation_share_no_context_or_passage(facts, passages, val_size):
    cfg = DatasetConfig(synthetic_passages=passages, synthetic_facts=facts)
    samples = load_samples("synthetic", cfg, seed=0)
    train, val = split_train_val(samples, val_size=val_size, seed=0)
    assert len(val) >= val_size and len(train) + len(val) == len(samples)
    assert not {s.context for s in train} & {s.context for s in val}
    assert not {s.group for s in train} & {s.group for s in val}
    # A continuation context is a prefix of its passage; the passage must not be in train.
    train_text = "\n".join(t.context for t in train)
    assert not any(v.context in train_text for v in val)


def test_split_groups_rows_by_context_when_no_group_is_given():
    samples = [Sample(f"context {i % 10}", "p", f"c{i}") for i in range(50)]
    train, val = split_train_val(samples, val_size=10, seed=0)
    assert not {s.context for s in train} & {s.context for s in val}
    assert len(val) == 10


def test_a_files_group_column_keeps_a_documents_rows_on_one_side(tmp_path):
    """A `group` column was read as nothing: two chunks of one document (different
    contexts) could land in both splits, and be each other's wrong context."""
    rows = document_rows(10, 3)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    samples = load_samples(str(data), DatasetConfig(), 0)
    assert {s.group for s in samples} == {str(d) for d in range(10)}  # an integer id is text
    train, val = split_train_val(samples, val_size=6, seed=0)
    assert len(val) == 6 and not {s.group for s in train} & {s.group for s in val}
    # No group: each context its own, as before; a float id is a bad row.
    rows[0]["group"], rows[1]["group"] = None, 1.5
    write_jsonl(data, rows)
    with pytest.raises(DataError, match="line 2: field 'group' is float, not text"):
        load_samples(str(data), DatasetConfig(), 0)
    report = DataReport()
    kept = load_samples(str(data), DatasetConfig(skip_bad_rows=True), 0, report)
    assert kept[0].group is None and report.rows_skipped == 1


def test_synthetic_split_is_the_same_for_the_same_seed():
    cfg = DatasetConfig(synthetic_passages=30)
    first = split_train_val(load_samples("synthetic", cfg, 1), 12, 1)
    again = split_train_val(load_samples("synthetic", cfg, 1), 12, 1)
    assert first == again


def test_synthetic_facts_sets_how_much_each_passage_states():
    def facts_per_passage(facts):
        cfg = DatasetConfig(synthetic_passages=60, synthetic_facts=facts)
        kept = [s for s in load_samples("synthetic", cfg, 2) if s.task == "reconstruction"]
        return {s.context.count(". ") + 1 for s in kept}  # every fact is one sentence

    assert facts_per_passage(None) == {5, 6, 7}
    assert facts_per_passage([1, 2]) == {1, 2}
    for facts in ([1, 1], [2, 2]):
        cfg = DatasetConfig(synthetic_passages=4, synthetic_facts=facts)
        samples = load_samples("synthetic", cfg, 0)
        for passage, continuation in zip(samples[::3], samples[2::3]):
            assert continuation.task == CONTINUATION
            assert f"{continuation.context} {continuation.completion}" == passage.context
            # One fact is cut inside its sentence, two between them.
            assert continuation.context.endswith(".") == (facts == [2, 2])


@pytest.mark.parametrize("facts", [[0, 2], [3, 2], [1, 8], [2]])
def test_synthetic_facts_outside_one_to_seven_is_refused(facts):
    with pytest.raises(ConfigError, match="dataset.synthetic_facts"):
        DatasetConfig(synthetic_facts=facts)
    # From Python, as the config would: [3, 1] was randrange's "empty range", [0, 9]
    # passed or failed by the passage, and 3 was "argument after * must be an iterable".
    with pytest.raises(ValueError, match=r"facts must be \(lo, hi\) with 1 <= lo <= hi <= 7"):
        synthetic_samples(50, facts=facts)


def test_a_negative_number_of_synthetic_passages_is_refused():
    """It made [] without a word."""
    with pytest.raises(ValueError, match="num_passages must be 0 or more, got -3"):
        synthetic_samples(-3)
    assert synthetic_samples(0) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_local_files_in_the_original_columns(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ORIGINAL_ROWS) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(ORIGINAL_ROWS), path)
    samples = load_samples(str(path), DatasetConfig(max_characters=20), seed=0)
    assert [s.task for s in samples] == ["reconstruction", "question_answering"]
    assert samples[1].prompt == "What is delta?" and samples[1].completion == "4"
    assert samples[0].context == ORIGINAL_ROWS[0]["context"][:20]  # max_characters applies


def test_a_json_file_holding_one_array_of_rows(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ORIGINAL_ROWS, indent=2))  # what json.dump and pandas write
    samples = load_samples(str(path), DatasetConfig(), seed=0)
    assert [s.completion for s in samples] == ["Alpha beta gamma.", "4"]
    path.write_text(json.dumps([ORIGINAL_ROWS[0], {**ORIGINAL_ROWS[1], "context": None}]))
    with pytest.raises(DataError, match=r"data.json: row 2: field 'context' is null"):
        load_samples(str(path), DatasetConfig(), seed=0)
    path.write_text('[\n  {"context": "a",\n  "prompt": }\n]')
    with pytest.raises(DataError, match=r"data.json: not valid JSON \(.* at line 3 column"):
        load_samples(str(path), DatasetConfig(), seed=0)


def test_a_json_file_of_one_object_a_line_reads_as_jsonl(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("\n".join(json.dumps(r) for r in ORIGINAL_ROWS) + "\n")
    assert len(load_samples(str(path), DatasetConfig(), seed=0)) == 2


def test_dataset_folder_in_hub_layout_loads_through_datasets(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.Table.from_pylist(ORIGINAL_ROWS), tmp_path / "data" / "train-00000-of-00001.parquet"
    )
    samples = load_samples(str(tmp_path), DatasetConfig(), seed=0)
    assert [s.completion for s in samples] == ["Alpha beta gamma.", "4"]


def test_unknown_hub_dataset_offline_is_one_clear_line():
    with pytest.raises(DataError, match="no-such-org/no-such-data") as err:
        load_samples("no-such-org/no-such-data", DatasetConfig(), seed=0)
    assert "\n" not in str(err.value)


def test_a_hub_dataset_without_the_hub_fails_at_once(monkeypatch):
    """datasets retried an unreachable Hub for ~30 s, printing ten lines, before failing."""
    import datasets
    from huggingface_hub import constants

    import condense.readers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(condense.readers, "hub_reachable", lambda: False)
    before = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        load_samples("someone/dataset", DatasetConfig(), seed=0)
    assert time.monotonic() - start < 10
    assert str(err.value) == (
        "--data someone/dataset: no such file or folder, and not a dataset in the cache"
        " (the Hub does not answer)"
    )
    assert (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE) == before


def _rows(tag: str, n: int = 3) -> list[dict]:
    return [
        {"context": f"{tag} {i}.", "prompt": "Who?", "completion": f"{tag}{i}"} for i in range(n)
    ]


def test_a_folder_reads_every_data_file_and_names_those_it_leaves_out(tmp_path):
    """A .jsonl beside a .parquet trained on one of them, with no word of the other."""
    write_jsonl(tmp_path / "a.jsonl", _rows("a"))
    pq.write_table(pa.Table.from_pylist(_rows("b")), tmp_path / "b.parquet")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "c.json", _rows("c"))
    (tmp_path / "notes.txt").write_text("x,y\n")
    report = DataReport()
    samples = load_samples(str(tmp_path), DatasetConfig(), seed=0, report=report)
    assert sorted(s.completion for s in samples) == sorted(
        f"{tag}{i}" for tag in "abc" for i in range(3)
    )
    kinds = ".jsonl, .json, .csv, .tsv, .parquet, or any but .parquet in .gz, .bz2 or .xz"
    assert report.notes() == [f"files left out of the data folder: notes.txt (not {kinds})"]


def test_a_folder_with_split_files_trains_on_its_train_files_alone(tmp_path):
    """As datasets reads such a folder: a test.jsonl is not trained on (it was left out
    silently, and so was a file named for no split)."""
    write_jsonl(tmp_path / "train.jsonl", _rows("t"))
    write_jsonl(tmp_path / "test.jsonl", _rows("s"))
    write_jsonl(tmp_path / "extra.jsonl", _rows("e"))
    report = DataReport()
    samples = load_samples(str(tmp_path), DatasetConfig(), seed=0, report=report)
    assert sorted(s.completion for s in samples) == ["t0", "t1", "t2"]
    left_out = "extra.jsonl (named for no split, beside ones that are), test.jsonl (test split)"
    assert report.notes() == [f"files left out of the data folder: {left_out}"]
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "extra.jsonl").unlink()
    with pytest.raises(
        DataError,
        match=r"no training files .*: it holds test.jsonl \(test split\); give a file itself",
    ):
        load_samples(str(tmp_path), DatasetConfig(), seed=0)


def test_a_split_other_than_train_is_read_where_one_is_asked_for(tmp_path):
    """eval --data FOLDER scored train.jsonl alone, and a folder of test files was refused
    with advice to train on a file."""
    import datasets

    write_jsonl(tmp_path / "train.jsonl", _rows("t"))
    write_jsonl(tmp_path / "test.jsonl", _rows("s", 2))
    report = DataReport()
    samples = load_samples(str(tmp_path), DatasetConfig(), seed=0, report=report, split="test")
    assert [s.completion for s in samples] == ["s0", "s1"]
    assert report.files_left_out == ["train.jsonl (train split)"]
    (tmp_path / "train.jsonl").unlink()
    with pytest.raises(DataError, match=r"no train-split files .*; --split test reads one$"):
        load_samples(str(tmp_path), DatasetConfig(), seed=0, split="train")
    with pytest.raises(
        DataError, match=r"no validation-split files .*test.jsonl \(test split\); --split test"
    ):
        load_samples(str(tmp_path), DatasetConfig(), seed=0, split="validation")
    for source in (str(tmp_path / "test.jsonl"), "synthetic"):
        with pytest.raises(DataError, match=rf"^--split test: --data {source} has no splits"):
            load_samples(source, DatasetConfig(), seed=0, split="test")
    # Told of a name alone: a folder called x.json had "no splits", a missing file too.
    with pytest.raises(DataError, match=r"^--data .*gone.csv: no such file$"):
        load_samples(str(tmp_path / "gone.csv"), DatasetConfig(), seed=0, split="test")
    (tmp_path / "set.json").mkdir()
    (tmp_path / "test.jsonl").rename(tmp_path / "set.json" / "test.jsonl")
    samples = load_samples(str(tmp_path / "set.json"), DatasetConfig(), seed=0, split="test")
    assert [s.completion for s in samples] == ["s0", "s1"]
    saved = datasets.DatasetDict(
        train=datasets.Dataset.from_list(_rows("t")), test=datasets.Dataset.from_list(_rows("s"))
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    samples = load_samples(str(tmp_path / "saved"), DatasetConfig(), seed=0, split="test")
    assert [s.completion for s in samples] == ["s0", "s1", "s2"]


def test_a_bad_row_in_a_folder_is_named_by_its_file_and_line(tmp_path):
    """It was "row 24" of all the files together, or a parser's message naming neither."""
    write_jsonl(tmp_path / "a.jsonl", _rows("a"))
    (tmp_path / "b.jsonl").write_text(json.dumps(_rows("b")[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"b.jsonl: line 2: not a JSON object"):
        load_samples(str(tmp_path), DatasetConfig(), seed=0)
    report = DataReport()
    kept = load_samples(str(tmp_path), DatasetConfig(skip_bad_rows=True), seed=0, report=report)
    assert len(kept) == 4 and report.rows_skipped == 1


@pytest.mark.parametrize("given", ["relative with ..", "a symlink", "a [ in its name"])
def test_a_folder_is_read_however_it_is_named(tmp_path, monkeypatch, given):
    """datasets globs under the path as given: `..` and symlinks gave paths outside the
    folder (a traceback), and a `[` globbed no file at all."""
    real = tmp_path / ("data[1]" if given == "a [ in its name" else "data")
    real.mkdir()
    write_jsonl(real / "a.jsonl", _rows("a"))
    write_jsonl(real / "B.JSONL", _rows("b"))  # any case
    (real / "__pycache__").mkdir()
    write_jsonl(real / "__pycache__" / "c.jsonl", _rows("c"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    if given == "a symlink":
        (tmp_path / "link").symlink_to(real)
        name = str(tmp_path / "link")
    else:
        name = str(Path("..") / real.name)
    report = DataReport()
    samples = load_samples(name, DatasetConfig(), seed=0, report=report)
    assert sorted(s.completion for s in samples) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    assert report.files_left_out == [
        str(Path("__pycache__") / "c.jsonl")
        + " (left out by datasets' folder rules: a metadata name or a __folder__)"
    ]


def test_a_pipe_or_a_device_as_data_says_what_it_is(tmp_path):
    """/dev/null and <(cat f.jsonl) were "no such file", though both are there."""
    pipe = tmp_path / "rows.jsonl"
    os.mkfifo(pipe)  # never opened: reading it would wait for a writer
    with pytest.raises(DataError, match=r"rows.jsonl: a pipe \(as <\(...\) gives\), not a data"):
        load_samples(str(pipe), DatasetConfig(), seed=0)
    with pytest.raises(DataError, match=r"^--data /dev/null: a device, not a data file or folder"):
        load_samples("/dev/null", DatasetConfig(), seed=0)


def test_a_folder_saved_with_save_to_disk_loads(tmp_path):
    import datasets

    datasets.Dataset.from_list(_rows("d")).save_to_disk(str(tmp_path / "saved"))
    samples = load_samples(str(tmp_path / "saved"), DatasetConfig(), seed=0)
    assert [s.completion for s in samples] == ["d0", "d1", "d2"]


def test_a_saved_dataset_dict_names_the_splits_it_leaves_out(tmp_path):
    """Its validation split was left out without a word, where a folder's test.jsonl is
    named."""
    import datasets

    saved = datasets.DatasetDict(
        train=datasets.Dataset.from_list(_rows("t")),
        validation=datasets.Dataset.from_list(_rows("v")),
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    report = DataReport()
    samples = load_samples(str(tmp_path / "saved"), DatasetConfig(), seed=0, report=report)
    assert [s.completion for s in samples] == ["t0", "t1", "t2"]
    assert report.notes() == ["files left out of the data folder: validation/ (validation split)"]
    report = DataReport()
    load_samples(str(tmp_path / "saved"), DatasetConfig(), 0, report, split="validation")
    assert report.files_left_out == ["train/ (train split)"]


def test_a_folder_without_data_files_says_so(tmp_path):
    (tmp_path / "README.md").write_text("my data")
    (tmp_path / "train.txt").write_text("context,prompt,completion\n")
    with pytest.raises(DataError, match=r"no training files") as err:
        load_samples(str(tmp_path), DatasetConfig(), seed=0)
    # A file of its own is refused as well: no advice to give one.
    assert "train.txt (not .jsonl" in str(err.value) and "give a file" not in str(err.value)
    # Nor where it is of another split: a test.txt is read no better (and was called a
    # file of the test split).
    (tmp_path / "train.txt").rename(tmp_path / "test.txt")
    for split in (None, "train"):
        with pytest.raises(DataError, match=r"it holds test.txt \(not \.jsonl[^)]*\)$"):
            load_samples(str(tmp_path), DatasetConfig(), seed=0, split=split)


@pytest.mark.parametrize(
    ("name", "opener"),
    [("train.jsonl.gz", gzip.open), ("train.JSON.bz2", bz2.open), ("train.jsonl.xz", lzma.open)],
)
def test_compressed_json_files_are_read_alone_and_in_a_folder(name, opener, tmp_path):
    """A local copy of a Hub dataset often holds train.jsonl.gz: a folder of them was
    refused as holding no training files, and the file itself as of type '.gz'."""
    rows = _rows("z")
    with opener(tmp_path / name, "wt") as f:
        if ".json." in name.lower():
            json.dump(rows, f)  # one array
        else:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
    for source in (tmp_path / name, tmp_path):
        samples = load_samples(str(source), DatasetConfig(), seed=0)
        assert [s.completion for s in samples] == ["z0", "z1", "z2"]


def test_a_folder_holding_a_file_and_its_compressed_copy_is_refused(tmp_path):
    """a.jsonl beside a.jsonl.gz: both were read, every row twice, without a word."""
    write_jsonl(tmp_path / "a.jsonl", _rows("a"))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write((tmp_path / "a.jsonl").read_text())
    write_jsonl(tmp_path / "b.jsonl", _rows("b"))  # another file, still fine
    with pytest.raises(
        DataError, match=r"^--data .*: a.jsonl and a.jsonl.gz are copies of one file .*once \(keep"
    ):
        load_samples(str(tmp_path), DatasetConfig(), seed=0)
    (tmp_path / "a.jsonl").unlink()
    assert len(load_samples(str(tmp_path), DatasetConfig(), seed=0)) == 6


def test_csv_and_tsv_files_are_read_with_every_cell_as_text(tmp_path):
    """A folder of CSV files, the form many hand-made sets come in, was refused."""
    (tmp_path / "train.csv").write_text(
        'prompt,context,completion,task\n"Who?","Line one.\nLine two, a comma.",4,qa\n\n'
        "Where?,Paris is big.,Paris,\n"
    )
    with gzip.open(tmp_path / "train_more.tsv.gz", "wt") as f:
        f.write("context\tprompt\tcompletion\nA\tB\tC\n")
    samples = load_samples(str(tmp_path), DatasetConfig(), seed=0)
    assert [(s.context, s.prompt, s.completion, s.task) for s in samples] == [
        ("Line one.\nLine two, a comma.", "Who?", "4", "qa"),  # "4" is no number
        ("Paris is big.", "Where?", "Paris", "unknown"),
        ("A", "B", "C", "unknown"),
    ]
    (tmp_path / "train.csv").write_text("context,prompt,completion\na,b,c\n\nd,e\n")
    with pytest.raises(DataError, match=r"train.csv: line 4: 2 cells, where the header has 3"):
        load_samples(str(tmp_path / "train.csv"), DatasetConfig(), seed=0)
    (tmp_path / "train.csv").write_text("context,prompt,completion\n")
    with pytest.raises(DataError, match=r"train.csv: no rows$"):
        load_samples(str(tmp_path / "train.csv"), DatasetConfig(), seed=0)
    # Blank lines before the header read as no rows; " prompt" was no 'prompt'; a byte
    # that is not UTF-8 stopped the file, "past line 0", though bad rows were skipped.
    (tmp_path / "train.csv").write_bytes(b"\n\ncontext, prompt ,completion\na,b,c\nd\xff,e,f\n")
    report = DataReport()
    cfg = DatasetConfig(skip_bad_rows=True)
    samples = load_samples(str(tmp_path / "train.csv"), cfg, seed=0, report=report)
    assert [(s.context, s.prompt, s.completion) for s in samples] == [("a", "b", "c")]
    assert report.skipped_examples == [
        f"{tmp_path / 'train.csv'}: line 5: field 'context' is not valid UTF-8 (byte 0xff)"
    ]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_an_empty_compressed_file_has_no_rows(suffix, tmp_path):
    """bz2 and xz took an empty file for a cut archive: "cannot read it (Compressed file
    ended before the end-of-stream marker was reached)"."""
    path = tmp_path / f"train.jsonl{suffix}"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{path}: no rows$"):
        load_samples(str(path), DatasetConfig(), seed=0)


def test_a_damaged_compressed_file_is_named_in_one_line(tmp_path):
    good = tmp_path / "good.jsonl.gz"
    with gzip.open(good, "wt") as f:
        f.write("".join(json.dumps(row) + "\n" for row in _rows("z", 200)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps(_rows("p")[0]) + "\n")  # no gzip
    flipped = bytearray(good.read_bytes())  # damaged inside: zlib's own error, a traceback
    flipped[200:260] = bytes(b ^ 0xFF for b in flipped[200:260])
    (tmp_path / "flipped.jsonl.gz").write_bytes(flipped)
    for path in (cut, tmp_path / "plain.jsonl.gz", tmp_path / "flipped.jsonl.gz"):
        with pytest.raises(DataError, match=rf"^{path}: cannot read it \(.+\)$"):
            load_samples(str(path), DatasetConfig(), seed=0)


@pytest.mark.parametrize("skip", [False, True])
def test_a_json_file_of_one_indented_object_says_so(tmp_path, skip):
    """It read as lines: "line 1: not a JSON object (Expecting property name ...)", and
    with skipping, "none of its 6 rows is usable", counting the object's lines as rows."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": _rows("a"), "version": 1}, indent=2))
    with pytest.raises(DataError) as err:
        load_samples(str(path), DatasetConfig(skip_bad_rows=skip), seed=0)
    assert str(err.value) == (
        f"{path}: one JSON object over several lines (keys: data, version), not rows: give"
        " one object a line, or one array of objects"
    )


@pytest.mark.parametrize("skip", [False, True])
def test_a_json_file_of_one_object_on_one_line_wrapping_its_rows_says_so(tmp_path, skip):
    """Unindented, the same file said "line 1: missing field 'context'"."""
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": _rows("a"), "version": 1}) + "\n")
    with pytest.raises(DataError) as err:
        load_samples(str(path), DatasetConfig(skip_bad_rows=skip), seed=0)
    assert str(err.value) == (
        f"{path}: one JSON object on one line (keys: data, version), not rows: give one"
        " object a line, or one array of objects"
    )
    # One row a line that lacks a field is still named as such, alone or beside others.
    for lines in ([{"context": "c", "prompt": "p"}], [_rows("a")[0], {"text": "x"}]):
        write_jsonl(path, lines)
        with pytest.raises(DataError, match=r"data.json: line \d: missing field 'c"):
            load_samples(str(path), DatasetConfig(), seed=0)
    path.write_text("{broken\n" + json.dumps(_rows("a")[0]) + "\n")  # still named by line
    with pytest.raises(DataError, match=r"data.json: line 1: not a JSON object"):
        load_samples(str(path), DatasetConfig(), seed=0)


def test_a_line_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ORIGINAL_ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl: line 2: not a JSON object"):
        load_samples(str(path), DatasetConfig(), seed=0)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json"])
def test_a_row_that_is_a_json_string_is_named_as_the_wrong_kind_of_row(tmp_path, name):
    """A string row was taken for the reader's own note on an unreadable line, and
    printed as if it were the problem: `line 2: just a string`."""
    path = tmp_path / name
    rows = [ORIGINAL_ROWS[0], "just a string"]
    if name.endswith(".jsonl"):
        write_jsonl(path, rows)
    else:
        path.write_text(json.dumps(rows))
    unit = "line" if name.endswith(".jsonl") else "row"
    wrong = rf"{name}: {unit} 2: expected an object with context, prompt, completion, got str"
    with pytest.raises(DataError, match=wrong):
        load_samples(str(path), DatasetConfig(), seed=0)


def test_a_row_without_a_field_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(ORIGINAL_ROWS[0])
        + "\n"
        + json.dumps({"context": "x", "activation_prompt": "y"})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: missing field .completion."):
        load_samples(str(path), DatasetConfig(), seed=0)


def test_a_row_in_both_sets_of_columns_is_a_bad_row(tmp_path):
    """One set was trained on, picked by the order of the row's keys, without a word."""
    path = tmp_path / "both.jsonl"
    good = {"context": "c", "prompt": "p", "completion": "x"}
    write_jsonl(path, [good, {**good, "activation_prompt": "other"}, good])
    both = "fields 'prompt' and 'activation_prompt' both given"
    with pytest.raises(DataError, match=rf"both.jsonl: line 2: {both} .*: keep one"):
        load_samples(str(path), DatasetConfig(), seed=0)
    report = DataReport()
    samples = load_samples(str(path), DatasetConfig(skip_bad_rows=True), 0, report)
    assert [s.prompt for s in samples] == ["p", "p"]
    assert report.rows_skipped == 1 and both in report.skipped_examples[0]


def test_a_table_of_rows_in_either_set_of_columns_reads_each_by_its_own(tmp_path):
    """A parquet file holds null in the other set's columns: such a null is no field."""
    ours = {"context": "c1", "prompt": "p1", "completion": "x1"}
    original = {"context": "c2", "activation_prompt": "p2", "expected_completion": "x2"}
    path = tmp_path / "mixed.parquet"
    columns = pa.schema([(name, pa.string()) for name in {**ours, **original}])
    pq.write_table(pa.Table.from_pylist([ours, original], schema=columns), path)
    samples = load_samples(str(path), DatasetConfig(), seed=0)
    assert [(s.prompt, s.completion) for s in samples] == [("p1", "x1"), ("p2", "x2")]
    # A CSV's empty cell is the same: such a file failed on every row as "both given".
    path = tmp_path / "mixed.csv"
    path.write_text(
        "context,prompt,completion,activation_prompt,expected_completion\nc1,p1,x1,,\nc2,,,p2,x2\n"
    )
    samples = load_samples(str(path), DatasetConfig(), seed=0)
    assert [(s.prompt, s.completion) for s in samples] == [("p1", "x1"), ("p2", "x2")]


def test_a_task_is_text_or_an_id_and_a_missing_one_is_unknown(tmp_path):
    """A float or a list was trained on as the task "1.5"; an integer id stays the text
    it was trained as ("3": runs on such data resume, artifacts evaluate); null and
    missing stay "unknown", as documented for an optional field."""
    path = tmp_path / "tasks.jsonl"
    good = {"context": "c", "prompt": "p", "completion": "x"}
    write_jsonl(path, [{**good, "task": "qa"}, {**good, "task": 1.5}])
    with pytest.raises(DataError, match=r"tasks.jsonl: line 2: field 'task' is float, not text"):
        load_samples(str(path), DatasetConfig(), seed=0)
    write_jsonl(path, [{**good, "task": "qa"}, {**good, "task": None}, good, {**good, "task": 3}])
    assert [s.task for s in load_samples(str(path), DatasetConfig(), 0)] == [
        "qa",
        "unknown",
        "unknown",
        "3",
    ]


def test_a_saved_datasets_class_label_task_is_read_by_its_names(tmp_path):
    """datasets gives a ClassLabel column's integer codes: the tasks trained as "0" and
    "1", not the names its author gave them."""
    import datasets

    features = datasets.Features(
        {
            "context": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "completion": datasets.Value("string"),
            "task": datasets.ClassLabel(names=["question_answering", "reconstruction"]),
        }
    )
    rows = {"context": ["a", "b", "c"], "prompt": ["p"] * 3, "completion": ["x"] * 3}
    rows["task"] = [1, 0, -1]  # -1: no label
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    samples = load_samples(str(tmp_path / "saved"), DatasetConfig(), 0)
    assert [s.task for s in samples] == ["reconstruction", "question_answering", "unknown"]


def test_skip_bad_rows_counts_and_names_them(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = {"context": "c", "prompt": "p", "completion": "x"}
    lines = [good, {**good, "context": None}, good, {"context": "c"}, good]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = DataReport()
    samples = load_samples(str(path), DatasetConfig(skip_bad_rows=True), 0, report)
    assert len(samples) == 3
    assert (report.rows_read, report.rows_skipped) == (5, 2)
    assert report.skipped_examples == [
        f"{path}: line 2: field 'context' is null",
        f"{path}: line 4: missing field 'prompt' (or 'activation_prompt')",
    ]
    assert report.notes() == [
        f"2 of 5 rows skipped as unusable (first: {path}: line 2: field 'context' is null)"
    ]


@pytest.mark.parametrize("source", ["synthetic", "synthetic-long"])
def test_synthetic_data_reports_the_samples_it_made_as_rows_read(source):
    report = DataReport()
    samples = load_samples(source, DatasetConfig(synthetic_passages=7), 0, report)
    assert report.rows_read == len(samples) > 0
    assert report.rows_skipped == 0


def test_skipping_every_row_leaves_nothing_to_train_on(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": 1}\n[]\n')
    with pytest.raises(DataError, match="none of its 2 rows is usable"):
        load_samples(str(path), DatasetConfig(skip_bad_rows=True), 0)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "locked.jsonl"
    path.write_text("{}\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", refuse)
    with pytest.raises(DataError, match=r"locked.jsonl: cannot read it \(Permission denied\)"):
        load_samples(str(path), DatasetConfig(), 0)


def test_cut_contexts_and_targets_are_counted(tiny_pair):
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    report = DataReport()
    cfg = DatasetConfig(max_characters=60, max_tokens=8, synthetic_passages=3)
    samples = load_samples("synthetic", cfg, 0, report)
    tokenize(samples, enc_tok, dec_tok, cfg, report)
    assert report.contexts_cut_to_max_characters == sum(len(s.context) == 60 for s in samples)
    assert 0 < report.contexts_cut_to_max_tokens <= len(samples)
    assert 0 < report.targets_cut_to_max_tokens <= len(samples)
    assert len(report.notes()) == 3
    # By task too: a cut continuation context's completion follows text never read.
    by_task = report.contexts_cut_by_task
    assert sum(by_task.values()) == report.contexts_cut_to_max_tokens
    assert set(by_task) <= {s.task for s in samples}
    listed = ", ".join(f"{task} {n}" for task, n in sorted(by_task.items()))
    assert (
        f"contexts cut to dataset.max_tokens ({listed}), keeping their start" in report.notes()[1]
    )


def test_tasks_filter_keeps_only_named_tasks_and_counts_the_rows_it_leaves_out():
    """rows_read counted every row, and nothing the rows of other tasks."""
    report = DataReport()
    cfg = DatasetConfig(synthetic_passages=5, tasks=["question_answering"])
    samples = load_samples("synthetic", cfg, 0, report)
    assert len(samples) == 5 and {s.task for s in samples} == {"question_answering"}
    assert report.as_dict()["rows_of_other_tasks"] == 10
    assert report.notes() == ["10 of 15 rows left out by dataset.tasks (of other tasks)"]


def test_collator_pads_each_side_with_its_own_pad_id(tiny_pair):
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    assert enc_tok.pad_token_id != dec_tok.pad_token_id or len(enc_tok) != len(dec_tok)
    samples = load_samples("synthetic", DatasetConfig(synthetic_passages=2), 0)
    items = tokenize(samples[:3], enc_tok, dec_tok, DatasetConfig(max_tokens=64))
    batch = Collator(enc_tok.pad_token_id, dec_tok.pad_token_id)(items)
    for i, item in enumerate(items):
        n_ctx, n_dec = len(item.context_ids), len(item.input_ids)
        assert batch["context_mask"][i].sum() == n_ctx
        assert (batch["context_ids"][i, n_ctx:] == enc_tok.pad_token_id).all()
        assert (batch["input_ids"][i, n_dec:] == dec_tok.pad_token_id).all()
        assert (batch["labels"][i, n_dec:] == IGNORE_INDEX).all()
    assert batch["context_ids"].shape[1] == max(
        len(t.context_ids) for t in items
    )  # dynamic, not max_tokens


def test_a_prompt_opened_with_bos_labels_the_completion_at_the_seam(bos_tokenizer):
    tok = bos_tokenizer
    sample = Sample("Ka was born in Lo.", "Where was Ka born?\n", "Lo", "question_answering")
    prompt = tok(sample.prompt)["input_ids"]
    completion = tok(sample.completion, add_special_tokens=False)["input_ids"]
    assert prompt[0] == tok.bos_token_id and completion[0] != tok.bos_token_id
    (item,) = tokenize([sample], tok, tok, DatasetConfig(max_tokens=64))
    assert item.input_ids == prompt + completion + [tok.eos_token_id]
    assert item.labels == [IGNORE_INDEX] * len(prompt) + completion + [tok.eos_token_id]


def test_train_on_prompt_leaves_the_added_bos_unlabelled(bos_tokenizer):
    tok = bos_tokenizer
    sample = Sample("Ka was born in Lo.", "Where was Ka born?\n", "Lo", "question_answering")
    (item,) = tokenize([sample], tok, tok, DatasetConfig(max_tokens=64, train_on_prompt=True))
    # The BOS is always there: predicting it from the condensed slots is a free target.
    assert item.input_ids[0] == tok.bos_token_id and item.labels[0] == IGNORE_INDEX
    assert item.labels[1:] == item.input_ids[1:]


def test_a_tokenizer_closing_every_text_with_eos_puts_none_before_the_completion(tiny_pair):
    from transformers import AutoTokenizer

    # As a Llama tokenizer with add_eos_token: "<s> text </s>" for every text.
    tok = AutoTokenizer.from_pretrained(tiny_pair[1], add_bos_token=True, add_eos_token=True)
    sample = Sample("Ka was born in Lo.", "Where was Ka born?\n", "Lo", "question_answering")
    assert tok(sample.prompt)["input_ids"][-1] == tok.eos_token_id
    prompt = tok(sample.prompt, add_special_tokens=False)["input_ids"]
    completion = tok(sample.completion, add_special_tokens=False)["input_ids"]
    (item,) = tokenize([sample], tok, tok, DatasetConfig(max_tokens=64))
    assert item.input_ids == [tok.bos_token_id, *prompt, *completion, tok.eos_token_id]
    assert item.labels == [IGNORE_INDEX] * (1 + len(prompt)) + completion + [tok.eos_token_id]


def _history(passages: int) -> str:
    """A long conversation history to put before a question."""
    return " ".join(s.context for s in synthetic_samples(passages, seed=5))


def test_a_too_long_prompt_loses_its_beginning_not_its_question(bos_tokenizer):
    tok = bos_tokenizer
    prompt = f"[INST] {_history(4)}\nWhere was Ka born? [/INST]"
    sample = Sample("Ka was born in Lo.", prompt, " Lo", "question_answering")
    target = tok(" Lo", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    report = DataReport()
    (item,) = tokenize([sample], tok, tok, DatasetConfig(max_tokens=24), report)
    kept = item.input_ids[: -len(target)]
    assert len(item.input_ids) == 24 and item.input_ids[-len(target) :] == target
    # The BOS the tokenizer opens every text with stays first; the history's start goes.
    assert kept[0] == tok.bos_token_id and tok.decode(kept[1:]) in prompt
    assert tok.decode(kept).endswith("\nWhere was Ka born? [/INST]")
    assert not tok.decode(kept).startswith("<s>[INST]")
    assert item.labels == [IGNORE_INDEX] * len(kept) + target
    assert report.targets_cut_to_max_tokens == 1


def test_a_long_prompt_and_a_long_completion_each_keep_half_of_max_tokens(tiny_pair):
    tok = load_tokenizer(tiny_pair[1])  # opens a text with no BOS
    sample = Sample("x", _history(3) + "\nRepeat:", _history(4), "reconstruction")
    prompt = tok(sample.prompt)["input_ids"]
    completion = tok(sample.completion, add_special_tokens=False)["input_ids"]
    assert min(len(prompt), len(completion)) > 21
    (item,) = tokenize([sample], tok, tok, DatasetConfig(max_tokens=21))
    # The completion's start is what follows the prompt's end: it keeps ceil(21 / 2).
    assert item.input_ids == prompt[-10:] + completion[:11]
    assert item.labels == [IGNORE_INDEX] * 10 + completion[:11]


def test_max_tokens_truncates_both_sides(tiny_pair):
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    samples = load_samples("synthetic", DatasetConfig(synthetic_passages=3), 0)
    for item in tokenize(samples, enc_tok, dec_tok, DatasetConfig(max_tokens=16)):
        assert len(item.context_ids) <= 16 and len(item.input_ids) <= 16


def test_length_grouping_pads_less_than_random_batches():
    import random

    lengths = [random.Random(i).randint(10, 500) for i in range(800)]
    grouped = list(LengthGroupedBatchSampler(lengths, 8, seed=0))
    assert sorted(i for b in grouped for i in b) == list(range(800))  # every sample once

    def padding(batches):
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    shuffled = list(range(800))
    random.Random(0).shuffle(shuffled)
    plain = [shuffled[i : i + 8] for i in range(0, 800, 8)]
    assert padding(grouped) < 0.2 * padding(plain)


def test_batch_order_is_seeded_and_changes_by_epoch():
    lengths = list(range(100))
    sampler = LengthGroupedBatchSampler(lengths, 4, seed=1, window=5)
    first = list(sampler)
    assert first == list(LengthGroupedBatchSampler(lengths, 4, seed=1, window=5))
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize("count", [805, 801])
def test_a_sample_left_over_joins_a_batch_instead_of_making_one_alone(count):
    # The bench job's 805 training samples in batches of 4: 201 full batches and one over.
    # A batch of one would make every compiled block compile again mid-run. With 801 the
    # one over is alone in the last window of 200 samples, so it takes one from the window
    # before.
    sampler = LengthGroupedBatchSampler(list(range(count)), 4, seed=0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == count // 4 + 1
        assert sorted(map(len, batches))[:2] == [2, 3]
        assert sorted(i for b in batches for i in b) == list(range(count))


def test_ranks_get_disjoint_equal_shares_of_every_epoch():
    lengths = [(i * 37) % 101 for i in range(103)]  # 26 batches of 4: 3 ranks get 8 each
    for epoch in (0, 1):
        shares = []
        for rank in range(3):
            sampler = LengthGroupedBatchSampler(lengths, 4, seed=2, num_replicas=3, rank=rank)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
            assert len(shares[-1]) == len(sampler) == 8
        flat = [i for share in shares for batch in share for i in batch]
        assert len(flat) == len(set(flat))  # no sample on two ranks
        # Together the ranks take the single-process epoch's batches, less its tail.
        alone = LengthGroupedBatchSampler(lengths, 4, seed=2)
        alone.set_epoch(epoch)
        together = [tuple(batch) for share in shares for batch in share]
        assert sorted(together) == sorted(map(tuple, list(alone)[:24]))


def test_uneven_ranks_share_every_batch_of_the_single_process_epoch():
    # Validation: 26 batches of 4 over 3 ranks are 9, 9 and 8, and together all 26, so a
    # validation loss covers the same samples whatever the number of processes.
    lengths = [(i * 37) % 101 for i in range(103)]
    shares = []
    for rank in range(3):
        sampler = LengthGroupedBatchSampler(
            lengths, 4, seed=2, num_replicas=3, rank=rank, even=False
        )
        shares.append(list(sampler))
        assert len(shares[-1]) == len(sampler)
    assert [len(share) for share in shares] == [9, 9, 8]
    together = sorted(tuple(batch) for share in shares for batch in share)
    alone = LengthGroupedBatchSampler(lengths, 4, seed=2)
    assert together == sorted(map(tuple, alone))


def test_a_validation_limit_covers_the_same_batches_on_any_number_of_processes():
    lengths = [(i * 37) % 101 for i in range(103)]  # 26 batches of 4
    alone = list(LengthGroupedBatchSampler(lengths, 4, seed=2, even=False, limit=5))
    assert alone == list(LengthGroupedBatchSampler(lengths, 4, seed=2, even=False))[:5]
    shares = [
        LengthGroupedBatchSampler(lengths, 4, seed=2, num_replicas=3, rank=r, even=False, limit=5)
        for r in range(3)
    ]
    assert [len(share) for share in shares] == [len(list(share)) for share in shares] == [2, 2, 1]
    assert sorted(b for share in shares for b in share) == sorted(alone)


def synthetic_datamodule(tiny_pair, val_batches=None, **dataset) -> CondenseDataModule:
    """The tiny pair's data module over synthetic passages, set up: 64 tokens a side,
    no workers, 12 validation samples from 20 passages unless `dataset` says otherwise."""
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    shape = {"max_tokens": 64, "num_workers": 0, "val_size": 12, "synthetic_passages": 20}
    cfg = DatasetConfig(**(shape | dataset))
    dm = CondenseDataModule("synthetic", cfg, enc_tok, dec_tok, 0, val_batches)
    dm.setup()
    return dm


def test_the_datamodule_shares_val_batches_out_across_ranks(tiny_pair):
    def val_contexts(val_batches: int, world_size: int, rank: int) -> list[str]:
        dm = synthetic_datamodule(tiny_pair, val_batches, batch_size=2)
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
        return [str(row.tolist()) for b in dm.val_dataloader() for row in b["context_ids"]]

    alone = val_contexts(3, 1, 0)
    assert len(alone) == 6  # 3 batches of 2, of the split's 6 or more
    assert sorted(val_contexts(3, 2, 0) + val_contexts(3, 2, 1)) == sorted(alone)
    with pytest.raises(DataError, match=r"val_batches=1 is fewer than the processes \(2\)"):
        val_contexts(1, 2, 0)


def test_a_rank_outside_the_replicas_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedBatchSampler([1, 2, 3], 1, num_replicas=2, rank=2)


def test_datamodule_serves_padded_batches_with_workers(tiny_pair):
    dm = synthetic_datamodule(
        tiny_pair, batch_size=4, num_workers=2, val_size=6, synthetic_passages=10
    )
    batches = list(dm.train_dataloader())
    assert sum(len(b["labels"]) for b in batches) == len(dm.train_set)
    assert len(dm.val_set) >= 6


@pytest.mark.parametrize("val_size, noted", [(1, True), (6, False)])
def test_a_validation_of_one_passage_says_why_it_has_no_wrong_context_loss(
    tiny_pair, val_size, noted
):
    """val_loss_wrong was missing from metrics.csv without a word."""
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    cfg = DatasetConfig(val_size=val_size, synthetic_passages=10)
    dm = CondenseDataModule("synthetic", cfg, enc_tok, dec_tok)
    dm.setup()
    assert any(n.startswith("val_loss_wrong: none") for n in dm.report.notes()) is noted


@pytest.mark.parametrize("val_batches, noted", [(1, True), (None, False)])
def test_a_validated_share_of_one_passage_says_so_too(tiny_pair, val_batches, noted):
    """With val_batches, the batches a validation scores can all be of one passage (at
    seed 1 here, its first batch is a passage's two samples): val_loss_wrong was missing
    without a word, as the whole validation set held several passages."""
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    cfg = DatasetConfig(val_size=6, synthetic_passages=10)
    dm = CondenseDataModule("synthetic", cfg, enc_tok, dec_tok, seed=1, val_batches=val_batches)
    dm.setup()
    scored = {dm.val_set[i].group for i in dm.validated_indices()}
    assert (len(scored) == 1) is noted
    assert len({item.group for item in dm.val_set}) > 1
    assert any(n.startswith("val_loss_wrong: none") for n in dm.report.notes()) is noted


def test_too_few_samples_for_a_split_is_a_clear_error(tiny_pair):
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    dm = CondenseDataModule(
        "synthetic", DatasetConfig(val_size=100, synthetic_passages=3), enc_tok, dec_tok
    )
    with pytest.raises(DataError, match="val_size=100"):
        dm.setup()


def test_a_continuation_and_its_own_passage_share_a_passage_id_in_the_batch(tiny_pair):
    samples = synthetic_samples(2)
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    batch = Collator(0, 0)(tokenize(samples, enc_tok, dec_tok, DatasetConfig(max_tokens=96)))
    continuation = next(i for i, s in enumerate(samples) if s.task == CONTINUATION)
    # Its context is a prefix of the passage: another context, but the same passage.
    assert samples[continuation].context != samples[0].context
    groups = batch["group"].tolist()
    assert groups[:3] == [groups[0]] * 3 and groups[3:] == [groups[3]] * 3
    assert groups[0] != groups[3]


def test_wrong_context_partner_always_comes_from_another_passage():
    # Rows 0, 1 and 3 were cut from one passage (say its question and its continuation,
    # whose context is a prefix of the other's): none may stand in for another.
    partner, found = other_context(torch.tensor([7, 7, 9, 7]))
    assert partner.tolist() == [2, 2, 3, 2] and found.all()


def test_a_batch_of_one_or_of_one_passage_has_no_wrong_partner():
    assert not other_context(torch.tensor([7]))[1].any()
    assert not other_context(torch.tensor([7, 7, 7]))[1].any()


def test_validation_batches_hold_two_where_training_takes_one(tiny_pair):
    dm = synthetic_datamodule(tiny_pair, batch_size=1)
    assert {len(b["labels"]) for b in dm.train_dataloader()} == {1}
    sizes = [len(b["labels"]) for b in dm.val_dataloader()]
    assert max(sizes) == 2 and sum(sizes) == len(dm.val_set)


def test_passages_that_share_their_contexts_are_told_why_none_is_held_out():
    """The error blamed dataset.val_size, which no value of could help."""
    samples = [Sample("One sentence.", "Who?", "Ka.", "qa", group=g) for g in ("a", "b")]
    _, val = split_train_val(samples, 10, seed=0)
    assert val == []
    assert no_split_reason(samples, 10, len(val)) == (
        "none of 2 samples of 2 passages can be held out for validation: each passage shares"
        " a context with another, and a context is never in both splits"
    )


def test_a_data_file_given_as_a_path_reads_as_its_string(tmp_path):
    """load_samples(Path(...)) said "no data source", naming the file it was given."""
    row = {"context": "A cat sat.", "prompt": "Who sat?", "completion": "A cat."}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    (sample,) = load_samples(tmp_path / "d.jsonl", DatasetConfig(), seed=0)
    assert (sample.context, sample.completion) == ("A cat sat.", "A cat.")


def test_a_loader_asked_for_before_setup_says_to_call_setup(tiny_pair):
    """It said "0 samples make fewer batches of 4 than there are processes (1)"."""
    enc_tok, dec_tok = load_tokenizer(tiny_pair[0]), load_tokenizer(tiny_pair[1])
    cfg = DatasetConfig(synthetic_passages=10, val_size=6)
    dm = CondenseDataModule("synthetic", cfg, enc_tok, dec_tok)
    with pytest.raises(RuntimeError, match=r"call setup\(\) before asking for a loader"):
        dm.train_dataloader()
    dm.setup()
    assert len(dm.train_dataloader()) > 0
