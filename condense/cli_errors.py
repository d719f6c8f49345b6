"""Command-line, job-file and run-time mistakes as one line that names the problem.

jsonargparse reports a bad option with the whole usage text and a multi-line message; a
user wants the flag, what it expects, what it got, and for a misspelled name the nearest
valid one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import signal
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from condense.config import ConfigError

# How jsonargparse spells a type in "Expected a <class 'int'>" and how a user would.
TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "text",
    "list": "a list",
    "dict": "a mapping",
    "NoneType": "null",
    "PositiveFloat": "a number above 0",
    "PositiveInt": "an integer above 0",
}
# How jsonargparse spells a restricted type's bound ("restriction v>0").
BOUND_WORDS = {">": "more than", ">=": "at least", "<": "less than", "<=": "at most"}


def parse(parser: ArgumentParser, argv: list[str]) -> Namespace:
    """`parser.parse_args(argv)`, raising a one-line ConfigError instead of printing usage.

    The parser must be built with `exit_on_error=False`.
    """
    try:
        return parser.parse_args(argv)
    except argparse.ArgumentError as err:
        missing = re.match(r"the following arguments are required: (.*)", str(err))
        if missing:  # argparse names an option by its dest: "required: repo"
            flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
            named = [flags.get(d, d) for d in missing.group(1).split(", ")]
            raise ConfigError(f"missing {', '.join(named)} (required)") from err
        raise ConfigError(one_line(str(err), option_names(parser))) from err


def check_job_file(path: Path) -> None:
    """A job file that jsonargparse would reject unhelpfully ("<unicode string>" for a YAML
    error, "Unexpected config:" for an empty file), named with its problem."""
    import yaml

    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_keys_loader())
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {err.start})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or err
        raise ConfigError(f"--config {path}: not valid YAML{where}: {problem}") from err
    if loaded is None:
        raise ConfigError(f"--config {path}: the job file is empty")
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping of settings, got {type(loaded).__name__}"
        )
    for group in ("model", "dataset", "optim"):
        # Every setting under it commented out: jsonargparse said "Unexpected config:", or
        # failed with a TypeError where another key followed.
        if group in loaded and loaded[group] is None:
            raise ConfigError(
                f"--config {path}: {group}: is empty: put {group}.* settings under it"
                " (indented), or remove the line"
            )
    if isinstance(loaded.get("wandb"), bool):
        # YAML 1.1 reads an unquoted off (or on, no, yes) as a boolean: jsonargparse's
        # "got 'False'" would not say why.
        raise ConfigError(
            f"--config {path}: wandb: {str(loaded['wandb']).lower()}: YAML reads an unquoted"
            ' off or on as true/false; quote it: wandb: "off"'
        )


def _unique_keys_loader() -> type:
    """A safe YAML loader that refuses a key given twice in one mapping: YAML loaders keep
    the last, so `model:` written twice silently dropped the first one's settings."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen = set()
            for key_node, _ in node.value:
                # A merge (<<) may be overridden by the mapping's own keys: that is YAML.
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # construct_mapping names that
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeys


def option_names(parser: ArgumentParser) -> list[str]:
    """Every dotted key the parser accepts: `max_steps`, `model.lora_r`, ..."""
    return [a.dest for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)]


def one_line(message: str, names: list[str]) -> str:
    """A jsonargparse error message, rewritten as one line for a person."""
    unknown_flags = re.match(r"unrecognized arguments: (.*)", message)
    if unknown_flags:
        return _unknown_arguments(unknown_flags.group(1).split(), names)
    unknown_key = re.match(
        r"(?:Group '([\w.]+)' does not accept option|Option) '([\w.]+)'(?: is not accepted)?",
        message,
    )
    if unknown_key:
        group, key = unknown_key.groups()
        return _unknown(f"{group}.{key}" if group else key, names, "key", "")
    bad_value = re.match(r'Parser key "([\w.]+)":\s*(.*)', message, re.DOTALL)
    if bad_value:
        return _bad_value(*bad_value.groups())
    return " ".join(message.split())


def _unknown_arguments(words: list[str], names: list[str]) -> str:
    flag = next((w for w in words if w.startswith("--")), None)
    if flag is None:
        return f"unexpected argument {' '.join(words)!r}"
    return _unknown(flag[2:].partition("=")[0], names, "option", "--")


def _unknown(key: str, names: list[str], kind: str, prefix: str) -> str:
    if kind == "key" and key in names:
        # An option of the command line that a job file cannot set: it was told to mean
        # itself ("unknown key print_config (did you mean print_config?)").
        return f"unknown key {key}: --{key} is a command-line flag, not a job file setting"
    nearest = [f"{prefix}{name}" for name in _nearest(key, names)]
    if not nearest:
        return f"unknown {kind} {prefix}{key}"
    said = nearest[0] if len(nearest) == 1 else f"{', '.join(nearest[:-1])} or {nearest[-1]}"
    return f"unknown {kind} {prefix}{key} (did you mean {said}?)"


def _nearest(key: str, names: list[str]) -> list[str]:
    """The options a misspelt `key` may mean: the few (3 at most) whose name, or whose last
    part for an undotted key, it begins (optim.lr: optim.lr_condense, optim.lr_projection,
    optim.lr_lora), else the nearest in spelling. Never the group a dotted key is in,
    which difflib found nearest: `optim.lr` was "did you mean optim?"."""
    names = [name for name in names if not key.startswith(f"{name}.")]
    dotted = "." in key
    begun = [
        name
        for name in names
        if name.startswith(key) or (not dotted and name.rpartition(".")[2].startswith(key))
    ]
    if 0 < len(begun) <= 3:
        return begun
    return difflib.get_close_matches(key, names, n=1, cutoff=0.6)


def _bad_value(key: str, detail: str) -> str:
    given = re.search(r"(?:Got|Given) value: (.*)", detail)
    # PositiveInt and kin: "Not of type PositiveInt: 0 does not conform to restriction v>0",
    # the value left out when the type is inside a union (`PositiveInt | None`).
    bound = re.search(
        r"Not of type \w+: (.*?)\s*does not conform to restriction v([<>]=?)(-?\d+)", detail
    )
    if bound:
        value = bound.group(1) or (given.group(1).strip() if given else "?")
        return f"--{key}: expected {BOUND_WORDS[bound.group(2)]} {bound.group(3)}, got {value}"
    if re.search(r"Not of type \w+: invalid literal for int\(\)", detail):
        # Quoted or not, depending on whether the type sits in a union.
        value = (given.group(1) if given else detail.rpartition(": ")[2]).strip().strip("'")
        return f"--{key}: expected an integer, got {value!r}"
    if given is None:
        return f"--{key}: {' '.join(detail.split())}"
    expected_part = detail.split("Given value type")[0]  # not the type of what was given
    literal = re.search(r"Literal\[(.*?)\]", expected_part)
    if literal:
        expected = "one of " + literal.group(1).replace("'", "")
    else:
        # Named by module too (jsonargparse.typing.PositiveFloat): it read "expected null".
        kinds = re.findall(r"<class '(?:[\w.]+\.)?(\w+)'>|\b(list)\[", expected_part)
        words = dict.fromkeys(TYPE_WORDS.get(a or b, a or b) for a, b in kinds)
        expected = " or ".join(words) or "another type"
    got = given.group(1).strip()
    return f"--{key}: expected {expected}, got {got!r}{_yaml_boolean_hint(got, expected)}"


def _yaml_boolean_hint(got: str, expected: str) -> str:
    """Why a value the user wrote as a word arrived as a boolean: YAML 1.1, which the job
    file (and a value on the line) is read as, takes an unquoted yes, no, on or off for
    one. `name: no` was "expected text, got 'False'", with nothing said of the no. Only
    where text is taken: a quoted yes is no integer either."""
    if "text" not in expected or not re.search(r"\b(True|False)\b", got):
        return ""
    return " (YAML reads an unquoted yes, no, on or off as true/false: quote it)"


def check_groups(parsed: Namespace, groups: list[str]) -> None:
    """A job file that sets a group (`model: 3`) to something other than a mapping."""
    for group in groups:
        value: Any = parsed.get(group)
        if value is not None and not isinstance(value, Namespace):
            raise ConfigError(f"{group}: expected a mapping of {group}.* settings, got {value!r}")


def run_reporting_errors(command: Callable[[], Any], prog: str, debug: bool) -> Any:
    """Run `command`; a user error (is_user_error) ends it as one line on stderr, `prog:
    error: ...`, and exit status 2 for a mistake in the arguments or config, else 1.
    With `debug`, and for any other error, the traceback stands."""
    try:
        return command()
    except KeyboardInterrupt:
        if debug:
            raise
        # Ctrl-C while models load or data is read: nothing to save, and no traceback to
        # read; while training, SaveOnSigterm stops at the step's end with a checkpoint.
        print(f"\n{prog}: interrupted", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        # One line, whatever the message held: a reader (or a log parser) sees the problem.
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None


def is_user_error(err: Exception) -> bool:
    """Whether `err` is one of user_errors(), asked without importing them (torch,
    Lightning: seconds) for an argument mistake, the commonest."""
    if isinstance(err, ConfigError):
        return True
    return isinstance(err, user_errors())


def user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message says what to fix: shown as one line, without a traceback.

    Imported here, not at the top, so that a mistyped flag costs no torch import.
    """
    from condense.artifact import ArtifactError
    from condense.module import CheckpointMismatchError, NonFiniteLossError
    from condense.push import PushError
    from condense.samples import DataError
    from condense.weights import ModelNotFoundError

    return (
        ConfigError,
        ArtifactError,
        DataError,
        ModelNotFoundError,
        PushError,
        CheckpointMismatchError,
        NonFiniteLossError,
        OSError,  # a missing, unreadable or unwritable file; a full disk
    )
