"""Table 3 / Table 6 (lit_caps.experiments.table3) end to end at the smoke scale: the three models trained
on MNIST by the table itself (seconds each), two betas + one refinement level, SVHN reported as
not available; resume; betas from sweep agents; one cell through the `lit-caps attack` CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from lit_caps.experiments import table3

from .conftest import worst_rows


def test_table3_smoke_columns_and_rows(table, data_root):
    df, kw = table
    w = worst_rows(df)
    assert len(w) == 18  # 3 datasets x 3 models x targeted/untargeted
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
    # the paired test of CapsNet below the lowest CNN: its discordant counts differ by exactly the two
    # worst cells' difference in undetected images (same 20 images, same targets)
    for t in (True, False):
        line = next(x for x in md.splitlines() if x.startswith(f"- MNIST, {'targeted' if t else 'untargeted'} "))
        got = re.search(r"CapsNet below (CNN\+CR|CNN\+R): paired test \(the same 20 images, exact McNemar\): "
                        r"undetected under \1 only (\d+), under CapsNet only (\d+), p = [0-9.e+-]+: "
                        r"(holds|not resolved|does not hold \(the reverse\))\.", line)
        assert got, line
        cnn = m[(m["model"] == {"CNN+CR": "cnn_cr", "CNN+R": "cnn_r"}[got[1]]) & (m["targeted"] == t)].iloc[0]
        caps = m[(m["model"] == "capsnet") & (m["targeted"] == t)].iloc[0]
        assert int(got[2]) - int(got[3]) == round((cnn["undetected_pct"] - caps["undetected_pct"]) * 20 / 100)
    for kind in ("targeted", "untargeted"):
        assert (Path(kw["report_dir"]) / "figures" / f"fig9_table3_mnist_{kind}_smoke.png").stat().st_size > 1000
        assert (Path(kw["report_dir"]) / "figures" / f"fig2_table3_mnist_{kind}_smoke.png").stat().st_size > 1000
    if not (Path(data_root) / "SVHN").exists():
        s = w[w["dataset"] == "svhn"]
        assert len(s) == 6 and (s["status"] == "not available").all() and s["success_pct"].isna().all()
        assert s["paper_success_pct"].notna().all()
        assert "SVHN: not available" in md and "svhn" in md.lower()
    # --data narrows what is computed, not the report: Fashion-MNIST (not asked for, no run) keeps its
    # rows, pending with the command that trains its model
    f = w[w["dataset"] == "fashion_mnist"]
    assert len(f) == 6 and f["success_pct"].isna().all() and f["paper_success_pct"].notna().all()
    assert f["status"].str.startswith("pending (no run: lit-caps fit --model").all(), f["status"].tolist()


def test_table3_rerun_reuses_and_resumes(table, monkeypatch):
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
    part = worst_rows(table3.table3(("mnist",), "smoke", only_report=True, **kw))
    part = part[part["dataset"] == "mnist"]
    for lost in (gone, other):
        model = lost.parent.name
        kind, beta = re.match(r"r_pgd-(\w+)-beta([\d.]+)-", lost.name).groups()
        row = part[(part["model"] == model) & (part["targeted"] == (kind == "targeted"))].iloc[0]
        assert row["status"].startswith("partial: betas") and f"{float(beta):g}" in row["status"], row["status"]
    assert (part["status"] == "complete").sum() == 6 - part["status"].str.startswith("partial").sum() >= 4
    md = (Path(kw["report_dir"]) / "table3_smoke.md").read_text()
    assert "*partial*" in md and f"{(part['status'] == 'complete').sum()}/18 cells measured" in md
    written = []  # every report the resuming run writes, in order
    real = table3.write_worst_case_report
    monkeypatch.setattr(table3, "write_worst_case_report", lambda *a, **k: written.append(real(*a, **k)) or written[-1])
    df2 = table3.table3(("mnist", "svhn"), "smoke", **kw)
    # its first report, written before it computes anything, already shows every finished cell (a report
    # written mid-run never shows a measured search as pending because the run has not reached it yet)
    first = worst_rows(written[0])
    first = first[first["dataset"] == "mnist"].reset_index(drop=True)
    assert len(written) >= 3 and (first["status"] == part["status"].reset_index(drop=True)).all()
    after = {p: p.stat().st_mtime_ns for p in sorted(res.rglob("r_pgd-*.json"))}
    assert set(after) == set(before)
    changed = {p for p in after if after[p] != before[p]}
    assert changed == {gone, other}  # only the lost ones were assembled / recomputed
    keep = ["dataset", "model", "targeted", "beta", "success_pct", "undetected_pct", "best_undetected_pct", "betas_tried"]
    pd.testing.assert_frame_equal(worst_rows(df)[keep].reset_index(drop=True), worst_rows(df2)[keep].reset_index(drop=True))
    # only-report computes nothing and gives the same table
    df3 = table3.table3(("mnist", "svhn"), "smoke", only_report=True, **kw)
    pd.testing.assert_frame_equal(worst_rows(df)[keep].reset_index(drop=True), worst_rows(df3)[keep].reset_index(drop=True))


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
    df2 = table3.table3(("mnist",), "smoke", **kw)  # a full run: reads the agent's beta, computes nothing new
    assert {p: p.stat().st_mtime_ns for p in (Path(kw["out_dir"]) / "smoke").rglob("r_pgd-*.json")} == files
    row = worst_rows(df2)
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
    d6 = table3.table6(("mnist",), "smoke", models=("cnn_cr",), **kw)
    every = worst_rows(d6)
    assert set(every["dataset"]) == {"mnist", "fashion_mnist", "svhn"}  # the report keeps every dataset
    every = every[every["dataset"] == "mnist"]
    w = every[every["model"] == "cnn_cr"]
    assert set(w["attack"]) == {"r_fgsm", "r_bim", "r_pgd"} and len(w) == 6 and w["success_pct"].notna().all()
    # --models narrows what is computed, not the report: the other models keep their rows (R-PGD read
    # from Table 3's results, the R-FGSM / R-BIM cells never run for them pending)
    others = every[every["model"] != "cnn_cr"]
    assert set(others["model"]) == {"capsnet", "cnn_r"} and len(others) == 12
    assert others[others["attack"] == "r_pgd"]["success_pct"].notna().all()
    assert others[others["attack"] != "r_pgd"]["success_pct"].isna().all()
    assert {p: p.stat().st_mtime_ns for p in res.rglob("r_pgd-*.json")} == before  # R-PGD reused from Table 3
    assert (Path(kw["report_dir"]) / "table6_smoke.md").is_file()
    p6 = w[(w["attack"] == "r_fgsm") & w["targeted"]].iloc[0]
    assert (p6["paper_success_pct"], p6["paper_undetected_pct"]) == (7.6, 0.5)  # Table 6, MNIST CNN+CR R-FGSM


def test_targeted_narrows_what_is_computed(table):
    """--targeted true computes only the targeted searches; the report keeps the untargeted rows, read
    from the result files that exist (here none: pending). Runs after test_table6_shares_rpgd_cells."""
    df, kw = table
    res = Path(kw["out_dir"]) / "smoke" / "mnist" / "cnn_r"
    d6 = worst_rows(table3.table6(("mnist",), "smoke", models=("cnn_r",), targeted=(True,), **kw))
    d6 = d6[d6["dataset"] == "mnist"]
    w = d6[(d6["model"] == "cnn_r") & (d6["attack"] != "r_pgd")]
    assert len(w) == 4 and w[w["targeted"]]["success_pct"].notna().all()
    assert w[~w["targeted"]]["success_pct"].isna().all()  # untargeted R-FGSM / R-BIM: never computed
    assert sorted(res.glob("r_fgsm-untargeted-*.json")) == [] and sorted(res.glob("r_fgsm-targeted-*.json"))


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
    d = table3.table3(("mnist",), "smoke", only_report=True, **kw)
    row = d[(d["row_kind"] == "worst") & (d["model"] == "cnn_r") & ~d["targeted"].astype(bool)].iloc[0]
    assert {"0.25", "0.75"} <= set(row["betas_tried"].split(", "))
    assert row["undetected_pct"] >= 100 * max(r["metrics"]["undetected_rate"] for r in recs) - 1e-9
