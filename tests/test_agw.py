import io
import math

import pytest
import torch
from torch import nn

from harness.errors import HarnessError
from methods.agw import BNNeck, GeM, NonLocalBlock, ReIDNet, insert_non_local
from methods.backbones import TwoStreamBackbone
from methods.mcm import ModalityClassifier, ModalityConfusion


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


# ---------------------------------------------------------------- non-local


@pytest.mark.parametrize("train", [False, True])
def test_non_local_starts_as_identity(train):
    block = NonLocalBlock(16, 8).train(train)
    x = torch.randn(3, 16, 5, 4)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def brute_force_non_local(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """Per-position loops over the published formula, eval-mode batch norm written out."""
    batch, _channels, height, width = x.shape
    positions = [(h, w) for h in range(height) for w in range(width)]

    def conv1x1(conv: nn.Conv2d, vector: torch.Tensor) -> torch.Tensor:
        return conv.weight[:, :, 0, 0] @ vector + conv.bias

    out = torch.empty_like(x)
    norm = block.W[1]
    for b in range(batch):
        theta = {p: conv1x1(block.theta, x[b, :, p[0], p[1]]) for p in positions}
        phi = {p: conv1x1(block.phi, x[b, :, p[0], p[1]]) for p in positions}
        g = {p: conv1x1(block.g, x[b, :, p[0], p[1]]) for p in positions}
        for i in positions:
            z = sum(float(theta[i] @ phi[j]) * g[j] for j in positions) / len(positions)
            w_z = conv1x1(block.W[0], z)
            bn = (w_z - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
            out[b, :, i[0], i[1]] = x[b, :, i[0], i[1]] + bn
    return out


@pytest.mark.parametrize("inner, size", [(6, (3, 4)), (2, (3, 4)), (12, (2, 3))])  # both product orders
def test_non_local_matches_per_position_formula(inner, size):
    block = NonLocalBlock(5, inner).eval()
    with torch.no_grad():
        block.W[1].weight.uniform_(0.5, 1.5)
        block.W[1].bias.normal_()
        block.W[1].running_mean.normal_()
        block.W[1].running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    block = block.double()
    with torch.no_grad():
        torch.testing.assert_close(block(x), brute_force_non_local(block, x))


def test_non_local_positions_on_resnet50():
    backbone = TwoStreamBackbone("resnet50")
    positions = insert_non_local(backbone)
    assert positions == ["layer2.2", "layer2.3", "layer3.3", "layer3.4", "layer3.5"]
    for stage, indices, channels in (("layer2", (2, 3), 512), ("layer3", (3, 4, 5), 1024)):
        layer = backbone.model.get_submodule(stage)
        for index, block in enumerate(layer):
            if index in indices:
                assert isinstance(block, nn.Sequential) and isinstance(block[1], NonLocalBlock)
                assert (block[1].in_channels, block[1].inner_channels) == (channels, channels // 2)
            else:
                assert not any(isinstance(m, NonLocalBlock) for m in block.modules())
    blocks = [m for m in backbone.modules() if isinstance(m, NonLocalBlock)]
    assert len(blocks) == 5
    assert not any(isinstance(m, NonLocalBlock) for m in backbone.model.layer1.modules())
    assert not any(isinstance(m, NonLocalBlock) for m in backbone.model.layer4.modules())


def test_non_local_ratio_floor_is_one_channel():
    backbone = TwoStreamBackbone("test_resnet")
    positions = insert_non_local(backbone, ratio=1e-4)
    assert positions == ["layer2.0", "layer3.0"]  # one block per stage in the test model
    assert [m.inner_channels for m in backbone.modules() if isinstance(m, NonLocalBlock)] == [1, 1]


def test_non_local_refuses_non_resnet_backbones():
    with pytest.raises(HarnessError, match="model.non_local"):
        insert_non_local(TwoStreamBackbone("test_convnext"))
    with pytest.raises(HarnessError, match="non_local_ratio"):
        insert_non_local(TwoStreamBackbone("test_resnet"), ratio=0.0)


# ---------------------------------------------------------------- GeM, BNNeck


def test_gem_against_hand_computed_value():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-5.0, 0.0], [2.0, 2.0]]]])
    out = GeM(p=3.0)(x)
    eps = 1e-6
    expected = torch.tensor([[(100.0 / 4) ** (1 / 3), ((2 * eps**3 + 16.0) / 4) ** (1 / 3)]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(GeM(p=1.0)(x[:, :1]), torch.tensor([[2.5]]))
    assert not any(True for _ in GeM().parameters())
    assert [n for n, _ in GeM(learnable=True).named_parameters()] == ["p"]


def test_bnneck_bias_frozen_and_classifier_without_bias():
    neck = BNNeck(64, 1000)
    assert not neck.bn.bias.requires_grad and torch.all(neck.bn.bias == 0)
    assert torch.all(neck.bn.weight == 1)
    assert neck.classifier.bias is None
    assert abs(float(neck.classifier.weight.detach().std()) - 0.001) < 1e-4
    x = torch.randn(8, 64) * 3 + 1
    feature, logits = neck.train()(x)
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + neck.bn.eps)
    torch.testing.assert_close(feature, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, expected @ neck.classifier.weight.T, rtol=1e-4, atol=1e-6)
    logits.sum().backward()
    assert neck.bn.bias.grad is None and neck.bn.weight.grad is not None


# ---------------------------------------------------------------- ReIDNet


def test_reidnet_outputs_and_identity_non_local_at_init():
    net = ReIDNet("test_resnet", num_classes=7).eval()
    plain = ReIDNet("test_resnet", num_classes=7, non_local=False).eval()
    state = {}
    for key, value in net.state_dict().items():
        if "layer2.0.1." in key or "layer3.0.1." in key:
            continue  # the non-local blocks
        state[key.replace("layer2.0.0.", "layer2.0.").replace("layer3.0.0.", "layer3.0.")] = value
    plain.load_state_dict(state)
    x = torch.randn(4, 3, 64, 32)
    modality = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        out = net(x, modality)
        reference = plain(x, modality)
    assert set(out) == {"pool", "bn", "logits"}
    assert out["pool"].shape == (4, 96) and out["bn"].shape == (4, 96) and out["logits"].shape == (4, 7)
    assert net.feature_dim == 96 and net.non_local_positions == ["layer2.0", "layer3.0"]
    for key in out:
        torch.testing.assert_close(out[key], reference[key], rtol=1e-5, atol=1e-6)


def test_reidnet_on_a_vision_transformer():
    net = ReIDNet("test_vit", num_classes=3, non_local=False)
    out = net(torch.randn(2, 3, 64, 32), torch.tensor([1, 0]))
    assert out["pool"].shape == (2, 64) and out["logits"].shape == (2, 3)
    with pytest.raises(HarnessError, match="model.non_local"):
        ReIDNet("test_vit", num_classes=3)


def test_param_groups_split_head_from_backbone():
    net = ReIDNet("test_resnet", num_classes=5)
    groups = net.param_groups()
    backbone_ids = {id(p) for p in groups["backbone"]}
    head_ids = {id(p) for p in groups["head"]}
    assert not backbone_ids & head_ids
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert backbone_ids | head_ids == trainable
    assert head_ids == {id(net.neck.bn.weight), id(net.neck.classifier.weight)}
    non_local_params = {id(p) for m in net.modules() if isinstance(m, NonLocalBlock) for p in m.parameters()}
    assert non_local_params and non_local_params <= backbone_ids


# ---------------------------------------------------------------- MCM


def test_modality_classifier_layers():
    plain = ModalityClassifier(32, 8)
    assert [type(m) for m in plain.layers] == [nn.Linear, nn.Linear]
    assert (plain.layers[0].in_features, plain.layers[0].out_features, plain.layers[1].out_features) == (32, 8, 2)
    with_bn = ModalityClassifier(32, 8, batchnorm_out=True)
    assert [type(m) for m in with_bn.layers] == [nn.Linear, nn.Linear, nn.BatchNorm1d]


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("batchnorm_out", [False, True])
def test_discriminator_step_moves_only_the_classifier(batchnorm_out):
    extractor = nn.Linear(6, 16)
    mcm = ModalityConfusion(16, 4, batchnorm_out=batchnorm_out)
    extractor_before, mcm_before = _snapshot(extractor), _snapshot(mcm.classifier)
    features = extractor(torch.randn(8, 6))
    loss = mcm.discriminator_step(features, torch.tensor([0, 1] * 4))
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and not loss.requires_grad and float(loss) > 0
    for key, value in _snapshot(extractor).items():
        torch.testing.assert_close(value, extractor_before[key], rtol=0, atol=0)
    assert all(p.grad is None for p in extractor.parameters())
    changed = [not torch.equal(mcm.classifier.state_dict()[k], mcm_before[k])
               for k in mcm_before if "num_batches" not in k]
    assert all(changed[:4])  # both linear layers moved
    assert all(p.grad is None for p in mcm.classifier.parameters())


@pytest.mark.parametrize("batchnorm_out", [False, True])
def test_confusion_loss_trains_the_extractor_only(batchnorm_out):
    extractor = nn.Linear(6, 16)
    mcm = ModalityConfusion(16, 4, batchnorm_out=batchnorm_out).train()
    mcm_before = _snapshot(mcm.classifier)
    features = extractor(torch.randn(8, 6))
    loss = mcm.confusion_loss(features)
    # hand formula: -(1/N) sum_i 0.5 (log p0 + log p1), per sample
    with torch.no_grad():
        logits = mcm.classifier(features)  # same batch statistics as the loss saw
    expected = 0.0
    for row in logits.tolist():
        log_norm = math.log(math.exp(row[0]) + math.exp(row[1]))
        expected += 0.5 * ((row[0] - log_norm) + (row[1] - log_norm))
    expected = -expected / len(logits)
    assert abs(loss.item() - expected) < 1e-5
    loss.backward()
    assert extractor.weight.grad is not None and extractor.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in mcm.classifier.parameters())
    for key, value in _snapshot(mcm.classifier).items():
        if batchnorm_out and key.startswith("layers.2.") and key != "layers.2.weight" and key != "layers.2.bias":
            continue  # the reference forward above advanced the running statistics, not confusion_loss
        torch.testing.assert_close(value, mcm_before[key], rtol=0, atol=0)


def test_confusion_loss_leaves_running_statistics_alone():
    mcm = ModalityConfusion(16, 4, batchnorm_out=True).train()
    before = _snapshot(mcm.classifier)
    mcm.confusion_loss(torch.randn(8, 16, requires_grad=True)).backward()
    for key, value in _snapshot(mcm.classifier).items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_confusion_loss_is_minimal_at_uniform_prediction():
    mcm = ModalityConfusion(4, 3)
    with torch.no_grad():
        for p in mcm.classifier.parameters():
            p.zero_()
    assert abs(float(mcm.confusion_loss(torch.randn(5, 4))) - math.log(2)) < 1e-6


def test_discriminator_loss_decreases_on_separable_features():
    generator = torch.Generator().manual_seed(3)
    modality = torch.tensor([0, 1] * 16)
    features = torch.randn(32, 16, generator=generator) + (modality[:, None].float() * 2 - 1) * 1.5
    mcm = ModalityConfusion(16, 8, lr=0.01)
    losses = [mcm.discriminator_step(features, modality) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < 0.2


def test_state_dict_carries_the_optimiser_state():
    mcm = ModalityConfusion(16, 4, batchnorm_out=True)
    features, modality = torch.randn(8, 16), torch.tensor([0, 1] * 4)
    for _ in range(2):
        mcm.discriminator_step(features, modality)
    holder = nn.ModuleDict({"mcm": mcm})
    buffer = io.BytesIO()
    torch.save(holder.state_dict(), buffer)
    buffer.seek(0)
    restored = nn.ModuleDict({"mcm": ModalityConfusion(16, 4, batchnorm_out=True)})
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    original_state = mcm.optimizer.state_dict()["state"]
    restored_state = restored["mcm"].optimizer.state_dict()["state"]
    assert original_state.keys() == restored_state.keys() and original_state
    for key in original_state:
        torch.testing.assert_close(original_state[key]["momentum_buffer"], restored_state[key]["momentum_buffer"])
    # the next step is then identical
    mcm.discriminator_step(features, modality)
    restored["mcm"].discriminator_step(features, modality)
    for key, value in mcm.classifier.state_dict().items():
        torch.testing.assert_close(restored["mcm"].classifier.state_dict()[key], value)


def test_mcm_rejects_wrong_feature_width():
    mcm = ModalityConfusion(16, 4)
    with pytest.raises(HarnessError, match="16"):
        mcm.confusion_loss(torch.randn(4, 8))
    with pytest.raises(HarnessError, match="modality"):
        mcm.discriminator_step(torch.randn(4, 16), torch.tensor([0, 1]))
