"""Data: where the files are and how they are read (:mod:`.sources`), one LightningDataModule for
every dataset (:mod:`.datamodule`) and the generated corrupted MNIST (:mod:`.corruptions`, MNIST-C)."""
from .datamodule import CapsDataModule, EpochSampler, ImageTensorDataset, ResumableDataLoader, mix64, split_indices
from .sources import (DATASETS, IDX_FILES, IMAGE_SHAPES, DataNotFoundError, cache_root, data_root, load_cifar10,
                      load_idx, load_svhn, read_idx)

__all__ = ["DATASETS", "IDX_FILES", "IMAGE_SHAPES", "CapsDataModule", "DataNotFoundError", "EpochSampler", "ImageTensorDataset",
           "ResumableDataLoader", "cache_root", "data_root", "load_cifar10", "load_idx", "load_svhn", "mix64", "read_idx",
           "split_indices"]
