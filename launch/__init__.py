"""Run a condense job anywhere: one spec for both launchers (sky.yaml, modal_app.py) and
the entry every node runs, `python -m launch run JOB [--checkpoint-dir DIR] [overrides]`.

Imports without torch: `condense` is imported only inside the function that trains.
"""

from launch.spec import SPEC, LaunchSpec

__all__ = ["SPEC", "LaunchSpec"]
