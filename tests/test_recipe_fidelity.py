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


def _reference_erasing_boxes(h: int, w: int, draws: int, *, p: float, area: tuple[float, float],
                             ratio: tuple[float, float], seed: int) -> list[tuple[int, int] | None]:
    """Zhong et al.'s random erasing as the MCLNet repository runs it, one image at a time.

    With probability p: up to 100 attempts of target = U(area) * H*W, aspect = U(ratio),
    eh = round(sqrt(target * aspect)), ew = round(sqrt(target / aspect)); the first box with
    ew < W and eh < H is erased. Returns (eh, ew) per image, None when nothing is erased.
    """
    import math
    import random

    rng = random.Random(seed)
    boxes: list[tuple[int, int] | None] = []
    for _ in range(draws):
        box = None
        if rng.uniform(0, 1) <= p:
            for _attempt in range(100):
                target = rng.uniform(*area) * h * w
                aspect = rng.uniform(*ratio)
                eh, ew = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
                if ew < w and eh < h:
                    box = (eh, ew)
                    break
        boxes.append(box)
    return boxes


def test_authors_random_erasing_statistics_match_the_reference_algorithm():
    import torch

    from harness.data.augment import random_erasing

    h, w, draws = 48, 24, 4000
    area, ratio = (0.1, 0.8), (0.3, 1 / 0.3)
    fill = (0.4914, 0.4822, 0.4465)
    images = torch.full((draws, 3, h, w), -5.0)
    out = random_erasing(images, torch.Generator().manual_seed(0), p=0.8, area=area, ratio=ratio,
                         aspect="uniform", fill="constant", fill_value=fill, attempts=100)
    erased = out != images
    per_image = erased[:, 0]
    assert torch.equal(erased[:, 0], erased[:, 1]) and torch.equal(erased[:, 0], erased[:, 2])
    for channel, value in enumerate(fill):  # every erased pixel holds the constant of its channel
        assert torch.all(out[:, channel][per_image] == torch.tensor(value))
    hit = per_image.flatten(1).any(dim=1)
    rows = per_image.any(dim=2).sum(dim=1).float()[hit]
    cols = per_image.any(dim=1).sum(dim=1).float()[hit]
    assert torch.equal(per_image.flatten(1).sum(dim=1).float()[hit], rows * cols)  # one rectangle each

    reference = [box for box in _reference_erasing_boxes(h, w, 40_000, p=0.8, area=area, ratio=ratio, seed=1) if box]
    ref_share = len(reference) / 40_000
    ref_area = sum(eh * ew for eh, ew in reference) / len(reference) / (h * w)
    ref_height = sum(eh for eh, _ in reference) / len(reference)
    # binomial / sampling tolerances of about four standard errors at 4,000 draws
    assert hit.float().mean().item() == pytest.approx(ref_share, abs=0.03)
    assert (rows * cols).mean().item() / (h * w) == pytest.approx(ref_area, abs=0.015)
    assert rows.mean().item() == pytest.approx(ref_height, abs=0.8)


@pytest.mark.parametrize(("h", "w", "area", "ratio", "erased"), [
    (4, 4, 1.0, 1.0, None),      # 4 x 4 box: as tall and as wide as the image
    (4, 8, 0.5, 1.0, None),      # 4 x 4 box: as tall as the image, narrower
    (8, 4, 0.5, 1.0, None),      # 4 x 4 box: as wide as the image, shorter
    (5, 8, 0.4, 1.0, (4, 4)),    # 4 x 4 box: one row shorter, narrower: erased
    (8, 5, 0.4, 1.0, (4, 4)),
    (9, 4, 0.5, 2.25, (6, 3)),   # sqrt(18 * 2.25) = 6.36 -> 6 rows, sqrt(18 / 2.25) = 2.83 -> 3 columns
])
def test_erasing_boxes_must_fit_strictly_inside_the_image(h, w, area, ratio, erased):
    """Zhong et al.'s RandomErasing keeps a box only if `w < img_w and h < img_h`: with every draw pinned
    (one area, one aspect), a box exactly as tall or as wide as the image is never used, one pixel
    smaller always is, wherever it lands."""
    import torch

    from harness.data.augment import random_erasing

    images = torch.zeros(64, 3, h, w)
    out = random_erasing(images, torch.Generator().manual_seed(0), p=1.0, area=(area, area), ratio=(ratio, ratio),
                         aspect="uniform", fill="constant", fill_value=(1.0, 1.0, 1.0), attempts=100)
    mask = out[:, 0] != 0
    if erased is None:
        assert not mask.any()
    else:
        assert torch.all(mask.any(dim=2).sum(dim=1) == erased[0])
        assert torch.all(mask.any(dim=1).sum(dim=1) == erased[1])
        assert torch.all(mask.flatten(1).sum(dim=1) == erased[0] * erased[1])


def test_log_uniform_aspect_draws_boxes_symmetric_in_log_ratio():
    import torch

    from harness.data.augment import random_erasing

    images = torch.zeros(4000, 3, 64, 64)
    out = random_erasing(images, torch.Generator().manual_seed(2), p=1.0, area=(0.05, 0.1), ratio=(0.3, 1 / 0.3),
                         aspect="log-uniform", fill="constant", fill_value=(1.0, 1.0, 1.0), attempts=100)
    mask = out[:, 0] != 0
    log_ratio = (mask.any(dim=2).sum(dim=1).float() / mask.any(dim=1).sum(dim=1).float()).log()
    # log-uniform on [log 0.3, -log 0.3]: mean 0; a uniform aspect gives E[log r] of about +0.44
    assert abs(log_ratio.mean().item()) < 0.05


def test_the_whole_network_runs_in_float64():
    import torch

    from harness.config import TrialConfig
    from methods import create_method

    cfg = TrialConfig.from_dict({"method": "mclnet", "model": {"backbone": "test_resnet", "non_local": True,
                                                               "bnneck_init": "normal"}})
    method = create_method(cfg, num_classes=4, num_cameras=3).double().train()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 64, 32, generator=generator, dtype=torch.float64)
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    pids, cams = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 2, 2, 2, 2])
    out = method(images, modality)
    assert {k: v.dtype for k, v in out.items()} == dict.fromkeys(out, torch.float64)
    losses = method.training_losses(images, modality, pids, cams)
    assert set(losses) == {"ce", "wrt", "mcm", "ica", "cca"}
    assert all(v.dtype == torch.float64 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads)
    assert method.test_features(images, modality).dtype == torch.float64


def test_bnneck_normal_init_draws_weights_around_one():
    import torch

    from methods.agw import BNNeck

    torch.manual_seed(0)
    neck = BNNeck(4096, 3, init="normal")
    weight = neck.bn.weight.detach()
    assert abs(weight.mean().item() - 1.0) < 5 * 0.01 / 64  # N(1, 0.01): 5 standard errors of the mean
    assert abs(weight.std().item() - 0.01) < 0.001
    assert torch.count_nonzero(neck.bn.bias) == 0
    assert torch.all(BNNeck(16, 3).bn.weight == 1)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Offline hub with an empty cache, and any socket connection refused: the test cannot download."""
    import socket

    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return tmp_path


def test_pretrained_weights_offline_fail_fast_with_the_offline_route(no_network):
    import time

    from harness.errors import InputError
    from methods._timm_models import create_timm_model

    started = time.monotonic()
    with pytest.raises(InputError) as info:
        create_timm_model("test_resnet", pretrained="imagenet")
    message = str(info.value)
    assert time.monotonic() - started < 10
    assert "test_resnet.r160_in1k" in message and str(no_network / "hub") in message
    assert "model.pretrained_file" in message


@pytest.fixture
def network_down(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE NOT set, empty caches, every name lookup fails and every connection is refused
    (a machine without internet); returns the host names looked up."""
    import socket

    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    lookups = []

    def no_name_service(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", no_name_service)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return lookups


def test_an_uncached_tag_fails_in_seconds_offline_without_hf_hub_offline(network_down):
    """The hub client alone retries each file with back-off (about a minute) before giving up."""
    import time

    from harness.errors import InputError
    from methods._timm_models import create_timm_model

    started = time.monotonic()
    with pytest.raises(InputError) as info:
        create_timm_model("test_resnet", pretrained="imagenet")
    assert time.monotonic() - started < 5
    assert len(network_down) <= 1  # one probe, no retries
    message = str(info.value)
    assert "test_resnet.r160_in1k" in message and "did not answer" in message and "model.pretrained_file" in message


def test_a_hanging_name_lookup_fails_within_the_probe_time(network_down, monkeypatch):
    import socket
    import threading
    import time

    from harness.errors import InputError
    from methods import _hub
    from methods._timm_models import create_timm_model

    release = threading.Event()

    def hang(*args, **kwargs):  # a resolver that never answers
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    monkeypatch.setattr(_hub, "PROBE_SECONDS", 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(InputError, match="did not answer within 0.5 s"):
            create_timm_model("test_resnet", pretrained="imagenet")
        assert time.monotonic() - started < 4
    finally:
        release.set()


def test_a_cached_tag_loads_without_any_network_call(network_down, tmp_path):
    import time
    from pathlib import Path

    import huggingface_hub.constants as hub_constants
    import torch
    from safetensors.torch import save_file

    from methods._timm_models import create_timm_model

    reference = {k: v + 1 for k, v in create_timm_model("test_resnet").state_dict().items()}
    commit = "0" * 40  # the hub cache's layout: refs/main names a snapshot folder
    repo = Path(hub_constants.HF_HUB_CACHE) / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.items()}, repo / "snapshots" / commit / "model.safetensors")
    started = time.monotonic()
    loaded = create_timm_model("test_resnet", pretrained="imagenet")
    assert time.monotonic() - started < 5 and network_down == []
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=key)
    assert hub_constants.HF_HUB_OFFLINE is False  # the offline switch was only for the load


def test_the_probe_connects_to_the_server_or_the_proxy(monkeypatch):
    import socket

    from methods._hub import probe_address, reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert reachable(f"https://127.0.0.1:{port}/timm/x", timeout=5)
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert probe_address("https://huggingface.co") == ("127.0.0.1", port)
        assert reachable("https://huggingface.co", timeout=5)  # through the proxy: no lookup of the hub
    assert not reachable(f"https://127.0.0.1:{port}/", timeout=5)  # closed now: refused at once


def test_pretrained_tags_are_checked_before_any_download(no_network):
    from harness.errors import ConfigError
    from methods._timm_models import resolve_pretrained_tag

    assert resolve_pretrained_tag("resnet50", "tv_in1k") == "resnet50.tv_in1k"
    assert resolve_pretrained_tag("resnet50", "resnet50.tv_in1k") == "resnet50.tv_in1k"
    with pytest.raises(ConfigError, match="do not fit the backbone"):
        resolve_pretrained_tag("resnet50", "resnet18.tv_in1k")
    with pytest.raises(ConfigError, match="has no weights 'resnet50.nope_in1k'; available: .*tv_in1k"):
        resolve_pretrained_tag("resnet50", "nope_in1k")


def test_local_weights_file_loads_without_the_network(no_network):
    import torch

    from harness.errors import ConfigError
    from methods._timm_models import create_timm_model

    source = create_timm_model("test_resnet")
    path = no_network / "weights.pth"
    torch.save({k: v + 1 for k, v in source.state_dict().items()}, path)
    loaded = create_timm_model("test_resnet", pretrained_file=str(path))
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, source.state_dict()[key] + 1)
    with pytest.raises(ConfigError, match="set one of them"):
        create_timm_model("test_resnet", pretrained="imagenet", pretrained_file=str(path))


# ------------------------------------------------------------------ MCM: the confusion loss of the authors' order


def _classifier_forward(f, params, eps=1e-5):
    """M of the authors' code written out: Linear -> Linear -> BatchNorm1d (batch statistics, biased variance)."""
    w1, b1, w2, b2, gamma, beta = params
    h2 = (f @ w1.T + b1) @ w2.T + b2
    mean = h2.mean(dim=0)
    invstd = 1 / ((h2 - mean) ** 2).mean(dim=0).add(eps).sqrt()
    xhat = (h2 - mean) * invstd
    return gamma * xhat + beta, xhat, invstd


def _nesterov_step(params, features, modality, *, lr=0.1, momentum=0.9, weight_decay=5e-4):
    """M's first SGD step on L_m = CE(M(f), true modality): b = g + wd p; p - lr (g + wd p + mu b)."""
    import torch

    leaves = [p.clone().requires_grad_() for p in params]
    logits, _, _ = _classifier_forward(features.detach(), leaves)
    loss = -torch.log_softmax(logits, dim=1)[torch.arange(len(modality)), modality].mean()
    grads = torch.autograd.grad(loss, leaves)
    return [p - lr * ((g + weight_decay * p) * (1 + momentum)) for p, g in zip(params, grads)]


def _authors_confusion_reference(features, before, after):
    """L_e and dL_e/df of the authors' order, by hand (float64).

    Their train.py takes L_e = -(1/N) sum_i 0.5 (log p0 + log p1) from `d_decision`, M's output
    computed BEFORE d_optimizer.step(), and backpropagates it after the step. On their PyTorch 1.2
    the step updated the parameters in place through `.data` without bumping autograd's version
    counters, so the backward read the UPDATED weights saved by the forward (addmm's weight^T, the
    BatchNorm weight) together with the forward's own activations, batch statistics and softmax.
    """
    import torch

    z, xhat, invstd = _classifier_forward(features, before)
    n = len(features)
    loss = -(0.5 * torch.log_softmax(z, dim=1)).sum(dim=1).mean()
    g_z = (torch.softmax(z, dim=1) - 0.5) / n
    w1, _, w2, _, gamma, _ = after
    g_h2 = gamma * invstd * (g_z - g_z.mean(dim=0) - xhat * (g_z * xhat).mean(dim=0))
    return loss, g_h2 @ w2 @ w1


def _mcm_case(variant, seed=0):
    import torch

    from methods.mcm import ModalityConfusion

    torch.manual_seed(seed)
    mcm = ModalityConfusion(12, 5, batchnorm_out=True, confusion_variant=variant).double()
    generator = torch.Generator().manual_seed(seed + 1)
    features = (torch.randn(16, 12, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    modality = torch.tensor([0] * 8 + [1] * 8)
    return mcm, features, modality


@pytest.mark.parametrize("seed", [0, 1])
def test_authors_confusion_loss_is_the_pre_update_output_backpropagated_through_the_updated_weights(seed):
    import torch

    mcm, features, modality = _mcm_case("authors-code", seed)
    before = [p.detach().clone() for p in mcm.classifier.parameters()]
    after = _nesterov_step(before, features, modality)
    want_loss, want_grad = _authors_confusion_reference(features.detach(), before, after)

    mcm.discriminator_step(features, modality)
    for got, want in zip(mcm.classifier.parameters(), after):  # the M step of the reference is M's own
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)
    loss = mcm.confusion_loss(features)
    (grad,) = torch.autograd.grad(loss, features)
    torch.testing.assert_close(loss.detach(), want_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)

    # neither the pre-update weights everywhere nor the recomputed output give this gradient
    _, with_before = _authors_confusion_reference(features.detach(), before, before)
    updated, fresh, _ = _mcm_case("updated", seed)
    updated.discriminator_step(fresh, modality)
    (recomputed,) = torch.autograd.grad(updated.confusion_loss(fresh), fresh)
    for other in (with_before, recomputed):
        assert (other - want_grad).norm() > 0.1 * want_grad.norm()


def test_the_reference_is_what_the_authors_step_computed_on_pytorch_1_2():
    """Their step emulated: one forward, L_m's backward, an SGD update through `.data` (as torch 1.2's
    optimisers wrote it, invisible to autograd's version check), then L_e's backward from the same output."""
    import torch

    mcm, features, modality = _mcm_case("authors-code")
    before = [p.detach().clone() for p in mcm.classifier.parameters()]
    leaves = [p.clone().requires_grad_() for p in before]
    output, _, _ = _classifier_forward(features, leaves)
    truth = torch.nn.functional.one_hot(modality, 2).double()
    torch.mean(-torch.sum(truth * torch.log_softmax(output, dim=1), dim=1)).backward(retain_graph=True)
    for p in leaves:
        p.data.add_(-0.1 * (p.grad + 5e-4 * p.data) * 1.9)  # first Nesterov step: lr (d + 0.9 d)
    features.grad = None
    torch.mean(-torch.sum(0.5 * torch.log_softmax(output, dim=1), dim=1)).backward()
    _, want = _authors_confusion_reference(features.detach(), before, [p.detach() for p in leaves])
    torch.testing.assert_close(features.grad, want, rtol=1e-10, atol=1e-14)


def test_authors_confusion_loss_trains_only_the_extractor_and_needs_the_m_step_first():
    import torch

    from harness.errors import InputError

    mcm, features, modality = _mcm_case("authors-code")
    with pytest.raises(InputError, match="discriminator_step"):
        mcm.confusion_loss(features)
    mcm.discriminator_step(features, modality)
    state = {k: v.clone() for k, v in mcm.classifier.state_dict().items()}
    mcm.confusion_loss(features).backward()
    assert features.grad is not None and all(p.grad is None for p in mcm.classifier.parameters())
    for key, value in mcm.classifier.state_dict().items():  # running statistics advanced by the M step only
        assert torch.equal(value, state[key]), key
    with pytest.raises(InputError, match="discriminator_step"):  # one M step, one L_e
        mcm.confusion_loss(features)


def test_confusion_variant_reaches_the_method_and_is_checked_by_the_config():
    from harness.config import TrialConfig
    from harness.errors import ConfigError
    from methods import create_method

    base = {"method": "mclnet", "model": {"backbone": "test_resnet", "non_local": False}}
    assert TrialConfig.from_dict(base).mcm.confusion_variant == "updated"
    cfg = TrialConfig.from_dict(base).with_overrides({"mcm.confusion_variant": "authors-code"})
    assert create_method(cfg, num_classes=4, num_cameras=3).mcm.confusion_variant == "authors-code"
    with pytest.raises(ConfigError, match=r"mcm.confusion_variant: expected one of 'updated', 'authors-code'"):
        TrialConfig.from_dict(base).with_overrides({"mcm.confusion_variant": "before"})


# ------------------------------------------------------------------ GeM


def test_gem_authors_form_against_hand_computed_values():
    import torch

    from methods.agw import GeM

    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2e-3]]]],
                     dtype=torch.float64)
    authors = GeM(p=3.0, variant="authors-code")(x)
    want = torch.tensor([[(100 / 4 + 1e-12) ** (1 / 3), 1e-12 ** (1 / 3), (8e-9 / 4 + 1e-12) ** (1 / 3)]],
                        dtype=torch.float64)
    torch.testing.assert_close(authors, want, rtol=1e-14, atol=0)
    assert authors[0, 1].item() == pytest.approx(1e-4, rel=1e-12)  # a channel zero everywhere
    paper = GeM(p=3.0)(x)  # clamp(x, 1e-6): the zero channel pools to 1e-6
    assert paper[0, 1].item() == pytest.approx(1e-6, rel=1e-12)
    torch.testing.assert_close(paper[0, 0], want[0, 0], rtol=1e-12, atol=0)


def test_gem_variant_reaches_the_network_and_the_recipe_uses_both_authors_forms():
    from harness.config import TrialConfig
    from harness.errors import ConfigError
    from harness.recipes import load_recipe
    from methods import create_method

    base = {"method": "agw", "model": {"backbone": "test_resnet", "non_local": False}}
    assert TrialConfig.from_dict(base).model.gem_variant == "paper"
    cfg = TrialConfig.from_dict(base).with_overrides({"model.gem_variant": "authors-code"})
    assert create_method(cfg, num_classes=4, num_cameras=3).net.pool.variant == "authors-code"
    with pytest.raises(ConfigError, match=r"model.gem_variant: expected one of 'paper', 'authors-code'"):
        TrialConfig.from_dict(base).with_overrides({"model.gem_variant": "clamp"})
    config = load_recipe("mclnet-authors").config
    assert config["model"]["gem_variant"] == "authors-code" and config["mcm"]["confusion_variant"] == "authors-code"


def test_the_authors_recipe_resizes_test_images_with_lanczos():
    """The authors' TestData resizes every test image to 144x288 with PIL ANTIALIAS (LANCZOS); the Resize of
    their test transform then meets an image of its own size and changes nothing."""
    from harness.recipes import load_recipe

    data = load_recipe("mclnet-authors").config["data"]
    assert (data["train_resize"], data["test_resize"]) == ("lanczos", "lanczos")


# ------------------------------------------------------------------ which feature each loss term receives

# The authors' train.py: CE on the classifier's logits, WRT and the discriminator D on the pooled
# feature `feat` (x_pool), ICA and CCA on the BNNeck feature `feat_norm`; the center-loss ablation
# replaces ICA on the same feature. The terms of each preset are the spec's ablation table.
PRESET_TERMS = {
    "agw": {"ce", "wrt"},
    "agw+mcm": {"ce", "wrt", "mcm"},
    "agw+mcm+center": {"ce", "wrt", "mcm", "center"},
    "agw+mcm+ica": {"ce", "wrt", "mcm", "ica"},
    "mclnet": {"ce", "wrt", "mcm", "ica", "cca"},
    "mclnet-no-mcm": {"ce", "wrt", "ica", "cca"},
}
TERM_INPUT = {"ce": ("logits", "pids"), "wrt": ("pool", "pids"), "mcm_step": ("pool", "modality"),
              "mcm": ("pool", None), "center": ("bn", "pids"), "ica": ("bn", "pids"), "cca": ("bn", "cams")}


@pytest.mark.parametrize("preset", sorted(PRESET_TERMS))
def test_each_loss_term_receives_the_feature_of_the_authors_code(preset, monkeypatch):
    import types

    import torch

    import methods.mclnet as mclnet
    from harness.config import TrialConfig
    from methods import create_method
    from methods.registry import list_methods

    mclnet_family = {m.name for m in list_methods() if m.builder.__module__ == mclnet.__name__}
    assert mclnet_family == set(PRESET_TERMS)  # a new preset of the family needs its row here
    cfg = TrialConfig.from_dict({"method": preset, "model": {"backbone": "test_resnet", "non_local": False}})
    method = create_method(cfg, num_classes=3, num_cameras=4).train()
    received: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def recorder(term, function):
        def record(features, labels=None, *args, **kwargs):
            received[term] = (features, labels)
            return function(features, *(() if labels is None else (labels,)), *args, **kwargs)
        return record

    monkeypatch.setattr(mclnet, "F", types.SimpleNamespace(cross_entropy=recorder("ce", mclnet.F.cross_entropy)))
    monkeypatch.setattr(mclnet, "wrt_loss", recorder("wrt", mclnet.wrt_loss))
    monkeypatch.setattr(mclnet, "center_loss", recorder("center", mclnet.center_loss))
    marginal = mclnet.marginal_center_loss

    def marginal_recorder(features, labels, centers, **kwargs):
        term = "ica" if centers is getattr(method, "id_centers", None) else "cca"
        received[term] = (features, labels)
        return marginal(features, labels, centers, **kwargs)

    monkeypatch.setattr(mclnet, "marginal_center_loss", marginal_recorder)
    if hasattr(method, "mcm"):
        monkeypatch.setattr(method.mcm, "discriminator_step",
                            recorder("mcm_step", method.mcm.discriminator_step))
        monkeypatch.setattr(method.mcm, "confusion_loss", recorder("mcm", method.mcm.confusion_loss))
    outputs = {}
    method.net.register_forward_hook(lambda module, args, out: outputs.update(out))

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 64, 32, generator=generator)
    batch = {"modality": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), "pids": torch.tensor([0, 0, 1, 1, 0, 0, 2, 2]),
             "cams": torch.tensor([0, 1, 0, 1, 2, 3, 2, 3])}
    losses = method.training_losses(images, batch["modality"], batch["pids"], batch["cams"])

    assert set(losses) == PRESET_TERMS[preset]
    expected_calls = PRESET_TERMS[preset] | ({"mcm_step"} if "mcm" in PRESET_TERMS[preset] else set())
    assert set(received) == expected_calls
    assert not torch.equal(outputs["pool"], outputs["bn"])  # the two features are told apart
    for term, (features, labels) in received.items():
        feature, label = TERM_INPUT[term]
        assert torch.equal(features, outputs[feature]), f"{preset}: {term} must receive the {feature} feature"
        if label is not None:
            assert torch.equal(labels, batch[label]), f"{preset}: {term} must receive the {label}"
