"""modal_app.py offline: it imports with no token and no torch, its function asks Modal for
what launch/spec.py says, and its body trains the tiny job on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from launch.cluster import detect
from launch.spec import SPEC

modal = pytest.importorskip("modal", reason="Modal lives in the cloud environment (.venv-cloud)")
pytestmark = pytest.mark.cloud

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def modal_app():
    import modal_app

    return modal_app


def test_imports_without_a_token_torch_or_secrets(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
        "import modal_app; print(modal_app.train.info().gpus)"
    )
    # No Modal token (nor ~/.modal.toml), no HF_TOKEN, no WANDB_API_KEY: both are optional.
    unset = ("MODAL_", *SPEC.secrets)
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env |= {"HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert "H100" in out.stdout


def test_gpus_volumes_secrets_timeout_and_retries_are_the_specs(modal_app):
    info = modal_app.train.info()  # read from the definition: no network
    assert info.gpus == [(gpu, SPEC.gpus_per_node) for gpu in SPEC.gpus]  # in fallback order
    assert {path: mount.name for path, mount in info.volumes.items()} == {
        SPEC.hub_cache: SPEC.hub_cache_store,
        SPEC.checkpoint_root: SPEC.checkpoint_store,
    }
    assert info.secrets == [f"Secret.from_dict([{', '.join(SPEC.secrets)}])"]
    assert (info.timeout, info.max_retries) == (SPEC.timeout_s, SPEC.retries)


def test_evaluation_takes_one_gpu_of_the_specs_kinds_and_the_same_volumes(modal_app):
    info = modal_app.evaluate.info()
    assert info.gpus == [(gpu, 1) for gpu in SPEC.gpus]
    assert {path: mount.name for path, mount in info.volumes.items()} == {
        SPEC.hub_cache: SPEC.hub_cache_store,
        SPEC.checkpoint_root: SPEC.checkpoint_store,
    }


def test_one_node_is_a_plain_function_and_its_rendezvous_is_local(modal_app):
    assert SPEC.nodes == 1 and modal_app.train.info().cluster_info is None
    env, rank = modal_app.node_env(1)
    assert rank == 0 and env["CONDENSE_NODE_RANK"] == "0"
    assert env["CONDENSE_NODE_IPS"] == "127.0.0.1"


def test_several_nodes_make_a_clustered_function_with_rdma(tmp_path):
    code = (
        "import dataclasses, launch.spec as spec\n"
        "spec.SPEC = dataclasses.replace(spec.SPEC, nodes=2, gpus_per_node=8)\n"
        "import modal_app; info = modal_app.train.info()\n"
        "print(info.cluster_info.size, info.cluster_info.rdma, info.gpus[0])"
    )
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["2", "True", f"('{SPEC.gpus[0]}',", "8)"]


def test_a_cluster_node_points_lightning_at_the_first_container(modal_app, monkeypatch):
    class Cluster:  # what modal.Cluster.from_context() gives inside a cluster's container
        def container_rank(self):
            return 1

        def container_ips(self, family="ipv6"):
            assert family == "ipv4"
            return ["10.0.0.5", "10.0.0.6"]

    monkeypatch.setattr(modal.Cluster, "from_context", staticmethod(Cluster))
    env, rank = modal_app.node_env(2)
    assert rank == 1
    cluster = detect(env)  # what `python -m launch run` reads on that node
    assert (cluster.node_rank, cluster.num_nodes) == (1, 2)
    assert cluster.lightning_env(SPEC.master_port)["MASTER_ADDR"] == "10.0.0.5"
    with pytest.raises(RuntimeError, match="2 container addresses for a cluster of 3"):
        modal_app.node_env(3)


needs_torch = pytest.mark.skipif(
    not os.environ.get("CONDENSE_TRAIN_PYTHON"),
    reason="needs CONDENSE_TRAIN_PYTHON, an interpreter with torch and condense",
)


def tiny_job(folder: Path) -> str:
    """A job file for the tiny random model pair, made by the interpreter with torch."""
    made = subprocess.run(
        [os.environ["CONDENSE_TRAIN_PYTHON"], str(ROOT / "tests" / "conftest.py"), str(folder)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return made.stdout.strip().splitlines()[-1]


@needs_torch
def test_the_function_body_trains_the_tiny_job_on_cpu(tmp_path, modal_app, monkeypatch):
    # The spec's W&B project reached training from sky.yaml only.
    monkeypatch.setattr(modal_app, "SPEC", replace(SPEC, wandb_project="spec-project"))
    job = tiny_job(tmp_path)
    folder = tmp_path / "run"
    out = modal_app.train.local(
        job=job, overrides="--accelerator cpu --max-steps 3", checkpoint_dir=str(folder)
    )
    assert out == {"checkpoint_dir": str(folder), "artifact": str(folder / "artifact")}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["world_size"] == 1
    assert (folder / "artifact").is_dir()
    assert "wandb_project: spec-project" in (folder / "config.yaml").read_text()


@needs_torch
def test_the_function_body_runs_the_test_job_on_cpu(tmp_path, modal_app):
    # jobs/test.yaml itself (the embedded SmolLM2 pair, synthetic data), shortened.
    folder = tmp_path / "run"
    overrides = (
        "--accelerator cpu --max-steps 2 --val-every-n-steps 2 --wandb off"
        " --dataset.synthetic_passages 40 --dataset.val_size 8"
    )
    modal_app.train.local(job="test", overrides=overrides, checkpoint_dir=str(folder))
    summary = json.loads((folder / "summary.json").read_text())
    # Trained: the weights moved. Whether the loss falls in two steps of the job's warm-up
    # (LR 0, then 1e-4) is rounding: it rose on an AMX CPU (5.468 -> 5.543).
    assert summary["steps"] == 2 and summary["val_loss_final"] != summary["val_loss_initial"]
    assert (folder / "artifact" / "condense_config.json").is_file()


@needs_torch
def test_the_evaluation_body_scores_a_trained_run_beside_it(tmp_path, modal_app):
    job = tiny_job(tmp_path)
    folder = tmp_path / "run"
    modal_app.train.local(
        job=job, overrides="--accelerator cpu --max-steps 2", checkpoint_dir=str(folder)
    )
    results = modal_app.evaluate.local(options="--limit 6", checkpoint_dir=str(folder))
    assert results["samples"] == 6 and results["device"] == "cpu"
    assert json.loads((folder / "eval.json").read_text()) == results
    assert (folder / "eval.png").is_file()
    with pytest.raises(RuntimeError, match="condense eval exited with status 2"):
        modal_app.evaluate.local(options="--limit x", checkpoint_dir=str(folder))
    with pytest.raises(ValueError, match="may not set --out=x.json"):
        modal_app.evaluate.local(options="--out=x.json", checkpoint_dir=str(folder))
    # An abbreviation wrote the results outside the volume, then failed to read them back.
    with pytest.raises(ValueError, match="may not set --ou"):
        modal_app.evaluate.local(options="--limit 2 --ou x.json", checkpoint_dir=str(folder))
    with pytest.raises(ValueError, match="may not set --arti"):
        modal_app.evaluate.local(options="--arti elsewhere", checkpoint_dir=str(folder))
