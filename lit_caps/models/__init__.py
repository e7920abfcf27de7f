"""Model registry: every architecture implements :class:`ReconstructionClassifier`."""
from __future__ import annotations

from .base import Decoder, ModelOutput, ReconstructionClassifier, mask_poses
from .capsnet import CapsNet, margin_loss, squash
from .cnn import CNN_CR, CNN_R, GroupedCNN


def _capsnet_all(**kw):
    return CapsNet(decoder_input="all", **kw)


def _capsnet_winner(**kw):
    return CapsNet(decoder_input="winner", **kw)


MODELS = {
    "capsnet": CapsNet,
    "cnn_cr": CNN_CR,
    "cnn_r": CNN_R,
    # CIFAR-10 variants of Section 5.4 (Fig. 3)
    "capsnet_all": _capsnet_all,
    "capsnet_winner": _capsnet_winner,
}

PAPER_NAMES = {"capsnet": "CapsNet", "cnn_cr": "CNN+CR", "cnn_r": "CNN+R",
               "capsnet_all": "CapsNet All", "capsnet_winner": "DeepCaps-style"}


def build_model(name: str, **arch) -> ReconstructionClassifier:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**arch)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "PAPER_NAMES", "build_model", "count_parameters", "CapsNet", "GroupedCNN", "CNN_CR",
           "CNN_R", "ModelOutput", "ReconstructionClassifier", "Decoder", "mask_poses", "margin_loss", "squash"]
