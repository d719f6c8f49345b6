"""Reading samples: local data files (.jsonl, .json, .csv, .tsv, .parquet, compressed or
not), folders of them or written by `datasets`' save_to_disk, and Hub datasets. Each row
becomes a Sample through condense.samples.from_rows, which names or skips bad ones."""

from __future__ import annotations

import bz2
import contextlib
import csv
import glob
import gzip
import io
import json
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from condense.config import first_line
from condense.network import hub_offline, hub_reachable
from condense.samples import (
    FIELDS,
    ORIGINAL_COLUMNS,
    DataError,
    DataReport,
    Sample,
    Unreadable,
    from_rows,
    row_samples,
    some_samples,
)

TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
SUFFIXES = (*TEXT_SUFFIXES, ".parquet")  # the data files read_file reads
DELIMITERS = {".csv": ",", ".tsv": "\t"}
# How a text file may be compressed, as datasets reads it (a local copy of a Hub dataset
# often holds train.jsonl.gz): parquet compresses inside the file.
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
KINDS = ".jsonl, .json, .csv, .tsv, .parquet, or any but .parquet in .gz, .bz2 or .xz"
# A context is often longer than the csv module's default cell limit of 131,072
# characters; a C long's largest value on every platform.
CSV_CELL_LIMIT = 2**31 - 1


def read_file(path: Path, skip_bad: bool = False, report: DataReport | None = None) -> list[Sample]:
    """Samples from a local .jsonl, .json (one object a line, or one array of objects),
    .csv or .tsv (a header row naming the columns) or .parquet file; see `from_rows` for
    bad rows."""
    report = report if report is not None else DataReport()
    return some_samples(_file_samples(path, skip_bad, report), str(path), report)


def _file_samples(path: Path, skip_bad: bool, report: DataReport) -> list[Sample]:
    """read_file without its check that some row was usable."""
    try:
        suffix = data_suffix(path)
        if suffix == ".json" and _holds_an_array(path):
            rows, unit = enumerate(_json_array_rows(path), start=1), "row"
        elif suffix == ".json" and (what := _one_object(path)) is not None:
            raise DataError(
                f"{path}: {what}, not rows: give one object a line, or one array of objects"
            )
        elif suffix in (".jsonl", ".json"):
            rows, unit = _jsonl_rows(path), "line"
        elif suffix in DELIMITERS:
            rows, unit = _csv_rows(path, DELIMITERS[suffix]), "line"
        elif suffix == ".parquet":
            rows, unit = enumerate(_parquet_rows(path), start=1), "row"
        else:
            raise DataError(f"{path}: unsupported file type {_file_type(path)} (use {KINDS})")
        return row_samples(rows, str(path), unit, skip_bad, report)
    # Unreadable: permissions, a folder; a cut or damaged archive (zlib: a gzip one's data).
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
        raise DataError(f"{path}: cannot read it ({reason})") from None


def data_suffix(path: Path) -> str | None:
    """The type of data file a name says (".jsonl" for train.JSONL.gz), None for another."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
        return suffixes[-1] if suffixes and suffixes[-1] in TEXT_SUFFIXES else None
    return suffixes[-1] if suffixes and suffixes[-1] in SUFFIXES else None


def _file_type(path: Path) -> str:
    """A file's type as its name gives it: '.csv' for squad_v1.1.csv, '.txt.gz' for a
    compressed text file."""
    compressed = path.suffix.lower() in COMPRESSIONS
    kind = "".join(path.suffixes[-2:] if compressed else path.suffixes[-1:])
    return repr(kind) if kind else "(no suffix)"


def _open(path: Path) -> IO[bytes]:
    """A data file's bytes, decompressed where its name says it is compressed."""
    opener = COMPRESSIONS.get(path.suffix.lower())
    # An empty file holds no rows, compressed or not: bz2 and xz take it for a cut archive.
    if opener is None or path.stat().st_size == 0:
        return path.open("rb")
    return opener(path, "rb")


def read_folder(
    folder: Path,
    skip_bad: bool = False,
    report: DataReport | None = None,
    split: str | None = None,
) -> list[Sample]:
    """Samples of one split from a local folder: one `datasets` saved with save_to_disk,
    or data files laid out as on the Hub. There, files that `datasets` puts in another
    split (test.jsonl, validation/...) or leaves out (metadata files, __special__
    folders) and files of other types are left out, and named in `report`; the split's
    files are read one by one as `read_file` reads one, so a bad row is named by its file
    and line. `split` is eval's --split; None is train, as training reads it."""
    report = report if report is not None else DataReport()
    if is_saved_dataset(folder):
        return _saved_samples(folder, skip_bad, report, split or "train")
    files = folder_splits(folder)
    wanted = split or "train"
    chosen = [f for f, found in sorted(files.items()) if found == wanted and _is_data(f)]
    why = {
        "no": "named for no split, beside ones that are",
        "ignored": "left out by datasets' folder rules: a metadata name or a __folder__",
    }
    left_out = [
        f"{f.relative_to(folder)} ("
        + (why.get(found, f"{found} split") if _is_data(f) else f"not {KINDS}")
        + ")"
        for f, found in sorted(files.items())
        if f not in chosen
    ]
    if not chosen:
        raise _no_files_of(split, folder, files, left_out)
    _refuse_copies(folder, chosen)
    report.files_left_out += left_out
    samples = [s for f in chosen for s in _file_samples(f, skip_bad, report)]
    return some_samples(samples, str(folder), report)


def _refuse_copies(folder: Path, chosen: list[Path]) -> None:
    """A DataError where two of a folder's files to be read are one file, compressed and
    otherwise (a.jsonl and a.jsonl.gz): both were read, and every row trained on twice,
    without a word. Refused, not one of them read: which is the current one (the copy
    compressed for the Hub, or an edit made since) cannot be told from the names."""
    copies: dict[Path, list[Path]] = {}
    for f in chosen:
        uncompressed = f.with_suffix("") if f.suffix.lower() in COMPRESSIONS else f
        copies.setdefault(uncompressed, []).append(f)
    twice = next((found for found in copies.values() if len(found) > 1), None)
    if twice:
        names = " and ".join(str(f.relative_to(folder)) for f in twice)
        raise DataError(
            f"--data {folder}: {names} are copies of one file (compressed and not, or"
            " otherwise): every row would be read more than once (keep one)"
        )


def _no_files_of(
    split: str | None, folder: Path, files: dict[Path, str], left_out: list[str]
) -> DataError:
    """read_folder's error for a folder with no data file of `split` (None: training's
    train split): what it holds, and where data files of other splits can still be read,
    how."""
    held = f": it holds {', '.join(left_out)}" if left_out else ""
    skipped = (split or "train", "ignored")
    others = sorted({found for f, found in files.items() if found not in skipped and _is_data(f)})
    if split is None:
        what = "training files"
        hint = "; give a file itself to train on it" if others else ""
    else:
        named = [s for s in others if s != "no"]
        what = f"{split}-split files"
        hint = f"; --split {' or '.join(named)} reads one" if named else ""
    return DataError(
        f"--data {folder}: no {what} ({KINDS}, not named for another split){held}{hint}"
    )


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` was written by `datasets`' save_to_disk (one dataset or several)."""
    return (folder / "dataset_dict.json").is_file() or all(
        (folder / name).is_file() for name in ("state.json", "dataset_info.json")
    )


def folder_splits(folder: Path) -> dict[Path, str]:
    """The split `datasets` puts each file of a folder of data files in, by its path as
    `folder` names it: "train", "test", ...; "no" for a data file named for no split
    beside files that are, "ignored" for one its folder rules leave out. Hidden files and
    files of other types that it puts in no split are not listed."""
    from datasets.data_files import DataFilesDict, get_data_patterns
    from datasets.exceptions import DataFilesNotFoundError

    # datasets globs under the path as given, unnormalised: `..`, a symlink or a `[` in it
    # gave paths that are not under the folder, or none at all.
    base = glob.escape(str(folder.resolve()))
    try:
        patterns = get_data_patterns(base)
        splits = DataFilesDict.from_patterns(patterns, base)
    except (FileNotFoundError, DataFilesNotFoundError):  # EmptyDatasetError is the first
        patterns, splits = {}, DataFilesDict()
    files = {  # as the user named the folder
        folder / Path(f).relative_to(folder.resolve()): str(split)
        for split, found in splits.items()
        for f in found
    }
    # Data files datasets put in no split: beside files named for splits, those named for
    # none; otherwise those its own rules leave out.
    named = any(p != "**" for found in patterns.values() for p in found)
    return files | {
        f: "no" if named else "ignored"
        for f in sorted(folder.rglob("*"))
        if _is_data(f) and f not in files and not _hidden(f.relative_to(folder))
    }


def files_read(source: Path, split: str = "train") -> set[Path]:
    """The files, resolved, that samples of a local `source` come from: the file itself,
    a folder's data files of `split`, or a saved dataset's folder as one (for a saved
    DatasetDict, its `split`'s folder)."""
    if (source / "dataset_dict.json").is_file():
        return {(source / split).resolve()}
    if not source.is_dir() or is_saved_dataset(source):
        return {source.resolve()}
    found = folder_splits(source).items()
    return {f.resolve() for f, kind in found if kind == split and _is_data(f)}


def _is_data(path: Path) -> bool:
    """Whether `path` is a file of a type read_file reads (any case: .JSONL too)."""
    return data_suffix(path) is not None and path.is_file()


def _hidden(path: Path) -> bool:
    """Whether a path inside a folder is hidden, or inside a hidden folder (.git, .cache)."""
    return any(part.startswith(".") for part in path.parts)


def _saved_samples(folder: Path, skip_bad: bool, report: DataReport, split: str) -> list[Sample]:
    """Samples from a folder written by `datasets`' save_to_disk (its `split`, where it
    holds several: the others are named in `report`, as a folder's files of other splits
    are)."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(
            f"--data {folder}: cannot load it as a saved dataset ({first_line(err)})"
        ) from err
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(
                f"--data {folder}: a saved dataset without a {split} split (it has"
                f" {', '.join(saved)})"
            )
        # As a folder of data files names its other splits' files: they were left out
        # without a word.
        report.files_left_out += [f"{name}/ ({name} split)" for name in saved if name != split]
        saved = saved[split]
    elif split != "train":
        raise DataError(f"--split {split}: --data {folder} is a saved dataset of one split")
    rows = enumerate(_dataset_rows(saved), start=1)
    return some_samples(
        row_samples(rows, str(folder), "row", skip_bad, report), str(folder), report
    )


def _holds_an_array(path: Path) -> bool:
    """Whether a .json file's first character (after any BOM and blank space) opens an
    array: what `json.dump(rows)`, pandas' orient="records" and `datasets`' to_json with
    lines=False write, where a .jsonl file holds one object a line."""
    with _open(path) as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"[")


def _one_object(path: Path) -> str | None:
    """What a .json file holds where it is one JSON object, not rows: one object over
    several lines (indented), or on its one line a wrapper of its rows, such as
    {"data": [...]}; None where it is (or may be) one object a line. Only read whole where
    its first line is not JSON of its own."""
    with _open(path) as f:
        lines = (line for line in f if line.strip())
        first, second = next(lines, b""), next(lines, None)
    try:
        value = json.loads(first.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        keys = _whole_object_keys(path)
        return None if keys is None else f"one JSON object over several lines (keys: {keys})"
    # Read as lines, such a file said "line 1: missing field 'context'", where its
    # indented copy said what it was.
    if second is None and _wraps_rows(value):
        return f"one JSON object on one line (keys: {', '.join(list(value)[:8])})"
    return None


def _whole_object_keys(path: Path) -> str | None:
    """The first keys, listed, of the JSON object a whole file holds; None where it holds
    something else, or is not JSON (which the line-by-line reading names, and where)."""
    try:
        with _open(path) as f:
            value = json.loads(f.read().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    return ", ".join(list(value)[:8]) or "none"


def _wraps_rows(value: Any) -> bool:
    """Whether a JSON value is an object holding lists or objects and no field of a row:
    a wrapper, not a row that lacks a field."""
    if not isinstance(value, dict) or set(value) & {*FIELDS, *ORIGINAL_COLUMNS, "task"}:
        return False
    return any(isinstance(v, (list, dict)) for v in value.values())


def _json_array_rows(path: Path) -> list[Any]:
    """The elements of a file holding one JSON array; a file that is not valid UTF-8 or
    not valid JSON is named with where it goes wrong."""
    with _open(path) as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not valid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row or an Unreadable saying what is wrong with the line),
    blank lines left out.

    Read as bytes and decoded a line at a time, so that bytes that are not UTF-8 are
    named by their line instead of failing the whole file.
    """
    with _open(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                where = f"byte {raw[err.start]:#04x} at column {err.start + 1}"
                yield number, Unreadable(f"not valid UTF-8 ({where})")
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, Unreadable(f"not a JSON object ({err.msg})")


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, Any]]:
    """(the line a record starts on, its cells by the header's names, or an Unreadable
    saying what is wrong with it), blank lines left out. Every cell stays text as
    written: a completion "4" is not made a number, as a type-guessing reader would.
    Header names are stripped of blank space ("context, prompt"); a name given twice is
    refused."""
    csv.field_size_limit(CSV_CELL_LIMIT)
    # Bytes that are not UTF-8 are kept as escapes, to be named in their row: decoding a
    # chunk ahead of the parser would stop the whole file, and name no line.
    with (
        _open(path) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as text,
    ):
        reader = csv.reader(text, delimiter=delimiter)
        end = 0
        try:
            header = next((cells for cells in reader if cells), None)
            end = reader.line_num
            if header is None:
                return
            header = [name.strip() for name in header]
            twice = sorted({name for name in header if header.count(name) > 1})
            if twice:
                raise DataError(f"{path}: line {end}: columns named twice: {', '.join(twice)}")
            if "context" not in header:
                # Every row said "missing field 'context'", where the header is what lacks
                # it: often a file of another separator (;-separated .csv), read as one column.
                columns = ", ".join(repr(name) for name in header[:8])
                raise DataError(
                    f"{path}: line {end}: the header names no 'context' column (it has"
                    f" {columns}){_other_separator(header, delimiter)}"
                )
            for cells in reader:
                start, end = end + 1, reader.line_num
                if cells:
                    yield start, _csv_row(header, cells)
        except csv.Error as err:
            raise DataError(f"{path}: line {end + 1}: not readable as CSV ({err})") from None


def _other_separator(header: list[str], delimiter: str) -> str:
    """A hint where a header read as one column holds another separator."""
    names = {",": "comma", "\t": "tab", ";": "semicolon"}
    found = [sep for sep in names if sep != delimiter and len(header) == 1 and sep in header[0]]
    return f": is it {names[found[0]]}-separated?" if found else ""


def _csv_row(header: list[str], cells: list[str]) -> dict[str, str] | Unreadable:
    """A CSV record's cells by name, or what is wrong with it."""
    if len(cells) != len(header):
        return Unreadable(f"{len(cells)} cells, where the header has {len(header)}")
    for name, cell in zip(header, cells):
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError as err:
            byte = ord(cell[err.start]) - 0xDC00  # surrogateescape's code for the byte
            return Unreadable(f"field {name!r} is not valid UTF-8 (byte {byte:#04x})")
    return dict(zip(header, cells))


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except pa.ArrowException as err:
        raise DataError(f"{path}: not a readable parquet file ({first_line(err)})") from None


def read_hub(
    dataset_id: str, split: str = "train", skip_bad: bool = False, report: DataReport | None = None
) -> list[Sample]:
    """Samples from a Hugging Face Hub dataset, in either set of columns (a local folder
    is read_folder's)."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    # Without the Hub, datasets retries it for ~30 s, printing each try, before it fails:
    # asked once here, and where it does not answer, the dataset cache alone is read.
    offline = not hub_reachable()
    try:
        with _cache_only() if offline else contextlib.nullcontext():
            rows = _dataset_rows(datasets.load_dataset(dataset_id, split=split))
    # DatasetGenerationError: a folder of files the dataset builders cannot read.
    except (FileNotFoundError, ConnectionError, ValueError, DatasetGenerationError) as err:
        if offline:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub does not answer"
            raise DataError(
                f"--data {dataset_id}: no such file or folder, and not a dataset in the cache"
                f" ({why})"
            ) from err
        # A DatasetGenerationError says only that generating failed; its cause says why.
        reason = err.__cause__ if isinstance(err, DatasetGenerationError) and err.__cause__ else err
        raise DataError(
            f"--data {dataset_id}: cannot load it as a dataset ({first_line(reason)})"
        ) from err
    return from_rows(enumerate(rows, start=1), dataset_id, "row", skip_bad, report)


def _dataset_rows(dataset) -> list[dict[str, Any]]:
    """A `datasets.Dataset`'s rows, each ClassLabel column (a task, say) by the names its
    author gave, not by the integer codes `datasets` returns; -1, no label, as null."""
    import datasets

    labels = {
        name: feature
        for name, feature in dataset.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    rows = dataset.to_list()
    for row in rows:
        for name, feature in labels.items():
            code = row[name]
            row[name] = feature.int2str(code) if code is not None and code >= 0 else None
    return rows


@contextlib.contextmanager
def _cache_only() -> Iterator[None]:
    """datasets and huggingface_hub as HF_HUB_OFFLINE=1 makes them, which both read once,
    at import: a dataset is read from the cache, and the network never tried."""
    from unittest import mock

    import datasets
    from huggingface_hub import constants

    with (
        mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True),
        mock.patch.object(constants, "HF_HUB_OFFLINE", True),
    ):
        yield
