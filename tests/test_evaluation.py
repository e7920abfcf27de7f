"""The resumable attack evaluation (lit_caps.evaluation) with a tiny model and a stand-in attack.

The stand-in (5 signed-gradient steps from a *random* start drawn from the global RNG) stands for
the real attacks package: resumed / split runs can only match when evaluate_attack seeds every
chunk from (seed, chunk id).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lit_caps.detection import detection_rates, threshold_at_fpr
from lit_caps.evaluation import (EXAMPLE_FIELDS, chunk_dir, evaluate_attack, find_results, model_hash,
                                 parse_result_name, result_name, result_path, subset_positions)

N, CHUNK, EPS = 60, 20, 0.3
CALLS = {"n": 0, "fail_at": None}


def stand_in_attack(name, model, *, eps, targeted, threshold, steps=5, step_size=0.1, **_):
    """build_attack-shaped factory: returns attack(x, y, target) -> AttackResult-like."""

    def attack(x, y, target=None):
        CALLS["n"] += 1
        if CALLS["fail_at"] is not None and CALLS["n"] >= CALLS["fail_at"]:
            raise RuntimeError("simulated interruption")
        delta = (torch.rand_like(x) * 2 - 1) * eps  # global RNG: must be seeded per chunk
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = model(x + delta).logits
            loss = -F.cross_entropy(logits, target) if targeted else F.cross_entropy(logits, y)
            (g,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step_size * g.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return SimpleNamespace(x_adv=(x + delta).detach(), best_undetected=None, x_best=None, iterations=steps)

    return attack


class Indexed(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


def _train_tiny(data_root, seed: int = 0):
    from torchvision.datasets import MNIST

    from lit_caps.models import build_model

    torch.manual_seed(seed)
    ds = MNIST(str(data_root), train=True, download=False)
    x = ds.data[:5000].float().div(255).unsqueeze(1)
    y = ds.targets[:5000].long()
    model = build_model("cnn_cr", image_shape=(1, 28, 28), conv_channels=4, conv_kernel=9, primary_dim=4,
                        primary_kernel=9, capsule_layers=[[8, 8]], class_dim=4, decoder_hidden=(64,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(120):
        i = torch.randint(0, 4000, (64,), generator=g)
        out = model(x[i])
        rec = model.reconstruct(out.poses, y[i])
        loss = F.cross_entropy(out.logits, y[i]) + 0.005 * (rec - x[i]).flatten(1).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val = model.distance(x[4000:])
    return model, val, threshold_at_fpr(val, 0.05)


@pytest.fixture(scope="module")
def tiny(data_root):
    """A small CNN+CR (a few seconds of training): (model, val_distances, threshold)."""
    return _train_tiny(data_root, 0)


@pytest.fixture(scope="module")
def tiny_other(data_root):
    """The same architecture trained with another seed: a black-box substitute of ``tiny``."""
    return _train_tiny(data_root, 1)


@pytest.fixture(scope="module")
def dataset(mnist_test):
    return Indexed(*mnist_test)


def run(tiny, dataset, out_dir, targeted=False, attack="pgd", **kw):
    model, val, thr = tiny
    args = dict(dataset_name="mnist", model_name="tiny", targeted=targeted, eps=EPS, seed=0, n=N,
                threshold=thr, val_distances=val, settings={"steps": 5, "step_size": 0.1}, out_dir=out_dir,
                chunk_size=CHUNK, attack_fn=stand_in_attack, progress=False, fpr=0.05)
    args.update(kw)
    return evaluate_attack(model, dataset, attack, **args)


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.update(n=0, fail_at=None)
    yield
    CALLS.update(n=0, fail_at=None)


@pytest.fixture(scope="module")
def reference(tiny, dataset, tmp_path_factory):
    """Uninterrupted single-process results, untargeted and targeted."""
    out = tmp_path_factory.mktemp("ref")
    return {t: run(tiny, dataset, out, targeted=t) for t in (False, True)}, out


def same_outcomes(a, b):
    assert a["settings_hash"] == b["settings_hash"]
    assert a["examples"] == b["examples"]
    assert a["summary"] == b["summary"]


def test_result_file_fields_and_cache(tiny, dataset, reference):
    refs, out = reference
    r = refs[False]
    path = result_path(out, "mnist", "tiny", "pgd-untargeted-eps0.3-n60-s0")
    assert path.is_file() and r["path"] == str(path) and r["status"] == "complete"
    raw = json.loads(path.read_text())
    assert raw["examples"] == r["examples"] and raw["summary"] == r["summary"]
    # the file records its path relative to the store (out_dir), and its checksum
    assert raw["path"] == "mnist/tiny/pgd-untargeted-eps0.3-n60-s0.json" and raw["schema"] == 2
    assert raw["sha256"] == r["sha256"] and len(raw["sha256"]) == 64
    # one chunk folder per settings hash; the claims are gone once the chunks are done
    assert [p.name for p in chunk_dir(out, "mnist", "tiny", path.stem).iterdir()] == [r["settings_hash"]]
    assert sorted(p.name for p in chunk_dir(out, "mnist", "tiny", path.stem, r["settings_hash"]).iterdir()) == \
        ["chunk_00000.pt", "chunk_00001.pt", "chunk_00002.pt"]
    assert r["run"]["chunk_workers"] == [f"{socket.gethostname()}:{os.getpid()}"] * 3
    # the process's CPU time over the chunks (every thread) and torch's thread count: the compute ledger's input
    assert r["run"]["threads"] == torch.get_num_threads()
    assert r["run"]["cpu_time_s"] > 0
    s = r["settings"]
    for k, v in dict(dataset="mnist", model="tiny", attack="pgd", targeted=False, beta=None, eps=EPS, n=N, seed=0,
                     chunk_size=CHUNK, fpr=0.05, threshold=tiny[2], model_hash=model_hash(tiny[0])).items():
        assert s[k] == v, k
    assert s["attack_settings"]["steps"] == 5 and s["attack_settings"]["step_size"] == 0.1
    assert s["attack_impl"].endswith("stand_in_attack")
    assert s["val_fpr"] == pytest.approx(0.05, abs=0.01)
    assert {"torch_version", "device", "wall_time_s", "world_size"} <= set(r["run"])
    ex = r["examples"]
    assert set(ex) == set(EXAMPLE_FIELDS) and all(len(v) == N for v in ex.values())
    assert ex["index"] == subset_positions(len(dataset), N, 0).tolist()
    assert ex["y"] == [int(dataset.y[i]) for i in ex["index"]]
    assert ex["target"] == [None] * N
    assert max(ex["linf"]) <= EPS + 1e-6
    sm = r["summary"]
    ref = detection_rates(torch.tensor(ex["adv_pred"]), torch.tensor(ex["y"]), torch.tensor(ex["adv_dist"]), tiny[2])
    assert sm["success_rate"] == pytest.approx(ref["success_rate"])
    assert sm["undetected_rate"] == pytest.approx(ref["undetected_rate"])
    assert 0 < sm["success_rate"] <= 1  # the stand-in attack does something
    assert sm["success_ci"][0] <= sm["success_rate"] <= sm["success_ci"][1]
    assert sm["undetected_rate"] <= sm["best_undetected_rate"] <= sm["success_rate"] + 1e-12
    assert sm["undetected_vs_fpr"]["fpr"][0] == 0 and len(sm["undetected_vs_fpr"]["fpr"]) == 101
    assert sm["roc_auc"] is None or 0 <= sm["roc_auc"] <= 1
    assert sm["clean_accuracy"] > 0.5
    # rerun: cached, nothing recomputed, file untouched
    mtime = path.stat().st_mtime_ns
    again = run(tiny, dataset, out)
    assert CALLS["n"] == 0 and again == r and path.stat().st_mtime_ns == mtime


def test_resume_after_interruption_is_identical(tiny, dataset, reference, tmp_path):
    ref = reference[0][True]
    assert all(t is not None and t != y for t, y in zip(ref["examples"]["target"], ref["examples"]["y"]))
    CALLS["fail_at"] = 2  # dies in the 2nd chunk
    with pytest.raises(RuntimeError, match="simulated"):
        run(tiny, dataset, tmp_path, targeted=True)
    name = "pgd-targeted-eps0.3-n60-s0"
    cdir = chunk_dir(tmp_path, "mnist", "tiny", name, ref["settings_hash"])
    assert [p.name for p in cdir.iterdir()] == ["chunk_00000.pt"]  # complete or absent, no temp files or claims
    assert not result_path(tmp_path, "mnist", "tiny", name).exists()
    CALLS.update(n=0, fail_at=None)
    r = run(tiny, dataset, tmp_path, targeted=True)
    assert CALLS["n"] == 2  # chunk 0 reused
    same_outcomes(r, ref)
    # lose the final file and one chunk: only that chunk is recomputed
    result_path(tmp_path, "mnist", "tiny", name).unlink()
    (cdir / "chunk_00001.pt").unlink()
    CALLS["n"] = 0
    same_outcomes(run(tiny, dataset, tmp_path, targeted=True), ref)
    assert CALLS["n"] == 1


def test_rank_split_matches_single_process(tiny, dataset, reference, tmp_path):
    ref = reference[0][False]
    r0 = run(tiny, dataset, tmp_path, rank=0, world_size=2)
    assert r0["status"] == "incomplete" and r0["missing_chunks"] == [1]
    assert CALLS["n"] == 2  # chunks 0 and 2
    r1 = run(tiny, dataset, tmp_path, rank=1, world_size=2)
    assert r1["status"] == "incomplete" and r1["missing_chunks"] == []  # rank 1 never assembles
    assert CALLS["n"] == 3
    done = run(tiny, dataset, tmp_path, rank=0, world_size=2)
    assert CALLS["n"] == 3 and done["status"] == "complete"
    same_outcomes(done, ref)
    assert run(tiny, dataset, tmp_path, rank=1, world_size=2) == done  # now cached for every rank


def test_changed_settings_never_mix_chunks(tiny, dataset, reference, tmp_path):
    model, val, thr = tiny
    ref = reference[0][False]
    shutil.copytree(reference[1], tmp_path / "res")
    out = tmp_path / "res"
    thr_b = float(val.min())  # a different threshold: same file name, different settings
    b = run(tiny, dataset, out, threshold=thr_b)
    assert CALLS["n"] == 3  # every chunk recomputed, none taken from the old settings
    assert b["settings"]["threshold"] == thr_b and b["settings_hash"] != ref["settings_hash"]
    # the old result was not written over: it is kept beside, where tables do not read it
    kept = result_path(out, "mnist", "tiny", ref["name"]).parent / "superseded" / f"{ref['name']}-{ref['settings_hash']}.json"
    assert json.loads(kept.read_text())["summary"] == ref["summary"]
    # back to the original settings: the kept result is restored, nothing recomputed, b kept in turn
    CALLS["n"] = 0
    same_outcomes(run(tiny, dataset, out), ref)
    assert CALLS["n"] == 0 and not kept.exists()
    kept_b = kept.parent / f"{ref['name']}-{b['settings_hash']}.json"
    assert json.loads(kept_b.read_text())["summary"] == b["summary"]
    CALLS["n"] = 0
    same_outcomes(run(tiny, dataset, out, threshold=thr_b), b)  # and forth again
    assert CALLS["n"] == 0
    fresh = run(tiny, dataset, tmp_path / "fresh", threshold=thr_b)
    same_outcomes(b, fresh)
    assert b["summary"]["undetected_rate"] <= ref["summary"]["undetected_rate"]
    # a chunk file from other settings planted under the current name is rejected, not mixed in
    name = "pgd-untargeted-eps0.3-n60-s0"
    cdir = chunk_dir(out, "mnist", "tiny", name, b["settings_hash"])
    shutil.copy(chunk_dir(reference[1], "mnist", "tiny", name, ref["settings_hash"]) / "chunk_00001.pt",
                cdir / "chunk_00001.pt")
    result_path(out, "mnist", "tiny", name).unlink()
    CALLS["n"] = 0
    same_outcomes(run(tiny, dataset, out, threshold=thr_b), fresh)
    assert CALLS["n"] == 1
    # other weights are other settings too
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        next(m2.parameters()).add_(1e-3)
    assert model_hash(m2) != model_hash(model)


def test_beta_in_name_and_settings(tiny, dataset, tmp_path):
    r = run(tiny, dataset, tmp_path, n=20, beta=0.5)
    assert r["name"] == "pgd-untargeted-beta0.5-eps0.3-n20-s0" and r["settings"]["beta"] == 0.5
    assert r["settings"]["attack_settings"].get("beta") is None  # beta is its own setting, passed to the attack


def test_with_the_attacks_package(tiny, dataset, tmp_path):
    """The default attack_fn (lit_caps.attacks.build_attack + Appendix C presets), once it exists."""
    try:
        from lit_caps.attacks import build_attack, preset  # noqa: F401
    except ImportError:
        pytest.skip("lit_caps.attacks (build_attack, preset) not there yet")
    kw = dict(n=20, chunk_size=10, attack_fn=None)
    # PGD (random start): resuming after losing a chunk reproduces it exactly
    r = run(tiny, dataset, tmp_path, settings={"steps": 3, "step_size": 0.1}, **kw)
    assert r["settings"]["attack_impl"] == "lit_caps.attacks.build_attack"
    assert r["settings"]["attack_settings"] == {"eps": EPS, "step_size": 0.1, "steps": 3}
    assert max(r["examples"]["linf"]) <= EPS + 1e-5
    result_path(tmp_path, "mnist", "tiny", r["name"]).unlink()
    (chunk_dir(tmp_path, "mnist", "tiny", r["name"], r["settings_hash"]) / "chunk_00001.pt").unlink()
    same_outcomes(run(tiny, dataset, tmp_path, settings={"steps": 3, "step_size": 0.1}, **kw), r)
    # targeted R-PGD with beta: best-iterate >= last-iterate undetected
    rr = run(tiny, dataset, tmp_path, targeted=True, attack="r_pgd", beta=0.5, settings={"steps": 3}, **kw)
    assert rr["name"] == "r_pgd-targeted-beta0.5-eps0.3-n20-s0" and rr["settings"]["beta"] == 0.5
    sm = rr["summary"]
    assert sm["undetected_rate"] <= sm["best_undetected_rate"]
    # CW-L2 has no eps: "epsnone" in the name
    cw = evaluate_attack(tiny[0], dataset, "cw", dataset_name="mnist", model_name="tiny", targeted=False, eps=None,
                         n=10, threshold=tiny[2], val_distances=tiny[1], out_dir=tmp_path, chunk_size=10,
                         settings={"steps": 10, "binary_search_steps": 1, "initial_const": 1.0}, progress=False)
    assert cw["name"] == "cw-untargeted-epsnone-n10-s0" and cw["settings"]["eps"] is None
    assert cw["summary"]["linf_violations"] is None


def test_cw_with_linf_settings_given(tiny, dataset, tmp_path):
    """`lit-caps evaluate --attacks pgd cw --eps 0.2 --step-size 0.01`: CW (no L-inf bound) ignores
    eps / step_size instead of failing; its result is named and hashed as without them."""
    kw = dict(dataset_name="mnist", model_name="tiny", n=10, threshold=tiny[2], val_distances=tiny[1],
              out_dir=tmp_path, chunk_size=10, progress=False)
    cw_settings = {"steps": 10, "binary_search_steps": 2, "initial_const": 1.0}
    with pytest.warns(UserWarning, match="no L-inf bound"):
        r = evaluate_attack(tiny[0], dataset, "cw", targeted=True, eps=0.2,
                            settings=dict(cw_settings, step_size=0.01), **kw)
    assert r["status"] == "complete" and r["name"] == "cw-targeted-epsnone-n10-s0"
    s = r["settings"]
    assert s["eps"] is None and "step_size" not in s["attack_settings"]
    assert s["attack_settings"]["steps"] == 10 and s["attack_settings"]["binary_search_steps"] == 2
    assert r["summary"]["linf_violations"] is None
    assert 0 <= r["summary"]["undetected_rate"] <= r["summary"]["best_undetected_rate"] <= r["summary"]["success_rate"]
    assert all(it <= 20 for it in r["examples"]["iterations"])
    # the same attack without the ignored settings is the same result (cached, not recomputed)
    mtime = Path(r["path"]).stat().st_mtime_ns
    again = evaluate_attack(tiny[0], dataset, "cw", targeted=True, eps=None, settings=cw_settings, **kw)
    assert again["settings_hash"] == r["settings_hash"] and Path(r["path"]).stat().st_mtime_ns == mtime
    # FGSM has no `steps` (one step): dropped with a warning; an unknown setting is a clear error
    with pytest.warns(UserWarning, match="steps"):
        f = evaluate_attack(tiny[0], dataset, "fgsm", targeted=False, eps=None, settings={"steps": 7}, **kw)
    assert f["settings"]["attack_settings"] == {"eps": 0.3, "step_size": 0.05}
    with pytest.raises(ValueError, match="does not take"):
        evaluate_attack(tiny[0], dataset, "pgd", targeted=False, eps=None, settings={"stepz": 7}, **kw)


def test_black_box_transfer(tiny, tiny_other, dataset, tmp_path):
    """Crafted on a source model, measured on the target: source == target reproduces the
    white-box numbers; another source gives other outcomes; the source is part of the identity."""
    model, val, thr = tiny
    kw = dict(n=20, chunk_size=10, attack_fn=None, settings={"steps": 5, "step_size": 0.05}, targeted=True,
              attack="r_pgd", beta=0.7)
    wb = run(tiny, dataset, tmp_path, **kw)
    same = run(tiny, dataset, tmp_path, source_model=model, source_threshold=thr, source_checkpoint="a/last.ckpt",
               source_name="cnn_cr", **kw)
    assert same["name"] == wb["name"] + f"-bb{model_hash(model)[:8]}"
    assert same["settings_hash"] != wb["settings_hash"] and Path(same["path"]).is_file()
    # the same outcomes; the first undetected iteration is the source's count, so a transfer has none
    assert "first_undetected" in wb["examples"] and "first_undetected" not in same["examples"]
    assert same["examples"] == {k: v for k, v in wb["examples"].items() if k != "first_undetected"}
    assert same["summary"] == wb["summary"]
    s = same["settings"]
    # a checkpoint path is recorded relative to the store and read back resolved from where the file is
    assert (s["source_model_hash"], s["source_threshold"], s["source_checkpoint"], s["source_model"]) == \
        (model_hash(model), thr, os.path.abspath("a/last.ckpt"), "cnn_cr")
    assert json.loads(Path(same["path"]).read_text())["settings"]["source_checkpoint"] == \
        Path(os.path.relpath(os.path.abspath("a/last.ckpt"), tmp_path)).as_posix()
    assert "source_model_hash" not in wb["settings"]  # white-box identities unchanged
    # another source (same architecture, other seed): other adversarial examples, same clean side
    src, _, src_thr = tiny_other
    bb = run(tiny, dataset, tmp_path, source_model=src, source_threshold=src_thr, **kw)
    assert bb["name"].endswith(f"-bb{model_hash(src)[:8]}") and bb["name"] != same["name"]
    assert bb["settings"]["threshold"] == thr and bb["settings"]["source_threshold"] == src_thr
    assert bb["settings"]["model_hash"] == model_hash(model)  # measured on the target
    for k in ("index", "y", "target", "clean_pred", "clean_dist"):
        assert bb["examples"][k] == wb["examples"][k], k
    assert bb["examples"]["adv_dist"] != wb["examples"]["adv_dist"]
    # the outcomes are the target's: re-measure the transferred examples' rates from their records
    ex = bb["examples"]
    ref = detection_rates(torch.tensor(ex["adv_pred"]), torch.tensor(ex["y"]), torch.tensor(ex["adv_dist"]), thr,
                          torch.tensor(ex["target"]))
    assert bb["summary"]["success_rate"] == pytest.approx(ref["success_rate"])
    assert bb["summary"]["undetected_rate"] == pytest.approx(ref["undetected_rate"])
    # the checkpoint path is recorded, not hashed; the source threshold is hashed
    mtime = Path(bb["path"]).stat().st_mtime_ns
    again = run(tiny, dataset, tmp_path, source_model=src, source_threshold=src_thr, source_checkpoint="copy.ckpt",
                **kw)
    assert again["settings_hash"] == bb["settings_hash"] and Path(bb["path"]).stat().st_mtime_ns == mtime
    nothr = run(tiny, dataset, tmp_path, source_model=src, source_threshold=None, **kw)
    assert nothr["settings_hash"] != bb["settings_hash"] and nothr["name"] == bb["name"]
    assert nothr["examples"]["best_undetected"] == nothr["examples"]["undetected"]  # no best-iterate tracking
    assert nothr["examples"]["adv_dist"] == bb["examples"]["adv_dist"]  # the threshold changes only the bookkeeping


# -- integrity: checksums, damaged files, files from before checksums -------------------------------
def _copy_ref(reference, tmp_path) -> tuple[Path, Path, Path]:
    """A copy of the reference results folder: (out, untargeted result file, its chunk folder)."""
    out = tmp_path / "res"
    shutil.copytree(reference[1], out)
    r = reference[0][False]
    cdir = chunk_dir(out, "mnist", "tiny", r["name"], r["settings_hash"])
    return out, result_path(out, "mnist", "tiny", r["name"]), cdir


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "checksum mismatch"])
def test_damaged_chunk_is_moved_aside_and_recomputed(tiny, dataset, reference, tmp_path, capfd, damage):
    out, path, cdir = _copy_ref(reference, tmp_path)
    ref = reference[0][False]
    path.unlink()
    chunk = cdir / "chunk_00001.pt"
    data = chunk.read_bytes()
    if damage == "truncated":
        chunk.write_bytes(data[: len(data) // 2])
    elif damage == "random bytes":
        chunk.write_bytes(os.urandom(len(data)))
    else:  # a valid file whose numbers were changed: only the checksum tells
        blob = torch.load(chunk, weights_only=True)
        blob["records"]["adv_dist"][0] += 1.0
        torch.save(blob, chunk)
    r = run(tiny, dataset, out)
    assert CALLS["n"] == 1  # only that chunk
    same_outcomes(r, ref)
    err = capfd.readouterr().err
    note = [ln for ln in err.splitlines() if "damaged file" in ln]
    assert len(note) == 1 and str(chunk) in note[0] and "moved to chunk_00001.pt.damaged-" in note[0]
    (aside,) = cdir.glob("chunk_00001.pt.damaged-*")
    assert aside.read_bytes() != chunk.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "checksum mismatch", "legacy, summary mismatch"])
def test_damaged_result_is_moved_aside_and_reassembled(tiny, dataset, reference, tmp_path, capfd, damage):
    """A damaged result file is rebuilt from its chunks (no attack runs) into the same bytes."""
    out, path, _ = _copy_ref(reference, tmp_path)
    ref = reference[0][False]
    original = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(original[: len(original) // 3])
    else:  # valid JSON with a wrong number: one the checksum alone catches; one a legacy file's recount catches
        raw = json.loads(original)
        if damage.startswith("legacy"):
            raw["summary"]["success_rate"] = 0.123
            del raw["sha256"]
            raw["schema"] = 1
        else:
            raw["examples"]["adv_dist"][0] += 1.0
        path.write_text(json.dumps(raw))
    r = run(tiny, dataset, out)
    assert CALLS["n"] == 0
    same_outcomes(r, ref)
    assert path.read_bytes() == original  # assembled twice (here and in the reference): the same file
    err = capfd.readouterr().err
    assert sum("damaged file" in ln and str(path) in ln for ln in err.splitlines()) == 1
    assert len(list(path.parent.glob(path.name + ".damaged-*"))) == 1


def test_result_without_checksum_from_older_code_is_read(tiny, dataset, reference, tmp_path):
    """Schema-1 files (no checksum, absolute paths, as behind the committed reports) are used as
    they are when their summary recounts from their examples; nothing is recomputed or rewritten."""
    from lit_caps.evaluation import load_result

    out, path, _ = _copy_ref(reference, tmp_path)
    ref = reference[0][False]
    raw = json.loads(path.read_text())
    del raw["sha256"]
    raw.update(schema=1, path="/somewhere/else/mnist/tiny/x.json")
    raw["settings"]["checkpoint"] = "/old/runs/mnist/x/checkpoints/last.ckpt"
    path.write_text(json.dumps(raw, indent=1))
    mtime = path.stat().st_mtime_ns
    r = run(tiny, dataset, out)
    assert CALLS["n"] == 0 and path.stat().st_mtime_ns == mtime
    same_outcomes(r, ref)
    assert r["path"] == str(path)  # where it was found, not what it says
    assert r["settings"]["checkpoint"] == "/old/runs/mnist/x/checkpoints/last.ckpt"
    assert load_result(path)["summary"] == ref["summary"]


def test_copied_results_folder_reports_its_own_paths(tiny, dataset, reference, tmp_path):
    """Paths in a result file are relative to the store: a copied folder (README: copy results/
    folders together) gives its own paths, the checkpoint resolved beside it."""
    from lit_caps.evaluation import load_result

    src = tmp_path / "a" / "results"
    r = run(tiny, dataset, src, n=20, checkpoint=str(tmp_path / "a" / "runs" / "m" / "checkpoints" / "last.ckpt"))
    raw = json.loads(Path(r["path"]).read_text())
    assert raw["path"] == "mnist/tiny/pgd-untargeted-eps0.3-n20-s0.json"
    assert raw["settings"]["checkpoint"] == "../runs/m/checkpoints/last.ckpt"
    assert r["settings"]["checkpoint"] == str(tmp_path / "a" / "runs" / "m" / "checkpoints" / "last.ckpt")
    dst = tmp_path / "b" / "deeper" / "results"
    shutil.copytree(src, dst)
    shutil.rmtree(tmp_path / "a")
    moved = load_result(result_path(dst, "mnist", "tiny", r["name"]))
    assert moved["path"] == str(result_path(dst, "mnist", "tiny", r["name"]))
    assert moved["settings"]["checkpoint"] == str(tmp_path / "b" / "deeper" / "runs" / "m" / "checkpoints" /
                                                  "last.ckpt")
    CALLS["n"] = 0
    again = run(tiny, dataset, dst, n=20, checkpoint="elsewhere.ckpt")  # cached: the checkpoint path is not hashed
    assert CALLS["n"] == 0 and again == moved


def test_only_cached_reports_pending(tiny, dataset, tmp_path):
    r = run(tiny, dataset, tmp_path, only_cached=True)
    assert r["status"] == "pending" and r["chunks_done"] == 0 and r["chunks_total"] == 3 and not r["stale"]
    assert CALLS["n"] == 0 and not Path(r["path"]).exists() and r["settings"]["n"] == N
    done = run(tiny, dataset, tmp_path)
    assert run(tiny, dataset, tmp_path, only_cached=True) == done
    other = run(tiny, dataset, tmp_path, only_cached=True, threshold=float(tiny[1].min()))
    assert other["status"] == "pending" and other["stale"] and other["path"] == done["path"]


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler for torch.compile")
def test_compiled_forward_gives_the_same_result(tiny, dataset, tmp_path, monkeypatch):
    """torch.compile'd attack forwards (paper scale's default): same outcomes as eager mode, the
    same identity (settings hash, name), recorded per chunk; the model is eager again afterwards."""
    from lit_caps.evaluation import compile_requested

    monkeypatch.delenv("LIT_CAPS_COMPILE", raising=False)
    assert not compile_requested(None)
    monkeypatch.setenv("LIT_CAPS_COMPILE", "1")
    assert compile_requested(None) and not compile_requested(False)
    kw = dict(n=8, chunk_size=4, attack_fn=None, attack="r_pgd", beta=0.5, settings={"steps": 3, "step_size": 0.05})
    eager = run(tiny, dataset, tmp_path / "eager", compile=False, **kw)
    # a CNN is left eager (compile does not speed it up); the tiny CNN stands in for a CapsNet here
    assert run(tiny, dataset, tmp_path / "cnn", **kw)["run"]["compiled_chunks"] == 0
    monkeypatch.setattr(tiny[0], "compile_helps", True, raising=False)
    compiled = run(tiny, dataset, tmp_path / "compiled", **kw)  # from LIT_CAPS_COMPILE
    assert eager["run"]["compiled_chunks"] == 0 and compiled["run"]["compiled_chunks"] == 2
    assert compiled["settings_hash"] == eager["settings_hash"] and compiled["name"] == eager["name"]
    for k in ("success", "undetected", "best_undetected", "adv_pred"):
        assert compiled["examples"][k] == eager["examples"][k], k
    assert max(abs(a - b) for a, b in zip(compiled["examples"]["adv_dist"], eager["examples"]["adv_dist"])) < 1e-3
    assert getattr(tiny[0], "_compiled_call_impl", None) is None


# -- the query of result files (find_results, parse_result_name) ------------------------------------
NAME_CASES = [  # result_name's arguments: attack, targeted, eps, n, seed, beta, source_hash
    ("pgd", False, 0.3, 40, 0, None, None),
    ("r_pgd", True, 0.3, 200, 0, 0.5, None),
    ("r_pgd", False, 0.0313725, 1000, 7, 0.123456789, None),  # written with 6 significant digits
    ("r_fgsm", True, 1e-05, 3, 12, 1e-05, None),  # exponents with a minus sign: "1e-05"
    ("r_bim", False, 0.3, 10, 0, 2e6, None),  # "2e+06"
    ("cw", False, None, 50, 1, None, None),  # unbounded: eps "none"
    ("r_pgd", True, 0.3, 200, 0, 0.0, "0123456789abcdef"),  # black-box: "-bb01234567"
    ("pgd", False, 0.3, 40, 3, None, "fedcba98"),
]


@pytest.mark.parametrize("case", NAME_CASES)
def test_result_name_round_trips_through_parse_result_name(case):
    attack, targeted, eps, n, seed, beta, source = case
    name = result_name(attack, targeted, eps, n, seed, beta, source_hash=source)
    got = parse_result_name(name)
    assert got is not None, name
    assert result_name(**got) == name
    assert parse_result_name(name + ".json") == got
    assert (got["attack"], got["targeted"], got["n"], got["seed"]) == (attack, targeted, n, seed)
    assert got["source_hash"] == (None if source is None else source[:8])
    for k, v in (("eps", eps), ("beta", beta)):
        assert got[k] == (None if v is None else float(f"{v:g}")), k


@pytest.mark.parametrize("name", ["", "foo", "pgd-untargeted-eps0.3-n40", "pgd-sideways-eps0.3-n40-s0",
                                  "pgd-untargeted-epsx-n40-s0", "pgd-untargeted-eps0.3-n40-s0-extra",
                                  "pgd-untargeted-eps0.3-n40-s0.json.damaged-20240101-120000",
                                  "pgd-untargeted-betax-eps0.3-n40-s0"])
def test_parse_result_name_rejects_other_names(name):
    assert parse_result_name(name) is None


def _touch_result(folder: Path, *args, **kw) -> Path:
    p = folder / f"{result_name(*args, **kw)}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("{}")
    return p


def test_find_results_lists_every_beta_of_these_settings_only(tmp_path):
    d = tmp_path / "mnist" / "cnn_cr-mnist-s0-abc"
    want = {b: _touch_result(d, "r_pgd", True, 0.3, 200, 0, beta=b) for b in (None, 2.0, 0.5, 1e-05, 0.123456789)}
    for args in [("r_pgd", False, 0.3, 200, 0), ("r_pgd", True, 0.2, 200, 0), ("r_pgd", True, 0.3, 100, 0),
                 ("r_pgd", True, 0.3, 200, 1), ("r_bim", True, 0.3, 200, 0), ("pgd", True, 0.3, 200, 0)]:
        _touch_result(d, *args, beta=0.5)  # other settings: not listed
    _touch_result(d, "r_pgd", True, 0.3, 200, 0, beta=0.5, source_hash="0123456789abcdef")  # black-box
    _touch_result(d / "superseded", "r_pgd", True, 0.3, 200, 0, beta=3.0)  # kept aside: not listed
    (d / "notes.json").write_text("{}")
    (d / f"{result_name('r_pgd', True, 0.3, 200, 0, beta=4.0)}.json.damaged-20240101").write_text("x")
    (d / f"{result_name('r_pgd', True, 0.3, 200, 0, beta=5.0)}.json").mkdir()  # a folder, not a file

    q = dict(attack="r_pgd", targeted=True, eps=0.3, n=200, seed=0)
    got = find_results(tmp_path, "mnist", "cnn_cr-mnist-s0-abc", **q)
    assert got == [(None, want[None]), (1e-05, want[1e-05]), (0.123457, want[0.123456789]), (0.5, want[0.5]),
                   (2.0, want[2.0])]
    bb = find_results(tmp_path, "mnist", "cnn_cr-mnist-s0-abc", source_hash="0123456789abcdef", **q)
    assert [b for b, _ in bb] == [0.5] and bb[0][1].name.endswith("-bb01234567.json")
    # eps as result_name writes it: 0.30000001 and 0.3 are the same name
    assert find_results(tmp_path, "mnist", "cnn_cr-mnist-s0-abc", **{**q, "eps": 0.30000001}) == got
    assert find_results(tmp_path, "mnist", "other-model", **q) == []
    assert find_results(tmp_path / "nowhere", "mnist", "cnn_cr-mnist-s0-abc", **q) == []


def test_find_results_unbounded_attack(tmp_path):
    p = _touch_result(tmp_path / "mnist" / "m", "cw", False, None, 50, 0)
    _touch_result(tmp_path / "mnist" / "m", "cw", False, 0.3, 50, 0)
    assert find_results(tmp_path, "mnist", "m", attack="cw", targeted=False, eps=None, n=50, seed=0) == [(None, p)]


def test_find_results_finds_what_evaluate_attack_wrote(tiny, dataset, tmp_path):
    written = {b: run(tiny, dataset, tmp_path, n=20, beta=b) for b in (None, 0.5, 0.25)}
    assert all(r["status"] == "complete" for r in written.values())
    got = find_results(tmp_path, "mnist", "tiny", attack="pgd", targeted=False, eps=EPS, n=20, seed=0)
    assert got == [(b, Path(written[b]["path"])) for b in (None, 0.25, 0.5)]


def test_evaluation_modules_import_their_siblings_directly():
    """Inside lit_caps.evaluation: no import through the package (an import circle through its
    __init__) and no private name of another module."""
    import ast

    import lit_caps.evaluation as pkg

    folder = Path(pkg.__file__).parent
    mods = sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")
    assert {p.stem for p in mods} >= {"evaluate", "results", "claims", "chunks", "settings", "forward"}
    for p in mods:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                where = f"{p.name}:{node.lineno}"
                assert node.module != "lit_caps.evaluation" and not (node.level == 1 and node.module is None), where
                if node.level == 1:
                    assert not any(a.name.startswith("_") for a in node.names), where
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name

