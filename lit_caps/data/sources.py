"""Where the datasets are on disk and how their files are read: the data root, one-line errors that
name a missing file and the fix, and the loaders (MNIST / Fashion-MNIST IDX files, SVHN .mat, CIFAR-10
batches or PNG folders) returning uint8 images [N, C, H, W] and int64 labels."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10", "mnist_c")
IMAGE_SHAPES = {
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "mnist_c": (1, 28, 28),
    "svhn": (3, 32, 32),
    "cifar10": (3, 32, 32),
}


class DataNotFoundError(FileNotFoundError, UserError):
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

IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format: magic 0x0000 08 <ndim>, big-endian dims, data)
    as a uint8 tensor. Used where torchvision is not installed (the GPU check's machine)."""
    data = Path(path).read_bytes()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return arr.reshape(dims)


def load_idx(name: str, cls_name: str, folder: str, root: Path, train: bool, download: bool):
    files = [f"{folder}/raw/{f}" for f in IDX_FILES]
    missing = _missing(root, files)
    if missing and not download:
        _raise_missing(name, root, files, missing, _DOWNLOAD_HINT)
    try:
        import torchvision.datasets as tvd
    except ImportError:  # torchvision is not installed: the same IDX files, read here
        if missing:
            raise
        prefix = "train" if train else "t10k"
        images = read_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte")
        labels = read_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte")
        return images.unsqueeze(1).contiguous(), labels.long()
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
