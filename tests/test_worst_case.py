"""Table 3 / Table 6 (lit_caps.worst_case) end to end at the smoke scale: the three models trained
on MNIST by the table itself (seconds each), two betas + one refinement level, SVHN reported as
not available; resume; betas from sweep agents; one cell through the `lit-caps attack` CLI."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lit_caps import worst_case as wc

OV = ("logger.wandb=false", "progress_bar=false")


@pytest.fixture(scope="module")
def table(data_root, tmp_path_factory):
    """One smoke Table 3 over MNIST and SVHN: (df, runs, results, reports, kw)."""
    import torch

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("t3")
    kw = dict(runs_root=base / "runs", out_dir=base / "results", report_dir=base / "reports", data_root=str(data_root),
              wandb_log=False, train_overrides=OV)
    df = wc.table3(("mnist", "svhn"), "smoke", **kw)
    return df, kw


def _worst(df):
    return df[df["row_kind"] == "worst"]


def test_table3_smoke_columns_and_rows(table, data_root):
    df, kw = table
    w = _worst(df)
    assert len(w) == 12  # 2 datasets x 3 models x targeted/untargeted
    cols = {"dataset", "model", "attack", "targeted", "beta", "beta_resolution", "betas_tried", "success_pct",
            "success_ci_lo", "success_ci_hi", "undetected_pct", "undetected_ci_lo", "undetected_ci_hi",
            "best_undetected_pct", "paper_success_pct", "paper_undetected_pct", "diff_success_pct",
            "diff_undetected_pct", "n", "steps", "epochs", "model_seed", "config_hash", "model_hash",
            "search_wall_time_s", "status"}
    assert cols <= set(df.columns)
    m = w[w["dataset"] == "mnist"]
    assert len(m) == 6 and (m["status"] == "complete").all() and m["success_pct"].notna().all()
    assert set(m["model"]) == {"capsnet", "cnn_cr", "cnn_r"} and set(m["targeted"]) == {True, False}
    assert (m["n"] == 20).all() and (m["steps"] == 3).all() and (m["epochs"] == 1).all()
    # grid 0, 1 + one refinement level (0.5) = 3 betas; worst is the max over them
    assert (m["betas_done"] == 3).all() and (m["beta_resolution"] == 0.5).all()
    betas = df[(df["row_kind"] == "beta") & (df["dataset"] == "mnist")]
    assert set(betas["beta"]) == {0.0, 0.5, 1.0} and len(betas) == 18
    for r in m.itertuples():
        cell = betas[(betas["model"] == r.model) & (betas["targeted"] == r.targeted)]
        assert r.undetected_pct == cell["undetected_pct"].max()
        assert r.beta in set(cell[cell["undetected_pct"] == r.undetected_pct]["beta"])
        assert r.undetected_pct <= r.success_pct
    # paper values copied in, diffs computed from them
    cap = m[(m["model"] == "capsnet") & m["targeted"]].iloc[0]
    assert (cap["paper_success_pct"], cap["paper_undetected_pct"]) == (50.7, 33.7)
    assert cap["diff_undetected_pct"] == pytest.approx(round(cap["undetected_pct"] - 33.7, 1))
    md = (Path(kw["report_dir"]) / "table3_smoke.md").read_text()
    assert "## Agreement with the paper" in md and "Same ordering" in md and "N = 20 test images" in md
    for kind in ("targeted", "untargeted"):
        assert (Path(kw["report_dir"]) / "figures" / f"fig9_table3_mnist_{kind}_smoke.png").stat().st_size > 1000
        assert (Path(kw["report_dir"]) / "figures" / f"fig2_table3_mnist_{kind}_smoke.png").stat().st_size > 1000
    if not (Path(data_root) / "SVHN").exists():
        s = w[w["dataset"] == "svhn"]
        assert len(s) == 6 and (s["status"] == "not available").all() and s["success_pct"].isna().all()
        assert s["paper_success_pct"].notna().all()
        assert "SVHN: not available" in md and "svhn" in md.lower()


def test_table3_rerun_reuses_and_resumes(table):
    df, kw = table
    res = Path(kw["out_dir"]) / "smoke"
    files = sorted(res.rglob("r_pgd-*.json"))
    assert len(files) == 18
    before = {p: p.stat().st_mtime_ns for p in files}
    # interrupted: one result lost its file (its chunks remain), another lost one chunk too
    gone = files[0]
    gone.unlink()
    other = files[1]
    other.unlink()
    chunk = sorted((other.parent / ".chunks" / other.stem).glob("*/chunk_*.pt"))[0]
    chunk.unlink()
    # meanwhile the report marks the searches with a lost beta partial, naming it, never complete
    part = _worst(wc.table3(("mnist",), "smoke", only_report=True, **kw))
    for lost in (gone, other):
        model = lost.parent.name
        kind, beta = re.match(r"r_pgd-(\w+)-beta([\d.]+)-", lost.name).groups()
        row = part[(part["model"] == model) & (part["targeted"] == (kind == "targeted"))].iloc[0]
        assert row["status"].startswith("partial: betas") and f"{float(beta):g}" in row["status"], row["status"]
    assert (part["status"] == "complete").sum() == 6 - part["status"].str.startswith("partial").sum() >= 4
    md = (Path(kw["report_dir"]) / "table3_smoke.md").read_text()
    assert "*partial*" in md and f"{(part['status'] == 'complete').sum()}/6 cells measured" in md
    df2 = wc.table3(("mnist", "svhn"), "smoke", **kw)
    after = {p: p.stat().st_mtime_ns for p in sorted(res.rglob("r_pgd-*.json"))}
    assert set(after) == set(before)
    changed = {p for p in after if after[p] != before[p]}
    assert changed == {gone, other}  # only the lost ones were assembled / recomputed
    keep = ["dataset", "model", "targeted", "beta", "success_pct", "undetected_pct", "best_undetected_pct", "betas_tried"]
    pd.testing.assert_frame_equal(_worst(df)[keep].reset_index(drop=True), _worst(df2)[keep].reset_index(drop=True))
    # only-report computes nothing and gives the same table
    df3 = wc.table3(("mnist", "svhn"), "smoke", only_report=True, **kw)
    pd.testing.assert_frame_equal(_worst(df)[keep].reset_index(drop=True), _worst(df3)[keep].reset_index(drop=True))


def test_sweep_agent_betas_join_the_search(table, monkeypatch, tmp_path):
    """A beta computed by an agent (`lit-caps attack`, as a sweep runs it) becomes part of the search."""
    from lit_caps.cli import main

    df, kw = table
    metrics = tmp_path / "m.json"
    monkeypatch.setenv("LIT_CAPS_SWEEP_METRICS", str(metrics))
    rc = main(["attack", "--data=mnist", "--model=cnn_cr", "--attack=r_pgd", "--targeted=True", "--beta=0.25",
               "--scale=smoke", f"--runs={kw['runs_root']}", f"--out={kw['out_dir']}", f"--data-root={kw['data_root']}",
               "--no-wandb", "--no-progress"])
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert {"success_rate", "undetected_rate", "best_undetected_rate", "n", "result"} <= set(m) and m["n"] == 20
    assert Path(m["result"]).is_file() and "beta0.25" in m["result"]
    files = {p: p.stat().st_mtime_ns for p in (Path(kw["out_dir"]) / "smoke").rglob("r_pgd-*.json")}
    df2 = wc.table3(("mnist",), "smoke", **kw)  # a full run: reads the agent's beta, computes nothing new
    assert {p: p.stat().st_mtime_ns for p in (Path(kw["out_dir"]) / "smoke").rglob("r_pgd-*.json")} == files
    row = _worst(df2)
    row = row[(row["model"] == "cnn_cr") & row["targeted"]].iloc[0]
    assert row["betas_done"] == 4 and "0.25" in row["betas_tried"].split(", ")
    # a missing model is an error naming the fit command (agents never train unless told to)
    rc = main(["attack", "--data=mnist", "--model=cnn_cr", "--scale=smoke", "--seed=7", f"--runs={kw['runs_root']}",
               f"--out={kw['out_dir']}", "--no-wandb"])
    assert rc == 2


def test_table6_shares_rpgd_cells(table):
    df, kw = table
    res = Path(kw["out_dir"]) / "smoke"
    before = {p: p.stat().st_mtime_ns for p in res.rglob("r_pgd-*.json")}
    d6 = wc.table6(("mnist",), "smoke", models=("cnn_cr",), **kw)
    w = _worst(d6)
    assert set(w["attack"]) == {"r_fgsm", "r_bim", "r_pgd"} and len(w) == 6 and w["success_pct"].notna().all()
    assert {p: p.stat().st_mtime_ns for p in res.rglob("r_pgd-*.json")} == before  # R-PGD reused from Table 3
    assert (Path(kw["report_dir"]) / "table6_smoke.md").is_file()
    p6 = w[(w["attack"] == "r_fgsm") & w["targeted"]].iloc[0]
    assert (p6["paper_success_pct"], p6["paper_undetected_pct"]) == (7.6, 0.5)  # Table 6, MNIST CNN+CR R-FGSM


def test_unavailable_dataset_is_reported(tmp_path):
    why = wc.data_unavailable("svhn", str(tmp_path))
    assert why is not None and "svhn" in why.lower() and str(tmp_path) in why
    assert wc.data_unavailable("mnist", str(tmp_path)) is not None


def test_search_resolution_and_refinement_order():
    from lit_caps.experiments import Cell

    s = wc.Search("mnist", "capsnet", "r_pgd", True)
    for b, u in ((0.4, 0.2), (0.5, 0.6), (0.6, 0.3), (0.55, 0.5)):
        c = Cell("capsnet", "r_pgd", True, b)
        c.result = {"status": "complete", "summary": {"undetected_rate": u, "success_rate": u, "best_undetected_rate": u}}
        s.cells[b] = c
    assert s.worst.beta == 0.5 and s.resolution() == pytest.approx(0.1)
    assert wc._grid_step((0, 0.1, 0.2)) == pytest.approx(0.1)


def test_local_sweep_of_lit_caps_attack_offline_wandb(table, tmp_path):
    """The shipped sweep form (`command: [lit-caps, attack, ${args}]`) through the local runner, with
    W&B offline: each run is an offline W&B run, its metric reaches the runner, its result the table."""
    import yaml

    from lit_caps.sweeps import run_local

    df, kw = table
    sweep = {"name": "smoke-beta", "method": "grid", "metric": {"name": "undetected_rate", "goal": "maximize"},
             "parameters": {"data": {"value": "mnist"}, "scale": {"value": "smoke"}, "model": {"value": "cnn_r"},
                            "targeted": {"value": False}, "beta": {"values": [0.25, 0.75]},
                            "runs": {"value": str(kw["runs_root"])}, "out": {"value": str(kw["out_dir"])},
                            "data-root": {"value": kw["data_root"]}, "threads": {"value": 1}},
             "command": ["lit-caps", "attack", "${args}", "--no-progress"]}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    recs = run_local(path, state_dir=tmp_path / "state", env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert [r["rc"] for r in recs] == [0, 0]
    for r in recs:
        assert 0 <= r["metrics"]["undetected_rate"] <= r["metrics"]["success_rate"] <= 1
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(any(p.suffix == ".wandb" for p in r.iterdir()) for r in runs)
    d = wc.table3(("mnist",), "smoke", only_report=True, **kw)
    row = d[(d["row_kind"] == "worst") & (d["model"] == "cnn_r") & ~d["targeted"].astype(bool)].iloc[0]
    assert {"0.25", "0.75"} <= set(row["betas_tried"].split(", "))
    assert row["undetected_pct"] >= 100 * max(r["metrics"]["undetected_rate"] for r in recs) - 1e-9


def test_fig1_smoke(table):
    from lit_caps.fig1 import capsule_distances, fig1

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


def test_table2_smoke(table):
    from lit_caps.corruptions import PAPER_CORRUPTIONS, PUBLIC_CORRUPTIONS
    from lit_caps.table2 import table2

    df, kw = table
    t2 = table2("smoke", runs_root=kw["runs_root"], report_dir=kw["report_dir"], data_root=kw["data_root"],
                wandb_log=False)
    cs = {"clean"} | set(PAPER_CORRUPTIONS) | set(PUBLIC_CORRUPTIONS)
    assert set(t2["corruption"]) == cs and len(t2) == 3 * len(cs) and (t2["n"] == 100).all()
    assert (t2["undetected_pct"] <= t2["error_pct"]).all() and t2["flagged_pct"].between(0, 100).all()
    clean = t2[(t2["corruption"] == "clean") & (t2["model"] == "capsnet")].iloc[0]
    assert (clean["paper_error_pct"], clean["paper_undetected_pct"]) == (0.6, 0.2)
    assert t2[t2["corruption"] == "stripe"]["paper_error_pct"].isna().all()  # public-only: no paper value
    md = (Path(kw["report_dir"]) / "table2_smoke.md").read_text()
    assert "The paper's 17 corruptions" in md and "public MNIST-C 15" in md
    for which in ("paper17", "public15"):
        assert (Path(kw["report_dir"]) / "figures" / f"fig7_mnist_c_{which}_smoke.png").stat().st_size > 5000


def test_class_pairs_and_galleries_smoke(table):
    from lit_caps.diagnosis import class_pairs, galleries

    df, kw = table
    common = dict(runs_root=kw["runs_root"], out_dir=kw["out_dir"], report_dir=kw["report_dir"],
                  data_root=kw["data_root"], wandb_log=False)
    f4 = class_pairs("mnist", "smoke", **common)
    assert list(f4["model"]) == ["capsnet", "cnn_cr", "cnn_r"] and (f4["pairs"] == 90).all()
    for r in f4.itertuples():  # a rank correlation, undefined only when a smoke model's pair rates do not vary
        rates = set(json.loads(r.pairs_table).values())
        assert -1 <= r.spearman_success_vs_confusion <= 1 or (np.isnan(r.spearman_success_vs_confusion) and len(rates) == 1)
    # the worst-case beta comes from Table 3's smoke results of the same model
    w = _worst(df)
    for r in f4.itertuples():
        assert r.beta == w[(w["dataset"] == "mnist") & (w["model"] == r.model) & w["targeted"]]["beta"].iloc[0]
    res = Path(f4["result"].iloc[0])
    before = res.stat().st_mtime_ns
    f4b = class_pairs("mnist", "smoke", **common)  # reused, same numbers
    assert res.stat().st_mtime_ns == before and f4b["pairs_table"].tolist() == f4["pairs_table"].tolist()
    g = galleries("mnist", "smoke", **common)
    assert (g["candidates"] == 20).all() and (g["shown"] <= g["success_and_undetected"]).all()
    for name in ("fig4_class_pairs_mnist_smoke.png", "fig5_gallery_mnist_smoke.png",
                 "fig10_reconstructions_mnist_smoke.png"):
        assert (Path(kw["report_dir"]) / "figures" / name).stat().st_size > 3000


def test_fig3_cifar10_smoke(data_root, tmp_path):
    """CIFAR-10 from the PNG test split (8k/2k split), three variants + a seed-1 source, smoke scale."""
    import torch

    from lit_caps.fig3 import fig3

    if not (Path(data_root) / "CIFAR10_png").exists() and not (Path(data_root) / "cifar-10-batches-py").exists():
        pytest.skip("no CIFAR-10 under the data root")
    torch.set_num_threads(1)
    df = fig3("smoke", runs_root=tmp_path / "runs", out_dir=tmp_path / "results", report_dir=tmp_path / "reports",
              data_root=str(data_root), wandb_log=False,
              train_overrides=("logger.wandb=false", "progress_bar=false", "train.limit_train_batches=2",
                               "arch.conv_channels=16", "arch.primary_types=2", "arch.decoder_hidden=[64,64]"))
    assert set(df["variant"]) == {"capsnet", "capsnet_all", "capsnet_winner"}
    assert list(df["box"]).count("black") == 1 and (df["n"] == 10).all() and df["success_pct"].notna().all()
    assert (df["test_size"] == 2000).all()
    assert (tmp_path / "reports" / "figures" / "fig3_cifar10_smoke.png").stat().st_size > 3000
    assert "92.2%" in (tmp_path / "reports" / "fig3_cifar10_smoke.md").read_text()


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
    wc._wandb_log("table3", "smoke", df, {"fig": png}, {"u": ([[0.0, 0.5]], [[1.0, 2.0]], ["CapsNet"], "t", "beta")},
                  tmp_path)
    assert "W&B logging failed" not in capsys.readouterr().out
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(p.suffix == ".wandb" for p in runs[0].iterdir())
