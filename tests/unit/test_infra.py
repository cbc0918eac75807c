"""KubeRay RayJob manifests carry the fields a RayJob needs (checked against the ray.io/v1 RayJob spec)."""

from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
JOBS = ["train_elementary", "train_regulatory", "atlas_grn"]


@pytest.mark.parametrize("job", JOBS)
def test_rayjob_manifest(job):
    doc = yaml.safe_load((INFRA / "kuberay" / f"{job}.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["entrypoint"].split()[0] == job
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert {"GLOO_SOCKET_IFNAME", "DS_ACCELERATOR"} <= set(env["env_vars"])
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["replicas"] >= 1 and w["groupName"] for w in workers)
    pods = [head] + [w["template"]["spec"] for w in workers]
    for pod in pods:  # shared storage for checkpoints on every pod
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert claims and set(claims) == set(mounts)
    if job.startswith("train_"):
        limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1" and "train.use_gpu=true" in spec["entrypoint"]
        assert "/mnt/shared" in spec["entrypoint"]  # checkpoints and exports on the shared volume
