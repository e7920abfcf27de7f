"""Shared fixtures. Tests read data from $LIT_CAPS_DATA (CI and the Makefile point it at ../shared/data)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# W&B never goes online from tests; set before wandb is imported anywhere.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The committed store (reports/results, reports/models) is never read or written by tests: an empty
# one for the whole session (module-scoped fixtures run before the per-test one below).
os.environ["LIT_CAPS_STORE"] = tempfile.mkdtemp(prefix="lit_caps_test_store_")
# Tests check the shipped configs (and pin their hashes): a recipe set in the shell must not leak in.
os.environ.pop("LIT_CAPS_RECIPE", None)

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("LIT_CAPS_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST not found under {root} (set LIT_CAPS_DATA to the folder holding MNIST/raw)")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Generated data (MNIST-C) goes to a per-session temp cache, never the user's."""
    monkeypatch.setenv("LIT_CAPS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """Each test has its own, empty committed store (lit_caps.store), never the repository's reports/."""
    from lit_caps import store

    monkeypatch.setenv(store.ROOT_ENV, str(tmp_path / "store"))
    store.forget_restored()
    yield
    store.forget_restored()


@pytest.fixture(scope="session")
def mnist_test(data_root):
    """The first 1000 MNIST test images as float [N,1,28,28] in [0,1], labels [N]."""
    from torchvision.datasets import MNIST

    ds = MNIST(str(data_root), train=False, download=False)
    return ds.data[:1000].float().div(255).unsqueeze(1), ds.targets[:1000].long()


def train_small(name: str, data_root: Path, steps: int = 150, n_train: int = 9600, seed: int = 0, arch=None):
    """Train one default-config model briefly on MNIST (seconds on a CPU); returns (model.eval(), val distances, threshold)."""
    from torchvision.datasets import MNIST

    from lit_caps.config import load_group
    from lit_caps.detection import threshold_at_fpr
    from lit_caps.models import build_model, margin_loss

    torch.manual_seed(seed)
    ds = MNIST(str(data_root), train=True, download=False)
    x = ds.data[: n_train + 1000].float().div(255).unsqueeze(1)
    y = ds.targets[: n_train + 1000].long()
    xtr, ytr, xva, yva = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    model = build_model(name, **(arch or load_group("arch", "mnist")))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, n_train, (64,), generator=g)
        xb, yb = xtr[idx], ytr[idx]
        out = model(xb)
        cls = margin_loss(out.logits, yb) if name.startswith("capsnet") else torch.nn.functional.cross_entropy(out.logits, yb)
        rec = model.reconstruct(out.poses, yb)
        loss = cls + 0.0005 * (rec - xb).flatten(1).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val_d = model.distance(xva)
    return model, val_d, threshold_at_fpr(val_d, 0.05)


@pytest.fixture(scope="session")
def trained_models(data_root):
    """The three paper models (default MNIST config), each trained for 150 steps of 64 images.

    Reaches roughly 90-95% test accuracy: enough for sanity checks, not for reported numbers.
    """
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return {name: train_small(name, data_root) for name in ("capsnet", "cnn_cr", "cnn_r")}


@pytest.fixture(scope="session")
def runs(data_root, tmp_path_factory):
    """A runs root with complete smoke `lit-caps fit` runs of CNN+CR, seeds 0 and 1 (a few seconds each)."""
    from lit_caps.config import compose
    from lit_caps.training.fit import fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    for s in (0, 1):
        fit(compose("cnn_cr", "mnist", train="smoke", seed=s,
                    overrides=["logger.wandb=false", "progress_bar=false", "train.limit_train_batches=30",
                               f"data.root={data_root}"]), runs_root=root)
    return root
