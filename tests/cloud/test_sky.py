"""sky.yaml as SkyPilot itself reads it, offline: it agrees with launch/spec.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def _recovery(restarts: list[int]) -> list[bool]:
    """Whether SkyPilot's managed-jobs controller restarts the job after each exit status."""
    import asyncio

    from sky.backends import CloudVmRayBackend
    from sky.jobs.recovery_strategy import StrategyExecutor

    async def decide() -> list[bool]:
        executor = StrategyExecutor.make(
            None, CloudVmRayBackend(), sky.Task.from_yaml(str(SKY_YAML)), 0, 0, None,
            set(), asyncio.Lock(), asyncio.Condition(),
        )  # fmt: skip
        return [executor.should_restart_on_failure(exit_codes=[code]) for code in restarts]

    return asyncio.run(decide())


def test_a_stop_with_a_checkpoint_always_resumes_and_a_crash_twice():
    # 143 (SIGTERM, last.ckpt saved) must not use up the crash retries: a spot run may be
    # warned many times over its life.
    assert _recovery([143] * 5 + [1, 1, 1]) == [True] * 5 + [True, True, False]


def _resolve_secrets(task) -> None:
    """What `sky launch` / `sky jobs launch` do with the task's secrets before provisioning."""
    from sky import execution

    with sky.Dag() as dag:
        dag.add(task)
    execution._resolve_managed_secrets(dag)


def _plain(secrets) -> dict[str, str]:
    return {name: value.get_secret_value() for name, value in secrets.items()}


def test_a_launch_without_secrets_is_not_refused(task):
    # Both secrets are optional: a launch with no --secret at all must get past SkyPilot's
    # resolution of managed-secret references (a null value would be one, and fail there).
    assert task.managed_secret_refs == []
    _resolve_secrets(task)
    assert _plain(task.secrets) == {name: "" for name in SPEC.secrets}  # no value in the file


def test_a_secret_given_with_the_flag_is_passed_on():
    config = yaml.safe_load(SKY_YAML.read_text())
    task = sky.Task.from_yaml_config(config, secrets_overrides=[("HF_TOKEN", "hf_x")])
    _resolve_secrets(task)
    assert _plain(task.secrets) == {"HF_TOKEN": "hf_x", "WANDB_API_KEY": ""}


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


def _run_command(task, tmp_path, **envs: str) -> list[str]:
    """The command line the task's `run` starts on a node, with a stand-in for the Python
    of the environment the setup makes (~/condense-env)."""
    fake = tmp_path / "condense-env" / "bin" / "python"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {**task.envs, **envs, "HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    out = subprocess.run(
        ["bash", "-c", task.run], env=env, capture_output=True, text=True, check=True, cwd=tmp_path
    )
    return out.stdout.splitlines()


def test_an_override_is_never_read_as_a_file_pattern(task, tmp_path):
    """`[q_proj,v_proj]` (LoRA targets) became `q` where a file of that name was."""
    (tmp_path / "q").write_text("")
    value = "[q_proj,v_proj]"
    argv = _run_command(task, tmp_path, OVERRIDES=f"--model.lora_target_modules {value}")
    assert argv[-2:] == ["--model.lora_target_modules", value]


@pytest.mark.parametrize("job", ["test", "jobs/test.yaml", "test.yaml"])
def test_a_run_is_named_after_its_job_however_the_job_is_given(task, tmp_path, job):
    # As on Modal (Path(job).stem): the same job resumes the same folder.
    argv = _run_command(task, tmp_path, JOB=job, OVERRIDES="--max-steps 5 --seed 1")
    assert argv[:4] == ["-m", "launch", "run", job]
    assert argv[argv.index("--checkpoint-dir") + 1] == f"{SPEC.checkpoint_root}/test"
    assert argv[-4:] == ["--max-steps", "5", "--seed", "1"]
    argv = _run_command(task, tmp_path, JOB=job, RUN_NAME="again")
    assert argv[argv.index("--checkpoint-dir") + 1] == f"{SPEC.checkpoint_root}/again"


def test_the_setup_installs_the_python_and_versions_modal_pins(task):
    """sky.yaml installed the newest versions pyproject.toml allows into the image's Python,
    Modal's image the pinned ones on 3.11: the same job trained on other libraries (or on a
    Python the pins do not support) on each cloud."""
    assert '--managed-python --python "$(python3 -m launch pins --python)" ~/condense-env' in (
        task.setup
    )
    assert "python3 -m launch pins > ~/condense-pins.txt" in task.setup
    assert "$uv pip install -q -e . -r ~/condense-pins.txt" in task.setup
    assert '--no-deps "$(python3 -m launch pins --embedded)"' in task.setup
    assert "~/condense-env/bin/python -m launch run" in task.run

    def pins(*flags: str) -> str:
        command = [sys.executable, "-m", "launch", "pins", *flags]
        return subprocess.run(
            command, cwd=SKY_YAML.parent, capture_output=True, text=True, check=True
        ).stdout.strip()

    assert pins().splitlines() == list(SPEC.image_packages)
    assert pins("--python") == SPEC.python_version
    assert pins("--embedded") == SPEC.embedded_model_package
