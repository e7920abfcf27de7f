"""W&B logging (lit_caps.tracking), offline."""
from __future__ import annotations

import pandas as pd

from lit_caps.tracking import log_report


def test_report_wandb_run_offline(tmp_path, monkeypatch, capsys):
    """The tables' W&B run (table, images, line plots) works offline, without a server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("WANDB_MODE", "offline")
    png = tmp_path / "f.png"
    plt.plot([0, 1], [0, 1])
    plt.savefig(png)
    plt.close()
    df = pd.DataFrame({"model": ["capsnet"], "undetected_pct": [33.7]})
    log_report("table3", "smoke", df, {"fig": png}, {"u": ([[0.0, 0.5]], [[1.0, 2.0]], ["CapsNet"], "t", "beta")},
                  tmp_path)
    assert "W&B logging failed" not in capsys.readouterr().out
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(p.suffix == ".wandb" for p in runs[0].iterdir())
