"""Writes that are never half-done: a temporary sibling, then an atomic rename.

A reader opens the file by its own name, so it finds the old version or the new one; a
writer killed half-way leaves only a hidden `.NAME.tmp-PID` beside it, which no reader
looks at.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_sibling(path: Path) -> Path:
    """The hidden name `path` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def replace_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary sibling of `path`, then rename it to `path`."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            # On disk before the name points at it: after a power cut the file is whole too.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part."""
    replace_atomic(path, lambda f: f.write(text.encode("utf-8")))
