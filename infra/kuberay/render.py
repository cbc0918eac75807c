"""Write the KubeRay RayJob manifests with another container image (and optionally another folder).

    python infra/kuberay/render.py --image my.registry/creformer:v1 --out runs/kuberay
    kubectl apply -f runs/kuberay/

Every container of every pod template (head and worker groups) gets the image; the rest of each
manifest is copied unchanged. The manifests in this folder name ghcr.io/creformer/creformer:latest.
Each rendered manifest is checked against the RayJob schema (rayjob_schema.py) before it is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rayjob_schema  # noqa: E402  (a sibling file: this folder is not a package)

HERE = Path(__file__).resolve().parent
JOBS = ("train_elementary", "train_regulatory", "atlas_grn")


def pod_templates(doc: dict) -> list[dict]:
    """The head's and every worker group's pod template of a RayJob."""
    cluster = doc["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *[w["template"] for w in cluster.get("workerGroupSpecs", [])]]


def with_image(doc: dict, image: str) -> dict:
    for template in pod_templates(doc):
        for container in template["spec"]["containers"]:
            container["image"] = image
    return doc


def render(image: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for job in JOBS:
        src = HERE / f"{job}.yaml"
        header = "".join(line for line in src.read_text().splitlines(keepends=True) if line.startswith("#"))
        doc = with_image(yaml.safe_load(src.read_text()), image)
        rayjob_schema.validate(doc)
        dst = out / f"{job}.yaml"
        dst.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        written.append(dst)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="container image, e.g. my.registry/creformer:v1")
    parser.add_argument("--out", default="runs/kuberay", help="folder for the rendered manifests")
    args = parser.parse_args()
    for path in render(args.image, Path(args.out)):
        print(path)


if __name__ == "__main__":
    main()
