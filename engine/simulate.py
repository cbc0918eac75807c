"""The simulator: a synthetic genome, bulk epigenomic tracks and a single-cell multiome atlas with
planted regulatory truth, all from one seeded rulebook (docs/design.md §8).

``simulate`` writes genome.fa (+ .fai), genes.gtf, motifs.meme, tracks/*.bw, samples.tsv,
multiome/ (Cell Ranger ARC layout) and truth/: the rulebook is engine/rulebook.py, the bulk files
engine/simulate_bulk.py and the single cells engine/simulate_cells.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io.motifs import write_meme
from .io.samples import Sample, write_samples
from .rulebook import PRESETS, make_rulebook
from .simulate_bulk import make_sequences, sample_tracks, write_bigwig, write_fasta, write_gtf, write_truth
from .simulate_cells import simulate_cells


def simulate(out: str | Path, preset: str = "tiny", seed: int = 0, cells: bool = True, n_cells: int | None = None) -> Path:
    """Write genome.fa(+.fai), genes.gtf, motifs.meme, tracks/*.bw, samples.tsv, multiome/ (single
    cells in Cell Ranger ARC layout, unless ``cells`` is False) and truth/ under ``out``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown simulator preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    (out / "tracks").mkdir(parents=True, exist_ok=True)
    book = make_rulebook(preset, seed)
    seqs, instances = make_sequences(book)
    write_fasta(out / "genome.fa", seqs)
    write_gtf(out / "genes.gtf", book.genes)
    write_meme(out / "motifs.meme", book.motifs)
    rng = np.random.default_rng(seed + 2)
    samples = []
    for c, ct in enumerate(book.cell_types):
        sample = Sample(f"bulk_{ct}")
        for assay, per_chrom in sample_tracks(book, c, rng).items():
            path = out / "tracks" / f"{sample.name}.{assay}.bw"
            write_bigwig(path, book.chroms, per_chrom)
            sample.tracks[assay] = path
        samples.append(sample)
    write_samples(out / "samples.tsv", samples)
    write_truth(out, book, instances)
    if cells:
        simulate_cells(out, book, preset, seed, n_cells)
    return out
