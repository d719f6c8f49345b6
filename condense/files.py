"""Writes that are never half-done: a temporary sibling, then an atomic rename.

A reader opens the file by its own name, so it finds the old version or the new one; a
writer killed half-way leaves only a hidden `.NAME.tmp-PID` beside it, which no reader
looks at. A folder (the artifact) is swapped in whole the same way. Also json_out, the
check of an --out JSON path before the work that fills it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from condense.config import ConfigError

# The file that makes a folder an artifact: here, so that --out checks find it without
# loading the artifact module, which loads torch.
ARTIFACT_CONFIG_FILE = "condense_config.json"


def temporary_sibling(path: Path) -> Path:
    """The hidden name `path` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_temporaries(folder: Path, name: str = "*") -> None:
    """Remove the temporary siblings (temporary_sibling) of the files `name` in `folder`
    that writers killed mid-write left, whatever their process."""
    for stale in folder.glob(f".{name}.tmp-*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


def replace_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary sibling of `path`, then rename it to `path`."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with _create_new(tmp) as f:
            write(f)
            f.flush()
            # On disk before the name points at it: after a power cut the file is whole too.
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        # A full disk's OSError names no file (or the temporary one), and torch.save turns
        # it into a RuntimeError ("unexpected pos 64 vs 0") that a user cannot read.
        failed = err if isinstance(err, OSError) else err.__context__
        if not isinstance(failed, OSError) or failed.errno is None:
            raise
        raise OSError(failed.errno, failed.strerror, str(path)) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_new(path: Path) -> BinaryIO:
    """`path` opened for writing as a file this call creates: the temporary name is known
    in advance, and where others can write to the folder (/tmp, a shared disk), a link
    planted under it would have had the write land in the file it points to."""
    # O_BINARY: on Windows a descriptor is text mode without it, whatever fdopen's mode.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:  # left by a killed writer of this pid, or planted
        path.unlink()
        fd = os.open(path, flags, 0o666)
    return os.fdopen(fd, "wb")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a part."""
    replace_atomic(path, lambda f: f.write(text.encode("utf-8")))


# The folders of the Hub cache's repos (models--OWNER--NAME), whose snapshots link to blobs.
HUB_CACHE_REPOS = ("models--", "datasets--", "spaces--")


def leads_out(entry: Path, folder: Path) -> bool:
    """Whether `entry`, in `folder`, is a symbolic link to something outside it; a Hub-cache
    snapshot's links into its repo's blobs, which store its files, are not."""
    if not entry.is_symlink():
        return False
    folder = folder.resolve()
    target = entry.resolve()
    repo = folder.parents[1] if len(folder.parents) > 1 else folder
    in_hub_cache = folder.parent.name == "snapshots" and repo.name.startswith(HUB_CACHE_REPOS)
    return not (
        target.is_relative_to(folder) or in_hub_cache and target.is_relative_to(repo / "blobs")
    )


def write_json(path: Path, data: Any) -> None:
    """`data` as indented JSON at `path` (its folders made), written as write_atomic writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2))


def swap_in_folder(new: Path, path: Path) -> None:
    """Put the folder `new` at `path`, on disk first, deleting the folder `path` held.

    Where Linux can exchange the two in one rename (renameat2), a reader finds the old
    folder or the new one at `path` at every moment, and a writer killed at any point
    leaves one of them there. Elsewhere (another system, or a file system that cannot
    exchange) the old folder is renamed aside first: for a moment `path` is missing.
    """
    new, path = Path(new), Path(path)
    sync_folder(new)
    if path.exists() and _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
    else:
        # os.replace cannot replace a non-empty folder: move the old one aside first.
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(path.parent)


def umask_modes(folder: Path) -> None:
    """Give `folder` and its files the modes `mkdir` and `open` give (the umask's):
    tempfile makes a folder for its owner only, and so do some writers (safetensors) their
    files; swapped into place, no one else on a shared machine could read them."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _umask() -> int:
    # Read, not set and reset: os.umask changes it for every thread of the process.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_folder(folder: Path) -> None:
    """Flush every file under `folder`, and the folder, to disk: a rename that makes
    them visible could otherwise reach the disk before their contents, and a machine that
    loses power then shows empty files under the new name."""
    for root, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                _fsync(fd)
            finally:
                os.close(fd)
        _fsync_folder(Path(root))


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows opens no folder: its names are as durable as it makes them
        return
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    # A file system without fsync for a handle (some FUSE mounts, folders on others) says
    # EINVAL or ENOTSUP: what it holds is as durable as it makes it. Any other error (EIO:
    # the data did not reach the disk or the bucket) is a failed write, and raised.
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` in one step (renameat2 with RENAME_EXCHANGE); False where
    this system or file system cannot, and nothing was changed. Through ctypes, as neither
    os nor a maintained package offers it."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc 2.28+
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    # EINVAL: a file system without the flag (FUSE mounts say so too); ENOSYS: a kernel
    # before 3.15; EPERM: a sandbox's seccomp filter refusing the call.
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def file_above(path: Path) -> Path | None:
    """The file among `path`'s parents, where one is a file: nothing can be made there."""
    # exists() is False below a file (NotADirectoryError): the first file up the path is it.
    return next((p for p in path.parents if p.exists() and not p.is_dir()), None)


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies under it, `folder` being a folder that exists
    (through symlinks and `..` alike)."""
    return Path(folder).is_dir() and Path(path).resolve().is_relative_to(Path(folder).resolve())


def artifact_holding(path: Path) -> Path | None:
    """The artifact folder that `path` is, or lies in; None where there is none."""
    folders = (path, *path.absolute().parents)
    return next((p for p in folders if (p / ARTIFACT_CONFIG_FILE).is_file()), None)


def _run_holding(path: Path) -> Path | None:
    """The run folder that `path` is a file of (its summary.json, config.yaml, a
    checkpoint, ...: run_dir.RUN_FILES); None where there is none."""
    from condense.run_dir import RUN_FILES  # which imports this module

    path = path.absolute()
    for folder in path.parents:
        if (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir():
            return folder if path.relative_to(folder).parts[0] in RUN_FILES else None
    return None


def json_out(
    out: str | Path | None,
    example: str,
    reads: list[tuple[str, str | Path | None]] = (),
    make: bool = True,
) -> Path | None:
    """--out as a file the results can be written to, its folder made: checked before the
    work (minutes for bench or eval) that would end in failing to write it. `example` is a
    file name to suggest where --out names a folder; `reads` are the files the command reads,
    with the options that name them (--data, --config), which --out must not overwrite.
    Without `make`, the folder is neither made nor tried: a first check, for a command that
    learns what else it reads later."""
    if out is None:
        return None
    path = Path(out)
    artifact = artifact_holding(path)
    if artifact is not None:
        # Results there would be pushed with it, and outlive the weights they were of at its
        # next save (a new best in training, an import), which keeps what it finds.
        beside = artifact.parent / (path.name if artifact != path else example)
        raise ConfigError(
            f"--out {out} is {'an artifact' if artifact == path else 'in the artifact'} folder"
            f" {artifact}, which holds the artifact alone: write the results beside it ({beside})"
        )
    run = _run_holding(path)
    if run is not None:
        # A checkpoint or summary.json replaced by results: the run no longer resumed.
        raise ConfigError(
            f"--out {out} is one of the files of the run in {run} (or in its checkpoints/):"
            f" give the results a name of their own ({run / example})"
        )
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder: give the JSON file's path ({path / example})")
    for option, read in reads:
        if read is not None and path.is_file() and Path(read).is_file() and path.samefile(read):
            raise ConfigError(
                f"--out {out} is the {option} file: give the results"
                f" another name ({path.with_name(example)})"
            )
        # In a data folder the results would be read as data next time (and "eval.json"
        # would even make it a folder of splits).
        if read is not None and inside(path, read):
            raise ConfigError(
                f"--out {out} is inside the {option} folder: write the"
                f" results outside it ({Path(read).parent / example})"
            )
    blocking = file_above(path)
    if blocking is not None:
        raise ConfigError(f"--out {out}: {blocking} is a file, not a folder")
    if not make:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot make its folder: {err.strerror or err}") from None
    try:  # a folder that exists may still refuse files (read-only, /proc)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"--out {out}: cannot write in its folder: {err.strerror or err}"
        ) from None
    return path
