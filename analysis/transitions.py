"""Cell-state transitions: where does a perturbation move the source cells, relative to the target?

Transition score = projection of the mean shift (perturbed − source, in predicted expression over
all genes) onto the source→target centroid direction, divided by that direction's length²: 0 = no
move, 1 = all the way to the target centroid, negative = away from it. The embedding (PCA, then
UMAP when there are enough cells) is for looking, the score is computed in full expression space.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from creformer.plotting import plt


def transition_score(source: np.ndarray, target: np.ndarray, perturbed: np.ndarray) -> float:
    src, tgt, pert = source.mean(0), target.mean(0), perturbed.mean(0)
    direction = tgt - src
    norm2 = float(direction @ direction)
    if norm2 == 0:
        raise ValueError("source and target centroids coincide: no direction to score against")
    return float((pert - src) @ direction / norm2)


def fraction_closer(source: np.ndarray, target: np.ndarray, perturbed: np.ndarray) -> float:
    """Share of source cells (rows of ``source``, and the same rows of ``perturbed``) whose perturbed
    state lies closer to the target centroid than their own state does."""
    centre = target.mean(0)
    before = np.linalg.norm(source - centre, axis=1)
    after = np.linalg.norm(perturbed - centre, axis=1)
    return float(np.mean(after < before))


@dataclass
class Embedding:
    pca: np.ndarray  # (n, 2)
    umap: np.ndarray | None  # (n, 2), None when there are too few cells
    labels: np.ndarray  # "source" / "target" / "perturbed"


def embed(source: np.ndarray, target: np.ndarray, perturbed: np.ndarray, seed: int = 0) -> Embedding:
    """PCA fitted on source + target states (perturbed cells projected in); UMAP on all three."""
    x = np.vstack([source, target, perturbed]).astype(np.float64)
    labels = np.array(["source"] * len(source) + ["target"] * len(target) + ["perturbed"] * len(perturbed))
    n_comp = max(1, min(10, x.shape[1], len(source) + len(target) - 1))
    pca = PCA(n_components=n_comp, random_state=seed).fit(np.vstack([source, target]))
    z = pca.transform(x)
    z = np.pad(z, ((0, 0), (0, max(0, 2 - z.shape[1]))))  # one gene: a flat second axis
    return Embedding(z[:, :2], umap_2d(z, seed), labels)


def umap_2d(z: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """A 2-D UMAP of the rows of ``z`` (15 neighbours at most), None under 10 rows."""
    if len(z) < 10:
        return None
    import umap  # here, not at the top: importing it compiles numba code for seconds, and only embeddings need it

    return umap.UMAP(n_neighbors=min(15, len(z) - 1), random_state=seed, n_jobs=1).fit_transform(z)


def plot(emb: Embedding, title: str, path: Path) -> Path:
    panels = [("PCA", emb.pca)] + ([("UMAP", emb.umap)] if emb.umap is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    colors = {"source": "tab:blue", "target": "tab:green", "perturbed": "tab:red"}
    for ax, (name, z) in zip(axes[0], panels):
        for lab, col in colors.items():
            sel = emb.labels == lab
            ax.scatter(z[sel, 0], z[sel, 1], s=12, c=col, label=lab, alpha=0.75)
        ax.set(title=f"{name}: {title}", xticks=[], yticks=[])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
