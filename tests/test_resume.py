"""Training durability: bit-exact resume after kill -9, append-only CSV metrics, the run-folder lock,
damaged checkpoints, verified summaries, the training-curve figure."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_caps.config import compose, run_dir_for
from lit_caps.errors import DamagedFileError, RunBusyError
from lit_caps.io import file_identity, load_checkpoint
from lit_caps.training.fit import fit

#: Generous limits for the subprocesses (seconds): a shared 2-core machine can be 10x slower than an idle one.
TIMEOUT = 1200

#: A small run that uses every random draw of training: the permutation, shift + flip augmentation,
#: dropout (the global RNG), a weight average and a per-epoch learning-rate decay.
EVERYTHING = ["logger.wandb=false", "progress_bar=false", "data.batch_size=32", "data.hflip=true",
              "data.eval_batch_size=100", "train.limit_val_batches=1", "train.limit_test_batches=1",
              "train.ema_decay=0.9", "train.lr_decay=0.5", "arch.cnn_dropout=0.5", "train.log_every_n_steps=1"]


def _cfg(data_root, *extra):
    return compose("cnn_cr", "mnist", train="smoke", overrides=EVERYTHING + [f"data.root={data_root}", *extra])


@contextmanager
def one_thread():
    """Results are bit-exact for one machine and thread count: in-process references run with the one
    thread the subprocesses get."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def weights_sha(ckpt) -> str:
    """sha256 over every tensor of a checkpoint's state dict (raw weights, weight average, buffers)."""
    sd = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def csv_rows(path) -> list[dict]:
    """metrics.csv rows, empty cells dropped (a later column rewrites earlier rows with more cells)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def row_keys(rows) -> list:
    return [(r["step"], frozenset(r)) for r in rows]


def kill_at_step(proc, metrics, step: int, kill, timeout: float) -> bool:
    """Call ``kill()`` once ``metrics`` (a run's metrics.csv) logs a training step >= ``step``; True if
    it did before ``proc`` ended or ``timeout`` passed (then the process is killed anyway)."""
    killed = False
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if metrics.is_file() and any(int(r["step"]) >= step for r in csv_rows(metrics) if "train/loss" in r):
                kill()
                killed = True
                break
            time.sleep(0.02)
    finally:
        if not killed and proc.poll() is None:
            kill()
        proc.wait()
    return killed


# -- kill -9 mid-epoch, then the same command ------------------------------------------------------
def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights_and_rows(data_root, tmp_path):
    extra = ["train.limit_train_batches=40", "train.max_epochs=2", "train.checkpoint_every_n_steps=7"]
    overrides = EVERYTHING + [f"data.root={data_root}", *extra]
    cfg = compose("cnn_cr", "mnist", train="smoke", overrides=overrides)
    cmd = [sys.executable, "-m", "lit_caps.cli", "fit", "--model", "cnn_cr", "--data", "mnist", "--train", "smoke",
           "--runs", str(tmp_path / "killed")] + overrides
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    run = run_dir_for(cfg, tmp_path / "killed")
    metrics = run / "csv" / "metrics.csv"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # epoch 1 runs rows (0-based logging steps) 40..79; kill at step >= 50, between two checkpoints
    killed = kill_at_step(proc, metrics, 50, lambda: os.kill(proc.pid, signal.SIGKILL), TIMEOUT)
    assert killed, "the run finished (or stalled) before it could be killed mid-epoch"
    assert not (run / "summary.json").exists()
    before = csv_rows(metrics)
    ck_step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    last_row_step = max(int(r["step"]) for r in before)
    assert 40 < ck_step <= last_row_step < 79, (ck_step, last_row_step)  # mid-epoch, with steps to redo

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"resuming {run}" in out.stdout
    assert "Restored all states from the checkpoint" in out.stdout + out.stderr  # Lightning's own message
    s = json.loads((run / "summary.json").read_text())
    assert s["complete"] and s["global_step"] == 80 and [r["from_step"] for r in s["resumed"]] == [ck_step]

    with one_thread():
        ref = fit(cfg, runs_root=tmp_path / "uninterrupted")  # the same config, never interrupted
    assert ref["resumed"] == []
    assert weights_sha(s["checkpoint"]) == weights_sha(ref["checkpoint"])
    assert s["test_acc"] == ref["test_acc"] and s["threshold"] == ref["threshold"]

    # metrics.csv: every row of the killed part kept, the redone steps not written twice, and the
    # whole file row for row the uninterrupted run's
    after = csv_rows(metrics)
    assert after[: len(before)] == before
    assert len(set(row_keys(after))) == len(after)
    assert after == csv_rows(Path(ref["run_dir"]) / "csv" / "metrics.csv")
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- a resume from every kind of checkpoint, in-process -------------------------------------------
class _CopyEachCheckpoint(L.Callback):
    """Copies last.ckpt (and metrics.csv as it is then) each time it is rewritten: the states a kill -9
    right after that write would resume from."""

    def __init__(self, run: Path, dest: Path):
        self.run, self.dest, self.ident = run, dest, None

    def _check(self, *args, **kwargs):
        p = self.run / "checkpoints" / "last.ckpt"
        ident = file_identity(p)
        if ident is not None and ident != self.ident:
            self.ident = ident
            d = self.dest / f"{len(list(self.dest.glob('*'))):02d}"
            d.mkdir(parents=True)
            shutil.copy(p, d / "last.ckpt")
            shutil.copy(self.run / "csv" / "metrics.csv", d / "metrics.csv")

    on_train_batch_start = on_train_epoch_start = on_validation_start = on_train_end = _check


def _resume_from_copies(data_root, tmp_path, extra, pick=None):
    cfg = _cfg(data_root, *extra)
    ref_run = tmp_path / "ref"
    ref = fit(cfg, run_dir=ref_run, test=False, extra_callbacks=[_CopyEachCheckpoint(ref_run, tmp_path / "copies")])
    ref_sha, ref_rows = weights_sha(ref["checkpoint"]), csv_rows(ref_run / "csv" / "metrics.csv")
    copies = sorted((tmp_path / "copies").iterdir())
    steps = [torch.load(c / "last.ckpt", weights_only=True)["global_step"] for c in copies]
    chosen = [c for c, st in zip(copies, steps) if pick is None or st in pick]
    assert pick is None or len(chosen) == len(pick)
    for c in chosen:
        run = tmp_path / f"resumed-{c.name}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "csv").mkdir()
        shutil.copy(c / "last.ckpt", run / "checkpoints" / "last.ckpt")
        shutil.copy(c / "metrics.csv", run / "csv" / "metrics.csv")
        shutil.copy(ref_run / "config.yaml", run / "config.yaml")
        s = fit(cfg, run_dir=run, test=False)
        step = torch.load(c / "last.ckpt", weights_only=True)["global_step"]
        assert [r["from_step"] for r in s["resumed"]] == [step]
        assert weights_sha(s["checkpoint"]) == ref_sha, f"resumed from step {step}"
        assert csv_rows(run / "csv" / "metrics.csv") == ref_rows, f"resumed from step {step}"
    return steps


def test_resume_from_mid_epoch_and_epoch_end_checkpoints_is_bit_exact(data_root, tmp_path):
    """6 batches per epoch (a 192-image training set), a checkpoint every step: resumed from a
    mid-epoch step of epoch 0, from after epoch 0's validation (step 6) and from a mid-epoch step of
    epoch 1, each ends with the uninterrupted run's weights and metrics.csv."""
    steps = _resume_from_copies(data_root, tmp_path, ["data.limit_train=192", "train.limit_train_batches=null",
                                                      "train.max_epochs=2", "train.checkpoint_every_n_steps=1"],
                                pick=(3, 6, 8))
    # every step but the last of each epoch, then the end of each epoch's validation
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["data.limit_train=192", "train.limit_train_batches=null"],
                                   ["train.limit_train_batches=4", "train.max_epochs=3"]],
                         ids=["full-epochs", "limit_train_batches"])
def test_resume_from_every_checkpoint_is_bit_exact(data_root, tmp_path, extra):
    _resume_from_copies(data_root, tmp_path, ["train.max_epochs=2", "train.checkpoint_every_n_steps=1", *extra])


# -- the training order and the augmentation ---------------------------------------------------------
def test_epoch_sampler_and_augmentation_derive_from_seed_epoch_and_index():
    from lit_caps.data import EpochSampler, ImageTensorDataset, ResumableDataLoader, mix64

    g = torch.Generator().manual_seed(0)
    ds = ImageTensorDataset(torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=g),
                            torch.arange(50) % 10, shift=2, hflip=True)

    def order(seed, epoch, rank=0, world=1):
        s = EpochSampler(ds, seed=seed, num_replicas=world, rank=rank)
        s.set_epoch(epoch)
        return [k for k in s]

    e0 = order(0, 0)
    assert sorted(i for i, _ in e0) == list(range(50)) and e0 == order(0, 0)
    assert [i for i, _ in e0] != [i for i, _ in order(0, 1)]  # a new permutation every epoch
    assert [i for i, _ in e0] != [i for i, _ in order(1, 0)]  # and per seed
    assert [i for i, _ in order(1, 0)] != [i for i, _ in order(0, 1)]  # (not seed + epoch)
    shards = [order(0, 3, r, 3) for r in range(3)]
    assert {i for sh in shards for i, _ in sh} == set(range(50)) and {len(sh) for sh in shards} == {17}
    # augmentation: a function of the key; uniform over the 25 shifts and both flips
    assert torch.equal(ds[e0[0]][0], ds[e0[0]][0])
    big = ImageTensorDataset(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), torch.zeros(1).long(), shift=2, hflip=True)
    big.images[0, 0, 3, 3] = 255  # one bright pixel: where it lands tells the shift and the flip
    seen: dict = {}
    for epoch in range(5000):
        where = tuple((big[(0, mix64(0, epoch))][0][0] > 0).nonzero()[0].tolist())
        seen[where] = seen.get(where, 0) + 1
    assert len(seen) == 50 and min(seen.values()) > 50  # 25 shifts x 2 flips, each ~100 times of 5000
    # the loader's position: a resumed loader continues with the next batch of the same epoch
    def loader():
        s = EpochSampler(ds, seed=7)
        return ResumableDataLoader(ds, batch_size=8, sampler=s)

    a = loader()
    a.sampler.set_epoch(2)
    it = iter(a)
    first = [next(it)[2] for _ in range(3)]
    state = a.state_dict()
    rest = [b[2] for b in it]
    assert state == {"epoch": 2, "batches": 3, "seed": 7, "batch_size": 8, "num_replicas": 1, "size": 50,
                     "shuffle": True}
    b = loader()
    b.load_state_dict(state)
    resumed = [x[2] for x in b]
    assert len(resumed) == len(rest) == 4 and all(torch.equal(u, v) for u, v in zip(resumed, rest))
    assert not any(set(f.tolist()) & set(r.tolist()) for f in first for r in resumed)
    b.sampler.set_epoch(3)  # the skip applies once, to the epoch it was saved in
    assert len(list(b)) == 7


# -- metrics.csv is appended to, never deleted --------------------------------------------------------
def test_csv_log_is_continued_not_deleted(tmp_path):
    from lit_caps.training.loggers import AppendingCSVLogger

    lg = AppendingCSVLogger(str(tmp_path), name="", version="csv")
    for step in range(3):
        lg.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": 0}, step=step)
    lg.save()
    path = tmp_path / "csv" / "metrics.csv"
    first = path.read_text()
    # a resumed process: the same file; steps 1-2 redone (same rows), then new steps and a new column
    lg2 = AppendingCSVLogger(str(tmp_path), name="", version="csv")
    for step in (1, 2, 3):
        lg2.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": 0}, step=step)
    lg2.log_metrics({"val/acc": 0.5, "epoch": 0}, step=3)
    lg2.save()
    rows = csv_rows(path)
    assert [(r["step"], sorted(r)) for r in rows] == [
        ("0", ["epoch", "step", "train/loss"]), ("1", ["epoch", "step", "train/loss"]),
        ("2", ["epoch", "step", "train/loss"]), ("3", ["epoch", "step", "train/loss"]),
        ("3", ["epoch", "step", "val/acc"])]
    assert lg2.experiment.skipped == 2
    assert [r["train/loss"] for r in rows[:3]] == [r.split(",")[-1] for r in first.splitlines()[1:]]
    # a last line cut short by a crash is left out, the rows before it stay
    with open(path, "a") as f:
        f.write("0,4,0.2")
    with pytest.warns(UserWarning, match="cut short"):
        lg3 = AppendingCSVLogger(str(tmp_path), name="", version="csv")
        lg3.log_metrics({"train/loss": 0.2, "epoch": 0}, step=4)
        lg3.save()
    assert csv_rows(path) == rows + [{"epoch": "0", "step": "4", "train/loss": "0.2"}]


# -- one fit per run folder ----------------------------------------------------------------------------
def test_second_fit_of_a_run_in_training_stops_at_once_then_reuses_it(data_root, tmp_path):
    """Two `lit-caps fit` processes of one run: the second, started while the first holds the run
    (the first is paused with SIGSTOP once it holds the lock, so the outcome does not depend on how
    fast either runs), stops with one line naming the run and the holder; once the first has
    finished, the same command reuses the run."""
    overrides = ["logger.wandb=false", "progress_bar=false", f"data.root={data_root}"]
    cfg = compose("cnn_cr", "mnist", train="smoke", overrides=overrides)
    run = run_dir_for(cfg, tmp_path)
    cmd = [sys.executable, "-m", "lit_caps.cli", "fit", "--model", "cnn_cr", "--data", "mnist", "--train", "smoke",
           "--runs", str(tmp_path)] + overrides
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + TIMEOUT
        while not (run / ".lock.owner").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)
        assert (run / ".lock.owner").is_file(), "the first fit never took the lock"
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        os.kill(first.pid, signal.SIGCONT)
        out1, err1 = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
    assert "is busy" in lines[0] and str(run) in lines[0] and f"pid {first.pid}" in lines[0], lines
    assert first.returncode == 0, err1[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["complete"] and s["checkpoint_step"] == s["global_step"] == 10
    ck = load_checkpoint(s["checkpoint"], recover_hint="-")
    assert ck["global_step"] == 10 and ck["detection"]["threshold"] == s["threshold"]
    assert not list(run.rglob(".*.tmp*")) and not (run / ".lock.owner").exists()
    # the other one finished: the same run is now reused
    assert fit(cfg, runs_root=tmp_path) == s


def test_run_lock_in_process(tmp_path):
    from lit_caps.training.fit import run_lock

    with run_lock(tmp_path / "r"):
        owner = json.loads((tmp_path / "r" / ".lock.owner").read_text())
        assert owner["pid"] == os.getpid()
        with pytest.raises(RunBusyError, match=rf"{tmp_path / 'r'} is busy: .*pid {os.getpid()}"):
            with run_lock(tmp_path / "r"):
                pass
    with run_lock(tmp_path / "r"):  # released
        pass


# -- damaged checkpoints -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    cfg = compose("cnn_cr", "mnist", train="smoke",
                  overrides=["logger.wandb=false", "progress_bar=false", f"data.root={data_root}",
                             "train.limit_train_batches=3", "train.checkpoint_every_n_steps=1"])
    s = fit(cfg, runs_root=tmp_path_factory.mktemp("runs"))
    return cfg, s


def _copy_run(finished_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run[1]["run_dir"], run)
    return run


def _damage(path: Path, how: str) -> None:
    if how == "random bytes":
        path.write_bytes(os.urandom(path.stat().st_size))
    else:  # truncated
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _check_message(msg: str, path: Path, run: Path) -> None:
    assert "\n" not in msg and str(path) in msg and "is damaged" in msg
    assert f"lit-caps fit --config {run / 'config.yaml'} --run-dir {run}" in msg
    assert "weights_only" not in msg


@pytest.mark.parametrize("how", ["random bytes", "truncated"])
def test_damaged_checkpoint_is_reported_in_one_line_never_reused_nor_replaced(finished_run, tmp_path, how, capsys):
    from lit_caps.cli import main
    from lit_caps.runs import load_run

    cfg = finished_run[0]
    run = _copy_run(finished_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    _damage(last, how)
    damaged = last.read_bytes()
    with pytest.raises(DamagedFileError) as e:  # a finished run: checked before it is reused
        fit(cfg, run_dir=run)
    _check_message(str(e.value), last, run)
    with pytest.raises(DamagedFileError) as e:
        load_checkpoint(last, recover_hint="remove it")
    assert str(e.value).startswith(f"{last} is damaged") and str(e.value).endswith("remove it")
    with pytest.raises(DamagedFileError) as e:
        load_run(str(last))
    assert "\n" not in str(e.value) and str(last) in str(e.value) and "weights_only" not in str(e.value)
    # a run in training (no summary yet): the resume stops with the same line, the file untouched
    (run / "summary.json").unlink()
    with pytest.raises(DamagedFileError) as e:
        fit(cfg, run_dir=run)
    _check_message(str(e.value), last, run)
    assert last.read_bytes() == damaged and not (run / "summary.json").exists()
    capsys.readouterr()
    rc = main(["fit", "--config", str(run / "config.yaml"), "--run-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is damaged" in err[0] and "weights_only" not in err[0]
    # the recovery the message gives: remove it and rerun, which trains the run again
    last.unlink()
    s = fit(cfg, run_dir=run)
    assert s["complete"] and s["resumed"] == [] and s["threshold"] == finished_run[1]["threshold"]


def test_summary_is_complete_only_once_its_checkpoint_reads_back(finished_run, tmp_path):
    cfg = finished_run[0]
    run = tmp_path / "run"

    class DamageAtTheEnd(L.Callback):  # after LastCheckpoint wrote the final checkpoint
        def on_train_end(self, trainer, pl_module):
            _damage(run / "checkpoints" / "last.ckpt", "truncated")

    with pytest.raises(DamagedFileError, match="last.ckpt is damaged"):
        fit(cfg, run_dir=run, extra_callbacks=[DamageAtTheEnd()])
    s = json.loads((run / "summary.json").read_text())
    assert s["complete"] is False and s["epochs"] == 1
    good = finished_run[1]
    assert good["complete"] and good["checkpoint_step"] == good["global_step"] == 3
    assert (Path(good["run_dir"]) / "training_curves.png").stat().st_size > 10_000


def test_stale_temp_files_of_killed_processes_are_removed(finished_run, tmp_path):
    cfg = finished_run[0]
    run = _copy_run(finished_run, tmp_path)
    stale = run / "checkpoints" / ".last.ckpt.tmp12345-abcdef"
    stale.write_bytes(b"partial")
    (run / "summary.json").unlink()  # not finished: fit takes the lock, resumes (nothing left to train)
    s = fit(cfg, run_dir=run)
    assert s["complete"] and not stale.exists()
