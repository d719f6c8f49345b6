"""From a cluster's own description to what Lightning's DDP reads.

SkyPilot sets SKYPILOT_NODE_RANK, SKYPILOT_NODE_IPS (one per line, the first is the
head), SKYPILOT_NUM_NODES and SKYPILOT_NUM_GPUS_PER_NODE on every node. Modal gives a
clustered function its rank and its containers' addresses (`modal.Cluster.from_context()`), which
modal_app.py passes on as CONDENSE_NODE_RANK, CONDENSE_NODE_IPS and
CONDENSE_GPUS_PER_NODE (`modal_cluster_env`). Either way Lightning gets MASTER_ADDR,
MASTER_PORT, NODE_RANK and WORLD_SIZE, and the job gets `--num_nodes` and `--devices`;
Lightning then starts one process per GPU on each node.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Cluster:
    """The machines of one job, as the node running this code sees them.

    Args:
        node_ips: Every node's address, the head node first.
        node_rank: This node's index in `node_ips`.
        gpus_per_node: GPUs on each node; 0 on a CPU-only node (one process then).
    """

    node_ips: tuple[str, ...]
    node_rank: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        if not 0 <= self.node_rank < len(self.node_ips):
            raise ValueError(
                f"node rank {self.node_rank} outside the {len(self.node_ips)} nodes listed"
            )

    @property
    def num_nodes(self) -> int:
        return len(self.node_ips)

    @property
    def processes_per_node(self) -> int:
        return max(self.gpus_per_node, 1)

    def lightning_env(self, master_port: int) -> dict[str, str]:
        """The variables Lightning's default cluster environment reads. On one node the
        rendezvous is local and Lightning picks a free port itself."""
        env = {
            "NODE_RANK": str(self.node_rank),
            "WORLD_SIZE": str(self.num_nodes * self.processes_per_node),
        }
        if self.num_nodes > 1:
            env |= {"MASTER_ADDR": self.node_ips[0], "MASTER_PORT": str(master_port)}
        return env

    def train_overrides(self) -> list[str]:
        """`condense train` flags that make Lightning start the right processes."""
        return ["--num_nodes", str(self.num_nodes), "--devices", str(self.processes_per_node)]


def from_skypilot(environ: Mapping[str, str]) -> Cluster | None:
    """The cluster SkyPilot describes in its variables, or None outside SkyPilot."""
    if "SKYPILOT_NODE_RANK" not in environ:
        return None
    ips = tuple(line.strip() for line in environ.get("SKYPILOT_NODE_IPS", "").splitlines())
    ips = tuple(ip for ip in ips if ip) or ("127.0.0.1",)
    if environ.get("SKYPILOT_NUM_NODES") and count(environ, "SKYPILOT_NUM_NODES") != len(ips):
        # One line per address: "a,b" is one address, and the job would run as one node.
        raise ValueError(
            f"SKYPILOT_NUM_NODES={environ['SKYPILOT_NUM_NODES']} but SKYPILOT_NODE_IPS lists"
            f" {len(ips)} address(es), one per line"
        )
    return Cluster(
        node_ips=ips,
        node_rank=count(environ, "SKYPILOT_NODE_RANK"),
        gpus_per_node=count(environ, "SKYPILOT_NUM_GPUS_PER_NODE"),
    )


def modal_cluster_env(
    rank: int, container_ips: Sequence[str], gpus_per_node: int
) -> dict[str, str]:
    """The variables modal_app.py sets from Modal's cluster info (one container: rank 0 and
    its own address) for `from_condense_vars` to read on the node."""
    return {
        "CONDENSE_NODE_RANK": str(rank),
        "CONDENSE_NODE_IPS": "\n".join(container_ips),
        "CONDENSE_GPUS_PER_NODE": str(gpus_per_node),
    }


def from_condense_vars(environ: Mapping[str, str]) -> Cluster | None:
    """The cluster a launcher described in CONDENSE_NODE_* variables, or None."""
    if "CONDENSE_NODE_RANK" not in environ:
        return None
    ips = tuple(ip.strip() for ip in environ.get("CONDENSE_NODE_IPS", "").splitlines())
    return Cluster(
        node_ips=tuple(ip for ip in ips if ip) or ("127.0.0.1",),
        node_rank=count(environ, "CONDENSE_NODE_RANK"),
        gpus_per_node=count(environ, "CONDENSE_GPUS_PER_NODE"),
    )


def count(environ: Mapping[str, str], name: str, default: int = 0) -> int:
    """The whole number 0 or more in the variable `name` (`default` where unset or empty);
    a ValueError naming the variable otherwise (int()'s names only the text)."""
    text = environ.get(name) or str(default)
    # ASCII digits only: "²" is a digit to str.isdigit(), and not a number to int().
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise ValueError(f"{name}={text!r}: expected a whole number 0 or more")
    return int(text)


def port(environ: Mapping[str, str], name: str, default: int) -> int:
    """The TCP port in the variable `name`, with the next one free for the nodes' checkpoint
    choice (launch/run.py); a ValueError naming the variable otherwise (torch's own error
    is a traceback about constructor arguments)."""
    value = count(environ, name, default)
    if not 1 <= value <= 65534:
        raise ValueError(f"{name}={value}: expected a port from 1 to 65534 (it and the next)")
    return value


# What Lightning and torch read of a process's place in a job, set by torchrun or by hand.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def check_torchrun_variables(environ: Mapping[str, str]) -> None:
    """A ValueError naming the first of TORCHRUN_VARIABLES set to anything but a whole
    number: read deep inside torch or Lightning, it was a traceback naming neither."""
    for name in TORCHRUN_VARIABLES:
        if environ.get(name):
            count(environ, name)


def detect(environ: Mapping[str, str]) -> Cluster | None:
    """SkyPilot's description, else a launcher's CONDENSE_NODE_* one, else None (a plain
    machine: the job's own `devices` and `num_nodes` apply)."""
    return from_skypilot(environ) or from_condense_vars(environ)


def gpu_count() -> int:
    """NVIDIA GPUs on this machine (0 without a driver), counted without importing torch:
    the launcher's process must not initialise CUDA before the trainer's processes do."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())
