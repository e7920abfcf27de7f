"""``make gpu-check`` at smoke scale on the CPU: the script that a lent GPU will run once, end to end
(pack and unpack the MNIST files, train the three models, the R-PGD cells on both paths, the
projection, the report), here with a few batches and tiny cells. And the cost arithmetic it uses."""
import gzip
import os
import subprocess
import sys

import pytest

from lit_caps.cost import projected_seconds, table3_groups
from lit_caps.gpu_check import pack_mnist, unpack_mnist


def test_table3_paper_cells_and_their_projected_time():
    groups = table3_groups("paper", ("mnist", "fashion_mnist"))
    assert len(groups) == 2 * 3 * 2  # datasets x models x targetings
    assert {g.betas for g in groups} == {11 + 2 * 2} and {g.n for g in groups} == {1000}
    assert {g.dataset: g.steps for g in groups} == {"mnist": 1000, "fashion_mnist": 500}
    total = sum(g.image_iterations for g in groups)
    assert total == 6 * 15 * 1000 * (1000 + 500)
    assert projected_seconds(groups, lambda d, m: 1000.0) == pytest.approx(total / 1000)
    assert projected_seconds(groups, lambda d, m: 1000.0, devices=8) == pytest.approx(total / 8000)
    # cost grows linearly in N, iterations and betas
    half = table3_groups("paper", ("mnist", "fashion_mnist"), n=500, steps=500, betas=6)
    assert sum(g.image_iterations for g in half) == total * 0.5 * 0.5 * 6 / 15


def test_gpu_check_runs_at_smoke_scale_on_the_cpu(tmp_path, data_root):
    packed = pack_mnist(data_root, tmp_path / "gpu_data")
    raw = packed / "MNIST" / "raw"
    assert sum(f.stat().st_size for f in raw.iterdir()) < 16 * 2**20  # a few MiB travel to the machine
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        assert f.read() == (data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    again = unpack_mnist(packed, tmp_path / "unpacked")
    assert (again / "MNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 47040016
    # as on the GPU machine: no wandb (its import fails), the data only from gpu_data/. (No torchvision
    # there either: lit_caps then reads the IDX files itself, tests/test_data.py; hiding an installed
    # torchvision here would mislead torchmetrics, which checks the installed packages before importing.)
    code = ("import sys; sys.modules['wandb'] = None\n"
            "from lit_caps.gpu_check import main\n"
            f"sys.exit(main(['--data', {str(packed)!r}, '--out', {str(tmp_path / 'reports')!r}, '--device', 'cpu', "
            "'--epochs', '1', '--n', '6', '--steps', '2', '--smoke']))")
    env = {k: v for k, v in os.environ.items() if k != "LIT_CAPS_DATA"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    path = tmp_path / "reports" / "bench_gpu.md"
    text = path.read_text()
    assert "**--smoke**" in text
    for m in ("CapsNet", "CNN+CR", "CNN+R"):
        assert f"| {m} | 1 |" in text  # trained
        assert f"| {m} | fp32 (fp32) |" in text and f"| {m} | fast (bf16) |" in text  # both cell paths ran
    assert "| fp32 | mnist + fashion_mnist | 1 | 180 |" in text and "| fast | mnist + fashion_mnist | 8 |" in text
    assert (tmp_path / "reports" / "bench_gpu.csv").is_file()
