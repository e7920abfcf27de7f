"""The compute ledger (lit_caps.experiments.compute): which report a result file belongs to, the sums
per report, and the report over the committed store."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from lit_caps import store
from lit_caps.experiments.compute import compute_report, ledger, report_of


@pytest.mark.parametrize("rel, settings, report", [
    ("mnist/capsnet/r_pgd-targeted-beta0.5-eps0.3-n1000-s0-bf16.json", dict(dataset="mnist", attack="r_pgd"), "table3"),
    ("quick/fashion_mnist/cnn_r/r_pgd-x.json", dict(dataset="fashion_mnist", attack="r_pgd"), "table3_quick"),
    ("mnist/cnn_r/apgd_joint-x.json", dict(dataset="mnist", attack="apgd_joint"), "adaptive_mnist_paper"),
    ("variants/steps25/mnist/cnn_r/apgd_joint-x.json", dict(dataset="mnist", attack="apgd_joint"),
     "adaptive_mnist_paper"),
    ("quick/variants/lam10.0/mnist/capsnet/apgd_joint-x.json", dict(dataset="mnist", attack="apgd_joint"),
     "adaptive_mnist_quick"),
    ("quick/cifar10/capsnet/r_pgd-x-bbc593958e.json", dict(dataset="cifar10", attack="r_pgd"), "fig3_cifar10_quick"),
    ("fastpath_compiled/mnist/capsnet/pgd-x.json", dict(dataset="mnist", attack="pgd"), "fastpath_check_compiled"),
    ("fastpath/fashion_mnist/capsnet/pgd-x.json", dict(dataset="fashion_mnist", attack="pgd"),
     "fastpath_check_fashion_mnist"),
    ("fashion_mnist/capsnet/cw-x.json", dict(dataset="fashion_mnist", attack="cw"), "table1_fashion_mnist_paper"),
    ("quick/mnist/capsnet/r_bim-x.json", dict(dataset="mnist", attack="r_bim"), "table6_quick"),
    ("quick/mnist_c/capsnet/pgd-x.json", dict(dataset="mnist_c", attack="pgd"), "table2_quick"),
])
def test_report_of(rel, settings, report):
    assert report_of(Path(rel), settings) == report


def _res(ds, attack, n, steps, wall, cpu=None, threads=None):
    run = {"wall_time_s": wall, "device": "cpu", "finished_at": "2026-12-07T10:00:00+0000"}
    if cpu is not None:
        run.update(cpu_time_s=cpu, threads=threads)
    return {"settings": {"dataset": ds, "attack": attack, "n": n, "attack_settings": {"steps": steps}}, "run": run}


def test_ledger_sums_per_report():
    results = [("mnist/capsnet/r_pgd-a.json", _res("mnist", "r_pgd", 1000, 1000, 3600.0)),
               ("mnist/cnn_r/r_pgd-b.json", _res("mnist", "r_pgd", 1000, 1000, 1800.0, cpu=1700.0, threads=1)),
               ("fashion_mnist/cnn_r/r_pgd-d.json", _res("fashion_mnist", "r_pgd", 1000, 500, 720.0, cpu=700.0,
                                                        threads=1)),
               ("quick/mnist/cnn_r/r_pgd-c.json", _res("mnist", "r_pgd", 200, 100, 36.0))]
    cards = [{"dataset": "mnist", "train_wall_s": 7200.0, "device": "cpu", "source_run": "a"},
             {"dataset": "mnist", "train_wall_s": 3600.0, "device": "cpu", "source_run": "b"}]
    attack, train = ledger(results, cards)
    by = {(r["report"], r["dataset"]): r for r in attack}
    # a multi-dataset report (Table 3) gets a row per dataset: the wall time of each table
    assert set(by) == {("table3", "mnist"), ("table3", "fashion_mnist"), ("table3_quick", "mnist")}
    assert by[("table3", "fashion_mnist")]["cells"] == 1 and by[("table3", "fashion_mnist")]["attack_wall_h"] == 0.2
    assert by[("table3", "fashion_mnist")]["image_iterations"] == 500_000
    t3 = by[("table3", "mnist")]
    assert t3["cells"] == 2 and t3["image_iterations"] == 2_000_000 and t3["attack_wall_h"] == 1.5
    # CPU time only from the cell that recorded it, and said so
    assert t3["cpu_h_recorded"] == round(1700 / 3600, 2) and t3["cells_with_cpu_time"] == 1 and t3["threads"] == "1"
    q = by[("table3_quick", "mnist")]
    assert q["cpu_h_recorded"] is None and q["image_iterations"] == 20_000
    assert train == [dict(dataset="mnist", models=2, train_wall_h=3.0, devices="cpu", runs="a b")]


REPORTS = Path(__file__).resolve().parents[2] / "reports"


def test_compute_report_over_the_committed_store(tmp_path, monkeypatch):
    """Every committed result file is counted once, and the totals add up to the files' own times."""
    monkeypatch.setenv(store.ROOT_ENV, str(REPORTS))  # the committed store, read only
    rows = compute_report(tmp_path)
    files = sorted(store.results_root().rglob("*.json.gz"))
    assert files, "the committed store has result files"
    walls = [json.loads(gzip.decompress(p.read_bytes()))["run"]["wall_time_s"] for p in files]
    attack = [r for r in rows if r["kind"] == "attack"]
    assert sum(r["cells"] for r in attack) == len(files)
    assert abs(sum(r["attack_wall_h"] for r in attack) - sum(walls) / 3600) < 0.01 * len(attack)
    csv = pd.read_csv(tmp_path / "compute.csv")
    assert len(csv) == len(rows) and set(csv.kind) == {"attack", "training"}
    md = (tmp_path / "compute.md").read_text()
    assert "| table3 | MNIST |" in md  # (no link: tmp_path holds no table3.md)
