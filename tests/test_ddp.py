"""Several processes, really: 2-process DDP on the CPU (gloo), as lightning-hydra-template's DDP
simulation tests run it. Validation and test under 2 processes give the 1-process threshold and
metrics (the validation distances gathered from every rank, the sampler's padded duplicates dropped);
an evaluation split over 2 ranks gives the 1-process per-example outcomes."""
from __future__ import annotations

import os

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_caps.config import compose
from lit_caps.evaluation import evaluate_attack
from lit_caps.runs import find_run, load_run
from lit_caps.training.fit import build

SMOKE = ["logger.wandb=false", "progress_bar=false"]


def _trainer(devices: int, tmp_path) -> L.Trainer:
    kw = dict(strategy="ddp_spawn") if devices > 1 else {}
    return L.Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False,
                     enable_checkpointing=False, inference_mode=False, default_root_dir=str(tmp_path), **kw)


def test_validation_and_test_under_two_processes_equal_one(runs, data_root, tmp_path):
    """An odd validation split (1001 images: the DistributedSampler pads one duplicate) and the test
    split, validated and tested by 1 and by 2 processes: same threshold, same metrics."""
    s = find_run(runs, "mnist", "cnn_cr", 0)
    _, _, module = load_run(s["checkpoint"])
    cfg = compose("cnn_cr", "mnist", train="smoke", overrides=SMOKE + [f"data.root={data_root}", "data.val_size=1001"])
    out = {}
    for devices in (1, 2):
        dm, _ = build(cfg)
        trainer = _trainer(devices, tmp_path / str(devices))
        (val,) = trainer.validate(module, datamodule=dm, verbose=False)
        (test,) = trainer.test(module, datamodule=dm, verbose=False)
        out[devices] = {**val, **test}
    one, two = out[1], out[2]
    assert one["val/threshold"] == pytest.approx(two["val/threshold"], rel=1e-6)
    for k in ("val/acc", "val/loss", "val/distance", "test/acc", "test/loss", "test/distance"):
        assert one[k] == pytest.approx(two[k], rel=1e-5, abs=1e-6), k


def _eval_rank(rank: int, world: int, init: str, ckpt: str, data_root: str, out_dir: str, q) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg, dm, module = load_run(ckpt, [f"data.root={data_root}"])
        dm.setup("test")
        res = evaluate_attack(module.eval_model(), dm.test_set, "r_pgd", dataset_name="mnist", model_name="cnn_cr",
                              targeted=True, eps=None, beta=0.5, seed=0, n=30, threshold=module.threshold,
                              val_distances=module.val_distances, settings={"steps": 3}, out_dir=out_dir,
                              chunk_size=7, progress=False, rank=rank, world_size=world)
        q.put((rank, res.get("status"), res.get("examples")))
    finally:
        dist.destroy_process_group()


def test_evaluation_split_over_two_ranks_equals_one_process(runs, data_root, tmp_path):
    s = find_run(runs, "mnist", "cnn_cr", 0)
    _, dm, module = load_run(s["checkpoint"], [f"data.root={data_root}"])
    dm.setup("test")
    one = evaluate_attack(module.eval_model(), dm.test_set, "r_pgd", dataset_name="mnist", model_name="cnn_cr",
                          targeted=True, eps=None, beta=0.5, seed=0, n=30, threshold=module.threshold,
                          val_distances=module.val_distances, settings={"steps": 3}, out_dir=str(tmp_path / "one"),
                          chunk_size=7, progress=False)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    init = f"file://{tmp_path / 'ddp_init'}"
    procs = [ctx.Process(target=_eval_rank, args=(r, 2, init, s["checkpoint"], str(data_root),
                                                   str(tmp_path / "two"), q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, (st, ex)) for r, st, ex in (q.get(timeout=600) for _ in procs))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert got[0][0] == got[1][0] == "complete"
    for r in (0, 1):
        assert got[r][1] == one["examples"], f"rank {r}: per-example outcomes differ from the 1-process run"
    chunks = sorted(os.listdir(tmp_path / "two" / "mnist" / "cnn_cr" / ".chunks"))
    assert chunks  # the two ranks wrote the chunks (5 of 7 examples each round-robin)


# -- a 2-process fit, killed mid-epoch and resumed -------------------------------------------------
def test_two_process_fit_killed_and_resumed_gives_the_uninterrupted_weights(data_root, tmp_path):
    """``lit-caps fit`` on 2 CPU processes (Lightning's DDP launcher reruns the command as rank 1, gloo):
    both processes killed with SIGKILL mid-epoch (a lost node), then the same command again: it
    resumes from the last checkpoint and ends with the weights of an uninterrupted 2-process run."""
    import json
    import signal
    import subprocess
    import sys
    from lit_caps.config import run_dir_for
    from test_resume import EVERYTHING, kill_at_step, weights_sha

    extra = ["train.limit_train_batches=30", "train.max_epochs=2", "train.checkpoint_every_n_steps=5",
             "train.accelerator=cpu", "train.devices=2"]
    overrides = EVERYTHING + [f"data.root={data_root}", *extra]
    cfg = compose("cnn_cr", "mnist", train="smoke", overrides=overrides)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")

    def cmd(root):
        return [sys.executable, "-m", "lit_caps.cli", "fit", "--model", "cnn_cr", "--data", "mnist", "--train",
                "smoke", "--runs", str(root)] + overrides

    run = run_dir_for(cfg, tmp_path / "killed")
    metrics = run / "csv" / "metrics.csv"
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # epoch 1 logs steps 30..59 (per rank); kill both ranks past step 40, between checkpoints
    killed = kill_at_step(proc, metrics, 40, lambda: os.killpg(proc.pid, signal.SIGKILL), 900)
    assert killed, "the 2-process run finished (or stalled) before it could be killed"
    assert not (run / "summary.json").exists()
    ck_step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 30 < ck_step < 60, ck_step

    out = subprocess.run(cmd(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"resuming {run}" in out.stdout
    s = json.loads((run / "summary.json").read_text())
    assert s["complete"] and s["global_step"] == 60 and [r["from_step"] for r in s["resumed"]] == [ck_step]

    ref = subprocess.run(cmd(tmp_path / "uninterrupted"), env=env, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    r = json.loads((run_dir_for(cfg, tmp_path / "uninterrupted") / "summary.json").read_text())
    assert r["resumed"] == [] and r["global_step"] == 60
    assert weights_sha(s["checkpoint"]) == weights_sha(r["checkpoint"])
    assert s["threshold"] == r["threshold"] and s["test_acc"] == r["test_acc"]
