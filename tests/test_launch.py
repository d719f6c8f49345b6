"""`python -m launch run`: cluster variables, resume after SIGTERM and SIGKILL, one W&B run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.checkpoints import newest_valid_checkpoint
from launch.cluster import Cluster, detect, modal_cluster_env
from launch.run import check_no_job_file, checkpoint_folder, node_environment, parse_args
from launch.spec import LaunchSpec
from tests.conftest import job_under_test, tiny_job

ROOT = Path(__file__).resolve().parents[1]


def test_skypilot_one_node_trains_on_its_gpus():
    cluster = detect(
        {"SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "10.0.0.5\n", "SKYPILOT_NUM_NODES": "1",
         "SKYPILOT_NUM_GPUS_PER_NODE": "4"}
    )  # fmt: skip
    assert cluster == Cluster(("10.0.0.5",), 0, 4)
    # One node: Lightning finds a free local port itself; no MASTER_ADDR to reach.
    assert cluster.lightning_env(29500) == {"NODE_RANK": "0", "WORLD_SIZE": "4"}
    assert cluster.train_overrides() == ["--num_nodes", "1", "--devices", "4"]


def test_skypilot_two_nodes_meet_at_the_first_ip():
    environ = {"SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.5\n10.0.0.6",
               "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "8"}  # fmt: skip
    cluster = detect(environ)
    assert cluster.lightning_env(29500) == {
        "NODE_RANK": "1",
        "WORLD_SIZE": "16",
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29500",
    }
    assert cluster.train_overrides() == ["--num_nodes", "2", "--devices", "8"]


def test_skypilot_cpu_node_runs_one_process():
    cluster = detect({"SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "10.0.0.5"})
    assert cluster.train_overrides() == ["--num_nodes", "1", "--devices", "1"]


def test_modal_one_container_and_a_cluster_of_two():
    one = detect(modal_cluster_env(0, ["10.1.0.1"], 2))
    assert one.lightning_env(29500) == {"NODE_RANK": "0", "WORLD_SIZE": "2"}
    assert one.train_overrides() == ["--num_nodes", "1", "--devices", "2"]

    second = detect(modal_cluster_env(1, ["10.1.0.1", "10.1.0.2"], 8))
    assert second.lightning_env(29500) == {
        "NODE_RANK": "1",
        "WORLD_SIZE": "16",
        "MASTER_ADDR": "10.1.0.1",
        "MASTER_PORT": "29500",
    }


def test_a_plain_machine_keeps_the_jobs_own_devices():
    assert detect({"PATH": "/usr/bin"}) is None


def test_a_rank_outside_the_nodes_is_refused():
    with pytest.raises(ValueError, match="node rank 2"):
        detect({"SKYPILOT_NODE_RANK": "2", "SKYPILOT_NODE_IPS": "a\nb"})


def test_a_prefix_of_the_entrys_own_flag_is_an_override_not_that_flag():
    """`--checkpoint x` was taken as --checkpoint-dir: argparse's prefixes. Now it goes to
    condense train as an override, which refuses it by name."""
    args, overrides = parse_args(["test", "--checkpoint", "x", "--hub", "me/x"])
    assert args.checkpoint_dir is None and args.hub_repo is None
    assert overrides == ["--checkpoint", "x", "--hub", "me/x"]


def test_a_checkpoint_dir_from_the_home_folder_is_the_run_dir(tmp_path, monkeypatch):
    """condense expands run_dir's ~: an unexpanded --checkpoint-dir '~/ck' then differed
    from it, and was refused as an override of run_dir that no one gave."""
    from condense.job_args import job_path, parse_train
    from launch.run import check_own_settings, train_argv

    monkeypatch.setenv("HOME", str(tmp_path))
    folder = checkpoint_folder("~/ck", "test")
    assert folder == tmp_path / "ck"
    cfg = parse_train(train_argv(job_path("test"), folder, "never", None, []))
    check_own_settings(cfg, folder, "never")


def test_a_job_file_among_the_overrides_is_refused(capsys):
    """Applied before every flag, its run_dir, cluster shape or W&B project would rank
    below this entry's own flags and be dropped without a word."""
    check_no_job_file(["--seed", "3"])
    with pytest.raises(SystemExit) as stop:
        check_no_job_file(["--seed", "3", "--config=extra.yaml"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("launch: error: --config among the overrides")


def test_hub_cache_goes_to_the_mounted_cache(tmp_path):
    spec = LaunchSpec(hub_cache=str(tmp_path))
    assert node_environment({}, spec) == {
        "HF_HOME": str(tmp_path),
        "CONDENSE_CACHE": str(tmp_path / "condense"),
    }
    assert node_environment({"HF_HOME": "/mine"}, spec) == {"CONDENSE_CACHE": "/mine/condense"}
    assert node_environment({}, LaunchSpec(hub_cache=str(tmp_path / "not-mounted"))) == {}


def test_newest_valid_checkpoint_skips_a_cut_short_file(tmp_path):
    torch.save({"global_step": 10}, tmp_path / "best.ckpt")
    torch.save({"global_step": 20}, tmp_path / "last.ckpt")
    assert newest_valid_checkpoint(tmp_path).global_step == 20
    data = (tmp_path / "last.ckpt").read_bytes()
    (tmp_path / "last.ckpt").write_bytes(data[: len(data) // 2])  # a kill mid-upload
    assert newest_valid_checkpoint(tmp_path).path.name == "best.ckpt"
    assert newest_valid_checkpoint(tmp_path / "none") is None
    # A file that would run code when unpickled is not loaded, only passed over.
    torch.save({"global_step": 30, "code": Path("x")}, tmp_path / "last.ckpt")
    assert newest_valid_checkpoint(tmp_path).path.name == "best.ckpt"


def test_a_run_is_finished_only_when_its_summary_is_of_the_last_checkpoint(tmp_path):
    from launch.checkpoints import read_run_state

    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 8}, tmp_path / "checkpoints" / "last.ckpt")
    assert not read_run_state(tmp_path).finished(max_steps=8)  # stopped at its last step
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 4}))  # an earlier stretch
    assert not read_run_state(tmp_path).finished(max_steps=8)
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 8}))
    state = read_run_state(tmp_path)
    assert state.finished(max_steps=8) and not state.finished(max_steps=12)


def test_launch_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import launch, launch.run, launch.cluster, launch.spec, launch.__main__\n"
        "print(launch.SPEC.gpus)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "H100" in out.stdout


def test_a_bad_flag_on_a_node_is_one_line_exit_2(tmp_path):
    command = [sys.executable, "-m", "launch", "run", "test", "--checkpoint-dir", str(tmp_path)]
    out = subprocess.run(
        [*command, "--max-steps", "0"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "launch: error: max_steps must be positive, got 0"
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("override", [["--run-dir", "x"], ["--run_dir=x"], ["--resume", "x"]])
def test_the_run_dir_and_resume_are_the_entrys_own(override, capsys):
    from condense.job_args import job_path, parse_train
    from launch.run import check_own_settings, train_argv

    # Passed on, the run would write elsewhere than the folder a restart resumes from.
    cfg = parse_train(train_argv(job_path("test"), Path("/ck"), "never", None, override))
    with pytest.raises(SystemExit) as stop:
        check_own_settings(cfg, Path("/ck"), "never")
    assert stop.value.code == 2
    assert "the run dir is --checkpoint-dir" in capsys.readouterr().err
    kept = parse_train(train_argv(job_path("test"), Path("/ck"), "never", None, ["--seed", "5"]))
    check_own_settings(kept, Path("/ck"), "never")  # other overrides pass


def test_a_job_file_among_the_overrides_cannot_move_the_run_or_reshape_the_cluster(tmp_path):
    """Job files go before every flag (flags override them wherever they stand), so one
    among the overrides sets neither the entry's run dir nor the cluster's shape; and a
    flag's prefix (`--run-di`), which argparse took for the flag, is refused by name."""
    from condense.config import ConfigError
    from condense.job_args import job_path, parse_train
    from launch.run import check_own_settings, train_argv

    other = tmp_path / "other.yaml"
    other.write_text("run_dir: elsewhere\nresume: auto\nnum_nodes: 3\n")
    cluster = Cluster(node_ips=("10.0.0.5",), node_rank=0, gpus_per_node=1)
    argv = train_argv(job_path("test"), Path("/ck"), "never", cluster, ["--config", str(other)])
    cfg = parse_train(argv)
    assert (cfg.run_dir, cfg.resume, cfg.num_nodes) == ("/ck", "never", 1)
    check_own_settings(cfg, Path("/ck"), "never", cluster)
    for prefix, flag in [("--run-di", "--run_dir"), ("--num_nod", "--num_nodes")]:
        with pytest.raises(ConfigError, match=f"unknown option .* \\(did you mean {flag}\\?\\)"):
            parse_train(train_argv(job_path("test"), Path("/ck"), "never", None, [prefix, "2"]))


@pytest.mark.parametrize("override", [["--num-nodes", "2"], ["--devices=4"]])
def test_the_clusters_shape_is_not_overridden(override, capsys):
    """`--num-nodes 2` on a one-node cluster came after the cluster's own flags and won:
    Lightning waited for a second node that never came ("MEMBER: 1/2"), for ever."""
    from condense.job_args import job_path, parse_train
    from launch.run import check_own_settings, train_argv

    cluster = Cluster(node_ips=("10.0.0.5",), node_rank=0, gpus_per_node=1)
    argv = train_argv(job_path("test"), Path("/ck"), "never", cluster, override)
    with pytest.raises(SystemExit) as stop:
        check_own_settings(parse_train(argv), Path("/ck"), "never", cluster)
    assert stop.value.code == 2
    assert "the overrides set num_nodes or devices, which the cluster sets (1 node(s) of 1" in (
        capsys.readouterr().err
    )
    own = parse_train(train_argv(job_path("test"), Path("/ck"), "never", cluster, []))
    check_own_settings(own, Path("/ck"), "never", cluster)  # the cluster's own pass


def test_an_unknown_command_is_a_usage_error(capsys):
    from launch.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main(["foo"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("launch: error: unknown command 'foo'\nusage:")


def test_pins_prints_the_specs_versions_and_refuses_other_flags(capsys):
    from launch.__main__ import main

    main(["pins", "--python"])
    assert capsys.readouterr().out == f"{LaunchSpec().python_version}\n"
    with pytest.raises(SystemExit) as stop:
        main(["pins", "--pyhton"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("launch: error: pins takes --python or --embedded")


@pytest.mark.parametrize(
    "variables, message",
    [
        ({"MASTER_PORT": "x"}, "MASTER_PORT='x': expected a whole number 0 or more"),
        (
            {"SKYPILOT_NODE_RANK": "abc"},
            "SKYPILOT_NODE_RANK='abc': expected a whole number 0 or more",
        ),
        ({"SKYPILOT_NODE_RANK": "3"}, "node rank 3 outside the 1 nodes listed"),
        # Found by a CLI test: tracebacks from torch, Lightning or int() before.
        (
            {"MASTER_PORT": "65535"},
            "MASTER_PORT=65535: expected a port from 1 to 65534 (it and the next)",
        ),
        ({"LOCAL_RANK": "abc"}, "LOCAL_RANK='abc': expected a whole number 0 or more"),
        ({"RANK": "x"}, "RANK='x': expected a whole number 0 or more"),
        ({"SKYPILOT_NODE_RANK": "²"}, "SKYPILOT_NODE_RANK='²': expected a whole number 0 or more"),
        (
            {"SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "10.0.0.1,10.0.0.2",
             "SKYPILOT_NUM_NODES": "2"},
            "SKYPILOT_NUM_NODES=2 but SKYPILOT_NODE_IPS lists 1 address(es), one per line",
        ),
    ],
)  # fmt: skip
def test_a_bad_cluster_variable_is_one_line(variables, message, tmp_path):
    # ValueError tracebacks before, int()'s naming only the text.
    env = dict(os.environ, **variables)
    out = subprocess.run(
        [sys.executable, "-m", "launch", "run", "test", "--checkpoint-dir", str(tmp_path)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.stderr.strip() == f"launch: error: {message}"
    assert out.returncode == 1 and not any(tmp_path.iterdir())


def _launch(job: Path, checkpoint_dir: Path, log: Path, overrides=()) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    # An in-process W&B run of an earlier test leaves its service's address here; a child
    # would join that service, which still holds the run id of a child killed before.
    env.pop("WANDB_SERVICE", None)
    command = [sys.executable, "-m", "launch", "run", str(job), "--checkpoint-dir"]
    return subprocess.Popen(
        [*command, str(checkpoint_dir), *overrides],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} too early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize("kind", ["tiny", "test"])
def test_launch_resumes_after_sigterm_and_sigkill(kind, tiny_pair, tmp_path):
    max_steps, val_every = (60, 5) if kind == "tiny" else (12, 4)
    job, extra = job_under_test(kind, tiny_pair, tmp_path, max_steps, val_every, wandb="offline")
    ckpts = tmp_path / "ckpt"
    last = ckpts / "checkpoints" / "last.ckpt"

    # 1. SIGTERM once training is under way: a checkpoint of the step it stopped at.
    log1 = tmp_path / "run1.log"
    proc = _launch(job, ckpts, log1, extra)
    _wait_for(last.is_file, proc, log1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log1.read_text()[-3000:]
    stopped_at = _step(last)
    assert val_every <= stopped_at < max_steps
    assert f"SIGTERM: saved step {stopped_at}" in log1.read_text()

    # 2. Restarted, it continues from that step; SIGKILL after its next checkpoint.
    log2 = tmp_path / "run2.log"
    saved = last.stat().st_mtime_ns
    proc = _launch(job, ckpts, log2, extra)
    _wait_for(lambda: last.stat().st_mtime_ns != saved, proc, log2)
    proc.kill()
    proc.wait(timeout=60)
    assert f"resuming from {last} (global step {stopped_at})" in log2.read_text()
    killed_after = _step(last)
    assert stopped_at < killed_after < max_steps

    # 3. Restarted again, it resumes from the last checkpoint and finishes.
    log3 = tmp_path / "run3.log"
    proc = _launch(job, ckpts, log3, extra)
    assert proc.wait(timeout=300) == 0, log3.read_text()[-3000:]
    assert f"resuming from {last} (global step {killed_after})" in log3.read_text()
    summary = json.loads((ckpts / "summary.json").read_text())
    assert summary["steps"] == max_steps and summary["resumed_from"] == str(last)

    # One W&B run across the three processes: each one logged offline under the same id.
    run_id = (ckpts / "wandb_run_id").read_text()
    runs = sorted((ckpts / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and {r.name.rsplit("-", 1)[1] for r in runs} == {run_id}
    assert summary["wandb_run_id"] == run_id
    # The artifact is in the checkpoint dir at the end.
    from condense.artifact import ARTIFACT_FILES

    assert {p.name for p in (ckpts / "artifact").iterdir()} == ARTIFACT_FILES


def test_supervisor_commits_on_each_checkpoint_and_passes_a_preemption_on(tmp_path):
    import threading

    from launch.supervise import supervise

    # A stand-in trainer: writes a checkpoint, then waits to be stopped.
    child = (
        "import pathlib, time, sys\n"
        "folder = pathlib.Path(sys.argv[1]) / 'checkpoints'; folder.mkdir(parents=True)\n"
        "(folder / 'last.ckpt').write_text('step 1')\n"
        "time.sleep(60)\n"
    )
    commits = []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs in the background
    # Modal's preemption notice is SIGINT: it reaches the trainer as SIGTERM.
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    status = supervise(
        [sys.executable, "-c", child, str(tmp_path)],
        tmp_path,
        on_checkpoint=lambda: commits.append(time.monotonic()),
        poll_s=0.2,
    )
    # As a shell says it: Popen's -15 read "training exited with status -15" on Modal.
    assert status == 128 + signal.SIGTERM and time.monotonic() - started < 30
    assert len(commits) == 2  # once when last.ckpt appeared, once at the end
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_ctrl_c_on_a_node_before_training_is_an_interrupt():
    """SIGINT became SIGTERM at once: while the models loaded, before Lightning's handler,
    SIGTERM's default action ended the node silently with 143."""
    from launch.run import _as_sigterm

    before = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(KeyboardInterrupt):  # `launch: interrupted`, status 130
            _as_sigterm(signal.SIGINT, None)
        received = []
        signal.signal(signal.SIGTERM, lambda *args: received.append(args[0]))  # Lightning's
        _as_sigterm(signal.SIGINT, None)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_failed_commit_does_not_stop_the_later_ones(tmp_path, capfd):
    from launch.supervise import supervise

    # A stand-in trainer saving two checkpoints a second apart.
    child = (
        "import pathlib, time, sys\n"
        "folder = pathlib.Path(sys.argv[1]) / 'checkpoints'; folder.mkdir(parents=True)\n"
        "time.sleep(1)\n"
        "(folder / 'last.ckpt').write_text('step 1')\n"
        "time.sleep(1.5)\n"
        "(folder / 'last.ckpt').write_text('step 2')\n"
        "time.sleep(1.5)\n"
    )
    commits = []

    def commit() -> None:  # the first fails, as Modal's does while files are open
        commits.append(len(commits))
        if len(commits) == 1:
            raise RuntimeError("there are open files preventing the operation")

    status = supervise(
        [sys.executable, "-c", child, str(tmp_path)], tmp_path, on_checkpoint=commit, poll_s=0.2
    )
    assert status == 0
    assert commits == [0, 1, 2]  # both checkpoints, then once at the end
    assert "checkpoint commit failed: there are open files" in capfd.readouterr().err


def test_supervisor_stops_the_trainer_when_its_wait_is_interrupted(tmp_path):
    import threading

    from launch.supervise import supervise

    class InputCancellation(BaseException):  # what Modal raises in a cancelled input
        pass

    def cancel(*_):
        raise InputCancellation

    pid_file = tmp_path / "pid"
    child = (
        "import os, pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    commits = []
    # Modal delivers the cancellation as SIGUSR1 to the function's main thread.
    before = signal.signal(signal.SIGUSR1, cancel)
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGUSR1)).start()
    try:
        with pytest.raises(InputCancellation):
            supervise(
                [sys.executable, "-c", child],
                tmp_path,
                on_checkpoint=lambda: commits.append(1),
                poll_s=0.2,
            )
    finally:
        signal.signal(signal.SIGUSR1, before)
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        alive = False
    else:
        alive = True
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the trainer outlived its supervisor"
    assert commits == [1]  # what it saved on the way out is committed


def test_the_launch_entry_hands_run_dir_resume_and_hub_repo_to_training():
    from condense.job_args import job_path, parse_train
    from launch.run import train_argv

    argv = train_argv(
        job_path("test"), Path("/ck/run"), "never", None, ["--max-steps", "5"], "me/c"
    )
    cfg = parse_train(argv)
    assert (cfg.run_dir, cfg.resume, cfg.hub_repo, cfg.max_steps) == ("/ck/run", "never", "me/c", 5)


def _free_port() -> int:
    """A free port whose next one is free too (a two-node launch takes both)."""
    import socket

    while True:
        with socket.socket() as s, socket.socket() as after:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            try:
                after.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def _node(rank: int, job: Path, checkpoint_dir: Path, log: Path, port: int) -> subprocess.Popen:
    """`python -m launch run` as node `rank` of a two-node SkyPilot cluster on this machine."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline", MASTER_PORT=str(port))
    env |= {"SKYPILOT_NODE_RANK": str(rank), "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
            "SKYPILOT_NUM_GPUS_PER_NODE": "0"}  # fmt: skip
    env.pop("WANDB_SERVICE", None)  # see _launch
    command = [sys.executable, "-m", "launch", "run", str(job), "--checkpoint-dir"]
    output = {"stdout": log.open("w"), "stderr": subprocess.STDOUT}
    return subprocess.Popen([*command, str(checkpoint_dir)], cwd=ROOT, env=env, **output)


def _both_finish(nodes: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    try:
        codes = [node.wait(timeout=timeout) for node in nodes]
    except subprocess.TimeoutExpired:
        codes = None
    for node in nodes:
        node.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)


def test_two_nodes_resume_from_the_checkpoint_the_first_node_sees(tiny_pair, tmp_path):
    shared, unseen = tmp_path / "shared", tmp_path / "node1-empty"
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", max_steps=4, val_every_n_steps=2)
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    port = _free_port()
    _both_finish([_node(r, job, shared, logs[r], port) for r in (0, 1)], logs, timeout=180)
    last = shared / "checkpoints" / "last.ckpt"
    assert _step(last) == 4

    # The second node's storage lags (here: it sees an empty folder). Left to itself it
    # would start fresh and validate while the first node trained: the job would hang.
    job = tiny_job(*tiny_pair, tmp_path / "job.yaml", max_steps=8, val_every_n_steps=2)
    logs = [tmp_path / "again0.log", tmp_path / "again1.log"]
    dirs = [shared, unseen]
    _both_finish([_node(r, job, dirs[r], logs[r], port) for r in (0, 1)], logs, timeout=180)
    for log in logs:
        assert f"resuming from {last} (global step 4)" in log.read_text()
    summary = json.loads((shared / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["world_size"] == 2

    # Started again when finished (a managed job retrying a failed push, say), with one
    # node's view lagging behind summary.json: all nodes act on what the first node sees,
    # so none waits in training for one that has left.
    lagging = tmp_path / "node0-lagging"
    shutil.copytree(shared / "checkpoints", lagging / "checkpoints")
    for dirs, first_sees in ([shared, unseen], "finished"), ([lagging, shared], "unfinished"):
        logs = [tmp_path / f"{first_sees}{r}.log" for r in (0, 1)]
        _both_finish([_node(r, job, dirs[r], logs[r], port) for r in (0, 1)], logs, timeout=180)
        said = [log.read_text() for log in logs]
        assert ("has already trained 8 of max_steps 8" in said[0]) == (first_sees == "finished")
        assert ("job tiny has already trained 8 steps" in said[1]) == (first_sees == "finished")
        # A finished run said "resuming from ..." first, then "nothing to train".
        assert ("resuming from" in said[0]) == (first_sees == "unfinished")


def test_a_node_waits_for_the_first_nodes_checkpoint_then_gives_up_in_one_line(tmp_path):
    import threading

    from launch.checkpoints import (
        Checkpoint,
        CheckpointNotShared,
        RunState,
        agree_with_first_node,
        wait_until_seen,
    )

    def save(step: int) -> None:  # renamed into place, as training writes it
        torch.save({"global_step": step}, tmp_path / "next.ckpt")
        (tmp_path / "next.ckpt").replace(tmp_path / "last.ckpt")

    def first_node(seen: RunState) -> int:
        port = _free_port()
        assert agree_with_first_node(seen, first=True, host="127.0.0.1", port=port, node_rank=0)
        return port

    def other_node(port: int, wait_s: float) -> RunState:
        # What this node would act on alone: a finished run at step 9.
        mine = RunState(Checkpoint(tmp_path / "mine.ckpt", 9), summary_steps=9)
        return agree_with_first_node(
            mine, first=False, host="127.0.0.1", port=port, node_rank=1, wait_s=wait_s, poll_s=0.05
        )

    # The first node starts fresh: so does every node, whatever it sees itself.
    assert other_node(first_node(RunState(None)), wait_s=1) == RunState(None)

    # It resumes from step 5 of last.ckpt, with no summary; this node still sees step 3
    # there, until the storage catches up.
    save(3)
    chosen = RunState(Checkpoint(tmp_path / "last.ckpt", 5))
    port = first_node(chosen)
    threading.Timer(0.5, save, (5,)).start()
    started = time.monotonic()
    assert other_node(port, wait_s=30) == chosen and not chosen.finished(max_steps=5)
    assert 0.4 < time.monotonic() - started < 10
    # The first process can tell that one other has read its choice, and not two.
    assert wait_until_seen(1, wait_s=5) and not wait_until_seen(2, wait_s=0.2, poll_s=0.05)

    save(3)  # storage that never shows it
    with pytest.raises(
        CheckpointNotShared, match="node 1 cannot read .*last.ckpt at global step 5"
    ):
        other_node(port, wait_s=0.3)
