"""Table 4, the clean-error report (lit_caps.experiments.table4)."""
from __future__ import annotations

import json

import pandas as pd

from lit_caps.experiments.table4 import clean_error_report
from lit_caps.reporting.paper import paper_table


def _summary(ds, model, err, complete=True):
    return {"dataset": ds, "model": model, "test_error": err, "epochs": 30, "train_wall_s": 600.0, "seed": 0,
            "arch": "mnist", "config_hash": "abcd1234", "parameters": 2167400, "threshold": 7.5, "complete": complete,
            "run_dir": f"runs/{ds}/{model}", "test_size": 10000, "device": "cpu"}


def test_clean_error_report(tmp_path):
    runs = tmp_path / "runs"
    for ds, model, err, complete in [("mnist", "capsnet", 0.0071, True), ("mnist", "cnn_cr", 0.0105, True),
                                     ("fashion_mnist", "cnn_r", 0.2, False)]:
        d = runs / ds / model
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(_summary(ds, model, err, complete)))
    # the CapsNet run logged validation accuracy per epoch (Lightning's CSV logger; two versions)
    for v, rows in (("version_0", "epoch,step,val/acc\n0,10,0.95\n"), ("version_1", "epoch,step,val/acc\n1,20,0.9912\n")):
        (runs / "mnist" / "capsnet" / "csv" / v).mkdir(parents=True)
        (runs / "mnist" / "capsnet" / "csv" / v / "metrics.csv").write_text(rows)
    df = clean_error_report(runs, tmp_path / "reports")
    csv = pd.read_csv(tmp_path / "reports" / "clean_error.csv")
    assert len(csv) == len(df) == 9  # 3 datasets x 3 models, one row each
    caps = csv[(csv.dataset == "mnist") & (csv.model == "capsnet")].iloc[0]
    assert caps.error_pct == 0.71 and caps.paper_error_pct == 0.6 and abs(caps.diff_pct - 0.11) < 1e-9
    # an unfinished run is not reported; missing data says why
    fr = csv[(csv.dataset == "fashion_mnist") & (csv.model == "cnn_r")].iloc[0]
    assert pd.isna(fr.error_pct) and "not trained" in fr.note
    sv = csv[csv.dataset == "svhn"]
    assert sv.error_pct.isna().all() and sv.note.str.contains("SVHN is not available").all()
    md = (tmp_path / "reports" / "clean_error.md").read_text()
    assert "| MNIST | CapsNet | 0.71 | 0.6 | +0.11 | <= 1: met | 0.88 | 2.94 | 30 |" in md  # last; mean of both epochs
    assert "| MNIST | CNN+CR | 1.05 | 0.7 | +0.35 | <= 1: missed |  |  | 30 |" in md  # no CSV: no val columns
    assert "| Fashion-MNIST | CNN+R | - | 9.3 |" in md
    assert caps.val_error_pct == 0.88 and bool(caps.meets_target)
    assert caps.default_config == False  # the fake summary has another config hash


def test_clean_error_report_pairs_weight_average_runs_on_validation(tmp_path):
    """A run that keeps a weight average is listed with its raw weights' validation error and beside
    the run of the same recipe without the average."""
    import yaml

    runs = tmp_path / "runs"
    train = {"lr": 0.001, "lr_decay": 0.95}
    for name, err, h, ema, rows in [
        ("plain", 0.11, "aaaa1111", None, "epoch,step,val/acc\n0,10,0.88\n1,20,0.89\n"),
        ("avg", 0.10, "bbbb2222", 0.999, "epoch,step,val/acc,val/acc_raw\n0,10,0.89,0.88\n1,20,0.90,0.89\n"),
    ]:
        d = runs / "fashion_mnist" / name
        (d / "csv" / "version_0").mkdir(parents=True)
        (d / "csv" / "version_0" / "metrics.csv").write_text(rows)
        s = dict(_summary("fashion_mnist", "cnn_r", err), config_hash=h, run_dir=str(d))
        (d / "summary.json").write_text(json.dumps(s))
        cfg = {"train": dict(train, **({"ema_decay": ema} if ema else {})), "data": {"batch_size": 128, "shift": 0},
               "arch": {}}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    df = clean_error_report(runs, tmp_path / "reports")
    avg = df[df.config_hash == "bbbb2222"].iloc[0]
    assert avg.recipe.endswith("weight average (EMA 0.999)") and avg.val_error_raw_last5_pct == 11.5
    assert pd.isna(df[df.config_hash == "aaaa1111"].iloc[0].val_error_raw_last5_pct)
    md = (tmp_path / "reports" / "clean_error.md").read_text()
    assert "## Weight averaging, compared on validation" in md
    assert "| Fashion-MNIST | CNN+R | 0 | 10.50 | 11.50 | 11.50 (aaaa1111) | 10.00 | 11.00 |" in md


def test_recipe_names_arch_overrides_against_the_named_arch_config():
    """A run made with ``arch.k=v`` on the command line must not look like a run of the shipped arch."""
    from lit_caps.config import load_group
    from lit_caps.experiments.table4 import recipe as _recipe

    base = {"train": {"lr": 0.001, "lr_decay": 0.95}, "data": {"batch_size": 128, "shift": 0}}
    mnist = load_group("arch", "mnist")
    plain = _recipe(dict(base, arch_name="mnist", arch=dict(mnist)), "capsnet")
    over = _recipe(dict(base, arch_name="mnist", arch=dict(mnist, conv_channels=64)), "capsnet")
    named = _recipe(dict(base, arch_name="mnist_wide", arch=load_group("arch", "mnist_wide")), "capsnet")
    assert "arch." not in plain and "arch." not in named
    assert "arch.conv_channels=64" in over and over != plain
    # CNN dropout is reported as dropout, not as an arch override
    drop = _recipe(dict(base, arch_name="mnist", arch=dict(mnist, cnn_dropout=0.5)), "cnn_r")
    assert "dropout 0.5" in drop and "arch.cnn_dropout" not in drop


def test_clean_error_report_pairs_runs_that_differ_only_in_arch(tmp_path):
    """The default arch's run is set beside the same recipe's run of another arch, on validation."""
    import yaml

    from lit_caps.config import compose, config_hash, load_group

    runs = tmp_path / "runs"
    for arch, err, acc in (("mnist_wide", 0.1013, 0.905), ("mnist", 0.1104, 0.90)):
        cfg = compose("capsnet", "fashion_mnist", arch=arch)
        h = config_hash(cfg)
        d = runs / "fashion_mnist" / f"capsnet-{arch}-s0-{h}"
        (d / "csv" / "version_0").mkdir(parents=True)
        (d / "csv" / "version_0" / "metrics.csv").write_text(f"epoch,step,val/acc\n0,10,{acc}\n")
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        s = dict(_summary("fashion_mnist", "capsnet", err), arch=arch, config_hash=h, run_dir=str(d))
        (d / "summary.json").write_text(json.dumps(s))
    assert load_group("arch", "mnist_wide")["conv_channels"] == 64
    df = clean_error_report(runs, tmp_path / "reports")
    fm = df[(df.dataset == "fashion_mnist") & (df.model == "capsnet")]
    assert fm.set_index("arch").default_config.to_dict() == {"mnist_wide": True, "mnist": False}
    md = (tmp_path / "reports" / "clean_error.md").read_text()
    assert "## Architecture, compared on validation" in md
    wide_h, old_h = (config_hash(compose("capsnet", "fashion_mnist", arch=a)) for a in ("mnist_wide", "mnist"))
    assert (f"| Fashion-MNIST | CapsNet | 0 | `mnist_wide` ({wide_h}): 9.50 | 10.13 | `mnist` ({old_h}): 10.00 | "
            "11.04 |") in md


def test_paper_tables_are_packaged():
    t4 = paper_table("table4_clean_error")
    assert len(t4) == 9 and set(t4.model) == {"capsnet", "cnn_cr", "cnn_r"}
    t3 = paper_table("table3_rpgd")
    assert set(t3.columns) == {"dataset", "model", "attack", "targeted", "success_rate", "undetected_rate"}
