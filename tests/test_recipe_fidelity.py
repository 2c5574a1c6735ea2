"""The authors' recipe, item by item, against references derived by hand from their public code."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import TrainConfig
from harness.data.splits import ImageSplit
from harness.training import steps_per_epoch


def _split(num_visible: int, num_infrared: int) -> ImageSplit:
    modalities = np.repeat([0, 1], [num_visible, num_infrared])
    return ImageSplit(paths=tuple(f"{i}.png" for i in range(len(modalities))),
                      pids=np.arange(len(modalities)) % 7, cams=modalities * 2, modalities=modalities)


@pytest.mark.parametrize(("visible", "infrared", "expected"), [
    (22_258, 11_909, 696),  # SYSU-MM01: int(22258 / 32) + 1 = 695 + 1
    (2_060, 2_060, 65),     # RegDB (one split): int(2060 / 32) + 1 = 64 + 1
    (16_946, 13_975, 530),  # LLCM (16,946 VIS + 13,975 NIR = 30,921 train images): int(16946 / 32) + 1
    (100, 300, 10),         # the larger modality counts: int(300 / 32) + 1
    (64, 10, 3),            # an exact multiple still gets the extra batch: 64 / 32 + 1
])
def test_an_epoch_counts_steps_as_the_authors_sampler(visible, infrared, expected):
    cfg = TrainConfig(num_identities=8, images_per_modality=4)
    assert steps_per_epoch(_split(visible, infrared), cfg) == expected


def test_iters_per_epoch_overrides_the_count():
    cfg = TrainConfig(num_identities=8, images_per_modality=4, iters_per_epoch=5)
    assert steps_per_epoch(_split(22_258, 11_909), cfg) == 5


def test_mcm_optimiser_is_the_authors_nesterov_sgd_by_default():
    import torch
    import torch.nn.functional as F

    from harness.config import MCMConfig
    from methods.mcm import ModalityConfusion

    c = MCMConfig()
    assert (c.lr, c.momentum, c.weight_decay, c.nesterov) == (0.1, 0.9, 0.0005, True)
    mcm = ModalityConfusion(6, 4, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov)
    assert mcm.optimizer.defaults["nesterov"] is True

    # two discriminator steps against Nesterov SGD written out: b = mu b + (g + wd p); p -= lr (g + wd p + mu b)
    generator = torch.Generator().manual_seed(0)
    features, modality = torch.randn(8, 6, generator=generator), torch.tensor([0, 1] * 4)
    params = [p.detach().clone() for p in mcm.classifier.parameters()]
    buffers = [torch.zeros_like(p) for p in params]
    for _ in range(2):
        leaves = [p.clone().requires_grad_() for p in params]
        logits = F.linear(F.linear(features, leaves[0], leaves[1]), leaves[2], leaves[3])
        grads = torch.autograd.grad(F.cross_entropy(logits, modality), leaves)
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + c.weight_decay * p
            buffers[i] = c.momentum * buffers[i] + d if _ else d  # the first step starts the buffer at d
            params[i] = p - c.lr * (d + c.momentum * buffers[i])
        mcm.discriminator_step(features, modality)
    for got, want in zip(mcm.classifier.parameters(), params):
        torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=1e-7)
