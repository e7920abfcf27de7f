"""Fig. 1 (lit_caps.experiments.fig1) at the smoke scale, on Table 3's smoke models."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


def test_fig1_smoke(table):
    from lit_caps.experiments.fig1 import capsule_distances, fig1

    df, kw = table
    kw = {k: v for k, v in kw.items() if k != "train_overrides"}
    out = fig1("mnist", "smoke", **kw)
    assert list(out["model"]) == ["capsnet", "cnn_cr", "cnn_r"]
    caps = out.iloc[0]
    assert caps["n_a"] == 50 and caps["n_b"] == 20 and 0 <= caps["pgd_success_rate"] <= 1
    assert pd.isna(out.iloc[2].get("mean_correct"))  # CNN+R: (a) does not apply
    assert (Path(kw["report_dir"]) / "figures" / "fig1_mnist_smoke.png").stat().st_size > 1000
    assert "Fig. 1" in (Path(kw["report_dir"]) / "fig1_mnist_smoke.md").read_text()
    # (a)'s distances: one correct and K-1 others per image, the correct one the reconstruction of y
    import torch

    from lit_caps.models import build_model

    from lit_caps.config import load_group

    torch.manual_seed(0)
    model = build_model("cnn_cr", **load_group("arch", "mnist")).eval()
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    c, o = capsule_distances(model, x, y, batch_size=4)
    assert c.shape == (6,) and o.shape == (54,)
    with torch.no_grad():
        assert c == pytest.approx(model.distance(x, y).numpy(), rel=1e-5)
