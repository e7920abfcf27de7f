"""Fixtures of the experiment tests: tiny trained models, shared by the test files of this folder
(session-scoped: trained once)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_caps.experiments import table3

#: Table 3 at the smoke scale trains its own models with these overrides.
OV = ("logger.wandb=false", "progress_bar=false")
#: the model of the `runs` fixture (tests/conftest.py: CNN+CR, seeds 0 and 1)
MODEL = "cnn_cr"


@pytest.fixture(scope="session")
def table(data_root, tmp_path_factory):
    """One smoke Table 3 over MNIST and SVHN (the three models trained by the table itself, seconds
    each; SVHN reported as not available): (df, kw)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("t3")
    kw = dict(runs_root=base / "runs", out_dir=base / "results", report_dir=base / "reports", data_root=str(data_root),
              wandb_log=False, train_overrides=OV)
    df = table3.table3(("mnist", "svhn"), "smoke", **kw)
    return df, kw


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Fresh results and reports folders for each test file (its tests share them, in order)."""
    base = tmp_path_factory.mktemp("exp")
    return base / "results", base / "reports"


def mtimes(out_dir) -> dict:
    return {p: p.stat().st_mtime_ns for p in Path(out_dir).rglob("*.json")}


def worst_rows(df):
    return df[df["row_kind"] == "worst"]
