"""The worker loop's parts: progress lines reach the worker's stdout once, even under Ray Train
v2's print patch; the optimizer's parameter groups; DeepSpeed compiles no op training does not use."""

import builtins
import io
import logging
import sys

import pytest
import torch

from creformer.config import ConfigError, load_config
from creformer.trainer import loop
from creformer.trainer.model.regulatory import RegulatoryHead


def test_progress_line_once_under_train_print_patch(monkeypatch):
    patch = pytest.importorskip("ray.train.v2._internal.logging.patch_print",
                                reason="this Ray has no Train v2 print patch")
    # What a Ray Train v2 worker looks like: Ray's worker replaces sys.stdout, Train patches print
    # and its root logger writes to the console; there, print("x") wrote "x" twice (Ray 2.60).
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(builtins, "print", patch.redirected_print)
    root = logging.getLogger()
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)
    try:
        loop._say("[stage] step 10/100")
    finally:
        root.removeHandler(handler)
    assert out.getvalue().count("[stage] step 10/100") == 1


def test_the_cis_table_learns_at_its_own_rate_only_when_asked():
    cfg = load_config("tiny")
    head = RegulatoryHead(cfg.model, cfg.data.regulatory.peak_m, 3)
    trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    st = cfg.train.regulatory
    same = loop.param_groups(head, st)  # scale 1: one group, as before the knob
    assert len(same) == 1 and same[0]["lr"] == st.lr and sum(p.numel() for p in same[0]["params"]) == trainable
    st.cis_lr_scale = 10.0
    rest, cis = loop.param_groups(head, st)
    assert cis["params"] == [head.gene_peak_w.weight] and cis["lr"] == pytest.approx(10 * st.lr)
    assert rest["lr"] == st.lr and sum(p.numel() for p in rest["params"]) == trainable - head.gene_peak_w.weight.numel()
    opt = loop.optimizer(head, st)  # what the loop builds: AdamW keeps each group's lr
    assert [g["lr"] for g in opt.param_groups] == [st.lr, pytest.approx(10 * st.lr)]
    assert [g["weight_decay"] for g in opt.param_groups] == [st.weight_decay] * 2 == [0.01] * 2


def test_each_stage_sets_its_own_weight_decay():
    cfg = load_config("tiny", ["train.regulatory.weight_decay=0.1", "train.elementary.weight_decay=0"])
    head = RegulatoryHead(cfg.model, cfg.data.regulatory.peak_m, 3)
    assert {g["weight_decay"] for g in loop.optimizer(head, cfg.train.regulatory).param_groups} == {0.1}
    assert {g["weight_decay"] for g in loop.optimizer(head, cfg.train.elementary).param_groups} == {0.0}
    with pytest.raises(ConfigError, match=r"train.regulatory.weight_decay=-1.0 must be 0"):
        load_config("tiny", ["train.regulatory.weight_decay=-1"])


def test_deepspeed_builds_no_shm_comm_op_for_training(monkeypatch, tmp_path):
    # A fresh extensions folder: were the op still built, DeepSpeed would compile it here (~40 s).
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    from deepspeed.comm.torch import build_shm_op

    loop.skip_shm_comm_op()
    assert build_shm_op() is None
    assert not any(tmp_path.iterdir())
