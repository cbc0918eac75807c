"""The container image builds and runs, where a Docker engine is reachable (skipped otherwise)."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def docker():
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on PATH")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine reachable: {(info.stderr or info.stdout).strip().splitlines()[-1][:200]}")
    return "docker"


def test_image_builds_and_runs(docker):
    build = subprocess.run([docker, "build", "-f", "infra/Dockerfile", "-t", "creformer:ci", "."], cwd=REPO,
                           capture_output=True, text=True, timeout=3600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([docker, "run", "--rm", "creformer:ci", "sh", "-c", "echo $DS_ACCELERATOR && creformer --help"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.splitlines()[0] == "cpu" and "creformer" in run.stdout


def test_cuda_wheel_with_cpu_deepspeed_is_refused_at_build(docker):
    build = subprocess.run([docker, "build", "-f", "infra/Dockerfile", "--build-arg", "TORCH_INDEX=cu124", "."], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
    assert build.returncode != 0 and "needs DS_ACCELERATOR=cuda" in build.stdout + build.stderr
