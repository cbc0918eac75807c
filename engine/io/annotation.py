"""Gene annotation: TSS, strand, gene_id and name from GTF, GFF3, BED6+ gene bounds or a TSS table."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ..errors import InputError
from .files import open_text, require_file


@dataclass(frozen=True)
class GeneTSS:
    gene_id: str
    name: str
    chrom: str
    tss: int  # 0-based position of the first transcribed base
    strand: str


_GTF_ATTR = re.compile(r'(\S+)\s+"([^"]*)"')


def read_annotation(path: str | Path) -> list[GeneTSS]:
    """Genes from a GTF/GFF3 (``gene`` rows), a BED6+ of gene bounds (name col 4, strand col 6,
    optional Ensembl id col 7) or a TSS table with header ``gene_id name chrom tss strand``."""
    path = Path(path)
    require_file(path, "gene annotation")
    genes: list[GeneTSS] = []
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip() or line.startswith("##") or line.startswith("#!"):
                    continue
                f = line.rstrip("\n").split("\t")
                if lineno == 1 or line.startswith("#"):
                    head = [x.strip("#").lower() for x in f]
                    if {"gene_id", "chrom", "tss", "strand"} <= set(head):
                        return _read_tss_table(path, head)
                    if line.startswith("#"):
                        continue
                genes.append(_parse_row(f, path, lineno))
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read gene annotation {path}: {err}") from err
    genes = [g for g in genes if g is not None]
    if not genes:
        raise InputError(f"{path} holds no genes (expected GTF/GFF3 'gene' rows, a BED of gene bounds or a TSS table)")
    return genes


def _parse_row(f: list[str], path: Path, lineno: int):
    if len(f) >= 9 and f[3].isdigit() and f[4].isdigit():  # GTF / GFF3
        if f[2] != "gene":
            return None
        start, end, strand = int(f[3]) - 1, int(f[4]), f[6]
        # GTF: key "value"; GFF3: key=value, percent-encoded (Ensembl ID=gene:X, RefSeq ID=gene-X, GENCODE gene_id=X)
        attrs = dict(_GTF_ATTR.findall(f[8])) or {k.strip(): unquote(v) for k, v in
                                                   (kv.split("=", 1) for kv in f[8].strip().strip(";").split(";") if "=" in kv)}
        gid = attrs.get("gene_id") or attrs.get("ID", "").removeprefix("gene:").removeprefix("gene-")
        name = attrs.get("gene_name") or attrs.get("Name") or gid
        if not gid:
            raise InputError(f"{path}, line {lineno}: gene row without gene_id/ID attribute")
    elif len(f) >= 6 and f[1].isdigit() and f[2].isdigit():  # BED6+ gene bounds
        start, end, strand = int(f[1]), int(f[2]), f[5]
        name = f[3]
        gid = f[6] if len(f) > 6 and f[6] else name
    else:
        row = " | ".join(f)[:80]
        raise InputError(f"{path}, line {lineno}: not a GTF/GFF3 or BED gene row: {row!r}")
    if strand not in "+-" or not strand:
        raise InputError(f"{path}, line {lineno}: gene {gid} has strand {strand!r}; a TSS needs + or -")
    return GeneTSS(gid, name, f[0], start if strand == "+" else end - 1, strand)


def _read_tss_table(path: Path, head: list[str]) -> list[GeneTSS]:
    col = {k: head.index(k) for k in head}
    out = []
    with open_text(path) as fh:
        next(fh)
        for lineno, line in enumerate(fh, 2):
            f = line.rstrip("\n").split("\t")
            try:
                tss = int(f[col["tss"]])
            except (ValueError, IndexError) as err:
                raise InputError(f"{path}, line {lineno}: TSS is not an integer") from err
            strand = f[col["strand"]]
            if strand not in ("+", "-"):
                raise InputError(f"{path}, line {lineno}: strand {strand!r} must be + or -")
            name = f[col["name"]] if "name" in col else f[col["gene_id"]]
            out.append(GeneTSS(f[col["gene_id"]], name, f[col["chrom"]], tss, strand))
    return out
