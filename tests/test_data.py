"""CapsDataModule on real MNIST / Fashion-MNIST / CIFAR-10 PNGs, synthetic SVHN .mat, MNIST-C."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_caps.data import CapsDataModule, DataNotFoundError, split_indices


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets_splits(data_root, name):
    dm = CapsDataModule(name, root=str(data_root), val_size=5000)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    x, y, i = dm.test_set[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert isinstance(y, int) and i == 3
    xb, yb, ib = next(iter(dm.val_dataloader()))
    assert xb.shape == (500, 1, 28, 28) and ib.tolist() == list(range(500))
    # the validation split is held out of training, and the same every time
    dm2 = CapsDataModule(name, root=str(data_root), val_size=5000)
    dm2.setup()
    assert torch.equal(dm.val_set.images, dm2.val_set.images)
    tr, va = split_indices(60000, 5000, 1234)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 60000
    assert np.array_equal(va, dm.val_indices)


def test_shift_augmentation_only_in_training(data_root):
    dm = CapsDataModule("mnist", root=str(data_root), shift=2)
    dm.setup()
    torch.manual_seed(0)
    raw = dm.train_set.images[0].float() / 255
    shifted = [dm.train_set[0][0] for _ in range(20)]
    assert any(not torch.equal(s, raw) for s in shifted)
    assert all(abs(s.sum() - raw.sum()) < 1e-3 for s in shifted)  # digits are inside the 2-px border
    assert torch.equal(dm.val_set[0][0], dm.val_set.images[0].float() / 255)


def test_missing_data_gives_one_clear_error(tmp_path):
    for name in ["mnist", "fashion_mnist", "svhn", "cifar10"]:
        dm = CapsDataModule(name, root=str(tmp_path))
        with pytest.raises(DataNotFoundError) as e:
            dm.setup()
        msg = str(e.value)
        assert name in msg and str(tmp_path.resolve()) in msg and "expected" in msg
        assert "data.download=true" in msg and "LIT_CAPS_DATA" in msg


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIT_CAPS_DATA", str(tmp_path / "elsewhere"))
    dm = CapsDataModule("mnist")
    assert dm.root == tmp_path / "elsewhere"
    with pytest.raises(DataNotFoundError, match="elsewhere"):
        dm.setup()


def test_svhn_real_loader_on_a_small_mat_file(tmp_path, monkeypatch):
    """torchvision's SVHN parsing and 10 -> 0 label mapping on a file in its format; only the MD5
    integrity check (of the official file) is bypassed."""
    import scipy.io
    import torchvision.datasets as tvd

    rng = np.random.default_rng(0)
    folder = tmp_path / "SVHN"
    folder.mkdir()
    files = {}
    for split, n in [("train", 6000), ("test", 40)]:
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # 10 stands for digit 0
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": X, "y": y})
        files[split] = (X, y)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    dm = CapsDataModule("svhn", root=str(tmp_path), val_size=1000)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (5000, 1000, 40)
    X, y = files["test"]
    assert torch.equal(dm.test_set.images, torch.from_numpy(X).permute(3, 2, 0, 1))  # torchvision's layout
    expected = torch.from_numpy(y[:, 0].astype(np.int64)) % 10
    assert torch.equal(dm.test_set.labels, expected) and int(dm.test_set.labels.max()) <= 9
    x, label, _ = dm.test_set[0]
    assert x.shape == (3, 32, 32) and x.max() <= 1


def test_svhn_md5_failure_is_explained(tmp_path):
    import scipy.io

    (tmp_path / "SVHN").mkdir()
    for split in ("train", "test"):
        scipy.io.savemat(tmp_path / "SVHN" / f"{split}_32x32.mat",
                         {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(DataNotFoundError, match="MD5"):
        CapsDataModule("svhn", root=str(tmp_path)).setup()


def test_cifar10_png_folders(data_root):
    if not (data_root / "CIFAR10_png" / "test").is_dir():
        pytest.skip("no CIFAR10_png/test under the data root")
    dm = CapsDataModule("cifar10", root=str(data_root), cifar10_split_test=True, cifar10_test_holdout=2000,
                        val_size=1000)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7000, 1000, 2000)
    x, y, _ = dm.test_set[0]
    assert x.shape == (3, 32, 32)
    counts = torch.bincount(torch.cat([dm.train_set.labels, dm.val_set.labels, dm.test_set.labels]), minlength=10)
    assert counts.tolist() == [1000] * 10  # ImageFolder's alphabetical classes = CIFAR-10 indices, all used once
    mean = torch.cat([dm.train_set.images, dm.test_set.images]).float().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.4942, 0.4851, 0.4504]), atol=2e-3)  # published test-split stats
    if not (data_root / "CIFAR10_png" / "train").is_dir():
        with pytest.raises(DataNotFoundError, match="cifar10_split_test"):
            CapsDataModule("cifar10", root=str(data_root)).setup()


def test_mnist_c_generated_once_and_cached(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_CAPS_CACHE", str(tmp_path / "cache"))
    dm = CapsDataModule("mnist_c", root=str(data_root), corruption="inverse")
    dm.setup()
    clean = CapsDataModule("mnist", root=str(data_root))
    clean.setup()
    assert torch.equal(dm.test_set.images, 255 - clean.test_set.images)
    assert torch.equal(dm.val_set.images, clean.val_set.images)  # the threshold comes from clean validation data
    cached = list((tmp_path / "cache" / "mnist_c").glob("inverse_seed0_*.npy"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    dm2 = CapsDataModule("mnist_c", root=str(data_root), corruption="inverse")
    dm2.setup()
    assert cached[0].stat().st_mtime_ns == mtime and torch.equal(dm2.test_set.images, dm.test_set.images)
    ident = CapsDataModule("mnist_c", root=str(data_root), corruption="identity")
    ident.setup()
    assert torch.equal(ident.test_set.images, clean.test_set.images)
    with pytest.raises(ValueError, match="gaussian_noise"):
        CapsDataModule("mnist_c", root=str(data_root), corruption="no_such_thing").setup()


def test_test_subset_is_fixed_and_seeded(data_root):
    dm = CapsDataModule("mnist", root=str(data_root))
    a, b, c = dm.test_subset(100, seed=0), dm.test_subset(100, seed=0), dm.test_subset(100, seed=1)
    assert a.indices == b.indices and a.indices != c.indices and len(a) == 100
    assert len(dm.test_subset(None)) == 10000


def test_unknown_dataset():
    with pytest.raises(ValueError, match="mnist_c"):
        CapsDataModule("imagenet")


def test_hflip_augmentation_only_in_training(data_root):
    dm = CapsDataModule("fashion_mnist", root=str(data_root), shift=0, hflip=True)
    dm.setup()
    torch.manual_seed(0)
    raw = dm.train_set.images[0].float() / 255
    seen = [dm.train_set[0][0] for _ in range(40)]
    flips = sum(torch.equal(s, raw.flip(-1)) for s in seen)
    assert sum(torch.equal(s, raw) for s in seen) + flips == 40 and 5 < flips < 35
    assert all(dm.train_set[0][1] == int(dm.train_set.labels[0]) for _ in range(5))
    assert torch.equal(dm.val_set[0][0], dm.val_set.images[0].float() / 255)
    assert not CapsDataModule("fashion_mnist", root=str(data_root)).hparams.hflip  # off by default


def test_idx_files_read_without_torchvision_equal_torchvision(data_root, monkeypatch):
    """Where torchvision is not installed (the GPU check's machine), the IDX files are read here: the
    same images and labels as torchvision's loader."""
    import builtins

    from lit_caps.data import load_idx

    x_tv, y_tv = load_idx("mnist", "MNIST", "MNIST", data_root, False, False)
    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    x, y = load_idx("mnist", "MNIST", "MNIST", data_root, False, False)
    assert x.dtype == x_tv.dtype and y.dtype == y_tv.dtype
    assert torch.equal(x, x_tv) and torch.equal(y, y_tv) and x.shape == (10000, 1, 28, 28)


def test_read_idx_rejects_other_files(tmp_path):
    from lit_caps.data import read_idx

    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"PK\x03\x04not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
