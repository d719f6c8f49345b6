"""The `condense` command line.

    condense train --test                       # the embedded job, CPU-sized
    condense train --config jobs/default.yaml   # Llama-3.2-1B -> Mistral-7B
    condense train --test --max-steps 50 --model.num_condense_tokens 16

Every field of the config is a flag; nested ones read `--model.lora_r 64`. Flags accept
dashes or underscores (`--max-steps` is `--max_steps`).
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from condense.config import TrainConfig

PACKAGE_DIR = Path(__file__).resolve().parent


def job_path(name: str) -> Path:
    """A job file: a path as given, else jobs/NAME.yaml shipped with the package or beside it."""
    given = Path(name)
    if given.is_file():
        return given
    for jobs in (PACKAGE_DIR / "jobs", PACKAGE_DIR.parent / "jobs"):
        candidate = jobs / f"{name.removesuffix('.yaml')}.yaml"
        if candidate.is_file():
            return candidate
    raise SystemExit(f"condense: error: no job {name!r} (not a file, not in jobs/)")


def train_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="condense train",
        description="Train a condenser. Every option below can be set in a job YAML (--config)"
        " and overridden on the command line; dashes and underscores are interchangeable.",
    )
    parser.add_argument(
        "--test",
        action="store_true",
        help="Use jobs/test.yaml: the embedded model and data, sized for a CPU.",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="A job YAML (jobs/*.yaml or a path)."
    )
    parser.add_class_arguments(TrainConfig)
    return parser


def parse_train(argv: list[str]) -> TrainConfig:
    """A TrainConfig from `condense train` arguments."""
    argv = normalize_flags(argv)
    if "--test" in argv:
        # The job file goes first, so flags given on the line override it wherever they stand.
        argv = ["--config", str(job_path("test"))] + argv
    parser = train_parser()
    parsed = parser.instantiate(parser.parse_args(argv))
    try:
        return TrainConfig(**{f.name: getattr(parsed, f.name) for f in fields(TrainConfig)})
    except ValueError as err:  # the config's own checks (__post_init__)
        parser.error(str(err))


def normalize_flags(argv: list[str]) -> list[str]:
    """`--max-steps 5` -> `--max_steps 5`, `--run-dir=x` -> `--run_dir=x`; values untouched."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = "--" + flag[2:].replace("-", "_") + eq + value
        out.append(arg)
    return out


USAGE = """usage: condense COMMAND [options]

commands:
  train    train a condenser (condense train --help)
"""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `condense` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        cfg = parse_train(rest)
        from condense.samples import DataError
        from condense.train import train
        from condense.weights import ModelNotFoundError

        try:
            train(cfg)
        except (DataError, ModelNotFoundError, FileNotFoundError) as err:
            raise SystemExit(f"condense: error: {err}") from None
    else:
        raise SystemExit(f"condense: error: unknown command {command!r}\n{USAGE}")


if __name__ == "__main__":
    main()
