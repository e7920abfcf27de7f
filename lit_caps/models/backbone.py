"""A compact convolutional backbone between the first convolution and the primary capsules.

The paper's CIFAR-10 CapsNet (Section 5.4) is Sabour et al.'s single 9x9 convolution under the
capsules; on a CPU it does not get near the paper's 92.2% clean accuracy in a useful number of
epochs. The ``backbone`` arch key (a list of ``[channels, pool]`` blocks, empty by default: the
paper's models) inserts a stack of 3x3 convolutions of the kind Keller Jordan's airbench CIFAR-10
speed runs use: each block is conv 3x3 (padding 1, no bias) -> [2x2 max pool] -> BatchNorm -> ReLU.

Shapes (``arch/cifar10_fast.yaml``): x [B,3,32,32] -> conv 3x3 -> [B,64,30,30] -> blocks
[[128, 1], [128, 0], [256, 1], [256, 0]] -> [B,256,7,7] -> primary capsules.

The CNN baselines take the same key, so one arch config still describes all the models and their
parameter counts stay equal.
"""
from __future__ import annotations

from torch import nn


def conv_backbone(in_channels: int, blocks) -> nn.Sequential:
    """``blocks``: ``[[channels, pool], ...]`` (pool 1 = a 2x2 max pool after the convolution).

    Returns an ``nn.Sequential`` (empty for no blocks: no parameters, no state-dict keys, so models
    built before the key existed load unchanged). Its output has ``blocks[-1][0]`` channels.
    """
    layers: list[nn.Module] = []
    c = in_channels
    for i, block in enumerate(blocks):
        if len(block) != 2 or int(block[0]) < 1 or int(block[1]) not in (0, 1):
            raise ValueError(f"arch.backbone[{i}] = {block!r}: expected [channels >= 1, pool 0 or 1]")
        out, pool = int(block[0]), int(block[1])
        layers.append(nn.Conv2d(c, out, 3, padding=1, bias=False))
        if pool:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    return nn.Sequential(*layers)


def backbone_channels(in_channels: int, blocks) -> int:
    """Channels out of :func:`conv_backbone` (``in_channels`` when there are no blocks)."""
    return int(blocks[-1][0]) if blocks else in_channels
