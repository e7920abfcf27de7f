"""The attack-table runner (lit_caps.experiments) at the smoke scale, on two tiny `lit-caps fit` runs
(CNN+CR, seeds 0 and 1: a few seconds each), and the `lit-caps reproduce` / `evaluate --attacks cw` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lit_caps import experiments as ex
from lit_caps.reports import paper_table

MODEL = "cnn_cr"


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """runs root with complete smoke runs of CNN+CR, seeds 0 and 1."""
    import torch

    from lit_caps.config import compose
    from lit_caps.train import fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    for s in (0, 1):
        fit(compose(MODEL, "mnist", train="smoke", seed=s,
                    overrides=["logger.wandb=false", "progress_bar=false", "train.limit_train_batches=30",
                               f"data.root={data_root}"]), runs_root=root)
    return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("exp")
    return base / "results", base / "reports"


def _mtimes(out_dir) -> dict:
    return {p: p.stat().st_mtime_ns for p in Path(out_dir).rglob("*.json")}


def test_find_run(runs):
    s = ex.find_run(runs, "mnist", MODEL, seed=0)
    assert s["complete"] and s["model"] == MODEL and s["seed"] == 0 and s["epochs"] == 1
    assert Path(s["checkpoint"]).is_file() and Path(s["run_dir"]).parent == runs / "mnist"
    assert ex.find_run(runs, "mnist", MODEL, seed=1)["run_dir"] != s["run_dir"]
    assert ex.find_run(runs, "mnist", MODEL, seed=0, arch="mnist")["run_dir"] == s["run_dir"]
    with pytest.raises(ex.RunNotFoundError, match=r"lit-caps fit --model cnn_r --data mnist --seed 0"):
        ex.find_run(runs, "mnist", "cnn_r")
    with pytest.raises(ex.RunNotFoundError, match=r"lit-caps fit --model cnn_cr --data mnist --seed 5"):
        ex.find_run(runs, "mnist", MODEL, seed=5)
    with pytest.raises(ex.RunNotFoundError, match="--arch sabour"):
        ex.find_run(runs, "mnist", MODEL, arch="sabour")


def test_find_run_prefers_the_default_config_over_a_newer_experiment(tmp_path, capsys):
    """A newer run of another recipe (e.g. `arch.cnn_dropout=0.5`) never replaces the default
    config's run in the tables; without a default run the newest is used."""
    import os
    import time

    from lit_caps.config import compose, config_hash

    default = config_hash(compose("cnn_cr", "mnist"))
    other = config_hash(compose("cnn_cr", "mnist", overrides=["arch.cnn_dropout=0.5"]))
    for i, h in enumerate((default, other)):
        d = tmp_path / "mnist" / f"cnn_cr-mnist-s0-{h}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"model": "cnn_cr", "dataset": "mnist", "seed": 0, "arch": "mnist",
                                                    "complete": True, "config_hash": h}))
        os.utime(d / "summary.json", (time.time() + 10 * i, time.time() + 10 * i))  # the experiment is newer
    assert ex.find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == default
    (tmp_path / "mnist" / f"cnn_cr-mnist-s0-{default}" / "summary.json").unlink()
    assert ex.find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == other
    assert f"no complete run of the default config ({default})" in capsys.readouterr().err  # never silently


def test_recipe_naming_an_arch_selects_that_arch_s_runs(tmp_path, monkeypatch):
    """``LIT_CAPS_RECIPE="arch=NAME ..."`` finds the runs of that arch (e.g. the models of an older
    default), not the dataset's default arch's, and never falls back to them."""
    from lit_caps.config import compose, config_hash

    hashes = {a: config_hash(compose("cnn_cr", "mnist", arch=a)) for a in ("mnist", "mnist_wide")}
    for a, h in hashes.items():
        d = tmp_path / "mnist" / f"cnn_cr-{a}-s0-{h}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"model": "cnn_cr", "dataset": "mnist", "seed": 0, "arch": a,
                                                    "complete": True, "config_hash": h}))
    assert ex.find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == hashes["mnist"]
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist_wide")
    assert ex.find_run(tmp_path, "mnist", "cnn_cr")["config_hash"] == hashes["mnist_wide"]
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist_wide train.ema_decay=0")
    with pytest.raises(ex.RunNotFoundError, match="arch=mnist_wide train.ema_decay=0"):
        ex.find_run(tmp_path, "mnist", "cnn_cr")


def test_recipe_selects_its_runs_strictly_and_best_checkpoints_are_used(tmp_path, monkeypatch):
    """LIT_CAPS_RECIPE composes every config with its overrides; the tables then take that recipe's
    runs and never fall back to another recipe's. A run that selected its best validation epoch is
    used through best.ckpt."""
    from lit_caps.config import compose, config_hash

    default = config_hash(compose("cnn_cr", "mnist"))
    monkeypatch.setenv("LIT_CAPS_RECIPE", "train.ema_decay=0")
    before = config_hash(compose("cnn_cr", "mnist"))
    assert before != default and compose("cnn_cr", "mnist")["train"]["ema_decay"] == 0
    assert compose("cnn_cr", "mnist", overrides=["train.ema_decay=0.5"])["train"]["ema_decay"] == 0.5  # CLI wins
    d = tmp_path / "mnist" / f"cnn_cr-mnist-s0-{default}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"model": "cnn_cr", "dataset": "mnist", "seed": 0, "arch": "mnist",
                                                "complete": True, "config_hash": default,
                                                "checkpoint": "elsewhere/checkpoints/best.ckpt"}))
    with pytest.raises(ex.RunNotFoundError, match=r"train.ema_decay=0"):
        ex.find_run(tmp_path, "mnist", "cnn_cr")  # only the default recipe's run exists
    monkeypatch.delenv("LIT_CAPS_RECIPE")
    s = ex.find_run(tmp_path, "mnist", "cnn_cr")
    assert s["config_hash"] == default and s["checkpoint"] == str(d / "checkpoints" / "best.ckpt")
    cfg_file = tmp_path / "c.yaml"
    import yaml

    cfg_file.write_text(yaml.safe_dump(compose("cnn_cr", "mnist")))
    monkeypatch.setenv("LIT_CAPS_RECIPE", "train.ema_decay=0")
    assert config_hash(compose(config_file=str(cfg_file))) == default  # a run's own config is taken as is

def test_scales():
    assert set(ex.SCALES) == {"smoke", "quick", "paper"}
    for sc in ex.SCALES.values():
        assert set(sc) == {"table1", "rpgd_beta", "table7", "table3"}
    p = ex.SCALES["paper"]["table1"]
    assert p["n"] == 1000 and p["steps"] is None and p["cw"] is None
    assert ex.attack_settings("mnist", "pgd", p) == {"steps": 1000}
    assert ex.attack_settings("fashion_mnist", "bim", p) == {"steps": 500}
    assert ex.attack_settings("svhn", "pgd", ex.SCALES["quick"]["table1"]) == {"steps": 200}  # capped by the paper's
    assert ex.reductions("mnist", "paper", "table1") == []
    assert ex.reductions("mnist", "paper", "table3") == []
    # Table 3's quick cells are the R-PGD grid's (same N, iterations, chunks -> the same result files)
    q3, qb = ex.SCALES["quick"]["table3"], ex.SCALES["quick"]["rpgd_beta"]
    assert all(q3[k] == qb[k] for k in ("n", "chunk_size", "steps", "betas")) and q3["refine"] == 2
    red = " ".join(ex.reductions("mnist", "quick", "table1"))
    assert "N = 500" in red and "200 iterations" in red and "1000 x 9" in red


def test_table1_report_reuse_and_pending(runs, dirs, capsys):
    out, rep = dirs
    kw = dict(runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,))
    everything = ex.table1("mnist", "smoke", **kw)
    md, csv = rep / "table1_mnist_smoke.md", rep / "table1_mnist_smoke.csv"
    assert md.is_file() and csv.is_file()
    # the report lists the three models; --models narrowed only what was computed
    assert len(everything) == 24 and list(dict.fromkeys(everything["model"])) == list(ex.MODELS)
    others = everything[everything["model"] != MODEL]
    assert others["status"].str.contains("lit-caps fit --model").all()  # no runs for them here: pending
    df = everything[everything["model"] == MODEL].reset_index(drop=True)
    assert len(df) == 8 and (df["status"] == "complete").all()
    assert set(zip(df["attack"], df["targeted"])) == {(a, t) for a in ex.STANDARD_ATTACKS for t in (True, False)}
    cols = {"model", "attack", "targeted", "status", "success_pct", "success_ci_lo", "success_ci_hi", "undetected_pct",
            "undetected_ci_lo", "undetected_ci_hi", "best_undetected_pct", "best_undetected_ci_lo",
            "best_undetected_ci_hi", "paper_success_pct", "paper_undetected_pct", "diff_success_pct",
            "diff_undetected_pct", "n", "eps", "step_size", "steps", "cw_binary_search_steps", "attack_seed",
            "config_hash", "model_hash", "checkpoint", "epochs", "wall_time_s", "device"}
    read = pd.read_csv(csv)
    assert cols <= set(read.columns) and len(read) == 24
    paper = paper_table("table5_whitebox_standard").set_index(["dataset", "model", "attack", "targeted"])
    summary = ex.find_run(runs, "mnist", MODEL)
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
    before = _mtimes(out)
    capsys.readouterr()
    again = ex.table1("mnist", "smoke", **kw)
    assert _mtimes(out) == before and len(before) == 8
    assert capsys.readouterr().out.count(": cached (") == 8
    pd.testing.assert_frame_equal(again, everything)

    # a missing result file shows as pending (only_report computes nothing), never as a number
    gone = Path(df[(df["attack"] == "pgd") & df["targeted"]]["result"].iloc[0])
    gone.unlink()
    rep_only = ex.table1("mnist", "smoke", only_report=True, **kw)
    rep_only = rep_only[rep_only["model"] == MODEL]
    row = rep_only[(rep_only["attack"] == "pgd") & rep_only["targeted"]].iloc[0]
    assert row["status"].startswith("pending") and pd.isna(row["success_pct"]) and pd.isna(row["undetected_pct"])
    assert not gone.exists() and (rep_only["status"] == "complete").sum() == 7
    text = md.read_text()
    assert "7/24 cells complete" in text and "| pending (95/0) |" in text
    # a model without a run: pending with its fit command (only_report), a clear error otherwise
    two = ex.table1("mnist", "smoke", only_report=True, **dict(kw, models=(MODEL, "cnn_r")))
    missing = two[two["model"] == "cnn_r"]
    assert len(missing) == 8 and missing["status"].str.contains("lit-caps fit --model cnn_r --data mnist").all()
    with pytest.raises(ex.RunNotFoundError, match="lit-caps fit --model cnn_r --data mnist --seed 0"):
        ex.table1("mnist", "smoke", **dict(kw, models=(MODEL, "cnn_r")))
    # the run recomputes only the missing cell
    ex.table1("mnist", "smoke", **kw)
    after = _mtimes(out)
    assert gone.exists() and {p for p in after if after[p] != before.get(p)} == {gone}


def test_rpgd_beta_grid(runs, dirs):
    out, rep = dirs
    df = ex.rpgd_beta_grid("mnist", "smoke", runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,))
    csv = rep / "rpgd_beta_mnist_smoke.csv"
    assert csv.is_file() and (rep / "rpgd_beta_mnist_smoke.md").is_file()
    text = (rep / "rpgd_beta_mnist_smoke.md").read_text()
    for fig in ("fig9_rpgd_beta_mnist_smoke.png", "fig2_undetected_vs_fpr_mnist_smoke.png",
                "fig9_rpgd_beta_mnist_untargeted_smoke.png", "fig2_undetected_vs_fpr_mnist_untargeted_smoke.png"):
        assert (rep / "figures" / fig).stat().st_size > 1000 and f"(figures/{fig})" in text
    cells = df[df["row_kind"] == "beta"]
    assert len(cells) == 6 and (cells["status"] == "complete").all() and set(cells["beta"]) == {0.0, 0.5, 1.0}
    worst = df[df["row_kind"] == "worst"].set_index("targeted")
    for t, (s, u) in {True: (98.6, 68.1), False: (99.4, 87.7)}.items():  # paper Table 3, MNIST CNN+CR
        assert (worst.loc[t, "paper_success_pct"], worst.loc[t, "paper_undetected_pct"]) == (s, u)
        mine = cells[cells["targeted"] == t]
        assert worst.loc[t, "undetected_pct"] == mine["undetected_pct"].max()
        assert worst.loc[t, "beta"] in set(mine[mine["undetected_pct"] == mine["undetected_pct"].max()]["beta"])
    assert "worst_best_iterate" in set(df["row_kind"])
    assert "Generated by `lit-caps reproduce rpgd-beta" in text


def test_report_of_a_recipe_names_it_in_its_command(runs, tmp_path, monkeypatch):
    """A report made under LIT_CAPS_RECIPE says so in its 'Generated by' command; without a run of that
    recipe its cells are pending (never another recipe's numbers)."""
    from lit_caps.config import recipe_env_prefix

    assert recipe_env_prefix() == ""
    monkeypatch.setenv("LIT_CAPS_RECIPE", "arch=mnist train.ema_decay=0")
    assert recipe_env_prefix() == "LIT_CAPS_RECIPE='arch=mnist train.ema_decay=0' "
    df = ex.rpgd_beta_grid("mnist", "smoke", runs_root=runs, out_dir=tmp_path / "res", report_dir=tmp_path / "rep",
                           models=(MODEL,), only_report=True)
    text = (tmp_path / "rep" / "rpgd_beta_mnist_smoke.md").read_text()
    assert "Generated by `LIT_CAPS_RECIPE='arch=mnist train.ema_decay=0' lit-caps reproduce rpgd-beta" in text
    cells = df[df["row_kind"] == "beta"]
    assert len(cells) and not (cells["status"] == "complete").any()


def test_table7_black_box(runs, dirs):
    from lit_caps.evaluation import load_result

    out, rep = dirs
    df = ex.table7("mnist", "smoke", runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,))
    assert (rep / "table7_mnist_smoke.md").is_file() and (rep / "table7_mnist_smoke.csv").is_file()
    cells = df[df["row_kind"] == "cell"]
    assert len(cells) == 4 and (cells["status"] == "complete").all()  # PGD, R-PGD beta 0.5; targeted or not
    src = ex.find_run(runs, "mnist", MODEL, seed=1)
    paper = paper_table("table7_blackbox_mnist").set_index(["model", "attack", "targeted"])
    for r in df[df["row_kind"] != "cell"].to_dict("records"):
        ref = paper.loc[(MODEL, r["attack"], r["targeted"])]
        assert (r["paper_success_pct"], r["paper_undetected_pct"]) == (ref["success_rate"], ref["undetected_rate"])
        assert r["source_checkpoint"] == src["checkpoint"] and r["source_seed"] == 1
        res = load_result(r["result"])
        assert res["name"].endswith("-bb" + r["source_model_hash"][:8])
        assert res["settings"]["source_model_hash"] == r["source_model_hash"] != res["settings"]["model_hash"]
        assert res["settings"]["checkpoint"] == ex.find_run(runs, "mnist", MODEL)["checkpoint"]
    with pytest.raises(ex.RunNotFoundError, match="lit-caps fit --model cnn_cr --data mnist --seed 7"):
        ex.table7("mnist", "smoke", runs_root=runs, out_dir=out, report_dir=rep, models=(MODEL,), source_seed=7)


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
    ckpt = ex.find_run(runs, "mnist", MODEL)["checkpoint"]
    res = tmp_path / "results"
    with pytest.warns(UserWarning, match="cw has no L-inf bound"):
        assert main(["evaluate", "--ckpt", ckpt, "--attacks", "cw", "pgd", "--targeted", "false", "--n", "4",
                     "--chunk-size", "4", "--steps", "3", "--eps", "0.2", "--step-size", "0.05", "--no-wandb",
                     "--limit-test-batches", "1", "--accelerator", "cpu", "--devices", "1", "--out", str(res),
                     f"data.root={data_root}"]) == 0
    cw = json.loads((res / "mnist" / MODEL / "cw-untargeted-epsnone-n4-s0.json").read_text())
    assert cw["settings"]["eps"] is None and cw["settings"]["attack_settings"]["steps"] == 3
    assert (res / "mnist" / MODEL / "pgd-untargeted-eps0.2-n4-s0.json").is_file()
