"""Table 1 (lit_caps.experiments.table1) at the smoke scale on tiny `lit-caps fit` runs, the scales, and
the `lit-caps reproduce` / `evaluate --attacks cw` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lit_caps.config import SCALE_NAMES, load_scale
from lit_caps.experiments.cells import MODELS, STANDARD_ATTACKS, attack_settings, reductions
from lit_caps.experiments.rpgd_beta import rpgd_beta_grid
from lit_caps.experiments.table1 import table1
from lit_caps.reporting.paper import paper_table
from lit_caps.runs import RunNotFoundError, find_run

from .conftest import MODEL, mtimes


def test_scales():
    scales = {s: load_scale(s) for s in SCALE_NAMES}
    assert set(scales) == {"smoke", "quick", "paper"}
    for sc in scales.values():
        assert set(sc) == {"table1", "rpgd_beta", "table7", "table3", "fig1", "table2", "fig3", "fig4", "galleries",
                           "adaptive"}
    p = scales["paper"]["table1"]
    assert p["n"] == 1000 and p["steps"] is None and p["cw"] is None
    assert attack_settings("mnist", "pgd", p) == {"steps": 1000}
    assert attack_settings("fashion_mnist", "bim", p) == {"steps": 500}
    assert attack_settings("svhn", "pgd", scales["quick"]["table1"]) == {"steps": 200}  # capped by the paper's
    assert reductions("mnist", "paper", "table1") == []
    (fast,) = reductions("mnist", "paper", "table3")  # the fast path, where it passed its check
    assert fast.startswith("the fast path: the attack iterations of capsnet's PGD, R-PGD on MNIST under bf16")
    assert reductions("fashion_mnist", "paper", "table3") == []  # the fast path did not pass there
    # Table 3's quick cells are the R-PGD grid's (same N, iterations, chunks -> the same result files)
    q3, qb = scales["quick"]["table3"], scales["quick"]["rpgd_beta"]
    assert all(q3[k] == qb[k] for k in ("n", "chunk_size", "steps", "betas")) and q3["refine"] == 2
    red = " ".join(reductions("mnist", "quick", "table1"))
    assert "N = 500" in red and "200 iterations" in red and "1000 x 9" in red


def test_table1_report_reuse_and_pending(runs, dirs, capsys):
    out, rep = dirs
    kw = dict(runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,))
    everything = table1("mnist", "smoke", **kw)
    md, csv = rep / "table1_mnist_smoke.md", rep / "table1_mnist_smoke.csv"
    assert md.is_file() and csv.is_file()
    # the report lists the three models; --models narrowed only what was computed
    assert len(everything) == 24 and list(dict.fromkeys(everything["model"])) == list(MODELS)
    others = everything[everything["model"] != MODEL]
    assert others["status"].str.contains("lit-caps fit --model").all()  # no runs for them here: pending
    df = everything[everything["model"] == MODEL].reset_index(drop=True)
    assert len(df) == 8 and (df["status"] == "complete").all()
    assert set(zip(df["attack"], df["targeted"])) == {(a, t) for a in STANDARD_ATTACKS for t in (True, False)}
    cols = {"model", "attack", "targeted", "status", "success_pct", "success_ci_lo", "success_ci_hi", "undetected_pct",
            "undetected_ci_lo", "undetected_ci_hi", "best_undetected_pct", "best_undetected_ci_lo",
            "best_undetected_ci_hi", "paper_success_pct", "paper_undetected_pct", "diff_success_pct",
            "diff_undetected_pct", "n", "eps", "step_size", "steps", "cw_binary_search_steps", "attack_seed",
            "config_hash", "model_hash", "checkpoint", "epochs", "wall_time_s", "device"}
    read = pd.read_csv(csv)
    assert cols <= set(read.columns) and len(read) == 24
    paper = paper_table("table5_whitebox_standard").set_index(["dataset", "model", "attack", "targeted"])
    summary = find_run(runs, "mnist", MODEL)
    for r in df.to_dict("records"):
        ref = paper.loc[("mnist", MODEL, r["attack"], r["targeted"])]
        assert (r["paper_success_pct"], r["paper_undetected_pct"]) == (ref["success_rate"], ref["undetected_rate"])
        assert r["diff_success_pct"] == pytest.approx(r["success_pct"] - ref["success_rate"], abs=0.051)
        assert r["success_ci_lo"] <= r["success_pct"] <= r["success_ci_hi"]
        assert r["undetected_pct"] <= r["best_undetected_pct"] <= r["success_pct"]
        assert r["n"] == 20 and r["epochs"] == 1 and r["config_hash"] == summary["config_hash"]
        assert r["steps"] == {"fgsm": 1, "bim": 3, "pgd": 3, "cw": 3}[r["attack"]]
        if r["attack"] == "cw":
            assert r["cw_binary_search_steps"] == 1 and pd.isna(r["eps"])
        else:
            assert pd.isna(r["cw_binary_search_steps"]) and r["eps"] == 0.3
        assert Path(r["result"]).is_file() and r["wall_time_s"] >= 0 and r["device"] == "cpu"
        assert Path(r["result"]).parent == out / "smoke" / "mnist" / MODEL  # reduced scales: their own folder
    text = md.read_text()
    assert "| CNN+CR |" in text and "(95/0)" in text and "(100/28)" in text and "N = 20 test images" in text
    cnn_cr_line = next(line for line in text.splitlines() if line.startswith("| CNN+CR |"))
    assert "pending" not in cnn_cr_line
    fig = rep / "figures" / "table1_undetected_vs_fpr_mnist_smoke.png"
    assert fig.is_file() and fig.stat().st_size > 10_000 and "(figures/table1_undetected_vs_fpr_mnist_smoke.png)" in text

    # rerun: every cell reused, nothing recomputed
    before = mtimes(out)
    capsys.readouterr()
    again = table1("mnist", "smoke", **kw)
    assert mtimes(out) == before and len(before) == 8
    assert capsys.readouterr().out.count(": cached (") == 8
    pd.testing.assert_frame_equal(again, everything)

    # a missing result file shows as pending (only_report computes nothing), never as a number
    gone = Path(df[(df["attack"] == "pgd") & df["targeted"]]["result"].iloc[0])
    gone.unlink()
    rep_only = table1("mnist", "smoke", only_report=True, **kw)
    rep_only = rep_only[rep_only["model"] == MODEL]
    row = rep_only[(rep_only["attack"] == "pgd") & rep_only["targeted"]].iloc[0]
    assert row["status"].startswith("pending") and pd.isna(row["success_pct"]) and pd.isna(row["undetected_pct"])
    assert not gone.exists() and (rep_only["status"] == "complete").sum() == 7
    text = md.read_text()
    assert "7/24 cells complete" in text and "| pending (95/0) |" in text
    # a model without a run: pending with its fit command (only_report), a clear error otherwise
    two = table1("mnist", "smoke", only_report=True, **dict(kw, models=(MODEL, "cnn_r")))
    missing = two[two["model"] == "cnn_r"]
    assert len(missing) == 8 and missing["status"].str.contains("lit-caps fit --model cnn_r --data mnist").all()
    with pytest.raises(RunNotFoundError, match="lit-caps fit --model cnn_r --data mnist --seed 0"):
        table1("mnist", "smoke", **dict(kw, models=(MODEL, "cnn_r")))
    # the run recomputes only the missing cell
    table1("mnist", "smoke", **kw)
    after = mtimes(out)
    assert gone.exists() and {p for p in after if after[p] != before.get(p)} == {gone}


def test_report_of_a_recipe_names_it_in_its_command(runs, tmp_path, monkeypatch):
    """A report made under LIT_CAPS_RECIPE says so in its 'Generated by' command; without a run of that
    recipe its cells are pending (never another recipe's numbers)."""
    from lit_caps.config import recipe_env_prefix

    assert recipe_env_prefix() == ""
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist train.ema_decay=0")
    assert recipe_env_prefix() == "LIT_CAPS_RECIPE='arch=mnist train.ema_decay=0' "
    df = rpgd_beta_grid("mnist", "smoke", runs_root=runs, out_dir=tmp_path / "res", report_dir=tmp_path / "rep",
                           models=(MODEL,), only_report=True)
    text = (tmp_path / "rep" / "rpgd_beta_mnist_smoke.md").read_text()
    assert "Generated by `LIT_CAPS_RECIPE='arch=mnist train.ema_decay=0' lit-caps reproduce rpgd-beta" in text
    cells = df[df["row_kind"] == "beta"]
    assert len(cells) and not (cells["status"] == "complete").any()


def test_cli_reproduce_and_evaluate_cw(runs, dirs, tmp_path, data_root):
    from lit_caps.cli import main

    out, _ = dirs
    rep = tmp_path / "reports"
    assert main(["reproduce", "table1", "--data", "mnist", "--scale", "smoke", "--only-report", "--models", MODEL,
                 "--runs", str(runs), "--out", str(out), "--reports", str(rep)]) == 0
    assert (rep / "table1_mnist_smoke.md").is_file()
    assert main(["reproduce", "table7", "--scale", "smoke", "--models", "cnn_r", "--runs", str(runs),
                 "--out", str(out), "--reports", str(rep)]) == 2  # no run: the fit command is printed
    # `lit-caps evaluate --attacks cw` (with an --eps and --step-size meant for the L-inf attacks)
    ckpt = find_run(runs, "mnist", MODEL)["checkpoint"]
    res = tmp_path / "results"
    with pytest.warns(UserWarning, match="cw has no L-inf bound"):
        assert main(["evaluate", "--ckpt", ckpt, "--attacks", "cw", "pgd", "--targeted", "false", "--n", "4",
                     "--chunk-size", "4", "--steps", "3", "--eps", "0.2", "--step-size", "0.05", "--no-wandb",
                     "--limit-test-batches", "1", "--accelerator", "cpu", "--devices", "1", "--out", str(res),
                     f"data.root={data_root}"]) == 0
    cw = json.loads((res / "mnist" / MODEL / "cw-untargeted-epsnone-n4-s0.json").read_text())
    assert cw["settings"]["eps"] is None and cw["settings"]["attack_settings"]["steps"] == 3
    assert (res / "mnist" / MODEL / "pgd-untargeted-eps0.2-n4-s0.json").is_file()
