"""One LightningDataModule for MNIST, Fashion-MNIST, SVHN, CIFAR-10 and corrupted MNIST.

Everything is held in memory as uint8 tensors [N, C, H, W]; batches are float in [0, 1] (models
normalise inside). Each example is returned as ``(x, y, index)``: the index lets evaluation gather
per-example results across DDP ranks and drop the duplicates a DistributedSampler pads with.

Data root: ``root`` argument, else ``$LIT_CAPS_DATA``, else ``./data``. Generated data (the
corrupted MNIST) is cached under ``$LIT_CAPS_CACHE`` (default ``~/.cache/lit_caps``), never inside
the data root, which may be read-only.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .io import atomic_write

DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10", "mnist_c")
IMAGE_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "mnist_c": (1, 28, 28),
    "svhn": (3, 32, 32),
    "cifar10": (3, 32, 32),
}
#: Appendix C: l_inf bound of the attacks per dataset.
EPSILON = {"mnist": 0.3, "fashion_mnist": 0.1, "svhn": 0.1, "cifar10": 8 / 255, "mnist_c": 0.3}


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing; the message says what is expected and how to get it."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root if root is not None else os.environ.get("LIT_CAPS_DATA", "./data")).expanduser()


def cache_root() -> Path:
    return Path(os.environ.get("LIT_CAPS_CACHE", Path.home() / ".cache" / "lit_caps")).expanduser()


def _missing(root: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (root / f).is_file()]


def _raise_missing(name: str, root: Path, files: list[str], missing: list[str], how: str) -> None:
    raise DataNotFoundError(
        f"{name}: dataset files not found under {root.resolve()}.\n"
        f"  expected: {', '.join(files)}\n"
        f"  missing:  {', '.join(missing)}\n"
        f"  fix: {how}\n"
        f"  (the data root comes from the LIT_CAPS_DATA environment variable or `data.root=...`; default ./data)"
    )


_DOWNLOAD_HINT = "rerun with `data.download=true` (needs internet) or copy the files there"

_IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def _load_idx(name: str, cls_name: str, folder: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    files = [f"{folder}/raw/{f}" for f in _IDX]
    missing = _missing(root, files)
    if missing and not download:
        _raise_missing(name, root, files, missing, _DOWNLOAD_HINT)
    ds = getattr(tvd, cls_name)(str(root), train=train, download=download)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.clone().long()


def load_svhn(root: Path, split: str, download: bool = False):
    """torchvision's SVHN loader (.mat files; label 10 -> digit 0 mapping done by torchvision)."""
    import torchvision.datasets as tvd

    fname = f"SVHN/{split}_32x32.mat"
    if not (root / fname).is_file() and not download:
        _raise_missing("svhn", root, ["SVHN/train_32x32.mat", "SVHN/test_32x32.mat"], [fname],
                       _DOWNLOAD_HINT + " (http://ufldl.stanford.edu/housenumbers/, cropped digits format 2)")
    try:
        ds = tvd.SVHN(str(root / "SVHN"), split=split, download=download)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise DataNotFoundError(
            f"svhn: {root / fname} exists but failed torchvision's MD5 check ({e}). "
            f"Delete it and rerun with `data.download=true`, or replace it with the official file."
        ) from e
    return torch.from_numpy(ds.data).contiguous(), torch.as_tensor(ds.labels).long()


def _images_from_folder(folder: Path):
    """An ImageFolder tree (class folders sorted alphabetically = CIFAR-10 indices) -> uint8 tensors."""
    import torchvision.datasets as tvd

    ds = tvd.ImageFolder(str(folder))
    xs = np.stack([np.asarray(ds.loader(p).convert("RGB")) for p, _ in ds.samples])
    ys = torch.tensor([t for _, t in ds.samples], dtype=torch.long)
    return torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous(), ys


def load_cifar10(root: Path, train: bool, download: bool = False):
    """CIFAR-10 from torchvision's pickled batches (``cifar-10-batches-py``) or PNG class folders
    (``CIFAR10_png/{train,test}/<class>/*.png``, how ../shared/data holds it)."""
    import torchvision.datasets as tvd

    split = "train" if train else "test"
    png = root / "CIFAR10_png" / split
    if png.is_dir():
        return _images_from_folder(png)
    if (root / "cifar-10-batches-py").is_dir() or download:
        ds = tvd.CIFAR10(str(root), train=train, download=download)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets).long()
    _raise_missing("cifar10", root, [f"CIFAR10_png/{split}/<class>/*.png", "or cifar-10-batches-py/"],
                   [f"CIFAR10_png/{split}"],
                   _DOWNLOAD_HINT + "; for a test-split-only copy use `data.cifar10_split_test=true`")


class ImageTensorDataset(Dataset):
    """uint8 images [N,C,H,W] + labels; yields (float image in [0,1], label, index)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, hflip: bool = False):
        self.images, self.labels, self.shift, self.hflip = images, labels, shift, hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255)
        if self.shift:
            s = self.shift
            x = F.pad(x, (s, s, s, s))
            dx, dy = torch.randint(0, 2 * s + 1, (2,)).tolist()
            x = x[:, dy:dy + self.images.shape[2], dx:dx + self.images.shape[3]]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i]), i


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/validation split: a seeded permutation, the first ``val_size`` for validation.

    The validation part is held out of training; it later sets the detection threshold.
    """
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


class CapsDataModule(L.LightningDataModule):
    """Train / validation / test for one of ``mnist``, ``fashion_mnist``, ``svhn``, ``cifar10``, ``mnist_c``.

    Args:
        name: dataset key.
        root: data root (default: $LIT_CAPS_DATA or ./data).
        batch_size, eval_batch_size, num_workers.
        val_size: examples held out of the training split for validation (fixed ``split_seed``).
        shift: random translation augmentation in pixels for training (Sabour et al.: 2).
        hflip: random horizontal flips (p = 0.5) of training images (label-preserving for
            Fashion-MNIST and CIFAR-10, not for digits).
        download: let torchvision download missing files (needs internet).
        corruption: for ``mnist_c``, the corruption of the test split (see lit_caps.corruptions);
            train and validation stay clean MNIST (the threshold comes from clean validation data).
        corruption_seed: seed of the per-image corruption randomness.
        cifar10_split_test: no CIFAR-10 train split on disk: split the 10,000 test images into
            train (``cifar10_test_holdout`` kept as test) - a documented stand-in, never silent.
        limit_train: use only the first N training examples (smoke runs).
    """

    def __init__(
        self,
        name: str = "mnist",
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 1234,
        shift: int = 2,
        hflip: bool = False,
        download: bool = False,
        corruption: str = "identity",
        corruption_seed: int = 0,
        cifar10_split_test: bool = False,
        cifar10_test_holdout: int = 2000,
        limit_train: int | None = None,
    ):
        super().__init__()
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        self.save_hyperparameters()
        self.name = name
        self.root = data_root(root)
        self.image_shape = IMAGE_SHAPES[name]
        self.num_classes = 10
        self._loaded = False

    # -- loading -------------------------------------------------------------------------------
    def _load_split(self, train: bool):
        n, r, dl = self.name, self.root, self.hparams.download
        if n in ("mnist", "mnist_c"):
            return _load_idx(n, "MNIST", "MNIST", r, train, dl)
        if n == "fashion_mnist":
            return _load_idx(n, "FashionMNIST", "FashionMNIST", r, train, dl)
        if n == "svhn":
            return load_svhn(r, "train" if train else "test", dl)
        if self.hparams.cifar10_split_test:
            x, y = load_cifar10(r, False, dl)
            k = self.hparams.cifar10_test_holdout
            tr, te = split_indices(len(y), k, self.hparams.split_seed + 1)
            idx = tr if train else te
            return x[idx], y[idx]
        return load_cifar10(r, train, dl)

    def corrupted_test(self, images: torch.Tensor) -> torch.Tensor:
        """The MNIST test split under ``corruption``, generated once and cached on disk."""
        from . import corruptions

        name = corruptions.ALIASES.get(self.hparams.corruption, self.hparams.corruption)
        corruptions.get_corruption(name)  # validates the name with a clear error
        if name == "identity":
            return images
        digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:12]
        path = cache_root() / "mnist_c" / f"{name}_seed{self.hparams.corruption_seed}_{digest}.npy"
        if path.is_file():
            return torch.from_numpy(np.load(path)).unsqueeze(1)
        out = corruptions.corrupt_images(images[:, 0].numpy(), name, seed=self.hparams.corruption_seed,
                                         progress=True)
        atomic_write(path, lambda f: np.save(f, out))
        return torch.from_numpy(out).unsqueeze(1)

    def setup(self, stage: str | None = None) -> None:
        if self._loaded:
            return
        xtr, ytr = self._load_split(True)
        xte, yte = self._load_split(False)
        if self.name == "mnist_c":
            xte = self.corrupted_test(xte)
        val = self.hparams.val_size
        if not 0 < val < len(ytr):
            raise ValueError(f"data.val_size={val} must be between 1 and the training split size {len(ytr)}")
        tr_idx, va_idx = split_indices(len(ytr), val, self.hparams.split_seed)
        if self.hparams.limit_train:
            tr_idx = tr_idx[: self.hparams.limit_train]
        self.train_set = ImageTensorDataset(xtr[tr_idx], ytr[tr_idx], shift=self.hparams.shift,
                                            hflip=self.hparams.hflip)
        self.val_set = ImageTensorDataset(xtr[va_idx], ytr[va_idx])
        self.test_set = ImageTensorDataset(xte, yte)
        self.val_indices = va_idx
        self._loaded = True

    # -- loaders -------------------------------------------------------------------------------
    def _loader(self, ds, shuffle: bool, batch_size: int):
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0, drop_last=False)

    def train_dataloader(self):
        return self._loader(self.train_set, True, self.hparams.batch_size)

    def val_dataloader(self):
        return self._loader(self.val_set, False, self.hparams.eval_batch_size)

    def test_dataloader(self):
        return self._loader(self.test_set, False, self.hparams.eval_batch_size)

    def test_subset(self, n: int | None, seed: int = 0) -> Subset | ImageTensorDataset:
        """A fixed, seeded subset of N test examples (all of them when n is None or >= size)."""
        self.setup()
        if n is None or n >= len(self.test_set):
            return self.test_set
        idx = np.sort(np.random.default_rng(seed).permutation(len(self.test_set))[:n])
        return Subset(self.test_set, idx.tolist())
