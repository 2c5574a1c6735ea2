import copy
import re

import pytest
import timm
import torch
from torch import nn

from harness.errors import HarnessError
from methods.backbones import TwoStreamBackbone, find_stem_module_names

FAMILIES = {
    "test_resnet": ("conv1", "bn1"),
    "test_convnext": ("stem",),
    "test_efficientnet": ("conv_stem", "bn1"),
    "test_vit": ("patch_embed",),
}
HEIGHT, WIDTH = 64, 32


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


def randomise_norm_statistics(module: nn.Module, seed: int) -> None:
    """Non-trivial running stats and affine terms so eval-mode comparisons can fail."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)


def plain_model(name: str, backbone: TwoStreamBackbone, modality: int) -> nn.Module:
    """A fresh timm model carrying the backbone's weights with the stem of one modality."""
    reference = timm.create_model(name, num_classes=0)
    state = {}
    for key, value in backbone.model.state_dict().items():
        match = re.match(r"^(.*)\.branches\.(\d+)\.(.*)$", key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) == modality:
            state[f"{match.group(1)}.{match.group(3)}"] = value
    reference.load_state_dict(state, strict=True)
    return reference


def as_map(name: str, features: torch.Tensor) -> torch.Tensor:
    if name == "test_vit":  # one class token, patch 16
        tokens = features[:, 1:]
        return tokens.transpose(1, 2).reshape(features.shape[0], features.shape[2], HEIGHT // 16, WIDTH // 16)
    return features


def perturb_infrared_stem(backbone: TwoStreamBackbone) -> None:
    with torch.no_grad():
        for stem_name in backbone.stem_module_names:
            for p in backbone.model.get_submodule(stem_name).branches[1].parameters():
                p.add_(torch.randn_like(p) * 0.5)


def build(name: str) -> TwoStreamBackbone:
    backbone = TwoStreamBackbone(name, last_stride_one=False)
    randomise_norm_statistics(backbone, seed=1)
    return backbone


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stem_is_per_modality_and_the_rest_is_shared(name):
    backbone = build(name)
    assert backbone.stem_module_names == FAMILIES[name]
    plain = timm.create_model(name, num_classes=0)
    stem_params = {}
    for stem_name in backbone.stem_module_names:
        visible = dict(backbone.stem(0)[stem_name].named_parameters())
        infrared = dict(backbone.stem(1)[stem_name].named_parameters())
        assert visible.keys() == infrared.keys() and visible
        for key in visible:
            assert visible[key] is not infrared[key]
            assert visible[key].data_ptr() != infrared[key].data_ptr()
        stem_params[stem_name] = sum(p.numel() for p in visible.values())
    plain_stem = sum(p.numel() for n in backbone.stem_module_names for p in plain.get_submodule(n).parameters())
    assert plain_stem == sum(stem_params.values())
    # exactly one extra copy of the stem, one copy of everything else
    total = sum(p.numel() for p in backbone.parameters())
    assert total == sum(p.numel() for p in plain.parameters()) + plain_stem
    if name == "test_vit":
        shared = dict(backbone.model.named_parameters())
        assert "cls_token" in shared and "pos_embed" in shared


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("train", [False, True])
def test_visible_batch_equals_plain_timm_model(name, train):
    backbone = build(name)
    perturb_infrared_stem(backbone)
    reference = plain_model(name, backbone, modality=0)
    backbone.train(train)
    reference.train(train)
    x = torch.randn(4, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        out = backbone(x, torch.zeros(4, dtype=torch.long))
        expected = as_map(name, reference.forward_features(x))
    assert out.shape == (4, backbone.num_features, *expected.shape[2:])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_infrared_samples_use_the_infrared_stem(name):
    backbone = build(name).eval()
    for stem_name in backbone.stem_module_names:
        branches = backbone.model.get_submodule(stem_name).branches
        branches[1].load_state_dict(branches[0].state_dict())
    x = torch.randn(3, 3, HEIGHT, WIDTH)
    visible, infrared = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    with torch.no_grad():
        visible_before = backbone(x, visible)
        infrared_before = backbone(x, infrared)
        torch.testing.assert_close(visible_before, infrared_before)  # equal stems, equal outputs
        perturb_infrared_stem(backbone)
        visible_after = backbone(x, visible)
        infrared_after = backbone(x, infrared)
        expected = as_map(name, plain_model(name, backbone, modality=1).eval().forward_features(x))
    torch.testing.assert_close(visible_after, visible_before, rtol=0, atol=0)
    assert (infrared_after - infrared_before).abs().max() > 1e-3
    torch.testing.assert_close(infrared_after, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mixed_batch_equals_per_sample_reference(name):
    backbone = build(name).eval()
    perturb_infrared_stem(backbone)
    references = [plain_model(name, backbone, m).eval() for m in (0, 1)]
    modality = torch.tensor([1, 0, 0, 1, 1, 0])
    x = torch.randn(6, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        out = backbone(x, modality)
        expected = torch.cat(
            [as_map(name, references[int(m)].forward_features(x[i : i + 1])) for i, m in enumerate(modality)]
        )
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_gradients_reach_both_stems_only_from_their_samples(name):
    backbone = build(name).train()
    x = torch.randn(4, 3, HEIGHT, WIDTH)
    backbone(x, torch.tensor([0, 1, 0, 1])).square().mean().backward()
    for modality in (0, 1):
        for module in backbone.stem(modality).values():
            grads = [p.grad for p in module.parameters()]
            assert all(g is not None for g in grads)
            assert sum(g.abs().sum() for g in grads) > 0
    backbone.zero_grad(set_to_none=True)
    backbone(x, torch.zeros(4, dtype=torch.long)).square().mean().backward()
    for module in backbone.stem(1).values():
        assert all(p.grad is None for p in module.parameters())
    shared = [p for n, p in backbone.model.named_parameters() if ".branches." not in n and p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)


def test_stem_batchnorm_statistics_come_from_its_own_modality():
    backbone = TwoStreamBackbone("test_resnet", last_stride_one=False).train()
    x = torch.randn(6, 3, HEIGHT, WIDTH)
    modality = torch.tensor([0, 1, 1, 0, 0, 1])
    perturb_infrared_stem(backbone)
    # the deep stem's conv1 holds batch norms itself: run untouched copies on each modality's rows
    conv_copies = [copy.deepcopy(backbone.stem(m)["conv1"]) for m in (0, 1)]
    backbone(x, modality)
    for m in (0, 1):
        stem = backbone.stem(m)
        with torch.no_grad():
            conv_out = conv_copies[m](x[modality == m])
        momentum = stem["bn1"].momentum
        torch.testing.assert_close(stem["bn1"].running_mean, momentum * conv_out.mean(dim=(0, 2, 3)), rtol=1e-4,
                                   atol=1e-6)


def test_vit_keeps_class_token_and_position_embedding_shared():
    backbone = TwoStreamBackbone("test_vit")
    names = [n for n, _ in backbone.named_parameters()]
    assert names.count("model.cls_token") == 1 and names.count("model.pos_embed") == 1
    assert not backbone.last_stride_one  # ignored outside the ResNet family
    x = torch.randn(2, 3, 96, 48)
    assert backbone(x, torch.tensor([0, 1])).shape == (2, 64, 6, 3)


def test_channels_last_output_is_returned_as_channels_first():
    backbone = TwoStreamBackbone("test_mambaout").eval()
    plain = plain_model("test_mambaout", backbone, 0).eval()
    x = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        out = backbone(x, torch.zeros(2, dtype=torch.long))
        expected = plain.forward_features(x).permute(0, 3, 1, 2)
    assert out.shape[1] == backbone.num_features
    torch.testing.assert_close(out, expected)


class _GenericStemModel(nn.Module):
    def __init__(self, bare_parameter: bool, tuple_spec: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.embed_norm = nn.BatchNorm2d(4)
        self.body = nn.Conv2d(4, 4, 1)
        self.tuple_spec = tuple_spec
        if bare_parameter:
            self.token = nn.Parameter(torch.zeros(4))

    def group_matcher(self, coarse: bool = False) -> dict:
        stem = [(r"^embed", None), (r"^token", None)] if self.tuple_spec else r"^embed|^token"
        return {"stem": stem, "blocks": r"^body"}


@pytest.mark.parametrize("tuple_spec", [False, True])
def test_generic_stem_discovery_from_group_matcher(tuple_spec):
    assert find_stem_module_names(_GenericStemModel(False, tuple_spec)) == ("embed", "embed_norm")
    # bare token parameters in the stem: only the first (patch-embedding-like) module is per modality
    assert find_stem_module_names(_GenericStemModel(True, tuple_spec)) == ("embed",)


def _layer4_convs(backbone: TwoStreamBackbone):
    return [m for m in backbone.model.layer4.modules() if isinstance(m, nn.Conv2d)]


def test_last_stride_one_on_test_resnet_with_avg_down():
    backbone = TwoStreamBackbone("test_resnet").eval()
    assert backbone.last_stride_one
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 288, 144), torch.zeros(1, dtype=torch.long))
    assert out.shape[-2:] == (18, 9)
    assert all(m.dilation == (1, 1) and m.stride == (1, 1) for m in _layer4_convs(backbone))
    assert not any(isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) for m in backbone.model.layer4.modules())
    strided = TwoStreamBackbone("test_resnet", last_stride_one=False).eval()
    with torch.no_grad():
        assert strided(torch.randn(1, 3, 288, 144), torch.zeros(1, dtype=torch.long)).shape[-2:] == (9, 5)


@pytest.mark.parametrize("name", ["resnet18", "resnet26"])
def test_last_stride_one_keeps_resolution_without_dilation(name):
    backbone = TwoStreamBackbone(name).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 288, 144), torch.ones(1, dtype=torch.long))
    assert out.shape == (1, backbone.num_features, 18, 9)
    assert all(all(d == 1 for d in m.dilation) for m in _layer4_convs(backbone))
    assert all(m.stride == (1, 1) for m in _layer4_convs(backbone))


def test_bottleneck_stride_one_block_is_the_dense_version_of_the_strided_block():
    # Bottleneck: 1x1 -> 3x3 (stride) -> 1x1, downsample 1x1 (stride): with stride 1 the block is
    # evaluated at every position, so its even positions reproduce the original stride-2 block.
    backbone = TwoStreamBackbone("resnet26").eval()
    original = timm.create_model("resnet26", num_classes=0).eval()
    original.layer4[0].load_state_dict(backbone.model.layer4[0].state_dict())
    assert original.layer4[0].conv2.stride == (2, 2)
    z = torch.randn(1, 1024, 12, 6)
    with torch.no_grad():
        dense = backbone.model.layer4[0](z)
        strided = original.layer4[0](z)
    assert dense.shape[-2:] == (12, 6)
    torch.testing.assert_close(dense[..., ::2, ::2], strided, rtol=1e-4, atol=1e-5)


def test_pretrained_file_loads_the_weights(tmp_path):
    source = timm.create_model("test_resnet")
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    backbone = TwoStreamBackbone("test_resnet", pretrained_file=str(path), last_stride_one=False)
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    for modality in (0, 1):
        loaded = plain_model("test_resnet", backbone, modality).state_dict()
        assert loaded.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=0)


def test_pretrained_safetensors_file(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = timm.create_model("test_convnext", num_classes=0)
    path = tmp_path / "weights.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    backbone = TwoStreamBackbone("test_convnext", pretrained_file=str(path))
    torch.testing.assert_close(backbone.stem(1)["stem"][0].weight, source.stem[0].weight, rtol=0, atol=0)


def test_missing_pretrained_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(HarnessError, match=re.escape(str(missing))):
        TwoStreamBackbone("test_resnet", pretrained_file=str(missing))


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(HarnessError) as error:
        TwoStreamBackbone("resnet5O")
    assert "resnet50" in str(error.value) and "resnet5O" in str(error.value)


def test_reserved_timm_keyword_is_rejected():
    with pytest.raises(HarnessError, match="num_classes"):
        TwoStreamBackbone("test_resnet", num_classes=10)


@pytest.mark.parametrize(
    "modality",
    [torch.tensor([0, 2]), torch.tensor([0, -1]), torch.tensor([0, 1, 0]), torch.tensor([0.0, 1.0])],
)
def test_bad_modality_is_rejected(modality):
    backbone = TwoStreamBackbone("test_resnet")
    with pytest.raises(HarnessError, match="modality"):
        backbone(torch.randn(2, 3, HEIGHT, WIDTH), modality)


def test_stage_modules_and_non_local_blocks():
    backbone = TwoStreamBackbone("test_resnet")
    assert list(backbone.stage_modules())[-4:] == ["layer1", "layer2", "layer3", "layer4"]
    assert set(backbone.blocks_for_nonlocal()) == {"layer2", "layer3"}
    with pytest.raises(HarnessError, match="model.non_local"):
        TwoStreamBackbone("test_convnext").blocks_for_nonlocal()
