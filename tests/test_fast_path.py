"""The attack fast path (bf16 autocast of the attack's iterations, lit_caps.evaluation): its results are
named and hashed apart from fp32 ones, fp32 identities are unchanged, and every reported number is
measured in fp32."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from lit_caps.evaluation import (attack_precision, evaluate_attack, parse_result_name, precision_requested,
                                 result_name)
from lit_caps.evaluation.chunks import run_chunk
from lit_caps.evaluation.forward import predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_evaluation import Indexed  # noqa: E402  (the indexed MNIST dataset of the evaluation tests)


def test_names_and_the_precision_setting(monkeypatch):
    fp = result_name("r_pgd", True, 0.3, 200, 0, 0.5)
    bf = result_name("r_pgd", True, 0.3, 200, 0, 0.5, precision="bf16")
    assert fp == "r_pgd-targeted-beta0.5-eps0.3-n200-s0" and bf == fp + "-bf16"
    assert parse_result_name(bf + ".json")["precision"] == "bf16" and parse_result_name(fp)["precision"] == "fp32"
    assert result_name(**parse_result_name(bf)) == bf
    bb = result_name("pgd", False, 0.3, 20, 0, source_hash="abcdef0123", precision="bf16")
    assert bb.endswith("-s0-bf16-bbabcdef01") and result_name(**parse_result_name(bb)) == bb
    monkeypatch.delenv("LIT_CAPS_PRECISION", raising=False)
    assert precision_requested(None) == "fp32" and precision_requested(None, default="bf16") == "bf16"
    monkeypatch.setenv("LIT_CAPS_PRECISION", "bf16")
    assert precision_requested(None) == "bf16" and precision_requested("fp32") == "fp32"
    monkeypatch.setenv("LIT_CAPS_PRECISION", "fp8")
    with pytest.raises(ValueError, match="fp32, bf16"):
        precision_requested(None)


def test_autocast_is_on_inside_the_attack_only(trained_models, mnist_test):
    model = trained_models["capsnet"][0]
    x = mnist_test[0][:4]
    with attack_precision("bf16", "cpu"):
        assert model.conv(x).dtype == torch.bfloat16  # (capsule lengths: a norm, autocast keeps it fp32)
    with attack_precision("fp32", "cpu"):
        assert model.conv(x).dtype == torch.float32
    seen = {}

    def attack(xa, ya, t):  # records the dtype the attack computes in and returns a fixed x_adv
        seen["dtype"] = model.conv(xa).dtype
        seen["x_adv"] = (xa + 0.05 * torch.sign(torch.randn_like(xa))).clamp(0, 1)
        return seen["x_adv"]

    y = mnist_test[1][:4]
    rec = run_chunk(model, attack, x, y, torch.arange(4), None, threshold=1.0, seed=0, chunk_id=0, device="cpu",
                    precision="bf16")
    assert seen["dtype"] == torch.bfloat16
    pred, dist = predict(model, seen["x_adv"])  # fp32, outside any autocast
    assert rec["adv_dist"].dtype == torch.float32 and torch.equal(rec["adv_dist"], dist.float())
    assert torch.equal(rec["adv_pred"], pred) and rec["clean_dist"].dtype == torch.float32


def test_bf16_results_are_their_own_and_fp32_identities_unchanged(trained_models, mnist_test, tmp_path,
                                                                    monkeypatch):
    monkeypatch.delenv("LIT_CAPS_PRECISION", raising=False)
    model, val_d, thr = trained_models["cnn_cr"]
    ds = Indexed(*mnist_test)
    kw = dict(dataset_name="mnist", model_name="cnn_cr", targeted=False, eps=0.3, n=20, threshold=thr,
              val_distances=val_d, settings={"steps": 3}, out_dir=tmp_path, chunk_size=10, progress=False)
    default = evaluate_attack(model, ds, "pgd", **kw)
    fp32 = evaluate_attack(model, ds, "pgd", precision="fp32", **kw)
    bf16 = evaluate_attack(model, ds, "pgd", precision="bf16", **kw)
    assert default["settings_hash"] == fp32["settings_hash"] and "precision" not in fp32["settings"]
    assert fp32["name"] == "pgd-untargeted-eps0.3-n20-s0" and fp32["run"]["precision"] == "fp32"
    assert bf16["name"] == fp32["name"] + "-bf16" and bf16["settings"]["precision"] == "bf16"
    assert bf16["settings_hash"] != fp32["settings_hash"] and bf16["run"]["precision"] == "bf16"
    assert (tmp_path / "mnist" / "cnn_cr" / f"{fp32['name']}.json").is_file()  # both kept, side by side
    assert (tmp_path / "mnist" / "cnn_cr" / f"{bf16['name']}.json").is_file()
    # the clean measurements do not depend on the attack's precision
    assert bf16["examples"]["clean_dist"] == fp32["examples"]["clean_dist"]


def test_fastpath_check_report(runs, data_root, tmp_path, monkeypatch):
    """`lit-caps fastpath-check` end to end on a tiny CNN+CR run: fp32 and bf16 cells side by side, the
    verdict from the fp32 intervals, the models without a run pending."""
    from lit_caps.cli import main

    monkeypatch.delenv("LIT_CAPS_PRECISION", raising=False)
    out, rep = tmp_path / "out", tmp_path / "rep"
    rc = main(["fastpath-check", "--models", "cnn_cr", "--n", "20", "--steps", "2", "--runs", str(runs),
               "--out", str(out), "--reports", str(rep), "--data-root", str(data_root)])
    assert rc == 0
    import pandas as pd

    df = pd.read_csv(rep / "fastpath_check.csv")
    mine = df[df["model"] == "cnn_cr"]
    assert len(df) == 12 and len(mine) == 4 and (mine["status"] == "complete").all()
    assert (df[df["model"] != "cnn_cr"]["status"] == "pending (no model)").all()
    for r in mine.itertuples():
        inside = all(r._asdict()[f"fp32_{k}_ci_lo"] <= r._asdict()[f"bf16_{k}_pct"] <= r._asdict()[f"fp32_{k}_ci_hi"]
                     for k in ("success", "undetected", "best_undetected"))
        assert r.passes == inside and r.bf16_result.endswith("-bf16.json") and not r.fp32_result.endswith("-bf16.json")
    md = (rep / "fastpath_check.md").read_text()
    assert "| CNN+CR | PGD | yes |" in md and "Verdict per model" in md and "pending (no model)" in md
    assert "2 iterations, eps 0.3, step 0.01" in md  # the eps of the cells (MNIST's Appendix C bound)
    # another dataset's check gets its own report (never over MNIST's); the MNIST-only paper cell says so
    from lit_caps.fastpath import report_stem
    assert report_stem("fashion_mnist", True) == "fastpath_check_compiled_fashion_mnist"
    assert report_stem("mnist", False) == "fastpath_check"
    assert main(["fastpath-check", "--paper-cell", "--data", "fashion_mnist", "--runs", str(runs), "--out", str(out),
                 "--reports", str(rep)]) == 2
    # the report alone, from the result files: the same rows
    rc = main(["fastpath-check", "--models", "cnn_cr", "--n", "20", "--steps", "2", "--runs", str(runs),
               "--out", str(out), "--reports", str(rep), "--only-report", "--data-root", str(data_root)])
    again = pd.read_csv(rep / "fastpath_check.csv")
    assert rc == 0 and again.drop(columns=["fp32_result", "bf16_result"]).equals(df.drop(columns=["fp32_result", "bf16_result"]))


def test_the_paper_scale_uses_the_fast_path_only_where_it_passed(monkeypatch):
    from lit_caps.config import scale_section
    from lit_caps.experiments.cells import cell_precision

    monkeypatch.delenv("LIT_CAPS_PRECISION", raising=False)
    t3 = scale_section("paper", "table3")
    assert cell_precision(t3, "capsnet", "r_pgd", "mnist") == "bf16"
    # Fashion-MNIST's CapsNet failed the check (untargeted R-PGD outside fp32's interval): fp32 there
    assert cell_precision(t3, "capsnet", "r_pgd", "fashion_mnist") == "fp32"
    assert cell_precision(scale_section("paper", "rpgd_beta"), "capsnet", "pgd", "fashion_mnist") == "fp32"
    assert cell_precision(t3, "capsnet", "r_bim", "mnist") == "fp32" and cell_precision(t3, "cnn_cr", "r_pgd", "mnist") == "fp32"
    assert cell_precision(scale_section("paper", "table1"), "capsnet", "pgd") == "fp32"
    assert all(cell_precision(scale_section("quick", s), "capsnet", "r_pgd") == "fp32" for s in ("table3", "rpgd_beta"))
    monkeypatch.setenv("LIT_CAPS_PRECISION", "fp32")  # the user's setting wins
    assert cell_precision(t3, "capsnet", "r_pgd", "mnist") == "fp32"


def test_result_names_carry_the_classifier_loss():
    ce = result_name("pgd", False, 0.3, 500, 0)
    cw = result_name("pgd", False, 0.3, 500, 0, loss="cw", precision="bf16")
    assert cw == ce + "-cw-bf16" and parse_result_name(cw)["loss"] == "cw" and parse_result_name(ce)["loss"] == "ce"
    assert result_name(**parse_result_name(cw)) == cw


def test_paper_cell_report_from_the_committed_results(data_root, tmp_path, monkeypatch):
    """`lit-caps fastpath-check --paper-cell --steps 100 --only-report`: the committed CapsNet and the
    committed 100-iteration cells give the committed report's rows (a fresh results folder: the store
    restores them first)."""
    import pandas as pd

    from lit_caps.cli import main

    reports = Path(__file__).resolve().parents[1] / "reports"
    committed = reports / "fastpath_paper_cell_100it.csv"
    if not committed.is_file():
        pytest.skip("no committed paper-cell report")
    monkeypatch.setenv("LIT_CAPS_STORE", str(reports))  # the committed store, read only
    rc = main(["fastpath-check", "--paper-cell", "--steps", "100", "--only-report", "--out", str(tmp_path / "out"),
               "--reports", str(tmp_path), "--data-root", str(data_root)])
    assert rc == 0
    got = pd.read_csv(tmp_path / "fastpath_paper_cell_100it.csv")
    want = pd.read_csv(committed)
    assert list(got["path"]) == ["before: eager fp32", "after: compiled bf16"]
    assert got.drop(columns=["result"]).equals(want.drop(columns=["result"]))
