"""CapsNet with dynamic routing (Sabour, Frosst & Hinton, NeurIPS 2017), as used by Qin et al. 2020.

Shapes (default MNIST config): x [B,1,28,28] -> conv 12ch 15x15 -> [B,12,14,14] -> primary conv
16ch 8x8 -> [B,16,7,7] = 49 primary capsules of 16-D -> routed capsule layer 49x16-D -> routed
class capsules 10x16-D. Class score = capsule length; pose = the capsule vector.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import backbone_channels, conv_backbone
from .base import Decoder, ModelOutput, ReconstructionClassifier

SQUASH_EPS = 1e-7


def squash(s: Tensor, dim: int = -1, eps: float = SQUASH_EPS) -> Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s|, with an epsilon so value and gradient are finite at s = 0."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    return s * (sq / (1.0 + sq) / torch.sqrt(sq + eps))


def dynamic_routing(u_hat: Tensor, iterations: int, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Routing-by-agreement (Sabour et al. 2017, Procedure 1).

    u_hat: predictions [B, n_in, n_out, D]. Coupling coefficients c = softmax(b) over the *output*
    capsules (dim 2), separately for each example and input capsule. ``bias`` [n_out, D] is added
    to every routed sum before the squash (as in Sabour et al.'s released code).
    Returns (v [B, n_out, D], c [B, n_in, n_out]).
    """
    b = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype, device=u_hat.device)
    for it in range(iterations):
        c = torch.softmax(b, dim=2)
        s = torch.einsum("bio,biod->bod", c, u_hat)
        if bias is not None:
            s = s + bias
        v = squash(s)
        if it < iterations - 1:
            b = b + torch.einsum("biod,bod->bio", u_hat, v)
    return v, c


class CapsuleLayer(nn.Module):
    """A fully connected capsule layer: n_in capsules of d_in -> n_out capsules of d_out.

    Its transformation matrices W [n_in, n_out, d_out, d_in] hold exactly as many parameters as a
    dense layer from n_in*d_in to n_out*d_out features (the CNN baselines mirror this).

    Init: W ~ N(0, std^2) with std = init_gain * n_out / sqrt(n_in * d_out). With uniform couplings
    1/n_out the routed sum s has E|s|^2 ~ init_gain^2 * |u|^2, so capsule lengths start well away
    from 0 even with several stacked layers (a fixed small std such as 0.01 squashes every capsule
    of a second routed layer towards length 0 and training stalls at chance).
    """

    def __init__(self, n_in: int, d_in: int, n_out: int, d_out: int, iterations: int = 3, init_gain: float = 1.0,
                 bias_init: float = 0.1):
        super().__init__()
        self.n_in, self.d_in, self.n_out, self.d_out, self.iterations = n_in, d_in, n_out, d_out, iterations
        std = init_gain * n_out / math.sqrt(n_in * d_out)
        self.weight = nn.Parameter(torch.randn(n_in, n_out, d_out, d_in) * std)
        # n_out*d_out biases: the same count as the mirrored dense layer's biases
        self.bias = nn.Parameter(torch.full((n_out, d_out), float(bias_init)))
        self.last_coupling: Tensor | None = None

    def predictions(self, u: Tensor) -> Tensor:
        """u [B, n_in, d_in] -> u_hat [B, n_in, n_out, d_out]."""
        b = u.shape[0]
        # one batched matmul over input capsules: [n_in, B, d_in] @ [n_in, d_in, n_out*d_out]
        w = self.weight.permute(0, 3, 1, 2).reshape(self.n_in, self.d_in, self.n_out * self.d_out)
        u_hat = torch.bmm(u.transpose(0, 1), w)  # [n_in, B, n_out*d_out]
        return u_hat.view(self.n_in, b, self.n_out, self.d_out).transpose(0, 1)

    def forward(self, u: Tensor) -> Tensor:
        v, c = dynamic_routing(self.predictions(u), self.iterations, self.bias)
        self.last_coupling = c.detach()
        return v


class CapsNet(ReconstructionClassifier):
    """CapsNet: conv -> primary capsules -> routed capsule layers -> class capsules -> decoder.

    Args:
        image_shape: (C, H, W).
        conv_channels/conv_kernel/conv_stride: the first ReLU conv layer.
        backbone: ``[[channels, pool], ...]``, 3x3 conv blocks between the first conv and the
            primary capsules (:mod:`lit_caps.models.backbone`); empty (the paper's models): none.
        primary_types/primary_dim/primary_kernel/primary_stride: the primary-capsule conv, giving
            ``primary_types`` capsule types of ``primary_dim`` on each grid position (squashed).
        capsule_layers: list of (n_capsules, dim) for hidden routed layers (may be empty).
        class_dim: dimension of the class capsules (poses).
        routing_iterations: routing iterations per routed layer.
        decoder_hidden: hidden sizes of the reconstruction network.
        decoder_input: "masked" (class-conditional, the paper's CapsNet), "all" ("CapsNet All":
            every capsule feeds the decoder) or "winner" (DeepCaps-style: only the chosen capsule's
            vector, D features, feeds the decoder).
        cnn_dropout: a CNN-baseline setting, accepted so one arch config describes all three
            models; ignored here (and left out of a CapsNet's config hash).
    """

    compile_helps = True
    scores_are_lengths = True  # class scores are capsule lengths in (0, 1) (the attacks' log-odds loss)

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
        routing_iterations: int = 3,
        init_gain: float = 1.0,
        bias_init: float = 0.1,
        decoder_hidden=(512, 1024),
        decoder_input: str = "masked",
        mean=None,
        std=None,
        cnn_dropout: float = 0.0,
        backbone=None,
    ):
        super().__init__(image_shape, num_classes, mean, std)
        c, h, w = self.image_shape
        self.conv = nn.Conv2d(c, conv_channels, conv_kernel, stride=conv_stride)
        self.backbone = conv_backbone(conv_channels, backbone or ())
        self.primary = nn.Conv2d(backbone_channels(conv_channels, backbone or ()), primary_types * primary_dim,
                                 primary_kernel, stride=primary_stride)
        self.primary_types, self.primary_dim = primary_types, primary_dim
        with torch.no_grad():
            g = self.primary(self.features(torch.zeros(1, c, h, w))).shape[-1]
        n = g * g * primary_types
        self.num_primary = n
        layers = []
        d = primary_dim
        for n_out, d_out in list(capsule_layers) + [(num_classes, class_dim)]:
            layers.append(CapsuleLayer(n, d, n_out, d_out, routing_iterations, init_gain, bias_init))
            n, d = n_out, d_out
        self.capsules = nn.ModuleList(layers)
        if decoder_input not in ("masked", "all", "winner"):
            raise ValueError(f"decoder_input must be masked, all or winner, got {decoder_input!r}")
        self.decoder_mode = decoder_input
        self.conditional = decoder_input != "all"
        dec_in = class_dim if decoder_input == "winner" else num_classes * class_dim
        self.decoder = Decoder(dec_in, self.image_shape, tuple(decoder_hidden))

    def features(self, x: Tensor) -> Tensor:
        """The normalized input through the first ReLU conv and the backbone blocks (if any)."""
        return self.backbone(F.relu(self.conv(x)))

    def primary_capsules(self, x: Tensor) -> Tensor:
        p = self.primary(self.features(self.normalize(x)))  # [B, types*dim, g, g]
        b, _, g, _ = p.shape
        p = p.view(b, self.primary_types, self.primary_dim, g, g).permute(0, 1, 3, 4, 2)
        return squash(p.reshape(b, -1, self.primary_dim))

    def forward(self, x: Tensor) -> ModelOutput:
        v = self.primary_capsules(x)
        for layer in self.capsules:
            v = layer(v)
        return ModelOutput(logits=v.norm(dim=-1), poses=v)

    def decoder_input(self, poses: Tensor, classes: Tensor | None) -> Tensor:
        if self.decoder_mode == "winner":
            if classes is None:
                raise ValueError("a class-conditional model needs the classes to reconstruct from")
            return poses[torch.arange(poses.shape[0], device=poses.device), classes.long()]
        return super().decoder_input(poses, classes)


def margin_loss(lengths: Tensor, y: Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5) -> Tensor:
    """Sabour et al. 2017 Eq. 4, summed over classes, mean over the batch."""
    t = F.one_hot(y, lengths.shape[1]).to(lengths.dtype)
    loss = t * F.relu(m_plus - lengths) ** 2 + lam * (1 - t) * F.relu(lengths - m_minus) ** 2
    return loss.sum(1).mean()
