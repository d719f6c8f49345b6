"""What eval scores: the validation split an artifact records, rebuilt; --data's samples,
cut as training cut them; and the notes where they are samples it trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from condense.config import DatasetConfig
from condense.data import load_samples
from condense.eval_data import eval_samples, seen_context_note, trained_on_note
from condense.samples import DataError, split_train_val
from condense.synthetic import QUESTION_ANSWERING, synthetic_samples
from tests.conftest import document_rows, write_jsonl


@pytest.mark.parametrize(
    "source, facts", [("synthetic", None), ("synthetic-long", None), ("synthetic", [1, 1])]
)
def test_synthetic_eval_data_is_passages_the_condenser_never_saw(source, facts):
    config = {"seed": 3, "train_data": source, "val_size": 12, "synthetic_facts": facts}
    # Every passage a run of seed 3 trained on, at the default size; one-fact passages
    # (the test job's) repeat sentences across seeds.
    seen = {s.context for s in load_samples(source, DatasetConfig(synthetic_facts=facts), 3)}
    fresh = eval_samples(config, source, limit=90)
    assert len(fresh) == 90 and not {s.context for s in fresh} & seen
    # The default is still the run's own validation split, passages it was checked on.
    assert {s.context for s in eval_samples(config, None, limit=None)} <= seen


@pytest.mark.parametrize("recorded", [None, {"dataset": None}, {"dataset": {"tasks": []}}])
def test_a_null_training_config_is_none_recorded(recorded):
    """`training_config: null` in an artifact's config (read_config lets a null optional
    field pass) was an AttributeError: 'NoneType' object has no attribute 'get'. An empty
    task list, refused since, trained its run on every task."""
    config = {"seed": 3, "train_data": "synthetic", "val_size": 12, "training_config": recorded}
    expected = eval_samples({k: v for k, v in config.items() if k != "training_config"}, None, None)
    assert eval_samples(config, None, limit=None) == expected


def test_the_default_eval_data_is_the_validation_split_of_a_task_filtered_run():
    """A run that kept one task validated on that task's samples alone; eval rebuilds that
    split, not one drawn from every task."""
    dataset = DatasetConfig(val_size=20, synthetic_passages=60, tasks=[QUESTION_ANSWERING])
    trained = split_train_val(load_samples("synthetic", dataset, 3), 20, 3)[1]
    config = {"seed": 3, "train_data": "synthetic", "val_size": 20, "synthetic_passages": 60}
    config["training_config"] = {"dataset": {"tasks": [QUESTION_ANSWERING]}}
    assert eval_samples(config, None, limit=None) == trained
    # A run from before a task no sample has was refused trained on the ones it found;
    # its artifact still evaluates, on that split.
    config["training_config"] = {"dataset": {"tasks": [QUESTION_ANSWERING, "qa_misspelt"]}}
    assert eval_samples(config, None, limit=None) == trained
    # With none of them left, it named a --data that was not given, and a Python list.
    config["training_config"] = {"dataset": {"tasks": ["qa_misspelt"]}}
    with pytest.raises(DataError) as err:
        eval_samples(config, None, limit=None)
    assert str(err.value) == (
        "synthetic: no sample of the tasks the run kept (qa_misspelt); its tasks now:"
        " continuation, question_answering, reconstruction"
    )


@pytest.mark.parametrize("recorded", [{}, {"max_characters": None}, {"max_characters": 500}])
def test_eval_data_is_cut_as_the_artifact_records(recorded, tmp_path):
    """An artifact saved from Python records no max_characters, and the condenser it
    loads cuts no context: eval scores whole contexts too (and a hand-edited null was a
    type error)."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"context": "x" * 12000, "prompt": "p", "completion": "c"}) + "\n")
    (sample,) = eval_samples({"seed": 0, **recorded}, str(data), limit=None)
    assert len(sample.context) == (recorded.get("max_characters") or 12000)


def test_data_trained_on_is_noted_however_it_is_named(tmp_path):
    """A file of the folder it trained on, or the folder of the file it trained on, was
    scored as if unseen."""

    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("train-0.jsonl", "train-1.jsonl", "test.jsonl"):
        (folder / name).write_text(json.dumps({"context": "a", "prompt": "b", "completion": "c"}))
    config = {"train_data": str(folder.resolve())}
    part = trained_on_note(config, str(folder / "train-1.jsonl"))
    assert part[0].startswith(
        f"--data {folder / 'train-1.jsonl'} holds 1 of the files this artifact trained on"
        " (train-1.jsonl): most of their samples were trained on"
    )
    assert trained_on_note(config, str(folder / "test.jsonl")) == []
    assert trained_on_note(config, str(folder), split="test") == []
    (folder / "train-1.jsonl").unlink()
    for data, trained in ((folder / "train-0.jsonl", folder), (folder, folder / "train-0.jsonl")):
        note = trained_on_note({"train_data": str(trained.resolve())}, str(data))
        assert "is what this artifact trained on" in note[0]
    # A saved DatasetDict: its test split was taken for what it trained on, its train/
    # folder for something else.
    import datasets

    saved = tmp_path / "saved"
    rows = [{"context": "a", "prompt": "b", "completion": "c"}]
    parts = {name: datasets.Dataset.from_list(rows) for name in ("train", "test")}
    datasets.DatasetDict(parts).save_to_disk(str(saved))
    for data, trained in ((saved / "train", saved), (saved, saved / "train")):
        note = trained_on_note({"train_data": str(trained.resolve())}, str(data))
        assert "is what this artifact trained on" in note[0]
    assert trained_on_note({"train_data": str(saved.resolve())}, str(saved), split="test") == []


def test_a_renamed_copy_of_the_training_data_is_noted_by_its_contexts(tmp_path):
    """eval of data.jsonl.gz, a copy of the data.jsonl trained on, had no note: its
    samples were scored as if held out. Those of the run's validation split were not
    trained on, and are not counted."""
    import gzip

    samples = synthetic_samples(20, seed=4)
    rows = "".join(
        json.dumps({"context": s.context, "prompt": s.prompt, "completion": s.completion}) + "\n"
        for s in samples
    )
    (tmp_path / "data.jsonl").write_text(rows)
    with gzip.open(tmp_path / "copy.jsonl.gz", "wt") as f:
        f.write(rows)
    config = {"train_data": str(tmp_path / "data.jsonl"), "seed": 0, "val_size": 12}
    scored = eval_samples(config, str(tmp_path / "copy.jsonl.gz"), limit=None)
    trained, validated = split_train_val(scored, 12, 0)
    (note,) = seen_context_note(config, str(tmp_path / "copy.jsonl.gz"), scored)
    assert note.startswith(
        f"--data {tmp_path / 'copy.jsonl.gz'}: {len(trained)} of the {len(scored)} samples"
        " scored have a context this artifact trained on"
    )
    assert seen_context_note(config, "v.jsonl", validated) == []
    assert seen_context_note(config, "new.jsonl", synthetic_samples(5, seed=99)) == []


def test_a_hub_dataset_the_artifact_trained_on_is_noted_too():
    """The default job trains on a Hub dataset: scoring it again said nothing."""

    config = {"train_data": "Condense-AI/benchmark-condense-v0.1"}
    assert "is what this artifact trained on" in trained_on_note(config, config["train_data"])[0]
    assert trained_on_note(config, "Condense-AI/other-set") == []


def test_skip_bad_rows_also_holds_for_the_runs_own_validation_split(tmp_path):
    # Without --data, the run's own setting replaced the flag, and the error then named it.
    from condense.samples import DataReport

    rows = [{"context": f"Passage {i}.", "prompt": "Who?", "completion": "Ka."} for i in range(6)]
    rows[2]["completion"] = None  # a row gone bad since the run trained
    data = tmp_path / "data.jsonl"
    write_jsonl(data, rows)
    config = {"train_data": str(data), "seed": 0, "val_size": 2, "training_config": {}}
    with pytest.raises(DataError, match="line 3: field 'completion' is null"):
        eval_samples(config, None, None)
    report = DataReport()
    assert len(eval_samples(config, None, None, skip_bad_rows=True, report=report)) == 2
    assert report.rows_skipped == 1


def test_a_runs_data_file_changed_since_training_is_no_validation_split(tiny_pair, tmp_path):
    # Rewritten after the run, its split was scored as "the validation split" all the
    # same: other samples, some of them trained on.
    from condense.artifact import read_config
    from condense.training import train
    from tests.conftest import tiny_config

    rows = [
        {"context": f"Passage {i} tells of item {i}.", "prompt": "Which?", "completion": f"{i}."}
        for i in range(24)
    ]
    data = tmp_path / "d.jsonl"
    write_jsonl(data, rows)
    summary = train(tiny_config(*tiny_pair, tmp_path / "run", data=str(data), max_steps=1))
    config = read_config(Path(summary["artifact"]))
    assert len(eval_samples(config, None, None)) == 12  # unchanged: the run's own split
    write_jsonl(data, rows[:-1])
    with pytest.raises(DataError, match="has changed since the run"):
        eval_samples(config, None, None)
    assert len(eval_samples(config, str(data), None)) == 23  # --data scores it as it is


def test_a_run_from_before_the_group_column_was_read_is_told_apart(tmp_path):
    """A run started before condense read a data file's group column split without it:
    eval of its artifact blamed the data for changing, which it had not."""
    from dataclasses import replace

    from condense.data import split_digest

    data = write_jsonl(tmp_path / "d.jsonl", document_rows(12, 2))
    # The split as such a run made it: every row its own context's group.
    old = [replace(s, group=None) for s in load_samples(str(data), DatasetConfig(), 0)]
    trained, validated = split_train_val(old, 6, 0)
    config = {"train_data": str(data), "seed": 0, "val_size": 6}
    config["split_digest"] = split_digest(0, len(trained), validated)
    with pytest.raises(DataError, match="or it was started before condense read the data's group"):
        eval_samples(config, None, None)


def test_a_runs_data_file_is_found_from_any_folder(tiny_pair, tmp_path, monkeypatch):
    # The artifact recorded `--data d.jsonl` as given, and eval from another folder said
    # "--data d.jsonl: no such file", naming a flag the user never gave.
    from condense.callbacks import ExportBest
    from condense.config import ConfigError
    from tests.conftest import tiny_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text("")
    recorded = ExportBest(tmp_path / "artifact", tiny_config(*tiny_pair, tmp_path, data="d.jsonl"))
    assert recorded.extra["train_data"] == str(tmp_path / "d.jsonl")
    monkeypatch.chdir(tmp_path.parent)  # an artifact of before, from elsewhere
    with pytest.raises(ConfigError, match="training data d.jsonl is not found from here"):
        eval_samples({"train_data": "d.jsonl", "seed": 0}, None, None)
