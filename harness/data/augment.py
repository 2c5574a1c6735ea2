"""Batched, seeded train augmentation on uint8 image tensors, on the tensors' device.

torchvision's v2 transforms draw one set of parameters per call; re-ID training needs
independent parameters per image (crop offset, flip, erasing box), so these few ops are
written as batched tensor code: no per-image Python work inside the step loop.
"""

from __future__ import annotations

import math

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


def random_erasing(images: torch.Tensor, generator: torch.Generator, *, p: float,
                   area: tuple[float, float], ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Erase one random box per selected image with N(0,1) noise (on normalised images).

    Box area is a uniform fraction of the image in `area`, aspect log-uniform in `ratio`; a box
    that does not fit is clipped to the image, so every selected image is erased once.
    """
    if p <= 0:
        return images
    b, c, h, w = images.shape
    dev = images.device
    apply = _uniform(b, generator, dev) < p
    frac = area[0] + (area[1] - area[0]) * _uniform(b, generator, dev)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _uniform(b, generator, dev)
    aspect = torch.exp(log_r)
    eh = torch.sqrt(frac * h * w * aspect).round().clamp(1, h)
    ew = torch.sqrt(frac * h * w / aspect).round().clamp(1, w)
    y0 = (_uniform(b, generator, dev) * (h - eh + 1)).floor()
    x0 = (_uniform(b, generator, dev) * (w - ew + 1)).floor()
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < (y0 + eh)[:, None])
    in_x = (xs >= x0[:, None]) & (xs < (x0 + ew)[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & apply[:, None, None])[:, None]
    noise = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype)
    return torch.where(mask, noise, images)


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


def train_augment(images: torch.Tensor, generator: torch.Generator, *, pad: int, flip: bool,
                  erasing_p: float, erasing_area: tuple[float, float], grayscale_p: float = 0.0) -> torch.Tensor:
    """uint8 (B,3,H,W) -> augmented, normalised float32 batch."""
    x = random_pad_crop(images, pad, generator)
    if flip:
        x = random_flip(x, generator)
    x = random_grayscale(x, generator, grayscale_p)
    x = normalize(x)
    return random_erasing(x, generator, p=erasing_p, area=erasing_area)
