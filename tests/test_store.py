"""The committed store (lit_caps.store): results that come back byte for byte, model cards that load
with weights_only=True and are found when no local run exists, and the trust check."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from lit_caps import store, trust
from lit_caps.config import compose, run_dir_for
from lit_caps.errors import DamagedFileError
from lit_caps.evaluation import evaluate_attack, model_hash
from lit_caps.runs import ensure_run_cfg, find_run, load_trained
from lit_caps.training.fit import fit

OV = ["logger.wandb=false", "progress_bar=false"]


def test_results_round_trip_byte_identical_and_never_over_local(tmp_path):
    out = tmp_path / "results"
    a = out / "quick" / "mnist" / "capsnet" / "r_pgd-targeted-beta0.5-eps0.3-n20-s0.json"
    b = out / "mnist" / "cnn_r" / "pgd-untargeted-eps0.3-n20-s0.json"
    for p, v in ((a, 1), (b, 2)):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"status": "complete", "settings_hash": str(v), "x": [v, 0.1]}, indent=2))
    junk = [out / "quick" / "mnist" / "capsnet" / ".chunks" / "x" / "c.json",
            out / "quick" / "mnist" / "capsnet" / "superseded" / "old.json",
            out / "sweeps" / "s" / "state.json"]
    for p in junk:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    (out / "mnist" / "cnn_r" / "torn.json").write_text('{"status": "compl')
    written = store.save_results(out)
    assert sorted(p.relative_to(store.results_root()).as_posix() for p in written) == [
        "mnist/cnn_r/pgd-untargeted-eps0.3-n20-s0.json.gz",
        "quick/mnist/capsnet/r_pgd-targeted-beta0.5-eps0.3-n20-s0.json.gz"]
    assert store.save_results(out) == []  # unchanged: nothing rewritten
    blob = written[0].read_bytes()
    store.save_results(out)
    assert written[0].read_bytes() == blob  # deterministic bytes (gzip mtime 0)
    fresh = tmp_path / "fresh"
    restored = store.restore_results(fresh, quiet=True)
    assert len(restored) == 2
    assert (fresh / a.relative_to(out)).read_bytes() == a.read_bytes()
    assert (fresh / b.relative_to(out)).read_bytes() == b.read_bytes()
    # a local file is never overwritten, and a second call in the process does nothing
    (fresh / b.relative_to(out)).write_text("{}")
    store.forget_restored()
    assert store.restore_results(fresh, quiet=True) == []
    assert (fresh / b.relative_to(out)).read_text() == "{}"
    # a damaged store file is one clear error naming it
    written[0].write_bytes(b"not gzip")
    store.forget_restored()
    with pytest.raises(DamagedFileError, match="damaged.*git checkout"):
        store.restore_results(tmp_path / "fresh2", quiet=True)


@pytest.fixture(scope="module")
def smoke_run(data_root, tmp_path_factory):
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("runs")
    cfg = compose("capsnet", "mnist", train="smoke", overrides=OV + [f"data.root={data_root}"])
    s = fit(cfg, runs_root=runs)
    return cfg, runs, s


def test_model_card_loads_weights_only_and_is_found_without_a_local_run(smoke_run, tmp_path, data_root):
    cfg, runs, s = smoke_run
    run = run_dir_for(cfg, runs)
    local = load_trained(find_run(runs, "mnist", "capsnet", 0, "mnist"), str(data_root))
    card = store.save_model(run)
    assert card == store.models_root() / "mnist" / run.name
    blob = torch.load(card / store.MODEL_FILE, weights_only=True)  # no pickled code
    assert blob["model_hash"] == local.model_hash and blob["threshold"] == pytest.approx(local.threshold)
    assert json.loads((card / "summary.json").read_text())["checkpoint"] == store.MODEL_FILE
    assert (card / "csv" / "metrics.csv").read_text() == (run / "csv" / "metrics.csv").read_text()
    # no local runs: find_run and ensure_run give the committed model (same weights, same detector)
    empty = tmp_path / "no_runs"
    found = find_run(empty, "mnist", "capsnet", 0, "mnist")
    assert Path(found["checkpoint"]) == card / store.MODEL_FILE
    lr = load_trained(found, str(data_root))
    assert lr.model_hash == local.model_hash and lr.threshold == local.threshold
    assert torch.equal(lr.val_distances, local.val_distances)
    cfg_empty = compose("capsnet", "mnist", train="smoke", overrides=OV + [f"data.root={data_root}"])
    er = ensure_run_cfg(cfg_empty, runs_root=empty, train=True, data_root=str(data_root))
    assert er.model_hash == local.model_hash
    assert not (empty / "mnist").exists()  # nothing trained
    # a local run of the same config wins over the card
    assert Path(find_run(runs, "mnist", "capsnet", 0, "mnist")["checkpoint"]).parent.name == "checkpoints"
    # damaged or edited cards are refused with one line that says how to restore them
    bad = tmp_path / "bad" / "mnist" / run.name
    shutil.copytree(card, bad)
    (bad / store.MODEL_FILE).write_bytes(b"\x00" * 100)
    with pytest.raises(DamagedFileError, match="damaged.*git checkout"):
        store.load_model_card(bad / store.MODEL_FILE)
    edited = dict(blob)
    edited["state_dict"] = {k: (v + 1 if v.is_floating_point() else v) for k, v in blob["state_dict"].items()}
    torch.save(edited, bad / store.MODEL_FILE)
    with pytest.raises(DamagedFileError, match="hash"):
        store.load_model_card(bad / store.MODEL_FILE)


def test_trust_check_agrees_on_a_recomputed_cell_and_catches_an_edited_one(smoke_run, tmp_path, data_root):
    cfg, runs, s = smoke_run
    store.save_model(run_dir_for(cfg, runs))
    lr = load_trained(find_run(tmp_path / "none", "mnist", "capsnet", 0, "mnist"), str(data_root))
    out = tmp_path / "results"
    with torch.inference_mode(False):
        r = evaluate_attack(lr.model, lr.test_set, "r_pgd", dataset_name="mnist", model_name="capsnet", targeted=True,
                            eps=None, beta=0.5, seed=0, n=6, threshold=lr.threshold, val_distances=lr.val_distances,
                            settings={"steps": 3}, out_dir=out / "smoke", chunk_size=3, progress=False)
    assert r["status"] == "complete"
    (saved,) = store.save_results(out)
    checks = trust.verify(paths=[str(saved)], data_root=str(data_root))
    assert [c.status for c in checks] == ["agree"] and checks[0].n == 6 and checks[0].mismatched == 0
    # an edited outcome in the committed file is caught, naming the example
    res = json.loads(gzip.decompress(saved.read_bytes()))
    res["examples"]["undetected"][2] = not res["examples"]["undetected"][2]
    saved.write_bytes(gzip.compress(json.dumps(res).encode()))
    (c,) = trust.verify(paths=[str(saved)], data_root=str(data_root))
    assert c.status == "DISAGREE" and c.mismatched == 1 and "undetected" in c.detail
    # a result whose model is not committed cannot be checked, and says so
    res["settings"]["model_hash"] = "0" * 16
    saved.write_bytes(gzip.compress(json.dumps(res).encode()))
    (c,) = trust.verify(paths=[str(saved)], data_root=str(data_root))
    assert c.status == "no model"
    assert model_hash(lr.model) == lr.model_hash
