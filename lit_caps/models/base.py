"""The one model interface that attacks, detection and reports depend on.

Every architecture (CapsNet, CNN+CR, CNN+R, and the CIFAR-10 capsule variants) is a
:class:`ReconstructionClassifier`:

* ``forward(x) -> ModelOutput(logits [B,K], poses [B,K,D])`` with ``x`` in [0,1] pixel space
  (any normalisation happens inside the model);
* ``reconstruct(poses, classes) -> [B,C,H,W]`` in [0,1], from the pose of ``classes[b]`` for each
  example (class-conditional models) or from all poses (``conditional = False``: CNN+R ignores
  ``classes``);
* ``distance(x, classes=None) -> [B]``: ``||reconstruct(poses(x), classes) - x||_2`` per example,
  the detection statistic d(x) of Section 4.1 (``classes=None`` means the predicted class f(x)).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ModelOutput(NamedTuple):
    logits: Tensor  # [B, K] class scores (capsule lengths for CapsNet, group sums for CNNs)
    poses: Tensor  # [B, K, D] per-class pose vectors


class Decoder(nn.Module):
    """Reconstruction network r(v): FC hidden layers with ReLU, sigmoid output (Sabour et al. 2017).

    Input [B, K*D] (masked or not), output [B, C, H, W] in [0, 1].
    """

    def __init__(self, in_features: int, image_shape: tuple[int, int, int], hidden: tuple[int, ...] = (512, 1024)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
            prev = h
        out = 1
        for s in self.image_shape:
            out *= s
        layers += [nn.Linear(prev, out), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], *self.image_shape)


def mask_poses(poses: Tensor, classes: Tensor) -> Tensor:
    """Zero every pose except that of ``classes[b]`` ([B,K,D] -> [B,K,D])."""
    mask = torch.zeros(poses.shape[:2], dtype=poses.dtype, device=poses.device)
    mask.scatter_(1, classes.long().view(-1, 1), 1.0)
    return poses * mask.unsqueeze(-1)


class ReconstructionClassifier(nn.Module):
    """Base class: a classifier with per-class poses and a reconstruction network."""

    #: True when the reconstruction uses only the chosen class's pose (CapsNet, CNN+CR).
    conditional: bool = True
    #: Whether torch.compile speeds up this model's attack iterations (used by
    #: ``lit_caps.evaluation.compiled_forward``): CapsNet's routing fuses well (1.5-1.9x on CPU);
    #: the CNNs' convolutions and matmuls are library calls already (measured in `make bench`: 0.41-0.47x).
    compile_helps: bool = False
    #: class scores are capsule lengths in (0, 1) (CapsNet), not logits
    scores_are_lengths: bool = False
    num_classes: int
    image_shape: tuple[int, int, int]
    decoder: Decoder

    def __init__(self, image_shape, num_classes: int = 10, mean=None, std=None):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        c = self.image_shape[0]
        mean = torch.zeros(c) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        std = torch.ones(c) if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("input_mean", mean.view(1, c, 1, 1), persistent=False)
        self.register_buffer("input_std", std.view(1, c, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.input_mean) / self.input_std

    # -- the interface (subclasses implement forward(x) -> ModelOutput) -------------------------
    def decoder_input(self, poses: Tensor, classes: Tensor | None) -> Tensor:
        """What the reconstruction network sees: the masked poses (conditional) or all of them."""
        if self.conditional:
            if classes is None:
                raise ValueError("a class-conditional model needs the classes to reconstruct from")
            poses = mask_poses(poses, classes)
        return poses.flatten(1)

    def reconstruct(self, poses: Tensor, classes: Tensor | None = None) -> Tensor:
        return self.decoder(self.decoder_input(poses, classes))

    def distance(self, x: Tensor, classes: Tensor | None = None, out: ModelOutput | None = None) -> Tensor:
        """Per-example L2 distance between x and its reconstruction, both in [0,1] pixel space.

        ``classes=None`` reconstructs from the predicted class. ``out`` reuses a forward pass.
        """
        out = self(x) if out is None else out
        if classes is None:
            classes = out.logits.argmax(1)
        rec = self.reconstruct(out.poses, classes)
        return (rec - x).flatten(1).norm(dim=1)
