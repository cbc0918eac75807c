import pytest

from creformer.config import Config, ConfigError, load_config, preset_names, save_config


def test_presets_load_and_differ():
    assert {"tiny", "small", "paper"} <= set(preset_names())
    tiny, small, paper = (load_config(p) for p in ("tiny", "small", "paper"))
    assert (tiny.model.d_model, small.model.d_model, paper.model.d_model) == (64, 256, 2048)
    assert (paper.model.n1, paper.model.n2, paper.model.n3, paper.model.ffn, paper.model.n_heads) == (20, 20, 20, 8192, 32)
    assert isinstance(tiny, Config)


def test_dotted_overrides_are_typed():
    cfg = load_config("tiny", ["model.d_model=128", "train.regulatory.lr=1", "data.assays=[ATAC, CTCF]", "model.n_tracks=2",
                               "train.use_gpu=true"])
    assert cfg.model.d_model == 128
    assert cfg.train.regulatory.lr == 1.0 and isinstance(cfg.train.regulatory.lr, float)
    assert cfg.train.elementary.lr == 3e-4  # each stage has its own
    assert cfg.data.assays == ["ATAC", "CTCF"]
    assert cfg.train.use_gpu is True


@pytest.mark.parametrize("override, message", [
    (["model.dmodel=3"], "did you mean 'd_model'"),
    (["model.d_model=abc"], "expected an integer"),
    (["train.use_gpu=3"], "expected true or false"),
    (["nosection.x=1"], "unknown key 'nosection'"),
    (["model=3"], "is a section"),
    (["model.d_model"], "must look like"),
    (["data.crop_length=100"], "must be one of"),
    (["model.n_heads=5"], "divisible"),
    (["model.local_kernel=4"], "odd width"),
    (["train.regulatory.holdout_cells=1.0"], r"must be in \[0, 1\)"),
    (["data.assays=[ATAC, CTCF]"], "model.n_tracks=7 but data.assays lists 2 tracks"),
    (["train.elementary.max_steps=0"], "train.elementary.max_steps=0 must be positive"),
    (["train.lr=1"], "unknown key 'train.lr'"),
    (["data.regulatory.window_bp=5"], "did you mean 'tss_window_bp'"),
    (["analysis.motif_pvalue=2"], r"motif_pvalue=2.0 must lie in \[0, 1\)"),
    (["analysis.ko_propagation=-1"], "propagation steps must be ≥ 0"),
    (["analysis.perturb_support_pvalue=1e-5"], "must lie between analysis.motif_pvalue"),
    (["analysis.motif_pvalue=0", "analysis.perturb_support_pvalue=1e-3"], "set analysis.motif_pvalue"),
    (["analysis.perturb_support_r=2"], "Pearson r: it must lie in"),
    (["train.regulatory.cis_refit=true", "model.gene_peak_weights=false"], "refits the per-gene cis table, which this model lacks"),
])
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", override)


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_model: 64\n  n_head: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line 3: unknown key 'model.n_head'; did you mean 'n_heads'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")


def test_round_trip(tmp_path):
    cfg = load_config("small", ["train.elementary.max_steps=7"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_zero_stage_must_be_a_deepspeed_stage():
    from creformer.config import ConfigError, load_config

    assert load_config("tiny", ["train.zero_stage=0"]).train.zero_stage == 0
    with pytest.raises(ConfigError, match="train.zero_stage=5 must be 0, 1, 2 or 3"):
        load_config("tiny", ["train.zero_stage=5"])
