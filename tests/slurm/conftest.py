"""The test clusters: tests/slurm/cluster.sh (one node) and tests/slurm/nodes.sh (three, in network namespaces)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # slurm_jobs, with --import-mode=importlib

HERE = Path(__file__).resolve().parent


def start_cluster(script: Path, what: str) -> subprocess.CompletedProcess:
    """`script up`, or a skip saying why Slurm cannot start here (exit 77, or a time-out)."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root to install and start ({script.name})")
    try:
        up = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{script.name} up took over 15 minutes")
    if up.returncode != 0:
        pytest.skip(f"{what} cannot start here ({script.name} up, exit {up.returncode}): {up.stderr.strip()[-1000:]}")
    return up


@pytest.fixture(scope="session")
def cluster():
    """tests/slurm/cluster.sh up, and down at the end of the session when this fixture started it.

    Not at the end of this module: with Slurm installed but its controller stopped, every later `snakemake`
    call would wait 10 s for the Slurm executor plugin's `scontrol show config` to time out."""
    up = start_cluster(HERE / "cluster.sh", "a Slurm cluster")
    yield
    if "started" in up.stdout:
        subprocess.run([str(HERE / "cluster.sh"), "down"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def nodes_cluster(cluster):
    """tests/slurm/nodes.sh up (once cluster.sh has installed Slurm); the environment that points Slurm's commands
    at it. Down at the end of the session when this fixture started it."""
    up = start_cluster(HERE / "nodes.sh", "the three-node Slurm cluster")
    yield {"SLURM_CONF": "/etc/repgeom-slurm-nodes/slurm.conf"}
    if "started" in up.stdout:
        subprocess.run([str(HERE / "nodes.sh"), "down"], capture_output=True, text=True, timeout=300)


