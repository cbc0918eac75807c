"""Position frequency matrices as JASPAR distributes them: MEME text, JASPAR (``>ID NAME`` then
``A [ counts ]`` rows) and raw PFM (``>ID NAME`` then four tab- or space-separated count rows, A C G T;
one matrix per file or JASPAR's ``pfm_all``-style concatenation). ``read_motifs`` tells them apart by
content."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import open_text, require_file


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


def read_jaspar(path: str | Path) -> list[Motif]:
    """JASPAR bracketed or raw-PFM counts: a ``>`` header (ID, then name) and four rows of counts
    (A, C, G, T), optionally prefixed by the letter and bracketed. A raw ``.pfm`` of a single matrix
    without a header takes its ID from the file name. Counts become per-position probabilities,
    as JASPAR's own MEME export writes them."""
    path = Path(path)
    require_file(path, "motif file")
    with open_text(path) as fh:
        lines = [(i, line.strip()) for i, line in enumerate(fh, 1) if line.strip() and not line.startswith("#")]
    if lines and not lines[0][1].startswith(">"):
        stem = path.name.removesuffix(".gz")  # MA0035.5.pfm -> MA0035.5
        lines.insert(0, (0, f">{stem.rsplit('.', 1)[0] if '.' in stem else stem}"))
    motifs: list[Motif] = []
    k = 0
    while k < len(lines):
        lineno, head = lines[k]
        if not head.startswith(">"):
            raise InputError(f"{path}, line {lineno}: expected a '>ID NAME' header, got {head[:60]!r}")
        parts = head[1:].split()
        if not parts:
            raise InputError(f"{path}, line {lineno}: header without a matrix ID")
        mid, name = parts[0], (parts[1] if len(parts) > 1 else parts[0])
        rows: dict[str, list[float]] = {}
        for letter, (rl, row) in zip("ACGT", lines[k + 1 : k + 5]):
            cells = row.replace("[", " ").replace("]", " ").split()
            if cells and cells[0].upper() in "ACGT" and not cells[0].replace(".", "").isdigit():
                if cells[0].upper() != letter:
                    raise InputError(f"{path}, line {rl}: row {cells[0]!r} of {mid}; rows must be A, C, G, T in order")
                cells = cells[1:]
            try:
                rows[letter] = [float(x) for x in cells]
            except ValueError as err:
                raise InputError(f"{path}, line {rl}: row {letter} of {mid} holds a non-number ({err})") from err
        if len(rows) < 4 or len({len(r) for r in rows.values()}) != 1 or not rows["A"]:
            raise InputError(f"{path}, line {lineno}: matrix {mid} needs four count rows (A, C, G, T) of equal length")
        counts = np.array([rows[b] for b in "ACGT"], np.float64).T  # (width, 4)
        totals = counts.sum(1, keepdims=True)
        if np.any(counts < 0) or np.any(totals <= 0):
            raise InputError(f"{path}, line {lineno}: matrix {mid} has negative counts or an all-zero column")
        motifs.append(Motif(mid, name, counts / totals))
        k += 5
    if not motifs:
        raise InputError(f"{path} contains no motifs")
    return motifs


def read_motifs(path: str | Path) -> list[Motif]:
    """MEME, JASPAR or raw-PFM motifs, told apart by content (a 'MEME version' line, else '>' headers
    or bare count rows)."""
    path = Path(path)
    require_file(path, "motif file")
    with open_text(path) as fh:
        head = [line for _, line in zip(range(40), fh)]
    if any(line.startswith("MEME version") for line in head):
        return read_meme(path)
    first = next((line.strip() for line in head if line.strip() and not line.startswith("#")), "")
    if first.startswith(">") or first[:1].isdigit() or first[:1] in "ACGT":
        return read_jaspar(path)
    raise InputError(f"{path}: not a MEME, JASPAR or PFM motif file (first line {first[:60]!r}); "
                     "JASPAR offers all three on each matrix's download menu")


def read_motif_table(path: str | Path) -> dict[str, str]:
    """JASPAR's metadata TSV (columns ``matrix_id`` and ``tf_name``, as on its download page):
    matrix ID → TF name, for motif files whose headers carry no (or another) name."""
    path = Path(path)
    require_file(path, "motif table")
    with open_text(path) as fh:
        head = fh.readline().rstrip("\n").split("\t")
        if "matrix_id" not in head or "tf_name" not in head:
            raise InputError(f"{path}: a JASPAR motif table needs columns matrix_id and tf_name (found {head[:6]})")
        i, j = head.index("matrix_id"), head.index("tf_name")
        out = {}
        for lineno, line in enumerate(fh, 2):
            f = line.rstrip("\n").split("\t")
            if len(f) <= max(i, j) or not f[i] or not f[j]:
                raise InputError(f"{path}, line {lineno}: missing matrix_id or tf_name")
            out[f[i]] = f[j]
    return out


def name_motifs(motifs: list[Motif], table: dict[str, str]) -> list[Motif]:
    """Motifs renamed by matrix ID from ``read_motif_table``; IDs absent from the table keep their name."""
    return [Motif(m.id, table.get(m.id, m.name), m.pwm) for m in motifs]
