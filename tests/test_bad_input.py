"""Bad data and bad config through the real `condense train` command line: each case
exits non-zero with one line naming the problem, no traceback, and writes nothing.

The table runs in process (main() raises SystemExit as the console script would); a few
cases run as subprocesses to show the real exit status and stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# Imported here, as the rest of the suite does at collection: Lightning binds its log
# handler to the stderr of the moment, and imported inside a case that is the case's
# capture (a later case's info line went to a closed stream; run alone, this file failed).
import lightning.pytorch  # noqa: F401
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from condense.__main__ import main
from tests.conftest import tiny_config

GOOD = {"context": "Alpha lives in Beta.", "prompt": "Where?", "completion": "Beta."}
CONFIG, DATA = 2, 1  # exit status of a bad argument or config, of bad data or models


def jsonl(*lines: str | dict | bytes) -> Callable[[Path], list[str]]:
    """A case's input: a .jsonl file of these lines (dicts as JSON, bytes as they are)."""

    def write(folder: Path) -> list[str]:
        path = folder / "data.jsonl"
        path.write_bytes(b"".join(_as_bytes(line) + b"\n" for line in lines))
        return ["--data", str(path)]

    return write


def _as_bytes(line: str | dict | bytes) -> bytes:
    if isinstance(line, dict):
        line = json.dumps(line)
    return line if isinstance(line, bytes) else line.encode("utf-8")


def rows(n: int) -> list[dict]:
    return [{**GOOD, "context": f"Passage number {i} is here."} for i in range(n)]


def parquet(table: list[dict]) -> Callable[[Path], list[str]]:
    def write(folder: Path) -> list[str]:
        pq.write_table(pa.Table.from_pylist(table), folder / "data.parquet")
        return ["--data", str(folder / "data.parquet")]

    return write


def file(name: str, content: bytes) -> Callable[[Path], list[str]]:
    def write(folder: Path) -> list[str]:
        (folder / name).write_bytes(content)
        return ["--data", str(folder / name)]

    return write


def job_file(text: str) -> Callable[[Path], list[str]]:
    """A second job file, given after the tiny one, so only its keys change."""

    def write(folder: Path) -> list[str]:
        (folder / "job.yaml").write_text(text)
        return ["--config", str(folder / "job.yaml")]

    return write


def folder_of(name: str, flag: str) -> Callable[[Path], list[str]]:
    """A folder holding one file that is not a model, given to `flag`."""

    def write(folder: Path) -> list[str]:
        (folder / "stuff").mkdir()
        (folder / "stuff" / name).write_text("garbage {{{")
        return [flag, str(folder / "stuff")]

    return write


def flags(*argv: str) -> Callable[[Path], list[str]]:
    return lambda folder: list(argv)


def not_a_checkpoint(folder: Path) -> list[str]:
    (folder / "notes.ckpt").write_text("not a checkpoint")
    return ["--resume", str(folder / "notes.ckpt")]


class _RunsCode:
    def __reduce__(self):
        return print, ("unpickled",)


def a_checkpoint_that_holds_code(folder: Path) -> list[str]:
    torch.save({"state_dict": {}, "hook": _RunsCode()}, folder / "shared.ckpt")
    return ["--resume", str(folder / "shared.ckpt")]


def run_dir_is_a_file(folder: Path) -> list[str]:
    (folder / "taken").write_text("not a folder")
    return ["--run-dir", str(folder / "taken")]


def run_dir_in_an_artifact(folder: Path) -> list[str]:
    (folder / "artifact").mkdir()
    (folder / "artifact" / "condense_config.json").write_text("{}")
    return ["--run-dir", str(folder / "artifact" / "run")]


# (id, input, exit status, what the one line must say)
# fmt: off
CASES = [
    # Data: rows that cannot be used, named by file, row and problem.
    ("missing-field", jsonl(GOOD, {"context": "c", "prompt": "p"}), DATA,
     r"data.jsonl: line 2: missing field 'completion'"),
    ("null-value", jsonl({**GOOD, "completion": None}), DATA,
     r"data.jsonl: line 1: field 'completion' is null"),
    ("number-not-text", jsonl(GOOD, GOOD, {**GOOD, "context": 42}), DATA,
     r"data.jsonl: line 3: field 'context' is int, not text"),
    ("list-not-text", jsonl({**GOOD, "prompt": ["a"]}), DATA,
     r"line 1: field 'prompt' is list, not text"),
    ("task-a-list", jsonl(GOOD, {**GOOD, "task": ["qa"]}), DATA,
     r"data.jsonl: line 2: field 'task' is list, not text"),
    ("both-sets-of-columns", jsonl({**GOOD, "expected_completion": "Gamma."}), DATA,
     r"line 1: fields 'completion' and 'expected_completion' both given"),
    ("empty-context", jsonl(GOOD, {**GOOD, "context": ""}), DATA,
     r"line 2: field 'context' is empty"),
    ("blank-completion-original-columns",
     jsonl({"context": "c", "activation_prompt": "p", "expected_completion": "  "}), DATA,
     r"line 1: field 'expected_completion' is empty"),
    ("invalid-utf8", jsonl(GOOD, GOOD, b'{"context": "caf\xe9"}'), DATA,
     r"data.jsonl: line 3: not valid UTF-8 \(byte 0xe9"),
    ("lone-surrogate", jsonl(GOOD, '{"context": "a \\ud800 b", "prompt": "p", "completion": "c"}'),
     DATA, r"line 2: field 'context' is not valid unicode"),
    ("not-json", jsonl(GOOD, "{not json"), DATA, r"data.jsonl: line 2: not a JSON object"),
    ("json-but-not-an-object", jsonl("[1, 2]"), DATA, r"line 1: expected an object .* got list"),
    ("empty-file", jsonl(), DATA, r"data.jsonl: no rows"),
    ("blank-lines-only", file("data.jsonl", b"\n\n  \n"), DATA, r"data.jsonl: no rows"),
    ("fewer-rows-than-a-batch", jsonl(*rows(14)), DATA,
     r"2 training samples .* fewer than one batch \(dataset.batch_size=4\)"),
    ("too-few-rows-to-split", jsonl(GOOD), DATA,
     r"1 sample of one passage \(context\) cannot make both a training and a validation split"),
    # Questions on one document: the same error, without the reason.
    ("rows-of-one-passage", jsonl(*[{**GOOD, "prompt": f"Q{i}?"} for i in range(30)]), DATA,
     r"30 samples of one passage \(context\) .*: a passage is never in both; give two or more"),
    ("val-size-takes-every-passage",
     lambda f: jsonl(*rows(30))(f) + ["--dataset.val_size", "100"], DATA,
     r"30 samples of 30 passages .*: validation takes whole passages, up to dataset.val_size=100"),
    ("no-rows-of-the-tasks", lambda f: jsonl(*rows(30))(f) + ["--dataset.tasks", "[qa]"], DATA,
     r"dataset.tasks: no sample of 'qa' in --data .*data.jsonl \(its tasks: unknown\)"),
    # A misspelt task beside a right one trained without it, silently.
    ("a-task-misspelt", flags("--data", "synthetic", "--dataset.tasks",
                              "[reconstruction, question_answring]"), DATA,
     r"no sample of 'question_answring' in --data synthetic \(its tasks: continuation, .*\)"),
    ("parquet-null", parquet([GOOD, {**GOOD, "completion": None}]), DATA,
     r"data.parquet: row 2: field 'completion' is null"),
    ("parquet-corrupt", file("data.parquet", b"PAR1 not really"), DATA,
     r"data.parquet: not a readable parquet file"),
    ("unsupported-file-type", file("data.txt", b"context,prompt\n"), DATA,
     r"unsupported file type '.txt'"),
    # The type was every suffix: '.1.txt', and '.v2.txt.gz'.
    ("unsupported-dotted-name", file("squad_v1.1.txt", b"context,prompt\n"), DATA,
     r"squad_v1.1.txt: unsupported file type '.txt' \(use"),
    # Every row said "missing field 'context'": the header, read as one column, lacked it.
    ("csv-of-semicolons", file("data.csv", b"context;prompt;completion\na;b;c\n"), DATA,
     r"data.csv: line 1: the header names no 'context' column .*: is it semicolon-separated"),
    ("csv-row-short", file("data.csv", b"context,prompt,completion\na,b\n"), DATA,
     r"data.csv: line 2: 2 cells, where the header has 3"),
    ("csv-not-utf8", file("data.csv", b"context,prompt,completion\ncaf\xe9,b,c\n"), DATA,
     r"data.csv: line 2: field 'context' is not valid UTF-8 \(byte 0xe9\)"),
    ("csv-column-twice", file("data.csv", b"context,prompt,completion,context\na,b,c,d\n"),
     DATA, r"data.csv: line 1: columns named twice: context$"),
    ("unsupported-compressed-type", file("notes.v2.txt.gz", b""), DATA,
     r"notes.v2.txt.gz: unsupported file type '.txt.gz' \(use"),
    ("missing-file", flags("--data", "/no/such/data.jsonl"), DATA, r"no such file"),
    ("data-empty", flags("--data", ""), DATA, r"--data '': no data source"),
    ("data-null-in-job-file", job_file("data: null\n"), CONFIG, r"data must be text, got None"),
    # Config: names, types and values.
    ("unknown-option", flags("--max-stepz", "3"), CONFIG,
     r"unknown option --max_stepz \(did you mean --max_steps\?\)"),
    ("unknown-nested-option", flags("--model.lora-rr", "3"), CONFIG,
     r"unknown option --model.lora_rr \(did you mean --model.lora_r\?\)"),
    ("unknown-key-in-job-file", job_file("optim:\n  lr_loar: 0.001\n"), CONFIG,
     r"unknown key optim.lr_loar \(did you mean optim.lr_lora\?\)"),
    # "did you mean optim?": the group holding it.
    ("job-file-key-a-prefix", job_file("optim:\n  lr: 0.001\n"), CONFIG,
     (r"unknown key optim.lr \(did you mean optim.lr_condense, optim.lr_projection or"
     r" optim.lr_lora\?\)$")),
    # "did you mean print_config?"
    ("job-file-print-config", job_file("print_config: true\n"), CONFIG,
     (r"unknown key print_config: --print_config is a command-line flag, not a job file"
     r" setting$")),
    ("group-not-a-mapping", job_file("model: 3\n"), CONFIG, r"model: expected a mapping"),
    ("job-file-not-yaml", job_file("max_steps: [\n"), CONFIG,
     r"--config .*job.yaml: not valid YAML, line 2 column 1: expected the node content"),
    ("job-file-empty", job_file("# nothing set\n"), CONFIG,
     r"--config .*job.yaml: the job file is empty"),
    ("job-file-a-list", job_file("- max_steps: 3\n"), CONFIG,
     r"--config .*job.yaml: expected a mapping of settings, got list"),
    ("job-file-wandb-off-unquoted", job_file("wandb: off\n"), CONFIG,
     r'--config .*job.yaml: wandb: false: YAML reads an unquoted off .*quote it: wandb: "off"'),
    # "got 'False'", with nothing said of the no.
    ("job-file-name-no-unquoted", job_file("name: no\n"), CONFIG,
     (r"--name: expected text, got 'False' \(YAML reads an unquoted yes, no, on or off as"
     r" true/false: quote it\)$")),
    # YAML keeps a key's last value: the first model:'s settings were dropped unsaid.
    ("job-file-key-twice", job_file("model:\n  lora_r: 3\nmodel:\n  lora_alpha: 5\n"),
     CONFIG, r"job.yaml: not valid YAML, line 3 column 1: 'model' is given twice"),
    # Its settings all commented out: a TypeError traceback where another key followed.
    ("job-file-group-emptied", job_file("model:\nmax_steps: 3\n"), CONFIG,
     r"job.yaml: model: is empty: put model.\* settings under it \(indented\), or remove"),
    # W&B refused it with 48 lines, after config.yaml and hparams.yaml were written.
    ("wandb-project-with-a-slash", flags("--wandb", "offline", "--wandb_project", "a/b"), CONFIG,
     r"wandb_project must be a W&B project name .*got 'a/b'"),
    ("devices-too-many-digits", flags("--devices", "1" + "0" * 30), CONFIG,
     r"devices=10+, strategy='auto', num_nodes=1: cannot fit 'int'"),
    ("job-file-missing", flags("--config", "/no/such/job.yaml"), CONFIG,
     r"--config: File does not exist"),
    ("int-given-text", flags("--max-steps", "abc"), CONFIG,
     r"--max_steps: expected an integer, got 'abc'"),
    ("float-given-text", flags("--optim.lr_lora", "fast"), CONFIG,
     r"--optim.lr_lora: expected a number, got 'fast'"),
    ("choice-not-listed", flags("--wandb", "maybe"), CONFIG,
     r"--wandb: expected one of auto, online, offline, off, got 'maybe'"),
    ("bool-given-text", flags("--model.gradient_checkpointing", "maybe"), CONFIG,
     r"expected true or false or null, got 'maybe'"),
    ("n-zero", flags("--model.num_condense_tokens", "0"), CONFIG,
     r"model.num_condense_tokens must be positive, got 0"),
    ("n-negative", flags("--model.num_condense_tokens", "-3"), CONFIG,
     r"model.num_condense_tokens must be positive, got -3"),
    ("n-over-the-context-budget", flags("--model.num_condense_tokens", "200"), CONFIG,
     r"num_condense_tokens \(200\) is larger than the context budget dataset.max_tokens \(96\)"),
    ("n-over-the-model-positions",
     flags("--dataset.max_tokens", "500", "--model.num_condense_tokens", "50"), CONFIG,
     r"550 positions, more than the encoder .* has \(512\)"),
    ("lr-zero", flags("--optim.lr_lora", "0"), CONFIG, r"optim.lr_lora must be a positive"),
    ("lr-negative", flags("--optim.lr_condense=-1e-4"), CONFIG,
     r"optim.lr_condense must be a positive number, got -0.0001"),
    ("batch-size-zero", flags("--dataset.batch_size", "0"), CONFIG,
     r"dataset.batch_size must be positive, got 0"),
    ("dropout-out-of-range", flags("--model.lora_dropout", "1.5"), CONFIG,
     r"model.lora_dropout must be in \[0, 1\)"),
    ("max-bad-steps-zero", flags("--optim.max_bad_steps", "0"), CONFIG,
     r"optim.max_bad_steps must be positive"),
    ("unknown-precision", flags("--precision", "fp8"), CONFIG, r"precision must be one of"),
    ("transformer-engine", flags("--precision", "transformer-engine"), CONFIG,
     r"precision must be one of"),
    ("seed-negative", flags("--seed=-5"), CONFIG, r"seed must be 0 to 4294967295, got -5"),
    ("seed-over-32-bits", flags("--seed", "5000000000"), CONFIG,
     r"seed must be 0 to 4294967295, got 5000000000"),
    ("zero-nodes", flags("--num-nodes", "0"), CONFIG, r"num_nodes must be positive"),
    ("name-with-a-slash", flags("--name", "a/b"), CONFIG,
     r"name must be a folder name \(no / or \\\), got 'a/b'"),
    ("devices-not-a-count", flags("--devices", "foo"), CONFIG, r"devices='foo', strategy="),
    ("devices-zero", flags("--devices", "0"), CONFIG, r"devices=0, strategy="),
    ("unknown-strategy", flags("--strategy", "foo"), CONFIG, r"strategy='foo'.*invalid strategy"),
    # 1e8 ran out of memory after 75 s; 1e30 was a 67-line torch traceback.
    ("lora-rank-above-the-width", flags("--model.lora_r", "1000"), CONFIG,
     r"model.lora_r=1000 is above the encoder's hidden size \(32\): give a rank at most that"),
    ("lora-targets-not-in-the-model", flags("--model.lora_target_modules", "[foo]"), CONFIG,
     r"model.lora_target_modules=\['foo'\]: Target modules"),
    ("model-id-not-found-offline", flags("--model.encoder", "no-org/no-model"), DATA,
     r"model 'no-org/no-model' is not a local folder and is not in the Hub cache"),
    ("model-folder-missing", flags("--model.decoder", "/no/such/model"), DATA,
     r"model '/no/such/model': no such folder"),
    ("model-folder-without-a-model", folder_of("notes.txt", "--model.encoder"), DATA,
     r"model '.*': a folder without a model \(no config.json\)"),
    ("run-dir-is-a-file", run_dir_is_a_file, CONFIG, r"run_dir '.*taken' is a file"),
    # Checkpoints, metrics and a second artifact grew inside it, and were pushed with it.
    ("run-dir-in-an-artifact", run_dir_in_an_artifact, CONFIG,
     r"run_dir .*artifact/run is inside the artifact .*artifact, whose folder holds the artifact"),

    ("resume-from-missing-checkpoint", flags("--resume", "/no/such.ckpt"), DATA,
     r"--resume /no/such.ckpt: no such checkpoint"),
    ("resume-from-a-file-that-is-not-a-checkpoint", not_a_checkpoint, DATA,
     r"notes.ckpt: not a readable checkpoint"),
    # torch's message said how to load it anyway: weights_only=False, which runs the code.
    ("resume-from-a-checkpoint-that-holds-code", a_checkpoint_that_holds_code, DATA,
     r"shared.ckpt: refused: not weights alone: it names print, which weights-only"),
]
# fmt: on
if not torch.cuda.is_available():
    CASES.append(
        (
            "gpu-job-without-a-gpu",
            flags("--accelerator", "gpu"),
            CONFIG,
            r"accelerator=gpu but torch sees no GPU",
        )
    )
    CASES.append(
        (
            "float16-on-a-cpu",
            flags("--precision", "16-mixed"),
            CONFIG,
            r"16-mixed runs on a GPU only",
        )
    )
    # It trained, validated at nan, and wrote NaN into summary.json, which is no JSON.
    CASES.append(
        ("float16-true-on-a-cpu", flags("--precision", "16-true"), CONFIG, r"16-true runs on a GPU")
    )


@pytest.fixture(scope="session")
def tiny_job(tiny_pair, tmp_path_factory) -> Path:
    """A job file that trains the tiny pair: the cases change one thing in it."""
    cfg = tiny_config(*tiny_pair, run_dir=Path("unused")).to_dict()
    del cfg["run_dir"]  # each case gives its own
    path = tmp_path_factory.mktemp("job") / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "make_input, status, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_and_writes_nothing(
    tiny_job, tmp_path, capsys, make_input, status, message
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    run_dir = tmp_path / "run"
    argv = ["train", "--config", str(tiny_job), "--run-dir", str(run_dir)]
    argv += make_input(inputs)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == status
    err = capsys.readouterr().err
    # transformers' progress bar, where the check needs the weights loaded (--resume).
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("condense: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not run_dir.exists()
    assert sorted(tmp_path.rglob("*")) == before  # no artifact, log or leftover anywhere


def test_there_are_at_least_25_cases_of_data_and_config():
    assert len(CASES) >= 25
    assert sum(status == DATA for _, _, status, _ in CASES) >= 10
    assert sum(status == CONFIG for _, _, status, _ in CASES) >= 10


def _condense(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "condense", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


def test_real_exit_status_and_stderr_without_a_traceback(tiny_job, tmp_path):
    """Two cases as a user meets them: the process's own exit status and stderr."""
    bad_row = tmp_path / "bad.jsonl"
    bad_row.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "context": None}) + "\n")
    for args, status, text in [
        (["--max-stepz", "3"], CONFIG, "unknown option --max_stepz (did you mean --max_steps?)"),
        (["--data", str(bad_row)], DATA, f"{bad_row}: line 2: field 'context' is null"),
    ]:
        out = _condense(["train", "--config", str(tiny_job), *args], tmp_path)
        assert out.returncode == status
        assert out.stderr.strip().splitlines() == [
            f"condense: error: {text} (skip such rows: dataset.skip_bad_rows=true, or eval --skip-bad-rows)"
            if status == DATA
            else f"condense: error: {text}"
        ]
        assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tiny_job, tmp_path):
    out = _condense(["train", "--config", str(tiny_job), "--debug", "--max-steps", "0"], tmp_path)
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "max_steps must be positive, got 0" in out.stderr
