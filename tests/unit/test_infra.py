"""KubeRay RayJob manifests (their RayJob fields against the RayJob schema, their pod templates against the Kubernetes schema, the
image renderer) and the Dockerfile's accelerator check."""

import importlib.util
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
JOBS = ["train_elementary", "train_regulatory", "atlas_grn"]
_spec = importlib.util.spec_from_file_location("render", INFRA / "kuberay" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)
rayjob_schema = render.rayjob_schema


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


@pytest.mark.parametrize("job", JOBS)
def test_rayjob_fields_pass_the_rayjob_schema(job):
    import jsonschema

    doc = yaml.safe_load((INFRA / "kuberay" / f"{job}.yaml").read_text())
    rayjob_schema.validate(doc)
    # what the operator would refuse or silently drop: a typo, a wrong type, a missing required field
    for mutate, where in [
        (lambda d: d["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
        (lambda d: d["spec"].update(ttlSecondsAfterFinished="600"), "ttlSecondsAfterFinished"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
        (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 4}), "num-cpus"),
        (lambda d: d["spec"].update(submissionMode="K8sMode"), "K8sMode"),
        (lambda d: d["metadata"].update(name="Creformer_Job"), "Creformer_Job"),
    ]:
        bad = yaml.safe_load((INFRA / "kuberay" / f"{job}.yaml").read_text())
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError) as err:
            rayjob_schema.validate(bad)
        assert where in str(err.value)


def _pod_template_resource(template: dict, name: str) -> dict:
    """A RayJob's pod template as the Kubernetes PodTemplate object it is, for the official schema."""
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def _validate_pods(doc: dict) -> int:
    """Every pod template of a RayJob against Kubernetes' own (strict) OpenAPI schema: unknown
    container fields, wrong resource quantities, malformed volumes are errors. The RayJob fields
    around them are checked by rayjob_schema (test above)."""
    utils = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is a test extra (pip install -e .[test])")
    templates = render.pod_templates(doc)
    for i, template in enumerate(templates):
        utils.validate(_pod_template_resource(template, f"{doc['metadata']['name']}-{i}"), utils.latest_version(), strict=True)
    return len(templates)


@pytest.mark.parametrize("job", JOBS)
def test_rayjob_pod_templates_pass_the_kubernetes_schema(job):
    doc = yaml.safe_load((INFRA / "kuberay" / f"{job}.yaml").read_text())
    assert _validate_pods(doc) >= 2
    bad = yaml.safe_load((INFRA / "kuberay" / f"{job}.yaml").read_text())
    render.pod_templates(bad)[0]["spec"]["containers"][0]["resourcez"] = {}  # a typo the cluster would reject
    with pytest.raises(Exception, match="resourcez"):
        _validate_pods(bad)


def test_render_sets_every_container_image(tmp_path):
    written = render.render("my.registry/creformer:v1", tmp_path)
    assert [p.name for p in written] == [f"{j}.yaml" for j in JOBS]
    for path in written:
        doc = yaml.safe_load(path.read_text())
        images = {c["image"] for t in render.pod_templates(doc) for c in t["spec"]["containers"]}
        assert images == {"my.registry/creformer:v1"}
        assert path.read_text().startswith("# KubeRay RayJob") and _validate_pods(doc) >= 2


def _accelerator_check() -> str:
    """The Dockerfile's build-time TORCH_INDEX / DS_ACCELERATOR check, as the shell RUN executes it."""
    lines = (INFRA / "Dockerfile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RUN case"))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("esac"))
    return " ".join(line.rstrip("\\").strip() for line in lines[start:end + 1])[len("RUN "):]


@pytest.mark.parametrize("torch_index, accelerator, ok", [
    ("cpu", "cpu", True), ("cu124", "cuda", True), ("cu121", "cuda", True),
    ("cu124", "cu124", False), ("cu124", "cpu", False), ("cpu", "cuda", False)])
def test_dockerfile_refuses_a_wrong_deepspeed_accelerator(torch_index, accelerator, ok):
    proc = subprocess.run(["sh", "-c", _accelerator_check()], env={"TORCH_INDEX": torch_index, "DS_ACCELERATOR": accelerator,
                                                                 "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, proc.stderr
    if not ok:
        want = "cuda" if torch_index.startswith("cu") else "cpu"
        assert f"needs DS_ACCELERATOR={want}" in proc.stderr
    text = (INFRA / "Dockerfile").read_text()
    assert "ENV PYTHONUNBUFFERED=1 DS_ACCELERATOR=${DS_ACCELERATOR}" in text and "DS_ACCELERATOR=${TORCH_INDEX}" not in text
