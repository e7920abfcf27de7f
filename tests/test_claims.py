"""Several processes on one attack evaluation (chunk claims), killed workers, read-only folders, and
`lit-caps evaluate` outputs keyed by run (lit_caps.evaluation, lit_caps.cli.cmd_evaluate).

The worker processes are this file run as a script (``python tests/test_claims.py <spec.json>``):
they load a tiny model saved by the test and attack with the stand-in attack of test_evaluation,
slowed down so that two of them overlap.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_evaluation import EPS, Indexed, _train_tiny, stand_in_attack  # noqa: E402

from lit_caps.evaluation import chunk_dir, claim_status, evaluate_attack  # noqa: E402

N, CHUNK = 60, 10  # 6 chunks
NAME = "pgd-untargeted-eps0.3-n60-s0"
ARCH = dict(image_shape=(1, 28, 28), conv_channels=4, conv_kernel=9, primary_dim=4, primary_kernel=9,
            capsule_layers=[[8, 8]], class_dim=4, decoder_hidden=(64,))


def _kwargs(thr, val, out, attack_fn, **kw):
    return dict(dataset_name="mnist", model_name="tiny", targeted=False, eps=EPS, seed=0, n=N, threshold=thr,
                val_distances=val, settings={"steps": 5, "step_size": 0.1}, out_dir=str(out), chunk_size=CHUNK,
                attack_fn=attack_fn, progress=False, fpr=0.05, **kw)


# -- the worker process ------------------------------------------------------------------------------
def _worker(spec_file: str) -> None:
    from lit_caps.models import build_model

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    blob = torch.load(spec["model"], weights_only=True)
    model = build_model("cnn_cr", **ARCH)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    ds = Indexed(blob["x"], blob["y"])
    calls = []

    @functools.wraps(stand_in_attack)  # the same attack_impl (part of the settings hash) as the reference's
    def attack_fn(name, m, **kw):
        inner = stand_in_attack(name, m, **kw)

        def attack(x, y, t=None):
            calls.append(time.time())
            if spec.get("hang_after") is not None and len(calls) > spec["hang_after"]:
                Path(spec["hanging"]).write_text(str(os.getpid()))
                time.sleep(3600)  # killed here
            time.sleep(spec.get("delay", 0.0))
            return inner(x, y, t)
        return attack

    ready = Path(spec["ready"])  # start together
    ready.mkdir(exist_ok=True)
    (ready / str(os.getpid())).touch()
    t0 = time.monotonic()
    while len(list(ready.iterdir())) < spec.get("peers", 1) and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    r = evaluate_attack(model, ds, "pgd", **_kwargs(blob["thr"], blob["val"], spec["out"], attack_fn))
    Path(spec["report"]).write_text(json.dumps({"pid": os.getpid(), "calls": len(calls), "result": r}))


@pytest.fixture(scope="module")
def tiny_saved(data_root, mnist_test, tmp_path_factory):
    """The tiny CNN+CR of test_evaluation, saved with the test images for the worker processes."""
    model, val, thr = _train_tiny(data_root, 0)
    f = tmp_path_factory.mktemp("model") / "tiny.pt"
    x, y = mnist_test
    torch.save({"state_dict": model.state_dict(), "val": val, "thr": float(thr), "x": x, "y": y}, f)
    return f, (model, val, float(thr)), Indexed(x, y)


@pytest.fixture(scope="module")
def reference(tiny_saved, tmp_path_factory):
    """One uninterrupted in-process evaluation, at the workers' one thread (float rounding depends on
    the thread count, and earlier tests may have left this process at another)."""
    _, (model, val, thr), ds = tiny_saved
    out = tmp_path_factory.mktemp("ref")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate_attack(model, ds, "pgd", **_kwargs(thr, val, out, stand_in_attack)), out
    finally:
        torch.set_num_threads(threads)


def _start(tmp_path, model_file, tag, out, **spec):
    spec = dict(model=str(model_file), out=str(out), ready=str(tmp_path / "ready"),
                report=str(tmp_path / f"report-{tag}.json"), hanging=str(tmp_path / f"hanging-{tag}"), **spec)
    sf = tmp_path / f"spec-{tag}.json"
    sf.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(sf)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _chunk_workers(out, shash) -> list[str]:
    cdir = chunk_dir(out, "mnist", "tiny", NAME, shash)
    return [("{host}:{pid}".format(**torch.load(cdir / f"chunk_{c:05d}.pt", weights_only=True)["run"]))
            for c in range(N // CHUNK)]


def counting(calls: list):
    """The stand-in attack factory (the same ``attack_impl``), appending to ``calls`` once per
    attacked chunk."""
    @functools.wraps(stand_in_attack)
    def attack_fn(*a, **k):
        f = stand_in_attack(*a, **k)

        def attack(x, y, t=None):
            calls.append(1)
            return f(x, y, t)
        return attack
    return attack_fn


def same(a, b):
    assert a["settings_hash"] == b["settings_hash"] and a["examples"] == b["examples"] and a["summary"] == b["summary"]


# -- tests ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    """This process attacks at the workers' one thread, so that chunks from either compare exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_split_the_chunks(tiny_saved, reference, tmp_path):
    """Two agents on one results folder: every chunk computed exactly once in total, by one of
    them (the chunk file says which); both return the same result, the single-process one."""
    model_file = tiny_saved[0]
    ref = reference[0]
    out = tmp_path / "shared"
    procs = [_start(tmp_path, model_file, tag, out, delay=1.0, peers=2) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    reps = [json.loads((tmp_path / f"report-{t}.json").read_text()) for t in ("a", "b")]
    assert sum(r["calls"] for r in reps) == N // CHUNK  # each chunk once, in total
    assert all(r["calls"] >= 1 for r in reps)  # both worked (they started together; 1 s per chunk)
    workers = _chunk_workers(out, ref["settings_hash"])
    for r in reps:
        assert workers.count(f"{socket.gethostname()}:{r['pid']}") == r["calls"]
        same(r["result"], ref)
    assert reps[0]["result"] == reps[1]["result"]  # the same file content, the same result
    assert reps[0]["result"]["run"]["chunk_workers"] == workers
    assert not list(chunk_dir(out, "mnist", "tiny", NAME, ref["settings_hash"]).glob("*.claim"))


def test_kill_9_then_rerun_reuses_chunks(tiny_saved, reference, tmp_path, capsys):
    """A worker killed with SIGKILL in its 3rd chunk leaves 2 chunks and a claim; the rerun takes
    the dead process's claim over, computes only the 4 missing chunks and gives the same result."""
    model_file, (model, val, thr), ds = tiny_saved
    ref = reference[0]
    out = tmp_path / "res"
    p = _start(tmp_path, model_file, "k", out, hang_after=2)
    hanging = tmp_path / "hanging-k"
    t0 = time.monotonic()
    while not hanging.exists() and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.1)
    assert hanging.exists(), p.communicate()[1][-3000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    cdir = chunk_dir(out, "mnist", "tiny", NAME, ref["settings_hash"])
    assert sorted(f.name for f in cdir.iterdir()) == ["chunk_00000.pt", "chunk_00001.pt", "chunk_00002.claim"]
    state, info = claim_status(cdir / "chunk_00002.claim")
    assert state == "expired" and info["pid"] == p.pid  # its process is gone
    calls = []
    r = evaluate_attack(model, ds, "pgd", **_kwargs(thr, val, out, counting(calls)))
    assert len(calls) == 4 and r["status"] == "complete"
    same(r, ref)
    assert "taking over" in capsys.readouterr().err
    assert _chunk_workers(out, ref["settings_hash"])[:2] == [f"{socket.gethostname()}:{p.pid}"] * 2


def _plant_claim(cdir: Path, c: int, host: str, pid: int, age_s: float = 0.0) -> Path:
    cdir.mkdir(parents=True, exist_ok=True)
    f = cdir / f"chunk_{c:05d}.claim"
    f.write_text(json.dumps({"pid": pid, "host": host, "time": "then", "token": "x"}))
    if age_s:
        t = time.time() - age_s
        os.utime(f, (t, t))
    return f


def test_live_claims_are_skipped_expired_ones_taken_over(tiny_saved, reference, tmp_path, monkeypatch):
    """A claim from another host is live until it goes unrefreshed for LIT_CAPS_CLAIM_TTL_S: its
    chunk is skipped (and waited for up to claim_wait_s), then taken over."""
    _, (model, val, thr), ds = tiny_saved
    ref = reference[0]
    monkeypatch.setenv("LIT_CAPS_CLAIM_TTL_S", "60")
    cdir = chunk_dir(tmp_path, "mnist", "tiny", NAME, ref["settings_hash"])
    claim = _plant_claim(cdir, 3, "another-machine", 12345)
    calls = []
    attack_fn = counting(calls)

    t0 = time.monotonic()
    r = evaluate_attack(model, ds, "pgd", **_kwargs(thr, val, tmp_path, attack_fn, claim_wait_s=1.0))
    assert r["status"] == "incomplete" and r["missing_chunks"] == [3] and len(calls) == 5
    assert 1.0 <= time.monotonic() - t0 and claim.exists()  # waited for it, left it alone
    t = time.time() - 61  # no heartbeat for longer than the TTL: expired
    os.utime(claim, (t, t))
    r = evaluate_attack(model, ds, "pgd", **_kwargs(thr, val, tmp_path, attack_fn, claim_wait_s=0.0))
    assert r["status"] == "complete" and len(calls) == 6 and not claim.exists()
    same(r, ref)
    # a claim of a live process on this host (our parent) with a fresh file is live; old, it is not
    live = _plant_claim(tmp_path / "c", 0, socket.gethostname(), os.getppid())
    assert claim_status(live)[0] == "live"
    t = time.time() - 61
    os.utime(live, (t, t))
    assert claim_status(live)[0] == "expired"


def test_heartbeat_refreshes_the_claim(tiny_saved, tmp_path, monkeypatch):
    """While a chunk is computed its claim file names this process and its mtime keeps moving;
    the claim is gone afterwards, also when the attack raises."""
    _, (model, val, thr), ds = tiny_saved
    monkeypatch.setenv("LIT_CAPS_CLAIM_HEARTBEAT_S", "0.1")
    seen = []

    def attack_fn(*a, **k):
        f = stand_in_attack(*a, **k)

        def attack(x, y, t=None):
            (claim,) = (tmp_path / "mnist" / "tiny" / ".chunks").glob("*/*/*.claim")
            m0 = claim.stat().st_mtime_ns
            time.sleep(0.6)
            seen.append((json.loads(claim.read_text()), m0, claim.stat().st_mtime_ns))
            if len(seen) == 2:
                raise RuntimeError("simulated failure")
            return f(x, y, t)
        return attack

    with pytest.raises(RuntimeError, match="simulated"):
        evaluate_attack(model, ds, "pgd", **_kwargs(thr, val, tmp_path, attack_fn))
    assert len(seen) == 2
    for info, m0, m1 in seen:
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and m1 > m0
    assert not list((tmp_path / "mnist").rglob("*.claim"))


def test_read_only_results_folder_is_a_clear_permission_error(tiny_saved, reference, tmp_path):
    """Computing into a folder that cannot be written: a PermissionError (a UserError: one line
    from the CLI) naming it, before any attack."""
    from lit_caps.errors import UserError

    _, (model, val, thr), ds = tiny_saved
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores permissions: /sys is read-only for everyone
        ro = Path("/sys/lit_caps_read_only_test")
        if os.access("/sys", os.W_OK) and not os.path.ismount("/sys"):
            pytest.skip("no read-only folder to test with")
    calls = []
    with pytest.raises(PermissionError, match=f"cannot write to the results folder {ro}") as e:
        evaluate_attack(model, ds, "pgd", **_kwargs(thr, val, ro, counting(calls)))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value) and calls == []


def _fit_smoke(data_root, runs):
    from lit_caps.config import compose
    from lit_caps.training.fit import fit

    cfg = compose("cnn_cr", "mnist", train="smoke",
                  overrides=["logger.wandb=false", "progress_bar=false", f"data.root={data_root}",
                             "train.limit_train_batches=20"])
    return fit(cfg, runs_root=runs)


def test_two_evaluate_runs_on_other_checkpoints_keep_their_outputs(data_root, tmp_path):
    """`lit-caps evaluate` of two checkpoints (other weights) into one --out: each gets its own
    figures, metrics CSV and W&B run (id with the run name and a settings hash); the first's result
    file is kept under superseded/, never written over; printed paths are where the files are."""
    import shutil

    from lit_caps.training.module import LitReconstructionClassifier

    s1 = _fit_smoke(data_root, tmp_path / "runs")
    run1 = Path(s1["run_dir"])
    run2 = run1.with_name(run1.name.replace("-s0-", "-s0x-"))  # a copy of the run with other weights
    shutil.copytree(run1, run2)
    ck2 = run2 / "checkpoints" / Path(s1["checkpoint"]).name
    ck = torch.load(ck2, weights_only=False)
    k = next(k for k in ck["state_dict"] if k.endswith("weight"))
    ck["state_dict"][k] = ck["state_dict"][k] * 1.01
    torch.save(ck, ck2)
    assert LitReconstructionClassifier.load_from_checkpoint(str(ck2)).state_dict()[k].sum() != 0
    out = tmp_path / "out"
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")

    def evaluate(ckpt):
        p = subprocess.run([sys.executable, "-m", "lit_caps.cli", "evaluate", "--ckpt", str(ckpt), "--attacks", "fgsm",
                            "--targeted", "false", "--n", "20", "--chunk-size", "10", "--out", str(out),
                            "--limit-test-batches", "1", "--accelerator", "cpu"],
                           capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout

    o1 = evaluate(s1["checkpoint"])
    base = out / "mnist" / "cnn_cr"
    (d1,) = (base / "evaluate").iterdir()
    assert d1.name.startswith(run1.name + "-")
    figs1 = {f: f.read_bytes() for f in (d1 / "figures").iterdir()}
    assert {f.name for f in figs1} == {"undetected_vs_fpr.png", "distance_histograms.png"}
    assert f"figures, metrics CSV, W&B run: {d1}" in o1 and f"results: {base}" in o1
    first = json.loads((base / "fgsm-untargeted-eps0.3-n20-s0.json").read_text())

    o2 = evaluate(ck2)
    d2 = next(d for d in (base / "evaluate").iterdir() if d != d1)
    assert d2.name.startswith(run2.name + "-") and f"figures, metrics CSV, W&B run: {d2}" in o2
    assert {f: f.read_bytes() for f in (d1 / "figures").iterdir()} == figs1  # untouched
    assert (d2 / "figures" / "undetected_vs_fpr.png").is_file()
    for d, run in ((d1, run1), (d2, run2)):
        (w,) = (d / "wandb").glob("offline-run-*")
        assert w.name.endswith(f"-mnist-{d.name}-evaluate") and run.name in w.name
        assert (d / "csv" / "metrics.csv").is_file()
    second = json.loads((base / "fgsm-untargeted-eps0.3-n20-s0.json").read_text())
    assert second["settings"]["model_hash"] != first["settings"]["model_hash"]
    kept = json.loads((base / "superseded" / f"fgsm-untargeted-eps0.3-n20-s0-{first['settings_hash']}.json")
                      .read_text())
    assert kept == first
    # the file records paths relative to --out
    assert second["path"] == "mnist/cnn_cr/fgsm-untargeted-eps0.3-n20-s0.json"
    assert second["settings"]["checkpoint"] == Path(os.path.relpath(ck2, out)).as_posix()


# -- W&B: settings in the config, short metric names, fpr as the x-axis, runs under --out ------------
class _Recorder:
    """Records define_metric / log calls, delegating to a real W&B run when given one."""

    def __init__(self, run=None):
        self._run, self.calls, self.summary = run, [], (run.summary if run is not None else {})
        self.config = run.config if run is not None else self

    def update(self, d, allow_val_change=False):  # the config of a stand-alone recorder
        self.calls.append(("config", (d,), {}))

    def __getattr__(self, k):
        if k in ("define_metric", "log"):
            def f(*a, **kw):
                self.calls.append((k, a, kw))
                return getattr(self._run, k)(*a, **kw) if self._run is not None else None
            return f
        return getattr(self._run, k)


def _check_fpr_series(calls, key, curve):
    defined = [(a, kw) for k, a, kw in calls if k == "define_metric"]
    assert (("fpr",), {}) in defined and ((key,), {"step_metric": "fpr"}) in defined
    points = [d for k, (d, *_), _ in calls if k == "log" and "fpr" in d]
    assert [p["fpr"] for p in points] == sorted(p["fpr"] for p in points) == curve["fpr"]
    assert [p[key] for p in points] == curve["undetected_rate"]


def test_attack_evaluation_logs_settings_and_fpr_series(reference, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lit_caps.evaluation.callback import AttackEvaluation

    ref = reference[0]
    cb = AttackEvaluation([], n=N, seed=0, chunk_size=CHUNK)
    cb.results = [ref]
    png = tmp_path / "x.png"
    plt.imsave(png, torch.zeros(4, 4).numpy())
    rec = _Recorder()
    curve = ref["summary"]["undetected_vs_fpr"]
    cb._log_wandb(rec, {ref["name"]: (curve["fpr"], curve["undetected_rate"])}, png, png)
    (cfg,) = [a[0] for k, a, _ in rec.calls if k == "config"]
    a = cfg["attacks"][NAME]
    assert a["attack_settings"] == {"eps": EPS, "steps": 5, "step_size": 0.1} and a["eps"] == EPS
    assert a["settings_hash"] == ref["settings_hash"] and a["n"] == N
    _check_fpr_series(rec.calls, f"{NAME}/undetected_at_fpr", curve)
    for m in ("success_rate", "undetected_rate", "best_undetected_rate", "roc_auc"):
        assert rec.summary[f"{NAME}/{m}"] == ref["summary"][m]


def test_attack_cell_wandb_run_under_out(reference, tmp_path, monkeypatch):
    """`lit-caps attack`'s W&B run: its files under --out (not the working folder), an id with the
    model run and the settings hash, the settings in its config, short metric names, fpr series."""
    from types import SimpleNamespace

    import wandb

    from lit_caps.experiments import attack_cell

    ref = reference[0]
    run = SimpleNamespace(summary={"run_dir": str(tmp_path / "runs" / "mnist" / "cnn_cr-mnist-s0-12345678")},
                          checkpoint="c.ckpt")
    monkeypatch.setattr(attack_cell, "ensure_run", lambda *a, **k: run)
    monkeypatch.setattr(attack_cell, "evaluate_cell", lambda *a, **k: ref)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    seen = {}
    real_init = wandb.init

    def init(**kw):
        seen.update(kw)
        seen["run"] = _Recorder(real_init(**kw))
        return seen["run"]

    monkeypatch.setattr(wandb, "init", init)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    s = attack_cell.run_cell("mnist", "cnn_cr", "pgd", False, None, "smoke", out_dir=str(out), progress=False)
    assert s["success_rate"] == ref["summary"]["success_rate"]
    rid = f"attack-cnn_cr-mnist-s0-12345678-{NAME.replace('.', '_')}-{ref['settings_hash'][:8]}"
    assert seen["id"] == rid and seen["config"]["settings_hash"] == ref["settings_hash"]
    assert seen["config"]["attack_settings"] == ref["settings"]["attack_settings"]
    (d,) = (out / "smoke" / "wandb").glob("offline-run-*")
    assert d.name.endswith(rid) and not (cwd / "wandb").exists()
    _check_fpr_series(seen["run"].calls, "undetected_at_fpr", ref["summary"]["undetected_vs_fpr"])
    # a user's WANDB_DIR wins (as with W&B itself); under a sweep the agent names the run
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")
    seen.clear()
    attack_cell.run_cell("mnist", "cnn_cr", "pgd", False, None, "smoke", out_dir=str(out), progress=False)
    assert "id" not in seen and len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 1


if __name__ == "__main__":
    _worker(sys.argv[1])
