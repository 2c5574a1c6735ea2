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
    from methods.backbones import create_timm_model

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
    from methods.backbones import create_timm_model

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
    from methods.backbones import create_timm_model

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

    from methods.backbones import create_timm_model

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
    from methods.backbones import resolve_pretrained_tag

    assert resolve_pretrained_tag("resnet50", "tv_in1k") == "resnet50.tv_in1k"
    assert resolve_pretrained_tag("resnet50", "resnet50.tv_in1k") == "resnet50.tv_in1k"
    with pytest.raises(ConfigError, match="do not fit the backbone"):
        resolve_pretrained_tag("resnet50", "resnet18.tv_in1k")
    with pytest.raises(ConfigError, match="has no weights 'resnet50.nope_in1k'; available: .*tv_in1k"):
        resolve_pretrained_tag("resnet50", "nope_in1k")


def test_local_weights_file_loads_without_the_network(no_network):
    import torch

    from harness.errors import ConfigError
    from methods.backbones import create_timm_model

    source = create_timm_model("test_resnet")
    path = no_network / "weights.pth"
    torch.save({k: v + 1 for k, v in source.state_dict().items()}, path)
    loaded = create_timm_model("test_resnet", pretrained_file=str(path))
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, source.state_dict()[key] + 1)
    with pytest.raises(ConfigError, match="set one of them"):
        create_timm_model("test_resnet", pretrained="imagenet", pretrained_file=str(path))
