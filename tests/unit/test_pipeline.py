"""`creformer run`: the docs' config templates load, and every missing input is named before Ray starts."""

from pathlib import Path

import pytest

from creformer import pipeline
from creformer.cli import main as cli_main
from creformer.config import load_config
from creformer.pipeline import missing_inputs

TEMPLATES = Path(__file__).resolve().parents[2] / "docs" / "templates"


@pytest.mark.parametrize("name", ["arc.yaml", "h5ad.yaml"])
def test_templates_are_valid_configs_and_name_what_to_edit(name):
    cfg = load_config(str(TEMPLATES / name))
    problems = missing_inputs(cfg)
    assert problems and all("EDIT/" in p for p in problems if "does not exist" in p)
    keys = {p.split("=")[0].split(" ")[0] for p in problems}
    assert {"data.genome", "data.regulatory.multiome", "data.regulatory.annotation", "analysis.motifs", "data.samples"} <= keys
    if name == "h5ad.yaml":
        assert {"data.regulatory.fragments", "data.regulatory.peaks"} <= keys


def test_run_names_every_missing_input_before_ray(tmp_path, capsys, monkeypatch):
    (tmp_path / "g.fa").write_text(">chr1\nACGT\n")
    started = []  # every stage (each starts Ray) is replaced by a recorder: none may run
    for stage in ("prepare_regulatory", "prepare_elementary", "train_elementary", "train_regulatory", "atlas_grn"):
        monkeypatch.setattr(pipeline, stage, lambda cfg, _s=stage: started.append(_s))
    code = cli_main(["run", "--config", "tiny", f"data.genome={tmp_path / 'g.fa'}", f"data.regulatory.multiome={tmp_path / 'rna.h5ad'}",
                     "train.regulatory.elementary_weights=/nope/model.safetensors"])
    assert code != 0 and started == []  # refused before any stage, so before any Ray start
    msg = capsys.readouterr().err
    assert "data.regulatory.multiome=" in msg and "does not exist" in msg
    assert "data.regulatory.annotation is not set" in msg and "analysis.motifs is not set" in msg
    assert "train.regulatory.elementary_weights=/nope/model.safetensors does not exist" in msg
    assert "RNA-only .h5ad: set data.regulatory.fragments and data.regulatory.peaks" in msg
    assert "data.genome" not in msg and "data.samples" not in msg  # given / not needed with pretrained weights
