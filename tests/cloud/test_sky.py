"""sky.yaml as SkyPilot itself reads it, offline: it agrees with launch/spec.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.spec import SPEC

sky = pytest.importorskip("sky", reason="SkyPilot lives in the cloud environment (.venv-cloud)")
pytestmark = pytest.mark.cloud

SKY_YAML = Path(__file__).resolve().parents[2] / "sky.yaml"


@pytest.fixture(scope="module")
def task():
    return sky.Task.from_yaml(str(SKY_YAML))


def test_gpu_candidates_in_the_specs_order(task):
    # An ordered list keeps the preference; SkyPilot gives it back as a list.
    assert isinstance(task.resources, list)
    wanted = [{gpu: SPEC.gpus_per_node} for gpu in SPEC.gpus]
    assert [r.accelerators for r in task.resources] == wanted
    assert {r.disk_size for r in task.resources} == {SPEC.disk_gb}
    assert task.num_nodes == SPEC.nodes


def test_managed_jobs_recover(task):
    recovery = {str(r.job_recovery.get("strategy")) for r in task.resources}
    assert recovery == {"EAGER_NEXT_REGION"}


def test_secrets_are_declared_without_values(task):
    # Null secrets become references filled by `--secret NAME`; none is written in the file.
    assert sorted(ref.name for ref in task.managed_secret_refs) == sorted(SPEC.secrets)
    assert not task.secrets


def test_checkpoints_and_hub_cache_are_buckets_mounted_cached(task):
    mounts = task.storage_mounts
    assert set(mounts) == {SPEC.checkpoint_root, SPEC.hub_cache}
    assert {m.mode.name for m in mounts.values()} == {"MOUNT_CACHED"}
    assert mounts[SPEC.checkpoint_root].name == SPEC.checkpoint_store
    assert mounts[SPEC.hub_cache].name == f"{SPEC.checkpoint_store}-hf-cache"


def test_envs_name_the_job_project_repo_and_bucket(task):
    names = {"JOB", "RUN_NAME", "WANDB_PROJECT", "HUB_REPO", "CHECKPOINT_BUCKET", "OVERRIDES"}
    assert names <= set(task.envs)
    assert task.envs["JOB"] == SPEC.job and task.envs["WANDB_PROJECT"] == SPEC.wandb_project
    assert "python -m launch run" in task.run and SPEC.checkpoint_root in task.run


def test_a_misspelt_field_is_refused(tmp_path):
    bad = tmp_path / "sky.yaml"
    bad.write_text(SKY_YAML.read_text().replace("file_mounts:", "file_mount:"))
    with pytest.raises(ValueError, match="file_mount"):
        sky.Task.from_yaml(str(bad))


def test_a_wrong_mount_mode_is_refused(tmp_path):
    bad = tmp_path / "sky.yaml"
    bad.write_text(SKY_YAML.read_text().replace("mode: MOUNT_CACHED", "mode: MOUNT_CACHE", 1))
    with pytest.raises(ValueError, match="MOUNT_CACHE"):
        sky.Task.from_yaml(str(bad))
