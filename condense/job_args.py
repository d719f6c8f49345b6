"""How the commands that take a job (train, bench, plan, and `python -m launch run`) read
their arguments: a job file found by name from any folder, `--test`, flags with dashes or
underscores, and the TrainConfig they make, checked before anything loads."""

from __future__ import annotations

import difflib
import re
from dataclasses import fields
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from condense.cli_errors import check_groups, check_job_file, parse
from condense.config import ConfigError, TrainConfig

PACKAGE_DIR = Path(__file__).resolve().parent
# Where shipped jobs are: inside the installed package (the wheel puts jobs/ there), and
# beside it in a source checkout.
JOB_FOLDERS = (PACKAGE_DIR / "jobs", PACKAGE_DIR.parent / "jobs")


def job_path(name: str) -> Path:
    """A job file: a path as given, else jobs/NAME.yaml shipped with the package or beside
    it, for NAME, NAME.yaml or jobs/NAME.yaml (the README's spelling, from any folder)."""
    given = Path(name)
    if given.is_file():
        return given
    if given.parent in (Path("."), Path("jobs")):
        for jobs in JOB_FOLDERS:
            candidate = jobs / f"{given.name.removesuffix('.yaml')}.yaml"
            if candidate.is_file():
                return candidate
    raise ConfigError(f"no job {name!r} (not a file, not in jobs/)")


def resolve_configs(argv: list[str]) -> list[str]:
    """Each `--config NAME` as the job file job_path finds for it, so that `--config default`
    or `--config jobs/test.yaml` works from any folder, and the file checked for YAML, not
    empty, a mapping. A value it finds nothing for is left to the parser, which says the
    file does not exist."""
    out = []
    for index, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag == "--config" and eq:
            arg = f"--config={_job_or_given(value)}"
        elif index and argv[index - 1] == "--config":
            arg = _job_or_given(arg)
        out.append(arg)
    return out


def configs_first(argv: list[str]) -> list[str]:
    """The job files (--config) moved before every other argument, in their own order:
    the parser applies arguments in order, so `--max_steps 3 --config J` trained J's
    max_steps, where flags on the line override the job file wherever they stand."""
    configs, rest = [], []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--config" and index + 1 < len(argv):
            configs += argv[index : index + 2]
            index += 2
            continue
        (configs if arg.startswith("--config=") else rest).append(arg)
        index += 1
    return configs + rest


JOB_NAME = re.compile(r"(jobs/)?[\w.-]+")  # what may name a shipped job, not inline YAML


def _job_or_given(name: str) -> str:
    try:
        found = job_path(name)
    except ConfigError:
        # A path elsewhere, or YAML given inline (`--config '{max_steps: 7}'`, which the
        # parser takes): the parser reads it, or says that the file does not exist.
        if Path(name).parent not in (Path("."), Path("jobs")) or not JOB_NAME.fullmatch(
            Path(name).as_posix()
        ):
            return name
        # A bare name that is no file is meant for a shipped job: `defualt` said only
        # "File does not exist", naming none of them.
        shipped = sorted({p.stem for folder in JOB_FOLDERS for p in folder.glob("*.yaml")})
        stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
        near = difflib.get_close_matches(stem, shipped, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(
            f"--config {name}: no such file, and no job of that name ({', '.join(shipped)}){hint}"
        ) from None
    check_job_file(found)
    return str(found)


def add_flag(parser: ArgumentParser, name: str, **kwargs) -> None:
    """`--name-with-dashes` and `--name_with_dashes`, one flag, as `condense train` takes both."""
    dest = name.replace("-", "_")
    parser.add_argument(f"--{name}", f"--{dest}", dest=dest, **kwargs)


def add_debug(parser: ArgumentParser) -> ArgumentParser:
    """The `--debug` flag every command takes (main() acts on it)."""
    parser.add_argument(
        "--debug", action="store_true", help="On an error, show the full traceback."
    )
    return parser


# A value that opens with "-" is read by argparse as a flag unless it looks like a negative
# number, and argparse's test (-1, -.5) misses scientific notation: `--optim.lr_condense
# -1e-4` was "expected one argument", where `=-1e-4` was read.
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def command_parser(prog: str, description: str) -> ArgumentParser:
    """The parser of a condense command: a mistake raised, not printed with the usage
    (cli_errors.parse makes it one line), no flag taken by a prefix of its name, and a
    negative number in any notation read as a value."""
    parser = ArgumentParser(
        prog=prog, description=description, exit_on_error=False, allow_abbrev=False
    )
    # An attribute argparse sets in __init__ and reads when it sorts flags from values.
    parser._negative_number_matcher = NEGATIVE_NUMBER
    return parser


def train_parser() -> ArgumentParser:
    """`condense train`'s parser: --test, --config and every TrainConfig field as a flag."""
    parser = command_parser(
        "condense train",
        "Train a condenser. Every option below can be set in a job YAML (--config)"
        " and overridden on the command line; dashes and underscores are interchangeable.",
    )
    parser.add_argument(
        "--test",
        action="store_true",
        help="Use jobs/test.yaml: the embedded model and data, sized for a CPU.",
    )
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="A job YAML: a path, or the name of one in jobs/ (default, bench, test).",
    )
    parser.add_class_arguments(TrainConfig)
    return add_debug(parser)


def parse_train(argv: list[str]) -> TrainConfig:
    """A TrainConfig from `condense train` arguments; ConfigError (one line) if they are wrong."""
    return parse_job(train_parser(), argv)[0]


def parse_job(parser: ArgumentParser, argv: list[str]) -> tuple[TrainConfig, Namespace]:
    """A TrainConfig from the arguments of a command that takes a job (train, bench, plan),
    and the parsed namespace for the command's own flags."""
    printing = [arg for arg in argv if _asks_to_print(arg)]
    if printing:
        # jsonargparse prints and exits inside the parse, before the config's own checks:
        # `--max-steps 0 --print_config` printed a job that training refuses.
        parse_job(parser, [arg for arg in argv if arg not in printing])
    argv = configs_first(resolve_configs(normalize_flags(argv)))
    if "--test" in argv:
        if any(arg.partition("=")[0] == "--config" for arg in argv):
            # Both name a job, and the later file would silently win over the test job.
            raise ConfigError("--test and --config both name a job: give one of them")
        # The job file goes first, so flags given on the line override it wherever they stand.
        argv = ["--config", str(job_path("test"))] + argv
    elif _file_asks_for_test(parser, argv):
        argv = ["--config", str(job_path("test"))] + argv
    parsed = parse(parser, argv)
    check_groups(parsed, ["model", "dataset", "optim"])
    # The config's own checks (__post_init__) run here, the nested groups' first.
    parsed = parser.instantiate(parsed)
    return TrainConfig(**{f.name: getattr(parsed, f.name) for f in fields(TrainConfig)}), parsed


def _asks_to_print(arg: str) -> bool:
    """Whether `arg` is --print_config, spelt with dashes or underscores."""
    return normalize_flags([arg])[0].partition("=")[0] == "--print_config"


def _file_asks_for_test(parser: ArgumentParser, argv: list[str]) -> bool:
    """Whether a job file sets `test: true`, as --print_config of a --test job writes it:
    parsed and ignored, it ran the default job. It asks for the test job under the file's
    settings, as --test does. Parsed once without --print_config, which would print and
    exit before the test job is put in."""
    return bool(parse(parser, [a for a in argv if not _asks_to_print(a)]).test)


def job_parser(prog: str, description: str) -> ArgumentParser:
    """A parser that takes a job like `condense train` (every option of it), for `prog`."""
    parser = train_parser()
    parser.prog, parser.description = prog, description
    return parser


def normalize_flags(argv: list[str]) -> list[str]:
    """`--max-steps 5` -> `--max_steps 5`, `--run-dir=x` -> `--run_dir=x`; values untouched."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = "--" + flag[2:].replace("-", "_") + eq + value
        out.append(arg)
    return out
