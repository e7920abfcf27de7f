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

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..io import atomic_write
from .sources import DATASETS, IMAGE_SHAPES, cache_root, data_root, load_cifar10, load_idx, load_svhn

_M64 = (1 << 64) - 1


def mix64(*words: int) -> int:
    """A well-mixed 64-bit value determined by ``words`` alone (splitmix64 rounds): the seed of the
    random draws at one position of training, e.g. ``mix64(seed, epoch)``."""
    h = 0
    for w in words:
        h = ((h ^ (int(w) & _M64)) + 0x9E3779B97F4A7C15) & _M64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _M64
        h ^= h >> 31
    return h


class ImageTensorDataset(Dataset):
    """uint8 images [N,C,H,W] + labels; yields (float image in [0,1], label, index).

    Augmentation (``shift``: a translation uniform in [-shift, shift] on each axis, zero padded;
    ``hflip``: a horizontal flip with p = 0.5). The training loader indexes with ``(index, stream)``
    keys (:class:`EpochSampler`, ``stream = mix64(seed, epoch)``): the draws then come from
    ``mix64(stream, index)``, a function of the seed, the epoch and the example only, so a resumed run
    draws what the uninterrupted one drew. A plain integer index draws from torch's global RNG.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, hflip: bool = False):
        self.images, self.labels, self.shift, self.hflip = images, labels, shift, hflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, stream = key
            bits = mix64(stream, i) if (self.shift or self.hflip) else 0
        else:
            i, bits = key, None
        x = self.images[i].float().div_(255)
        if self.shift:
            s = self.shift
            x = F.pad(x, (s, s, s, s))
            if bits is None:
                dx, dy = torch.randint(0, 2 * s + 1, (2,)).tolist()
            else:  # two independent 32-bit words, uniform over 0..2s (bias < 1e-9)
                dx, dy = (bits & 0xFFFFFFFF) % (2 * s + 1), (bits >> 32) % (2 * s + 1)
            x = x[:, dy:dy + self.images.shape[2], dx:dx + self.images.shape[3]]
        if self.hflip and (torch.rand(()) < 0.5 if bits is None else mix64(bits, 1) & 1):
            x = x.flip(-1)
        return x, int(self.labels[i]), i


class EpochSampler(DistributedSampler):
    """The training order: a permutation of the training set drawn from ``(seed, epoch)`` alone, a new
    one every epoch (Lightning calls ``set_epoch``), sharded over ranks as DistributedSampler does
    (Lightning then leaves it in place under DDP). Yields ``(index, stream)`` keys with
    ``stream = mix64(seed, epoch)``, from which :class:`ImageTensorDataset` draws the augmentation.
    ``skip``: this rank's first samples to leave out, once (set by :class:`ResumableDataLoader` when
    a run resumes mid-epoch)."""

    def __init__(self, dataset, seed: int = 0, num_replicas: int = 1, rank: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self):
        n = len(self.dataset)
        stream = mix64(self.seed, self.epoch)
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(stream >> 1)).tolist()
        else:
            idx = list(range(n))
        if self.total_size > n:  # pad so that every rank gets the same number (as DistributedSampler)
            idx += (idx * (self.total_size // n + 1))[: self.total_size - n]
        idx = idx[self.rank:self.total_size:self.num_replicas]
        skip, self.skip = self.skip, 0
        for i in idx[skip:]:
            yield (i, stream)


class ResumableDataLoader(DataLoader):
    """The training DataLoader, saved in checkpoints: Lightning stores ``state_dict()`` (the epoch and
    the batches already delivered in it) and, when it resumes a run mid-epoch, calls
    ``load_state_dict`` before iterating, so the run continues with the next batch of the same
    permutation instead of restarting the epoch. Needs an :class:`EpochSampler`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError("ResumableDataLoader needs sampler=EpochSampler(...)")
        self._epoch: int | None = None
        self._delivered = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self):
        epoch, done = self.sampler.epoch, 0
        if self._resume is not None:
            (r_epoch, r_done), self._resume = self._resume, None
            if r_epoch == epoch:
                done = r_done
        self.sampler.skip = done * self.batch_size
        self._epoch, self._delivered = epoch, done
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def _identity(self) -> dict:
        s = self.sampler
        return {"seed": s.seed, "batch_size": self.batch_size, "num_replicas": s.num_replicas, "size": len(s.dataset),
                "shuffle": s.shuffle}

    def state_dict(self) -> dict:
        epoch = self.sampler.epoch if self._epoch is None else self._epoch
        return {"epoch": epoch, "batches": self._delivered, **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        ident = self._identity()
        if {k: state.get(k) for k in ident} != ident:
            import warnings

            warnings.warn(f"the checkpoint's training loader ({ {k: state.get(k) for k in ident} }) differs from this "
                          f"one ({ident}): the interrupted epoch restarts from its first batch", stacklevel=2)
            return
        self.sampler.set_epoch(int(state["epoch"]))
        self._resume = (int(state["epoch"]), int(state["batches"]))


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
        corruption: for ``mnist_c``, the corruption of the test split (see lit_caps.data.corruptions);
            train and validation stay clean MNIST (the threshold comes from clean validation data).
        corruption_seed: seed of the per-image corruption randomness.
        cifar10_split_test: no CIFAR-10 train split on disk: split the 10,000 test images into
            train (``cifar10_test_holdout`` kept as test) - a documented stand-in, never silent.
        limit_train: use only the first N training examples (smoke runs).
        seed: the training order and augmentation seed (``fit`` passes the experiment's seed): each
            epoch's permutation and each example's shift/flip derive from (seed, epoch, index).
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
        seed: int = 0,
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
    def load_split(self, train: bool):
        n, r, dl = self.name, self.root, self.hparams.download
        if n in ("mnist", "mnist_c"):
            return load_idx(n, "MNIST", "MNIST", r, train, dl)
        if n == "fashion_mnist":
            return load_idx(n, "FashionMNIST", "FashionMNIST", r, train, dl)
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
        xtr, ytr = self.load_split(True)
        xte, yte = self.load_split(False)
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
        # its own generator: a loader's iterator draws its base seed from it, not from the global RNG
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0, drop_last=False,
                          generator=torch.Generator().manual_seed(self.hparams.seed))

    def train_dataloader(self):
        """Shuffled every epoch by an :class:`EpochSampler` (seeded by ``seed`` and the epoch), resumable mid-epoch."""
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(self.train_set, seed=self.hparams.seed, num_replicas=world, rank=rank)
        return ResumableDataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler,
                                   num_workers=self.hparams.num_workers, drop_last=False,
                                   persistent_workers=self.hparams.num_workers > 0,
                                   generator=torch.Generator().manual_seed(self.hparams.seed))

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
