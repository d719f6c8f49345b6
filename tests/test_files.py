"""Writes that cannot be half-done, and reads that cannot run code."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

from condense.checkpoint_io import AtomicCheckpointIO
from condense.files import replace_atomic, temporary_sibling, write_atomic, write_json

PACKAGE = Path(__file__).parents[1] / "condense"


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_leftover(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, "old")

    def half(f):
        f.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomic(path, half)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_link_planted_under_the_temporary_name_is_not_written_through(tmp_path):
    """The temporary name is known in advance (.NAME.tmp-PID): in a folder others can write
    to, a link planted there had summary.json's text written into the file it named."""
    victim, path = tmp_path / "victim.txt", tmp_path / "summary.json"
    victim.write_text("mine")
    temporary_sibling(path).symlink_to(victim)
    write_atomic(path, "{}")
    assert victim.read_text() == "mine"
    assert path.read_text() == "{}" and not path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "victim.txt"]


def test_a_full_disk_is_one_oserror_that_names_the_file(tmp_path):
    """torch.save into a real file turns the write's ENOSPC into RuntimeError("[enforce
    fail at inline_container.cc:672] . unexpected pos 64 vs 0"), shown as a 90-line
    traceback; a plain write's OSError named no file. The stand-in fails as torch does."""
    import errno

    path = tmp_path / "checkpoints" / "best.ckpt"
    path.parent.mkdir()

    def torch_save_on_a_full_disk(f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    def write_on_a_full_disk(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    for write in (torch_save_on_a_full_disk, write_on_a_full_disk):
        with pytest.raises(OSError) as err:
            replace_atomic(path, write)
        assert str(err.value) == f"[Errno 28] No space left on device: '{path}'"
        assert list(path.parent.iterdir()) == []


def test_checkpoints_are_swapped_in_whole(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    stale = path.with_name(".last.ckpt.tmp-99999")  # a writer killed mid-save
    stale.write_bytes(b"half a checkpoint")
    # A lambda cannot be pickled: the save fails half-way through writing.
    with pytest.raises((pickle.PicklingError, AttributeError)):
        io.save_checkpoint({"step": torch.tensor(2), "bad": lambda: None}, path)
    assert io.load_checkpoint(path)["step"] == 1  # the previous checkpoint, whole
    io.save_checkpoint({"step": torch.tensor(3)}, path)
    assert io.load_checkpoint(path)["step"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # leftovers gone


class Planted:
    """Stands for a pickle that would run code when loaded."""


def test_a_checkpoint_holding_objects_is_refused_not_run(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Planted()}, path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # asked, and refused


def test_every_pickle_load_in_the_package_is_weights_only():
    """torch.load and from_pretrained of weights pass weights_only=True; nothing trusts
    remote code."""
    for source in PACKAGE.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            keywords = {k.arg: k.value for k in node.keywords}
            assert "trust_remote_code" not in keywords, f"{source.name}:{node.lineno}"
            if name == "load" and getattr(node.func.value, "id", "") == "torch":
                only = keywords.get("weights_only")
                assert isinstance(only, ast.Constant) and only.value is True, (
                    f"{source.name}:{node.lineno}: torch.load without weights_only=True"
                )


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_an_out_in_a_folder_that_takes_no_files_is_refused_before_the_work():
    # eval scored every sample, then failed on its temporary file's name.
    from condense.config import ConfigError
    from condense.files import json_out

    with pytest.raises(ConfigError, match=r"^--out /proc/x.json: cannot write in its folder"):
        json_out("/proc/x.json", "eval.json")


@pytest.mark.parametrize("out", ["art/bench.json", "art/sub/plan.json", "art"])
def test_an_out_in_an_artifact_folder_is_refused_for_every_command(out, tmp_path):
    """eval refused one, bench and plan wrote into it: condense push uploads the folder,
    and the results stay there beside the next save's weights."""
    from condense.config import ConfigError
    from condense.files import json_out

    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "condense_config.json").write_text("{}")
    name = "bench.json" if out == "art" else Path(out).name
    with pytest.raises(ConfigError, match=rf"beside it \({tmp_path / name}\)$"):
        json_out(tmp_path / out, "bench.json")
    assert not (tmp_path / "art" / "sub").exists()


@pytest.mark.parametrize("out", ["checkpoints/last.ckpt", "summary.json", "config.yaml"])
def test_an_out_that_is_a_file_of_a_run_is_refused(out, tmp_path):
    """eval --out run/checkpoints/last.ckpt replaced the checkpoint with its JSON, and the
    next train said "not a readable checkpoint"; plan --out run/summary.json, its summary."""
    from condense.config import ConfigError
    from condense.files import json_out

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "summary.json", "checkpoints/last.ckpt"):
        (run / name).write_text("kept")
    with pytest.raises(
        ConfigError,
        match=rf"files of the run in {run} \(or in its checkpoints/\): .*\({run / 'eval.json'}\)$",
    ):
        json_out(run / out, "eval.json")
    assert json_out(run / "eval.json", "eval.json") == run / "eval.json"  # beside them
    assert {p.read_text() for p in run.rglob("*") if p.is_file()} == {"kept"}


def test_write_json_makes_its_folders_and_leaves_no_temporary_file(tmp_path):
    """bench --out and plan --out wrote in place: a reader could see half a file."""
    out = tmp_path / "results" / "bench.json"
    write_json(out, {"steps": 3, "mfu": None})
    assert out.read_text() == '{\n  "steps": 3,\n  "mfu": null\n}'
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]
