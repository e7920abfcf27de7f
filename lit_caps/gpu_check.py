"""``make gpu-check``: one prepared script for a GPU that is lent for minutes (at most 8 of them).

It runs with what the GPU machine has (torch, lightning, torchmetrics, pandas; no wandb, no
torchvision, no internet, no ``../shared``): the MNIST files travel inside the checkout as gzip
files in the ignored folder ``gpu_data/`` (``make gpu-data``, about 11 MiB; carried to the machine)
and are unpacked to a temporary folder; W&B is off. In order, each step skipped with a note once the
time budget is spent:

1. trains the three MNIST models on the device with the default recipe for ``epochs`` epochs (5 by
   default, stated in the report: the recipe's 30 do not fit the budget; the per-epoch time
   projects the 30);
2. runs one paper-scale R-PGD cell per model (N = 1000, 1000 iterations, beta 0.5, targeted) with
   the fp32 path and with the fast path (bf16 autocast; the CapsNet also compiled), as the paper
   scale runs them;
3. times R-PGD on the Fashion-MNIST and SVHN archs (random weights, one batch) to scale the MNIST
   cells to those datasets, and writes ``bench_gpu.md`` / ``.csv`` with throughput, cell times and
   the projected time of ``make reproduce-table3 SCALE=paper`` on 1 and on 8 GPUs.

    python -m lit_caps.gpu_check --data gpu_data --out <folder>     (the device: $OUT)
    python -m lit_caps.gpu_check --smoke --device cpu ...           (the CPU test: seconds)
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from .bench import bench_attacks, bench_model, sync_device
from .config import compose
from .cost import table3_groups, projected_seconds
from .data import IDX_FILES
from .evaluation import evaluate_attack
from .names import model_name
from .reporting.markdown import dur, generation_line, hms, write_report
from .runs import load_run
from .training.fit import fit

MODELS = ("capsnet", "cnn_cr", "cnn_r")
#: the recipe's epochs (configs/train/default.yaml), for the projection
RECIPE_EPOCHS = 30
TRAIN_SIZE = 55000  # MNIST's training split after the 5,000 validation images


def pack_mnist(src_root: str | Path, dst: str | Path = "gpu_data") -> Path:
    """``<dst>/MNIST/raw/<idx file>.gz`` from ``<src_root>/MNIST/raw`` (what travels to the GPU)."""
    out = Path(dst) / "MNIST" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        src = Path(src_root) / "MNIST" / "raw" / f
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found: point --src (or LIT_CAPS_DATA) at the folder holding MNIST/raw")
        with open(src, "rb") as i, gzip.open(out / f"{f}.gz", "wb", compresslevel=9) as o:
            shutil.copyfileobj(i, o)
    return Path(dst)


def unpack_mnist(packed: str | Path, dst: str | Path) -> Path:
    """The gzip files of :func:`pack_mnist` unpacked to ``<dst>/MNIST/raw``; returns ``dst`` (a data root)."""
    out = Path(dst) / "MNIST" / "raw"
    out.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES:
        src = Path(packed) / "MNIST" / "raw" / f"{f}.gz"
        if not src.is_file():
            raise FileNotFoundError(f"{src} not found: run `make gpu-data` here and carry gpu_data/ to the machine")
        with gzip.open(src, "rb") as i, open(out / f, "wb") as o:
            shutil.copyfileobj(i, o)
    return Path(dst)


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def train_models(data_root: Path, runs_root: Path, device: str, epochs: int, smoke: bool, budget: Budget) -> dict:
    out = {}
    for m in MODELS:
        if budget.left() < 60 and not smoke:
            out[m] = {"status": "skipped (time budget)"}
            continue
        over = [f"train.max_epochs={epochs}", f"train.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
                "train.devices=1", "logger.wandb=false", "progress_bar=false", f"data.root={data_root}"]
        if smoke:  # a few batches, eager (the CPU test: seconds, no compilation)
            over += ["train.limit_train_batches=3", "train.limit_val_batches=2", "train.limit_test_batches=2",
                     "train.compile=false"]
        cfg = compose(m, "mnist", overrides=over)
        print(f"[gpu-check] training {m}: {epochs} epochs on {device}", flush=True)
        s = fit(cfg, runs_root=runs_root)
        batches = cfg["train"].get("limit_train_batches") or -(-TRAIN_SIZE // cfg["data"]["batch_size"])
        images = epochs * min(TRAIN_SIZE, batches * cfg["data"]["batch_size"])
        out[m] = {"status": "complete", "summary": s, "train_wall_s": s["train_wall_s"],
                  "train_img_s": images / s["train_wall_s"], "epoch_s": s["train_wall_s"] / epochs,
                  "test_error_pct": 100 * s.get("test_error", float("nan")), "compile": cfg["train"].get("compile")}
    return out


def rpgd_cells(trained: dict, data_root: Path, results: Path, device: str, n: int, steps: int, chunk: int,
               budget: Budget, compile_fast: bool = True) -> list[dict]:
    rows = []
    for m in MODELS:
        t = trained.get(m, {})
        # the fast path as the paper scale runs it (bf16; the CapsNet compiled; --smoke: not compiled)
        for path, precision, comp in (("fp32", "fp32", False), ("fast", "bf16", m == "capsnet" and compile_fast)):
            row = {"model": m, "path": path, "precision": precision, "compiled": comp, "n": n, "steps": steps}
            if t.get("status") != "complete" or budget.left() < 30:
                rows.append({**row, "status": "skipped (time budget)" if t.get("status") == "complete"
                             else "skipped (no model)"})
                continue
            _, dm, module = load_run(t["summary"]["checkpoint"], [f"data.root={data_root}"])
            dm.setup("test")
            print(f"[gpu-check] R-PGD {m} {path}: N={n}, {steps} iterations", flush=True)
            sync_device(device)
            t0 = time.perf_counter()
            with torch.inference_mode(False):
                res = evaluate_attack(module.eval_model(), dm.test_set, "r_pgd", dataset_name="mnist", model_name=m,
                                      targeted=True, eps=None, beta=0.5, seed=0, n=n, threshold=module.threshold,
                                      val_distances=module.val_distances, settings={"steps": steps},
                                      out_dir=results / path, chunk_size=chunk, device=device, progress=False,
                                      compile=comp, precision=precision)
            sync_device(device)
            wall = time.perf_counter() - t0
            s = res["summary"]
            rows.append({**row, "status": res.get("status"), "wall_s": round(wall, 2),
                         "img_iter_s": n * steps / wall, "success_pct": 100 * s["success_rate"],
                         "undetected_pct": 100 * s["undetected_rate"],
                         "best_undetected_pct": 100 * s["best_undetected_rate"]})
    return rows


def arch_factors(device: str, batch: int, smoke: bool) -> dict:
    """R-PGD throughput of each Table 3 dataset's arch relative to MNIST's, per model (random
    weights, eager fp32, one batch): scales the measured MNIST cells to the other datasets."""
    steps = 2 if smoke else 10
    rate = {}
    for arch in ("mnist", "mnist_wide", "svhn"):
        for m in MODELS:
            rows = bench_attacks(m, arch, device, batch, steps=steps, repeats=1 if smoke else 3)
            rate[(arch, m)] = next(r["img_iter_s"] for r in rows if r["attack"] == "r_pgd")
    return {(a, m): rate[(a, m)] / rate[("mnist", m)] for (a, m) in rate}


DATASET_ARCH = {"mnist": "mnist", "fashion_mnist": "mnist_wide", "svhn": "svhn"}


def projections(cells: list[dict], trained: dict, factors: dict, train_factors: dict) -> list[dict]:
    """Projected ``make reproduce-table3 SCALE=paper`` time per path, on 1 and 8 GPUs."""
    out = []
    for path in ("fp32", "fast"):
        rate = {c["model"]: c["img_iter_s"] for c in cells if c["path"] == path and c.get("status") == "complete"}
        if len(rate) < len(MODELS) or any(trained.get(m, {}).get("status") != "complete" for m in MODELS):
            continue
        for datasets in (("mnist", "fashion_mnist"), ("mnist", "fashion_mnist", "svhn")):
            groups = table3_groups("paper", datasets)
            fn = lambda d, m: rate[m] * factors[(DATASET_ARCH[d], m)]  # noqa: E731
            train_s = sum(RECIPE_EPOCHS * trained[m]["epoch_s"] / train_factors[(DATASET_ARCH[d], m)]
                          for d in datasets for m in MODELS)
            for gpus in (1, 8):
                attack_s = projected_seconds(groups, fn, devices=gpus)
                out.append({"path": path, "datasets": " + ".join(datasets), "gpus": gpus,
                            "cells": sum(g.betas for g in groups), "attack_s": attack_s, "train_s": train_s / gpus,
                            "total_s": attack_s + train_s / gpus})
    return out


def train_arch_factors(device: str, smoke: bool) -> dict:
    """Training throughput of each dataset's arch relative to MNIST's (random batch, eager fp32)."""
    steps, batch = (1, 16) if smoke else (5, 128)
    rate = {(a, m): bench_model(m, a, device, batch, steps)["train_img_s"]
            for a in ("mnist", "mnist_wide", "svhn") for m in MODELS}
    return {(a, m): rate[(a, m)] / rate[("mnist", m)] for (a, m) in rate}


def report(trained, cells, proj, *, device, epochs, n, steps, chunk, smoke, out: Path, elapsed: float) -> Path:
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    md = ["# `make gpu-check`: the three MNIST models and paper-scale R-PGD cells on one GPU", "",
          f"Device: {name} ({device}), torch {torch.__version__}. Generated by `python -m lit_caps.gpu_check`"
          + (" **--smoke** (a few batches, tiny cells: checks the script, numbers mean nothing)" if smoke else "")
          + f". Training: the default recipe for {epochs} epochs (the recipe's {RECIPE_EPOCHS} do not fit the GPU "
          "budget; the projection below multiplies the measured epoch time).", "",
          "## Training (MNIST, default recipe)", "",
          "| model | epochs | train img/s | s per epoch | compiled forward | test error % |", "|---|---|---|---|---|---|"]
    for m in MODELS:
        t = trained.get(m, {})
        if t.get("status") != "complete":
            md.append(f"| {model_name(m)} | {t.get('status', 'not run')} | | | | |")
            continue
        md.append(f"| {model_name(m)} | {epochs} | {t['train_img_s']:,.0f} | {t['epoch_s']:.1f} | "
                  f"{'yes' if t['compile'] else 'no'} | {t['test_error_pct']:.2f} |")
    md += ["", f"## One paper-scale R-PGD cell per model (N = {n}, {steps} iterations, beta 0.5, targeted, "
           f"chunks of {chunk})", "",
           "| model | path | wall time | image-iterations/s | success % | undetected % | best-iterate undetected % |",
           "|---|---|---|---|---|---|---|"]
    for c in cells:
        what = f"{c['path']} ({c['precision']}{', compiled' if c['compiled'] else ''})"
        if c.get("status") != "complete":
            md.append(f"| {model_name(c['model'])} | {what} | {c.get('status')} | | | | |")
            continue
        md.append(f"| {model_name(c['model'])} | {what} | {dur(c['wall_s'])} | {c['img_iter_s']:,.0f} | "
                  f"{c['success_pct']:.1f} | {c['undetected_pct']:.1f} | {c['best_undetected_pct']:.1f} |")
    md += ["", "## Projected `make reproduce-table3 SCALE=paper` (a projection from the rows above)", "",
           "Cells: 3 models x 2 targetings x up to 15 betas (the 11-beta grid and 2 refinement levels) per dataset, "
           "N = 1000, Appendix C's iterations; the MNIST cell throughput scaled to each dataset's arch by an R-PGD "
           "timing of that arch on this GPU; training 6 (or 9) models x 30 epochs from the measured epoch time, "
           "scaled likewise. 8 GPUs: chunks and models dealt evenly to 8 devices (ideal scaling, not measured).", "",
           "| path | datasets | GPUs | attack cells | attacks | training | total |", "|---|---|---|---|---|---|---|"]
    for p in proj:
        md.append(f"| {p['path']} | {p['datasets']} | {p['gpus']} | {p['cells']} | {hms(p['attack_s'])} | "
                  f"{hms(p['train_s'])} | {hms(p['total_s'])} |")
    if not proj:
        md.append("| (not projected: a model or cell above did not run) | | | | | | |")
    md += ["", generation_line(elapsed)]
    rows = [{"section": "train", "model": m, **{k: v for k, v in t.items() if k != "summary"}}
            for m, t in trained.items()] + [{"section": "cell", **c} for c in cells] + \
           [{"section": "projection", **p} for p in proj]
    write_report(out, "bench_gpu", rows, md)
    return out / "bench_gpu.md"


def gpu_check(data: str | Path, out: str | Path, *, device: str | None = None, epochs: int = 5, n: int = 1000,
              steps: int = 1000, chunk: int | None = None, budget_s: float = 450, smoke: bool = False) -> Path:
    budget = Budget(budget_s)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chunk = chunk or n
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="lit_caps_gpu_check_") as tmp:
        root = unpack_mnist(data, Path(tmp) / "data")
        trained = train_models(root, Path(tmp) / "runs", device, epochs, smoke, budget)
        cells = rpgd_cells(trained, root, Path(tmp) / "results", device, n, steps, chunk, budget,
                           compile_fast=not smoke)
        proj = []
        if budget.left() > 20 or smoke:
            proj = projections(cells, trained, arch_factors(device, chunk, smoke), train_arch_factors(device, smoke))
        path = report(trained, cells, proj, device=device, epochs=epochs, n=n, steps=steps, chunk=chunk,
                      smoke=smoke, out=out, elapsed=budget_s - budget.left())
    print(path.read_text())
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_caps.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="gpu_data", help="the packed MNIST (make gpu-data)")
    p.add_argument("--out", default="reports", help="where bench_gpu.md / .csv go")
    p.add_argument("--device", default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=None, help="images per attack batch (default: N)")
    p.add_argument("--budget-s", type=float, default=450, help="seconds; later steps are skipped past it")
    p.add_argument("--smoke", action="store_true", help="a few batches and tiny cells (the CPU test)")
    p.add_argument("--pack", metavar="SRC", default=None, help="only pack SRC/MNIST/raw into --data, then stop")
    a = p.parse_args(argv)
    if a.pack:
        print(f"packed MNIST into {pack_mnist(a.pack, a.data)}")
        return 0
    gpu_check(a.data, a.out, device=a.device, epochs=a.epochs, n=a.n, steps=a.steps, chunk=a.chunk,
              budget_s=a.budget_s, smoke=a.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
