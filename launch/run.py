"""`python -m launch run JOB [--checkpoint-dir DIR] [--hub-repo OWNER/NAME] [overrides...]`:
what every node runs, under SkyPilot, Modal or by hand.

It prepares the node, then calls the same training as `condense train`:
- the Hugging Face cache goes to the mounted cache (HF_HOME), so downloads are reused;
- the cluster's variables become Lightning's (launch/cluster.py);
- the checkpoint dir is the run dir: checkpoints, metrics.csv, the W&B run id and the
  artifact all live there, so a restarted job resumes from the newest checkpoint that
  loads (on several nodes, the one the first node chose), continues the same W&B run, and
  leaves the artifact there at the end; a restart of a finished run trains nothing (on
  several nodes, as the first node sees it);
- W&B streams when WANDB_API_KEY is set and the server answers, and logs offline into the
  checkpoint dir otherwise (`wandb sync DIR/wandb/offline-run-*` uploads it later);
- the artifact is pushed to the Hub when a repo is given (--hub-repo or $HUB_REPO).

Overrides are `condense train` flags (`--max-steps 500`, `--model.lora_r 64`); they come
last, so they win over the job file and over what this entry sets. A second job file
(`--config`) is refused among them: condense train applies job files first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from launch import cluster as clusters
from launch.spec import SPEC, LaunchSpec


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This entry's own flags, and the rest (passed to `condense train` as overrides)."""
    parser = argparse.ArgumentParser(
        prog="python -m launch run",
        description="Run a condense job on this node: caches, cluster, resume, W&B, artifact."
        " Unknown flags are `condense train` overrides.",
        allow_abbrev=False,  # a prefix of one of these would not reach condense train
    )
    parser.add_argument("job", help="A job name in jobs/ (test, default) or a job YAML path.")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="Where checkpoints, the W&B run id and the artifact go; a restart with the same"
        f" folder resumes. Default: {SPEC.checkpoint_root}/JOB when that is mounted, else"
        " runs/JOB.",
    )
    parser.add_argument(
        "--hub-repo",
        default=os.environ.get("HUB_REPO") or None,
        help="Push the final artifact to this Hub model repo (private); default $HUB_REPO.",
    )
    return parser.parse_known_args(argv)


def check_own_settings(
    cfg, checkpoint_dir: Path, resume: str, cluster: clusters.Cluster | None = None
) -> None:
    """Refuse overrides that moved the run dir or the checkpoint to resume from, or that
    reshaped the cluster's processes, however they were spelt (--run-dir, --run_dir; a
    --config file among them goes before every flag, so it cannot):
    training would write or resume elsewhere than the folder a restarted job looks in, or
    wait for nodes that do not exist (`--num-nodes 2` on one machine hung at "MEMBER: 1/2")."""
    if cfg.run_dir != str(checkpoint_dir) or cfg.resume != resume:
        _refuse(
            "the overrides set run_dir or resume, which are this entry's: the run dir is"
            " --checkpoint-dir, and a restart resumes from the newest checkpoint there"
        )
    shape = (str(cfg.num_nodes), str(cfg.devices))
    if cluster is not None and shape != (str(cluster.num_nodes), str(cluster.processes_per_node)):
        _refuse(
            f"the overrides set num_nodes or devices, which the cluster sets ({cluster.num_nodes}"
            f" node(s) of {cluster.processes_per_node} process(es)): ask the launcher for"
            " them (`sky launch --num-nodes N`, accelerators H100:N; on Modal, launch/spec.py)"
        )


def check_no_job_file(overrides: list[str]) -> None:
    """Refuse a --config among the overrides: condense train applies job files before
    every flag, so its settings would rank below this entry's own flags (run dir, resume,
    the cluster's shape, the W&B project) and be dropped without a word."""
    if any(arg.partition("=")[0] == "--config" for arg in overrides):
        _refuse(
            "--config among the overrides: the job is this entry's first argument (a name"
            " in jobs/ or a YAML path); give changes to it as flags"
        )


def _refuse(problem: str) -> None:
    print(f"launch: error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def node_environment(environ: dict[str, str], spec: LaunchSpec) -> dict[str, str]:
    """Variables to set on this node: the Hub cache (when mounted and not set already) and,
    inside it, the converted embedded model."""
    env = {}
    if "HF_HOME" not in environ and Path(spec.hub_cache).is_dir():
        env["HF_HOME"] = spec.hub_cache
    hf_home = env.get("HF_HOME") or environ.get("HF_HOME")
    if hf_home and "CONDENSE_CACHE" not in environ:
        env["CONDENSE_CACHE"] = str(Path(hf_home) / "condense")
    return env


def checkpoint_folder(given: str | None, job: str) -> Path:
    """--checkpoint-dir, or the job's default; a leading ~ as the home folder, as condense
    reads run_dir, which check_own_settings compares with it (`--checkpoint-dir '~/ck'`
    was refused as an override of run_dir that no one gave)."""
    from condense.config import expand_home  # not pathlib's, which raises for ~nosuchuser

    return Path(expand_home(str(given or default_checkpoint_dir(job, SPEC))))


def default_checkpoint_dir(job: str, spec: LaunchSpec) -> Path:
    """spec.checkpoint_root/JOB where the checkpoint storage is mounted, else runs/JOB."""
    root = Path(spec.checkpoint_root) if Path(spec.checkpoint_root).is_dir() else Path("runs")
    return root / Path(job).stem


def train_argv(
    job_file: Path,
    checkpoint_dir: Path,
    resume: str,
    cluster: clusters.Cluster | None,
    overrides: list[str],
    hub_repo: str | None = None,
) -> list[str]:
    """`condense train` arguments: the job, then what this entry decides, then the user's."""
    argv = ["--config", str(job_file), "--run_dir", str(checkpoint_dir), "--resume", resume]
    if cluster is not None:
        argv += cluster.train_overrides()
    if hub_repo:  # training pushes its best artifact at the end (rank 0 only)
        argv += ["--hub_repo", hub_repo]
    return argv + overrides


def main(argv: list[str]) -> None:
    """Run a job on this node; exits 143 when stopped by SIGTERM (checkpoint saved)."""
    args, overrides = parse_args(argv)
    check_no_job_file(overrides)
    os.environ.update(node_environment(dict(os.environ), SPEC))
    try:  # the cluster's variables, as a launcher or a user set them
        cluster = clusters.detect(os.environ)
        # A MASTER_PORT of the user's own wins (another job on the same nodes holds the
        # default).
        master_port = clusters.port(os.environ, "MASTER_PORT", SPEC.master_port)
        clusters.check_torchrun_variables(os.environ)
    except ValueError as err:
        raise SystemExit(f"launch: error: {err}") from None
    if cluster is not None:
        os.environ.update(cluster.lightning_env(master_port))
    # A preemption notice may come as SIGINT (Modal) or SIGTERM (clouds, SkyPilot): both
    # take Lightning's SIGTERM path, which stops between steps and saves a checkpoint.
    signal.signal(signal.SIGINT, _as_sigterm)

    from condense.job_args import job_path, parse_train
    from launch.checkpoints import read_run_state

    checkpoint_dir = checkpoint_folder(args.checkpoint_dir, args.job)
    state = read_run_state(checkpoint_dir)
    if cluster is not None and cluster.num_nodes > 1:
        state = _agree_across_nodes(state, cluster, master_port)
    newest = state.checkpoint
    resume = str(newest.path) if newest else "never"
    cfg = parse_train(
        train_argv(job_path(args.job), checkpoint_dir, resume, cluster, overrides, args.hub_repo)
    )
    check_own_settings(cfg, checkpoint_dir, resume, cluster)
    finished = state.finished(cfg.max_steps)
    if finished and not _first_process():
        # The first process re-reads the summary and says so (and retries a failed push).
        return _say(f"launch: job {cfg.name} has already trained {newest.global_step} steps")
    if not finished:  # a finished run's first process says so, in training's own words
        _say(describe_start(cfg, checkpoint_dir, newest, cluster))
    # On several nodes the first node's view decides for all: training must not look again
    # at this node's own view of summary.json.
    _train(cfg, check_finished=finished)
    if finished and cluster is not None and cluster.num_nodes > 1:
        from launch.checkpoints import wait_until_seen

        # One `launch run` per other node reads the choice (Lightning starts no others).
        if not wait_until_seen(cluster.num_nodes - 1):
            _say("launch: not every node read the first node's choice within 10 minutes")


def _as_sigterm(signum: int, frame) -> None:
    """SIGINT as SIGTERM once Lightning handles SIGTERM; before that (models loading),
    a KeyboardInterrupt, which ends in one line with status 130 as in `condense train`:
    SIGTERM's default action ended the process without a word, with 143."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        raise KeyboardInterrupt
    os.kill(os.getpid(), signal.SIGTERM)


def _agree_across_nodes(state, cluster: clusters.Cluster, master_port: int):
    from torch.distributed import DistError

    from launch.checkpoints import CheckpointNotShared, agree_with_first_node

    host, port = cluster.node_ips[0], master_port + 1  # beside the DDP rendezvous
    first = _first_process()
    try:
        return agree_with_first_node(
            state, first=first, host=host, port=port, node_rank=cluster.node_rank
        )
    except CheckpointNotShared as err:
        raise SystemExit(f"launch: error: {err}") from None
    except DistError as err:
        role = "serve" if first else "reach"
        raise SystemExit(
            f"launch: error: node {cluster.node_rank} could not {role} the checkpoint choice"
            f" on {host}:{port}: {str(err).splitlines()[0]}"
        ) from None


def describe_start(cfg, checkpoint_dir: Path, newest, cluster: clusters.Cluster | None) -> str:
    """One line saying what this node is about to do."""
    start = (
        f"resuming from {newest.path} (global step {newest.global_step})"
        if newest
        else "starting fresh"
    )
    where = (
        f"node {cluster.node_rank} of {cluster.num_nodes}, {cluster.processes_per_node}"
        " process(es) per node"
        if cluster
        else f"devices={cfg.devices}"
    )
    return f"launch: job {cfg.name}, {start}; checkpoints in {checkpoint_dir}; {where}"


def _train(cfg, check_finished: bool) -> dict:
    from condense.preemption import stop_statuses
    from condense.push import PushError
    from condense.training import train

    try:
        with stop_statuses():
            return train(cfg, check_finished=check_finished)
    except PushError as err:  # trained and saved; only the upload failed
        raise SystemExit(f"launch: error: {err}") from None


def _say(line: str) -> None:
    # Once per node: the processes Lightning starts on a node carry LOCAL_RANK 1, 2, ...
    if int(os.environ.get("LOCAL_RANK") or 0) == 0:
        print(line, flush=True)


def _first_process() -> bool:
    """Whether this is the job's global rank 0 (NODE_RANK is set in main)."""
    from condense.run_dir import launched_as_rank_zero

    return launched_as_rank_zero()


if __name__ == "__main__":
    main(sys.argv[1:])
