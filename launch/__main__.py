"""`python -m launch run JOB [--checkpoint-dir DIR] [--hub-repo OWNER/NAME] [overrides...]`

The entry both sky.yaml and modal_app.py run on a node (see launch/run.py).
"""

from __future__ import annotations

import sys

USAGE = """usage: python -m launch run JOB [--checkpoint-dir DIR] [--hub-repo OWNER/NAME] [overrides...]
       python -m launch pins [--python | --embedded]

  JOB        a job in jobs/ (test, default) or a job YAML path
  overrides  `condense train` flags, e.g. --max-steps 500 (condense train --help lists them)
  pins       the library versions both clouds install, one per line (launch/spec.py);
             --python: the Python version; --embedded: the test job's model package
"""


def main(argv: list[str] | None = None) -> None:
    """Dispatch `python -m launch COMMAND`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        raise SystemExit(0 if argv else 2)
    if argv[0] == "pins":
        return print_pins(argv[1:])
    if argv[0] != "run":
        print(f"launch: error: unknown command {argv[0]!r}\n{USAGE}", end="", file=sys.stderr)
        raise SystemExit(2)  # a usage error, as argparse's
    from condense.cli_errors import run_reporting_errors
    from launch.run import main as run

    # A bad job, flag or data is one line in the node's log, as with `condense train`.
    run_reporting_errors(lambda: run(argv[1:]), "launch", debug="--debug" in argv)


def print_pins(argv: list[str]) -> None:
    """What sky.yaml's setup installs, as Modal's image does: launch/spec.py's pins."""
    from launch.spec import SPEC

    printed = {
        (): "\n".join(SPEC.image_packages),
        ("--python",): SPEC.python_version,
        ("--embedded",): SPEC.embedded_model_package,
    }
    if tuple(argv) not in printed:
        print(f"launch: error: pins takes --python or --embedded\n{USAGE}", end="", file=sys.stderr)
        raise SystemExit(2)
    print(printed[tuple(argv)])


if __name__ == "__main__":
    main()
