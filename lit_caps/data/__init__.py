"""Data: one LightningDataModule for every dataset (:mod:`.datamodule`) and the generated corrupted
MNIST (:mod:`.corruptions`, MNIST-C)."""
from .datamodule import (DATASETS, IDX_FILES, IMAGE_SHAPES, CapsDataModule, DataNotFoundError, EpochSampler, ImageTensorDataset,
                         ResumableDataLoader, cache_root, data_root, load_cifar10, load_svhn, mix64, split_indices)

__all__ = ["DATASETS", "IDX_FILES", "IMAGE_SHAPES", "CapsDataModule", "DataNotFoundError", "EpochSampler", "ImageTensorDataset",
           "ResumableDataLoader", "cache_root", "data_root", "load_cifar10", "load_svhn", "mix64", "split_indices"]
