"""Batched, seeded train augmentation on uint8 image tensors, on the tensors' device.

torchvision's v2 transforms draw one set of parameters per call; re-ID training needs
independent parameters per image (crop offset, flip, erasing box), so these few ops are
written as batched tensor code: no per-image Python work inside the step loop.
"""

from __future__ import annotations

import math
from typing import Any

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B,3,H,W) -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=dtype).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def random_pad_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` and crop back to the input size at a random offset per image."""
    if pad <= 0:
        return images
    b, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    oy = (_uniform(b, generator, dev) * (2 * pad + 1)).long().clamp_max(2 * pad)
    ox = (_uniform(b, generator, dev) * (2 * pad + 1)).long().clamp_max(2 * pad)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :].expand(b, c, h, w)
    return cropped.gather(3, cols)


def random_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = _uniform(images.shape[0], generator, images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


ERASING_FILL_CONSTANT = (0.4914, 0.4822, 0.4465)
"""The fill of the random-erasing code the AGW/MCLNet repositories use (written into normalised images)."""


def random_erasing(images: torch.Tensor, generator: torch.Generator, *, p: float,
                   area: tuple[float, float], ratio: tuple[float, float] = (0.3, 3.3),
                   aspect: str = "log-uniform", fill: str = "random",
                   fill_value: tuple[float, ...] = ERASING_FILL_CONSTANT,
                   attempts: int | None = None) -> torch.Tensor:
    """Erase one random box per selected image (on normalised images), batched over the images.

    Each image is selected with probability `p`. The box covers a uniform fraction `area` of the
    image with an aspect ratio (height / width) in `ratio`, drawn uniformly (`aspect="uniform"`,
    as the MCLNet code) or log-uniformly. `fill="random"` writes N(0, 1) noise, `fill="constant"`
    writes `fill_value` per channel.

    `attempts=None`: one draw, the box clipped to the image, so every selected image is erased.
    `attempts=N`: as Zhong et al.'s code (N = 100 there): up to N draws per image, the first whose
    box fits strictly inside the image (height < H and width < W) is used; when none fits the
    image stays as it is. All attempts are drawn at once: no per-image or per-attempt Python loop.
    """
    if p <= 0:
        return images
    b, c, h, w = images.shape
    dev = images.device
    draws = 1 if attempts is None else attempts
    apply = _uniform(b, generator, dev) < p
    frac = area[0] + (area[1] - area[0]) * torch.rand(b, draws, generator=generator, device=dev).squeeze(1)
    u = torch.rand(b, draws, generator=generator, device=dev).squeeze(1)
    if aspect == "uniform":
        ratio_drawn = ratio[0] + (ratio[1] - ratio[0]) * u
    else:
        ratio_drawn = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u)
    eh = torch.sqrt(frac * h * w * ratio_drawn).round()
    ew = torch.sqrt(frac * h * w / ratio_drawn).round()
    if attempts is None:
        eh, ew = eh.clamp(1, h), ew.clamp(1, w)
    else:
        fits = (eh < h) & (ew < w)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits
        apply = apply & fits.any(dim=1)
        eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    y0 = (_uniform(b, generator, dev) * (h - eh + 1)).floor()
    x0 = (_uniform(b, generator, dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]
    if fill == "constant":
        value = torch.tensor(fill_value, device=dev, dtype=images.dtype).view(1, c, 1, 1)
    else:
        value = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype)
    return torch.where(mask, value, images)


def random_grayscale(images: torch.Tensor, generator: torch.Generator, p: float) -> torch.Tensor:
    """Replace an image by its luma (ITU-R 601) in all three channels with probability p.

    A colour-dropping augmentation (the channel augmentation idea of VI-ReID work such as CAJ):
    infrared images carry no colour, so visible images seen without it push the network
    towards cues that survive the modality change. Grey images are unchanged by it.
    """
    if p <= 0:
        return images
    apply = _uniform(images.shape[0], generator, images.device) < p
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    luma = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(images.dtype)
    return torch.where(apply[:, None, None, None], luma.expand_as(images), images)


CHANNEL_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""The luma weights of the CAJ code's grayscale view, applied to normalised channels."""
_KEEP = 4
"""A channel-mixing choice: 0, 1, 2 copy that channel to all three, 3 is the grayscale image, 4 keeps the image."""


def _mix_channels(images: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Each image (B, 3, H, W) turned by its `choice` (see _KEEP), batched: one gather and two selects."""
    b, _, h, w = images.shape
    r, g, bl = CHANNEL_GRAY_WEIGHTS
    gray = (r * images[:, 0] + g * images[:, 1] + bl * images[:, 2]).unsqueeze(1)
    picked = images.gather(1, choice.clamp_max(2).view(b, 1, 1, 1).expand(b, 1, h, w))
    single = torch.where((choice == 3).view(b, 1, 1, 1), gray, picked).expand(b, 3, h, w)
    return torch.where((choice == _KEEP).view(b, 1, 1, 1), images, single)


def _choices(n: int, k: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """n uniform draws from {0, ..., k-1}."""
    return (_uniform(n, generator, device) * k).long().clamp_max(k - 1)


def channel_exchange(images: torch.Tensor, generator: torch.Generator, *, grayscale: bool = False) -> torch.Tensor:
    """CAJ's random channel exchange: each image becomes one of its channels copied to all three.

    The channel is uniform over R, G, B; with `grayscale` the grayscale image
    (CHANNEL_GRAY_WEIGHTS) is a fourth equally likely choice. Works on any (B, 3, H, W) float
    batch; CAJ applies it to normalised, erased images, as its code does.
    """
    if images.shape[0] == 0:
        return images
    return _mix_channels(images, _choices(images.shape[0], 4 if grayscale else 3, generator, images.device))


def channel_adaptive_gray(images: torch.Tensor, generator: torch.Generator, *, p: float) -> torch.Tensor:
    """CAJ's channel augmentation of infrared images (its code's ChannelAdapGray).

    With probability 1/4 each, one of the channels R, G, B is copied to all three; otherwise
    (1/4) the image becomes grayscale with probability `p` and stays as it is else.
    """
    if images.shape[0] == 0:
        return images
    n, device = images.shape[0], images.device
    choice = _choices(n, 4, generator, device)
    choice = torch.where((choice == 3) & (_uniform(n, generator, device) >= p), _KEEP, choice)
    return _mix_channels(images, choice)


def train_augment(images: torch.Tensor, generator: torch.Generator, *, pad: int, flip: bool,
                  erasing_p: float, erasing_area: tuple[float, float], grayscale_p: float = 0.0,
                  **erasing: Any) -> torch.Tensor:
    """uint8 (B,3,H,W) -> augmented, normalised float32 batch.

    `erasing` holds random_erasing's optional keywords (ratio, aspect, fill, fill_value, attempts).
    """
    x = random_pad_crop(images, pad, generator)
    if flip:
        x = random_flip(x, generator)
    x = random_grayscale(x, generator, grayscale_p)
    x = normalize(x)
    return random_erasing(x, generator, p=erasing_p, area=erasing_area, **erasing)
