"""Position frequency matrices in MEME text format (as JASPAR distributes them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import require_file


@dataclass
class Motif:
    id: str
    name: str
    pwm: np.ndarray  # (width, 4) letter probabilities, columns A C G T


def read_meme(path: str | Path) -> list[Motif]:
    path = Path(path)
    require_file(path, "motif file")
    lines = path.read_text().splitlines()
    if not any(line.startswith("MEME version") for line in lines[:20]):
        raise InputError(f"{path} is not MEME text format (no 'MEME version' line at the top)")
    motifs: list[Motif] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("MOTIF"):
            parts = line.split()
            if len(parts) < 2:
                raise InputError(f"{path}, line {i + 1}: 'MOTIF' without an identifier")
            mid, name = parts[1], parts[2] if len(parts) > 2 else parts[1]
            j = i + 1
            while j < len(lines) and not lines[j].startswith("letter-probability matrix"):
                if lines[j].startswith("MOTIF"):
                    raise InputError(f"{path}, line {i + 1}: motif {mid} has no letter-probability matrix")
                j += 1
            if j == len(lines):
                raise InputError(f"{path}, line {i + 1}: motif {mid} has no letter-probability matrix")
            fields = lines[j].replace("=", " = ").split()
            try:
                width = int(fields[fields.index("w") + 2])
            except (ValueError, IndexError) as err:
                raise InputError(f"{path}, line {j + 1}: cannot read the motif width 'w=' of {mid}") from err
            rows = []
            for k in range(j + 1, j + 1 + width):
                try:
                    row = [float(x) for x in lines[k].split()]
                except (ValueError, IndexError) as err:
                    raise InputError(f"{path}, line {k + 1}: motif {mid} row is not 4 numbers") from err
                if len(row) != 4:
                    raise InputError(f"{path}, line {k + 1}: motif {mid} row has {len(row)} columns, expected 4")
                rows.append(row)
            pwm = np.asarray(rows, dtype=np.float64)
            if np.any(pwm < 0) or not np.allclose(pwm.sum(1), 1.0, atol=0.02):
                raise InputError(f"{path}, line {j + 2}: motif {mid} rows must be probabilities summing to 1")
            motifs.append(Motif(mid, name, pwm))
            i = j + 1 + width
        else:
            i += 1
    if not motifs:
        raise InputError(f"{path} contains no motifs")
    return motifs


def write_meme(path: str | Path, motifs: list[Motif]) -> None:
    out = ["MEME version 4", "", "ALPHABET= ACGT", "", "strands: + -", "",
           "Background letter frequencies", "A 0.25 C 0.25 G 0.25 T 0.25", ""]
    for m in motifs:
        out += [f"MOTIF {m.id} {m.name}", "",
                f"letter-probability matrix: alength= 4 w= {len(m.pwm)} nsites= 100 E= 0"]
        out += ["  ".join(f"{v:.6f}" for v in row) for row in m.pwm]
        out.append("")
    Path(path).write_text("\n".join(out) + "\n")
