"""Batched data augmentation as tensor ops: every image gets its own random draw.

All functions take a whole batch, `(B, C, H, W)`, and a `torch.Generator` on the batch's
device, so the same seed gives the same augmented batches on the same device. No Python
loop runs over images; the per-operation loops run over a handful of op kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPS = [
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
    "Invert",
]  # fmt: skip
OP = {name: i for i, name in enumerate(OPS)}
RANDAUGMENT_OPS = torch.tensor([OP[n] for n in OPS[:-1]])  # torchvision's 14, without Invert
_SIGNED_NAMES = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                 "Contrast", "Sharpness")  # fmt: skip
SIGNED = torch.tensor([n in _SIGNED_NAMES for n in OPS])  # ops whose magnitude takes a sign

# torchvision's AutoAugmentPolicy.CIFAR10: 25 sub-policies of two (op, probability, bin 0-9).
AUTOAUGMENT_CIFAR10 = [
    (("Invert", 0.1, 0), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 0), ("Equalize", 0.9, 0)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 0), ("Equalize", 0.5, 0)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, 0), ("AutoContrast", 0.4, 0)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 0)), (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 0), ("Equalize", 0.6, 0)), (("Color", 0.9, 9), ("Equalize", 0.6, 0)),
    (("AutoContrast", 0.8, 0), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 0)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 0), ("Solarize", 0.2, 3)), (("Equalize", 0.8, 0), ("Invert", 0.1, 0)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 0)),
]  # fmt: skip
_AA_OP = torch.tensor([[OP[a[0]], OP[b[0]]] for a, b in AUTOAUGMENT_CIFAR10])
_AA_PROB = torch.tensor([[a[1], b[1]] for a, b in AUTOAUGMENT_CIFAR10])
_AA_MAG = torch.tensor([[a[2] / 9, b[2] / 9] for a, b in AUTOAUGMENT_CIFAR10])


def _rand(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device)


def crop_flip(
    x: torch.Tensor,
    padding: int,
    flip: bool,
    gen: torch.Generator,
    flipped: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, per image, in one gather.

    x: (B, C, H, W) any dtype. `flipped` (B,) bool, when given, says which images to mirror
    instead of a coin toss (alternating flips). Returns the same shape and dtype.
    """
    B, C, H, W = x.shape
    if padding == 0 and not flip:
        return x
    dev = x.device
    xp = F.pad(x, (padding,) * 4) if padding else x
    oy = (_rand(B, gen) * (2 * padding + 1)).long()  # (B,) top offset in the padded image
    ox = (_rand(B, gen) * (2 * padding + 1)).long()
    ar_h, ar_w = torch.arange(H, device=dev), torch.arange(W, device=dev)
    rows = oy[:, None] + ar_h  # (B, H)
    cols = ox[:, None] + ar_w  # (B, W)
    if flip:
        if flipped is None:
            flipped = _rand(B, gen) < 0.5
        cols = torch.where(flipped[:, None], ox[:, None] + (W - 1 - ar_w), cols)
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def _affine(x: torch.Tensor, op: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Shear, translate and rotate in one grid_sample; other ops get the identity matrix.

    m: signed magnitude in [-1, 1] (fraction of each op's maximum, torchvision's maxima).
    """
    B, _, H, W = x.shape
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    shear = m * 0.3
    angle = m * math.radians(30.0)
    shift = m * (150.0 / 331.0) * 2.0  # fraction of the side, in the [-1, 1] grid units
    is_ = lambda name: op == OP[name]  # noqa: E731
    theta[:, 0, 1] = torch.where(is_("ShearX"), shear, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(is_("ShearY"), shear, theta[:, 1, 0])
    theta[:, 0, 2] = torch.where(is_("TranslateX"), shift, theta[:, 0, 2])
    theta[:, 1, 2] = torch.where(is_("TranslateY"), shift, theta[:, 1, 2])
    rot = is_("Rotate")
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0] = torch.where(rot, cos, theta[:, 0, 0])
    theta[:, 0, 1] = torch.where(rot, -sin, theta[:, 0, 1])
    theta[:, 1, 0] = torch.where(rot, sin, theta[:, 1, 0])
    theta[:, 1, 1] = torch.where(rot, cos, theta[:, 1, 1])
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel histogram equalisation as PIL does it, batched."""
    B, C, H, W = x.shape
    idx = (x * 255).round().long().clamp_(0, 255).view(B * C, H * W)
    hist = torch.zeros(B * C, 256, device=x.device).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float)
    )
    last = hist.gather(1, idx.max(1, keepdim=True).values)  # count of the top value
    step = ((H * W - last) / 255).floor_()  # (BC, 1)
    cdf = hist.cumsum(1)
    lut = ((cdf - hist + step.div(2).floor()) / step.clamp(min=1)).floor_().clamp_(0, 255)
    out = lut.gather(1, idx) / 255
    out = torch.where(step > 0, out, idx.float() / 255)  # flat channels stay as they are
    return out.view(B, C, H, W)


def apply_ops(x: torch.Tensor, op: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Apply op[i] with signed magnitude mag[i] (in [-1, 1]) to image i.

    x: (B, C, H, W) float in [0, 1]; op: (B,) indices into OPS; mag: (B,) float.
    """
    x = _affine(x, op, mag)
    sel = lambda name: (op == OP[name]).view(-1, 1, 1, 1)  # noqa: E731
    f = (1.0 + 0.9 * mag).view(-1, 1, 1, 1)  # enhance factor, torchvision's 0.9 maximum
    gray = _gray(x)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    smooth = (blur * 9 - x * 4) / 5  # PIL's SMOOTH kernel: 1 1 1 / 1 5 1 / 1 1 1, over 13
    smooth = x if x.shape[-1] < 3 else smooth
    degenerate = torch.where(sel("Brightness"), torch.zeros_like(x), x)
    degenerate = torch.where(sel("Color"), gray.expand_as(x), degenerate)
    degenerate = torch.where(
        sel("Contrast"), gray.mean((1, 2, 3), keepdim=True).expand_as(x), degenerate
    )
    degenerate = torch.where(sel("Sharpness"), smooth, degenerate)
    x = (degenerate + f * (x - degenerate)).clamp_(0, 1)
    bits = (8 - (mag.abs() * 4).round()).view(-1, 1, 1, 1)
    shift = 2.0 ** (8 - bits)
    posterized = torch.floor(x * 255 / shift) * shift / 255
    x = torch.where(sel("Posterize"), posterized, x)
    x = torch.where(sel("Solarize") & (x >= 1.0 - mag.abs().view(-1, 1, 1, 1)), 1.0 - x, x)
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    auto = torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)
    x = torch.where(sel("AutoContrast"), auto, x)
    x = torch.where(sel("Equalize"), _equalize(x), x)
    return torch.where(sel("Invert"), 1.0 - x, x)


def randaugment(
    x: torch.Tensor, num_ops: int, magnitude: int, gen: torch.Generator
) -> torch.Tensor:
    """RandAugment (torchvision's op set, 31 magnitude bins): num_ops random ops per image."""
    B, dev = x.shape[0], x.device
    ops = RANDAUGMENT_OPS.to(dev)
    signed = SIGNED.to(dev)
    for _ in range(num_ops):
        op = ops[(_rand(B, gen) * len(ops)).long()]
        sign = torch.where(signed[op] & (_rand(B, gen) < 0.5), -1.0, 1.0)
        x = apply_ops(x, op, sign * (magnitude / 30.0))
    return x


def autoaugment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """AutoAugment's CIFAR-10 policy: one of 25 sub-policies per image, each op with its chance."""
    B, dev = x.shape[0], x.device
    sub = (_rand(B, gen) * len(_AA_OP)).long()
    signed = SIGNED.to(dev)
    for k in range(2):
        op = _AA_OP.to(dev)[sub, k]
        op = torch.where(_rand(B, gen) < _AA_PROB.to(dev)[sub, k], op, OP["Identity"])
        sign = torch.where(signed[op] & (_rand(B, gen) < 0.5), -1.0, 1.0)
        x = apply_ops(x, op, sign * _AA_MAG.to(dev)[sub, k])
    return x


def _boxes(B: int, H: int, W: int, area: torch.Tensor, aspect: torch.Tensor, gen: torch.Generator):
    """Per-image boxes of relative `area` and `aspect` (h/w), clipped to the image.

    Returns a (B, 1, H, W) bool mask and the fraction of each image it covers.
    """
    dev = area.device
    h = (torch.sqrt(area * aspect) * H).round().clamp(0, H)
    w = (torch.sqrt(area / aspect) * W).round().clamp(0, W)
    cy, cx = _rand(B, gen) * H, _rand(B, gen) * W
    y0, y1 = (cy - h / 2).round().clamp(0, H), (cy + h / 2).round().clamp(0, H)
    x0, x1 = (cx - w / 2).round().clamp(0, W), (cx + w / 2).round().clamp(0, W)
    ys = torch.arange(H, device=dev).view(1, H, 1)
    xs = torch.arange(W, device=dev).view(1, 1, W)
    v = lambda t: t.view(B, 1, 1)  # noqa: E731
    mask = (ys >= v(y0)) & (ys < v(y1)) & (xs >= v(x0)) & (xs < v(x1))
    return mask.unsqueeze(1), (y1 - y0) * (x1 - x0) / (H * W)


def random_erasing(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Random erasing (Zhong et al.): with chance p, a box of 2-33% of the image becomes noise.

    x is normalised (zero mean, unit std), so the noise is standard normal, as timm does.
    """
    B, C, H, W = x.shape
    area = 0.02 + _rand(B, gen) * (1 / 3 - 0.02)
    aspect = torch.exp(math.log(0.3) + _rand(B, gen) * (math.log(1 / 0.3) - math.log(0.3)))
    mask, _ = _boxes(B, H, W, area, aspect, gen)
    mask &= (_rand(B, gen) < p).view(B, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return torch.where(mask, noise, x)


@dataclass
class Mixed:
    x: torch.Tensor  # (B, C, H, W) mixed images
    targets: torch.Tensor  # (B, K) soft targets, each row sums to 1
    lam: torch.Tensor  # (B,) weight of each image's own label


def mix(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    mixup: float,
    cutmix: float,
    prob: float,
    smoothing: float,
    gen: torch.Generator,
    beta_rng: np.random.Generator,
) -> Mixed:
    """Per-image MixUp or CutMix with the batch reversed as partners, and label smoothing.

    Each image draws its own lambda, its own choice of MixUp or CutMix (half and half when
    both are on) and whether it is mixed at all (chance `prob`). CutMix's lambda is the
    exact share of pixels the image keeps. Beta draws come from a NumPy generator, since
    torch's Beta sampler takes no generator.
    """
    B, _, H, W = x.shape
    dev = x.device
    onehot = F.one_hot(y, num_classes).float()
    onehot = onehot * (1 - smoothing) + smoothing / num_classes
    if mixup <= 0 and cutmix <= 0:
        return Mixed(x, onehot, torch.ones(B, device=dev))
    partner = x.flip(0)
    use_cut = _rand(B, gen) < (0.5 if mixup > 0 and cutmix > 0 else float(cutmix > 0))
    lam_mix = torch.from_numpy(beta_rng.beta(mixup, mixup, B) if mixup > 0 else np.ones(B)).float()
    lam_cut = torch.from_numpy(
        beta_rng.beta(cutmix, cutmix, B) if cutmix > 0 else np.ones(B)
    ).float()
    if dev.type == "cuda":  # pinned, so the copy does not wait on the queued GPU work
        lam_mix, lam_cut = lam_mix.pin_memory(), lam_cut.pin_memory()
    lam_mix = lam_mix.to(dev, non_blocking=True)
    lam_cut = lam_cut.to(dev, non_blocking=True)
    active = _rand(B, gen) < prob
    mask, cut_area = _boxes(B, H, W, 1 - lam_cut, torch.ones(B, device=dev), gen)
    mask &= (active & use_cut).view(B, 1, 1, 1)
    lam = torch.where(use_cut, 1 - cut_area, lam_mix)
    lam = torch.where(active, lam, torch.ones_like(lam))
    blend = torch.where(use_cut, 1.0, lam).view(B, 1, 1, 1).to(x.dtype)
    out = torch.where(mask, partner, x * blend + partner * (1 - blend))
    targets = lam[:, None] * onehot + (1 - lam[:, None]) * onehot.flip(0)
    return Mixed(out, targets, lam)
