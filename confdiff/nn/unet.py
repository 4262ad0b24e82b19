"""A small U-Net for images (Ho et al. 2020, arXiv:2006.11239, appendix B; Dhariwal & Nichol 2021).

Residual blocks with GroupNorm and a per-block scale/shift from the conditioning embedding,
optional self-attention at chosen resolutions, a sinusoidal embedding of a per-sample noise level
(log-SNR or ``t``; the network does not know which SDE trains it), and an optional class
embedding with one extra *null* label (index ``num_classes``) for classifier-free guidance
(Ho & Salimans 2022, arXiv:2207.12598). Inputs whose size is not divisible by
``2 ** (len(channel_mult) - 1)`` are zero-padded and the output cropped back.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "UNetConfig", "sinusoidal_embedding"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`.

    ``channels`` at the first level, multiplied by ``channel_mult[i]`` at level ``i`` (each level
    halves the resolution); ``attention_resolutions`` lists the feature-map sizes (after padding)
    that get self-attention; ``num_classes = 0`` makes the model unconditional.
    """

    in_channels: int = 1
    resolution: int = 8
    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4,)
    num_heads: int = 4
    num_groups: int = 8
    num_classes: int = 0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        for name in ("in_channels", "resolution", "channels", "num_res_blocks", "num_heads", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"channel_mult must be non-empty positive integers, got {self.channel_mult}")
        for c in {self.channels * m for m in self.channel_mult}:
            if c % self.num_groups:
                raise ValueError(f"num_groups={self.num_groups} does not divide a level's width {c}")
            if c % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} does not divide a level's width {c}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def padded_resolution(self) -> int:
        """``resolution`` rounded up to a multiple of ``2 ** (levels - 1)``."""
        k = 2 ** (len(self.channel_mult) - 1)
        return -(-self.resolution // k) * k

    @property
    def null_label(self) -> int:
        """The label index meaning "no class" (classifier-free guidance)."""
        return self.num_classes


def sinusoidal_embedding(v: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer position embedding of a real scalar: ``v (B,) -> (B, dim)``.

    Frequencies ``max_period ** (-k / (dim/2))``, k = 0 .. dim/2 - 1 (Vaswani et al. 2017).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=v.device, dtype=torch.float32) / half)
    args = v.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the embedding as a scale/shift after the second norm."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (b, heads, hw, c / heads)
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class _Level(nn.Module):
    """The residual blocks (and attention) of one resolution, for the down or the up path."""

    def __init__(self, c_ins: list[int], c_out: int, emb_dim: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.blocks = nn.ModuleList(
            _ResBlock(c, c_out, emb_dim, cfg.num_groups, cfg.dropout) for c in c_ins
        )
        self.attns = nn.ModuleList(
            _Attention(c_out, cfg.num_heads, cfg.num_groups) if attention else nn.Identity() for _ in c_ins
        )


class UNet(nn.Module):
    """``forward(x (B, C, H, W), noise_level (B,), labels (B,) | None) -> (B, C, H, W)``.

    ``labels`` are integers in ``[0, num_classes]``; ``num_classes`` (the null label) or
    ``labels=None`` means unconditional. The output is whatever the training loss asks for
    (eps, x0, v, ...); the network has no diffusion logic.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.noise_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes > 0 else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        widths = [ch * m for m in cfg.channel_mult]
        res = cfg.padded_resolution
        skips, c = [ch], ch
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, w in enumerate(widths):
            level = _Level([c] + [w] * (cfg.num_res_blocks - 1), w, emb_dim, res in cfg.attention_resolutions, cfg)
            self.down.append(level)
            c = w
            skips += [w] * cfg.num_res_blocks
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([_ResBlock(c, c, emb_dim, cfg.num_groups, cfg.dropout),
                                  _Attention(c, cfg.num_heads, cfg.num_groups),
                                  _ResBlock(c, c, emb_dim, cfg.num_groups, cfg.dropout)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            c_ins = []
            for _ in range(cfg.num_res_blocks + 1):
                c_ins.append(c + skips.pop())
                c = w
            self.up.append(_Level(c_ins, w, emb_dim, res in cfg.attention_resolutions, cfg))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
                res *= 2
        self.norm_out = nn.GroupNorm(cfg.num_groups, c)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> UNet:
        """Rebuild from a checkpoint holding ``model_config["unet"]`` (or the config itself) and
        ``ema`` / ``model`` weights (EMA preferred)."""
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
        cfg = ckpt["model_config"]
        model = cls(UNetConfig(**cfg.get("unet", cfg)))
        model.load_state_dict(ckpt.get("ema") or ckpt["model"])
        return model

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        h_in, w_in = x.shape[-2:]
        pad = cfg.padded_resolution
        if (h_in, w_in) != (pad, pad):
            x = F.pad(x, (0, pad - w_in, 0, pad - h_in))

        emb = self.noise_mlp(sinusoidal_embedding(noise_level.expand(x.shape[0]), cfg.channels))
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), cfg.null_label, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=0)")

        h = self.conv_in(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :h_in, :w_in]
