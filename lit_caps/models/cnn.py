"""CNN baselines of Qin et al. 2020, Section 4.1.

CNN+CR: the penultimate layer is split into K groups of D units; the sum of a group is that class's
logit and the group is its "pose"; the reconstruction is class-conditional (masked) like CapsNet's.
CNN+R: the same network; the reconstruction sees the whole penultimate layer (no masking).

Shapes (default MNIST config): x [B,1,28,28] -> conv 12ch 15x15 -> conv 16ch 8x8 -> [B,784] ->
FC 784 -> FC 160 = 10 groups x 16. The FC sizes mirror the CapsNet's capsule layers, so the three
models have the same number of parameters (a capsule layer n_in x d_in -> n_out x d_out holds
n_in*d_in*n_out*d_out weights, a dense layer between the flattened sizes the same).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import backbone_channels, conv_backbone
from .base import Decoder, ModelOutput, ReconstructionClassifier


class GroupedCNN(ReconstructionClassifier):
    def __init__(
        self,
        image_shape=(1, 28, 28),
        num_classes: int = 10,
        conv_channels: int = 12,
        conv_kernel: int = 15,
        conv_stride: int = 1,
        primary_types: int = 1,
        primary_dim: int = 16,
        primary_kernel: int = 8,
        primary_stride: int = 1,
        capsule_layers=((49, 16),),
        class_dim: int = 16,
        decoder_hidden=(512, 1024),
        conditional: bool = True,
        cnn_dropout: float = 0.0,
        mean=None,
        std=None,
        routing_iterations: int = 3,
        init_gain: float = 1.0,
        backbone=None,
    ):
        """Takes the shared arch config keys so one config describes all three models; the
        routing-only keys of the shipped configs (routing_iterations, init_gain) are ignored. Any
        other key is refused (TypeError), as is a CapsNet-only key no shipped config sets
        (bias_init, decoder_input): a CNN never silently ignores a setting it was given.

        cnn_dropout: dropout probability on the output of every hidden FC layer (the input of the
            next FC layer, up to the pose layer). Training only: ``model.eval()`` (used by
            detection, attacks and tests) turns it off, so attacks see a deterministic model.
        """
        super().__init__(image_shape, num_classes, mean, std)
        c = self.image_shape[0]
        self.conv1 = nn.Conv2d(c, conv_channels, conv_kernel, stride=conv_stride)
        self.backbone = conv_backbone(conv_channels, backbone or ())  # the CapsNet's blocks (empty: none)
        self.conv2 = nn.Conv2d(backbone_channels(conv_channels, backbone or ()), primary_types * primary_dim,
                               primary_kernel, stride=primary_stride)
        with torch.no_grad():
            flat = self.conv2(self.backbone(F.relu(self.conv1(torch.zeros(1, *self.image_shape))))).numel()
        sizes = [flat] + [n * d for n, d in capsule_layers]
        hidden = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            hidden += [nn.Linear(a, b), nn.ReLU(inplace=True)]
            if cnn_dropout:
                hidden.append(nn.Dropout(cnn_dropout))
        self.hidden = nn.Sequential(*hidden)
        self.head = nn.Linear(sizes[-1], num_classes * class_dim)
        self.class_dim = class_dim
        self.cnn_dropout = cnn_dropout
        self.conditional = conditional
        self.decoder = Decoder(num_classes * class_dim, self.image_shape, tuple(decoder_hidden))

    def forward(self, x: Tensor) -> ModelOutput:
        h = self.backbone(F.relu(self.conv1(self.normalize(x))))
        h = F.relu(self.conv2(h)).flatten(1)
        poses = self.head(self.hidden(h)).view(x.shape[0], self.num_classes, self.class_dim)
        return ModelOutput(logits=poses.sum(-1), poses=poses)


def CNN_CR(**kwargs) -> GroupedCNN:
    """CNN with class-conditional (masked) reconstruction."""
    return GroupedCNN(conditional=True, **kwargs)


def CNN_R(**kwargs) -> GroupedCNN:
    """CNN with reconstruction from the whole penultimate layer."""
    return GroupedCNN(conditional=False, **kwargs)
