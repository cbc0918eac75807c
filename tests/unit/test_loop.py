"""Training progress lines reach the worker's stdout once, even under Ray Train v2's print patch."""

import builtins
import io
import logging
import sys

import pytest

from creformer.trainer import loop


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
