"""A plain Vision Transformer: PatchEmbed (or ConvTokenizer) -> Attention -> MLP -> Block -> ViT."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError
from vitsam.vit.config import ModelConfig


class PatchEmbed(nn.Module):
    """Split the image into non-overlapping patches and project each to `dim`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, dim)


class ConvTokenizer(nn.Module):
    """Overlapping tokens from a few 3x3 convolution stages instead of one linear patch.

    Each stage is conv 3x3 -> BatchNorm -> ReLU -> max-pool 3x3 stride 2, so log2(patch_size)
    stages give the same (image_size / patch_size)^2 tokens as `PatchEmbed`; the widths
    double up to `dim` (patch 8, dim 128: 32 -> 64 -> 128 channels). The convolutional
    tokenizer of Compact Convolutional Transformers (Hassani et al., "Escaping the Big Data
    Paradigm with Compact Transformers", 2021) with the BatchNorm of the convolutional stems
    in Xiao et al., "Early Convolutions Help Transformers See Better" (2021): the locality
    that lets a small transformer learn CIFAR-10 in a few epochs.

    Input (B, C, H, W) float, output (B, N, dim) with N = (H / patch_size) * (W / patch_size).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        stages = cfg.patch_size.bit_length() - 1
        widths = [max(cfg.dim >> (stages - 1 - i), 16) for i in range(stages)]
        layers: list[nn.Module] = []
        c = cfg.channels
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            ]
            c = w
        self.stages = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2

    @property
    def stem(self) -> nn.Conv2d:
        """The first convolution, the one that sees the pixels."""
        return self.stages[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last (B, H, W, C) in memory: oneDNN's and cuDNN's fast layout for these
        # convolutions, and the tokens (B, N, dim) below are then a view, not a copy
        x = self.stages(x.contiguous(memory_format=torch.channels_last))
        return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N, dim)


class Dropout(nn.Module):
    """nn.Dropout, with a faster mask on the CPU.

    On the CPU, `bernoulli_` draws one Mersenne-Twister number per element and took about
    a third of the seed model's training step (profiled). Here one 64-bit draw of numpy's
    PCG64DXSM (seeded from torch's generator, so `torch.manual_seed` still decides the
    masks) yields four 16-bit uniforms, and the keep probability is exact to 1/65536:
    forward + backward of an 8.5 M-element bf16 dropout went from 39 ms to 11 ms.
    Other devices use the native fused kernel.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if torch.compiler.is_compiling():  # inductor has its own kernel; in bf16 on an
            # AVX512-BF16 CPU it crashes the process (torch 2.14.1), in fp32 it does not
            return F.dropout(x.float(), self.p, training=True).to(x.dtype)
        keep = uniform16(x.numel()).view(x.shape) >= round(-32768 + self.p * 65536)
        # bool -> float conversion has no vectorized CPU kernel; uint8 -> float has
        mask = keep.view(torch.uint8).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def uniform16(n: int) -> torch.Tensor:
    """n uniform int16 values from 64-bit PCG64DXSM words seeded by torch's CPU generator."""
    seed = int(torch.randint(2**62, (1,)).item())
    words = np.random.PCG64DXSM(seed).random_raw((n + 3) // 4)
    return torch.from_numpy(words.view(np.int16)[:n])


class Attention(nn.Module):
    """Multi-head self-attention, fused (`F.scaled_dot_product_attention`) or plain.

    Both paths compute the same function; the plain one is faster for the CPU's bf16
    backward pass at these short sequences, the fused one on GPUs.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.attn_dropout = cfg.attn_dropout
        self.attn_drop = Dropout(cfg.attn_dropout)
        self.proj_drop = Dropout(cfg.dropout)
        self.fused = True  # set per device by ViT.set_attention()

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        attn = None
        if self.fused and not return_attn:
            p = self.attn_dropout if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            attn = attn.softmax(dim=-1)
            x = self.attn_drop(attn) @ v
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))
        return (x, attn) if return_attn else x


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = ConvTokenizer(cfg) if cfg.tokenizer == "conv" else PatchEmbed(cfg)
        n = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.pool == "cls" else None
        self.num_prefix = 1 if cfg.pool == "cls" else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, n + self.num_prefix, cfg.dim))
        self.pos_drop = Dropout(cfg.dropout)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[Block(cfg, r) for r in rates])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self._init_weights()
        self.set_attention("sdpa" if cfg.attn_impl == "auto" else cfg.attn_impl)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.patch_embed, PatchEmbed):  # as a linear layer (MAE, timm)
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        else:  # conv stages followed by ReLU (He et al., 2015)
            for m in self.patch_embed.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.weight)
        if self.cfg.attn_init == "mimetic":
            for block in self.blocks:
                mimetic_init_(block.attn)

    def set_attention(self, impl: str) -> None:
        """'sdpa' (fused) or 'plain' attention in every block."""
        for block in self.blocks:
            block.attn.fused = impl == "sdpa"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(x)))  # (B, prefix + N, dim)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block, each (B, H, T, T), from one forward pass."""
        maps = []
        x = self.embed(x)
        for block in self.blocks:
            y, attn = block.attn(block.norm1(x), return_attn=True)
            maps.append(attn)
            x = x + y
            x = x + block.mlp(block.norm2(x))
        return maps


MIMETIC_QK = (0.7, 0.7)  # (alpha, beta) of W_q W_k^T = alpha Z + beta I
MIMETIC_VO = (0.4, 0.4)  # (alpha, beta) of W_v W_proj = alpha Z - beta I


@torch.no_grad()
def mimetic_init_(
    attn: Attention,
    qk: tuple[float, float] = MIMETIC_QK,
    vo: tuple[float, float] = MIMETIC_VO,
) -> None:
    """Mimetic initialisation of one attention layer, in place.

    Trockman & Kolter, "Mimetic Initialization of Self-Attention Layers" (ICML 2023): the
    query-key product of pretrained ViTs is close to a positive multiple of the identity
    (each token attends to itself and its likes) and the value-projection product close to
    a negative one. So, with Z a d x d matrix of N(0, 1/d) entries (a fresh one for each),

        W_q^T W_k = alpha1 Z1 + beta1 I,      W_v^T W_proj^T = alpha2 Z2 - beta2 I,

    in the (d_in, d_in) convention of nn.Linear weights (q = x W_q^T, so the attention
    logits are x W_q^T W_k x^T). Each product is factored as U sqrt(S) and sqrt(S) V^T of
    its SVD, and head h takes rows h*k:(h+1)*k of the query and key weights, so the sum
    over heads is exact. The paper's CIFAR-10 ViT values are the defaults: (0.7, 0.7) for
    query-key, (0.4, 0.4) for value-projection. Biases are zeroed.
    """
    d = attn.proj.weight.shape[0]
    wq, wk, wv = attn.qkv.weight.view(3, d, d).unbind(0)  # views into the (3d, d) weight
    left, right = _factor(qk[0], qk[1], d, attn.qkv.weight)
    wq.copy_(left.T)  # W_q^T W_k = left @ right
    wk.copy_(right)
    left, right = _factor(vo[0], -vo[1], d, attn.qkv.weight)
    wv.copy_(left.T)  # W_v^T W_proj^T = left @ right
    attn.proj.weight.copy_(right.T)
    attn.qkv.bias.zero_()
    attn.proj.bias.zero_()


def _factor(alpha: float, beta: float, d: int, like: torch.Tensor):
    """(L, R), each (d, d), with L @ R = alpha Z + beta I for Z of N(0, 1/d) entries."""
    z = torch.randn(d, d) / d**0.5
    u, s, vh = torch.linalg.svd(alpha * z + beta * torch.eye(d))
    root = s.sqrt()
    return (u * root).to(like), (root[:, None] * vh).to(like)


WHITEN_EPS = 5e-4  # added to the eigenvalues, as in airbench94
WHITEN_IMAGES = 5000  # training images the patch covariance is estimated on (airbench94)


@torch.no_grad()
def whiten_init_(conv: nn.Conv2d, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
    """Whitening initialisation of the first convolution, in place, from training images.

    As in airbench (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024;
    after tysam-code's hlb-CIFAR10): with Σ = V diag(λ) Vᵀ the (uncentred) covariance of
    the k x k x C patches of `images`, each filter is an eigenvector scaled by
    1 / sqrt(λ + eps), so the filters' responses are decorrelated with unit variance on
    the data, and each comes twice, +v and -v, so the ReLU after it keeps both signs.
    The conv here has fewer pairs than the patch has dimensions (32 filters, 27
    dimensions for 3 x 3 x 3), so it takes the `out_channels // 2` eigenvectors of largest
    λ (the low frequencies); filters left over, if any, keep their init. airbench's
    whitening conv is 2 x 2, frozen, with a bias and no BatchNorm after it; here the 3 x 3
    stem stays trainable and keeps its BatchNorm, which normalises each filter's response
    anyway, so what this init gives is the directions.

    conv: (out, C, k, k) weights; images: (N, C, H, W) float, normalised as the model sees
    them (H, W >= k). The covariance is summed in float64 over chunks of 500 images.
    """
    out, c, kh, kw = conv.weight.shape
    if images.ndim != 4 or images.shape[1] != c or min(images.shape[-2:]) < max(kh, kw):
        raise VitsamError(
            f"whitening needs (N, {c}, H, W) images of at least {kh}x{kw} pixels, "
            f"got {tuple(images.shape)}"
        )
    dim = c * kh * kw
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    count = 0
    for chunk in images.split(500):
        patches = F.unfold(chunk.float().cpu(), (kh, kw))  # (n, dim, L)
        patches = patches.transpose(1, 2).reshape(-1, dim)  # (n * L, dim)
        cov += (patches.T @ patches).double()
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)  # ascending
    pairs = min(out // 2, dim)
    top = eigenvectors[:, -pairs:].flip(1).T  # (pairs, dim), largest eigenvalue first
    scaled = top / (eigenvalues[-pairs:].flip(0)[:, None] + eps).sqrt()
    filters = scaled.reshape(pairs, c, kh, kw)
    conv.weight[: 2 * pairs] = torch.cat([filters, -filters]).to(conv.weight)
    if conv.bias is not None:
        conv.bias[: 2 * pairs] = 0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
