"""The RayJob (ray.io/v1) schema around the pod templates, as JSON Schema, for checking manifests offline.

Transcribed from KubeRay's Go API types, from which its CRD is generated (ray-operator/apis/ray/v1/
rayjob_types.go and raycluster_types.go, KubeRay 1.3-1.5, Apache-2.0): field names, JSON types,
int32 ranges, enums and required fields (a field without `omitempty` and without `+optional`). Like a
CRD validated strictly (kubeconform -strict), an unknown field is an error. The pod templates inside
(head, worker groups, submitter) are `corev1.PodTemplateSpec`: they are checked against Kubernetes' own
schema by kubernetes-validate, so here they are objects only. Status is the operator's, not ours.
"""

from __future__ import annotations

INT32 = {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT = {"type": "object"}  # checked elsewhere (pod templates) or opaque here (a Service, a SecurityContext)


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


AUTOSCALER_OPTIONS = _strict({
    "resources": OBJECT, "image": {"type": "string"}, "imagePullPolicy": {"type": "string"},
    "env": {"type": "array", "items": OBJECT}, "envFrom": {"type": "array", "items": OBJECT},
    "volumeMounts": {"type": "array", "items": OBJECT}, "securityContext": OBJECT,
    "idleTimeoutSeconds": INT32, "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
})

HEAD_GROUP = _strict({
    "serviceType": {"type": "string"}, "headService": OBJECT, "enableIngress": {"type": "boolean"},
    "rayStartParams": STRING_MAP, "template": OBJECT,
}, required=("rayStartParams", "template"))

WORKER_GROUP = _strict({
    "groupName": {"type": "string"}, "replicas": INT32, "minReplicas": INT32, "maxReplicas": INT32,
    "numOfHosts": INT32, "rayStartParams": STRING_MAP, "template": OBJECT, "suspend": {"type": "boolean"},
    "idleTimeoutSeconds": INT32,
    "scaleStrategy": _strict({"workersToDelete": {"type": "array", "items": {"type": "string"}},
                              "multihostReplicasToDelete": {"type": "array", "items": {"type": "string"}}}),
}, required=("groupName", "maxReplicas", "minReplicas", "rayStartParams", "template"))

RAY_CLUSTER_SPEC = _strict({
    "headGroupSpec": HEAD_GROUP, "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
    "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
    "autoscalerOptions": AUTOSCALER_OPTIONS, "headServiceAnnotations": STRING_MAP, "suspend": {"type": "boolean"},
    "managedBy": {"type": "string"}, "gcsFaultToleranceOptions": OBJECT,
}, required=("headGroupSpec",))

DELETION_POLICY = _strict({"policy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]}},
                          required=("policy",))

RAY_JOB_SPEC = _strict({
    "activeDeadlineSeconds": {**INT32, "minimum": 1}, "backoffLimit": {**INT32, "minimum": 0},
    "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": OBJECT, "metadata": STRING_MAP,
    "clusterSelector": STRING_MAP, "submitterConfig": _strict({"backoffLimit": INT32}),
    "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
    "deletionStrategy": _strict({"onSuccess": DELETION_POLICY, "onFailure": DELETION_POLICY},
                                required=("onSuccess", "onFailure")),
    "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
    "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
    "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": {**INT32, "minimum": 0},
    "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"}, "schedule": {"type": "string"},
})

METADATA = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", "maxLength": 253},
    "namespace": {"type": "string"}, "labels": STRING_MAP, "annotations": STRING_MAP}, "required": ["name"]}

RAY_JOB = _strict({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": METADATA,
                   "spec": RAY_JOB_SPEC, "status": OBJECT}, required=("apiVersion", "kind", "metadata", "spec"))


def validate(doc: dict) -> None:
    """Raise jsonschema.ValidationError (with the field's path) where `doc` is not a valid RayJob."""
    import jsonschema

    jsonschema.Draft202012Validator(RAY_JOB).validate(doc)
