"""A trained backbone as the pretrained weights of another run: export, reload, provenance."""

import hashlib
import json

import pytest
import timm
import torch

from harness.cli import main
from harness.errors import InputError
from methods.backbones import TwoStreamBackbone, timm_state_dict


def _perturbed_backbone() -> TwoStreamBackbone:
    """A two-stream backbone whose two stems, stages and BN statistics all differ from init."""
    torch.manual_seed(0)
    backbone = TwoStreamBackbone("test_resnet")
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, buffer in backbone.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.mul_(1.5).add_(0.1)
    return backbone.eval()


@pytest.mark.parametrize("stem", [0, 1])
def test_exported_backbone_starts_both_streams_as_the_chosen_stem(stem, tmp_path):
    from safetensors.torch import save_file

    source = _perturbed_backbone()
    weights = timm_state_dict(source, stem)
    plain = timm.create_model("test_resnet", num_classes=0)
    assert set(weights) == set(plain.state_dict())  # exactly the timm model's names
    path = tmp_path / "backbone.safetensors"
    save_file(weights, str(path))
    started = TwoStreamBackbone("test_resnet", pretrained_file=str(path)).eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.inference_mode():
        expected = source(x, torch.full((3,), stem))
        for modality in (0, 1):  # both stems of the new backbone are the exported one
            assert torch.equal(started(x, torch.full((3,), modality)), expected)
        other = source(x, torch.full((3,), 1 - stem))
    assert not torch.allclose(other, expected)  # the other stem really was different


def test_export_refuses_a_backbone_that_does_not_map_onto_timm():
    backbone = _perturbed_backbone()
    backbone.model.layer4[0].conv2 = torch.nn.Conv2d(96, 96, 1, bias=False)  # not test_resnet's shape
    with pytest.raises(InputError, match="layer4.0.conv2.weight"):
        timm_state_dict(backbone)
    with pytest.raises(InputError, match="modality 2"):
        timm_state_dict(_perturbed_backbone(), 2)


def test_vireid_export_backbone_writes_weights_and_card(tmp_path, tiny_config, capsys):
    from harness.saved_models import TrainedModel, save_model
    from methods import create_method

    cfg = tiny_config(method="mclnet")
    torch.manual_seed(1)
    method = create_method(cfg, 7, 4)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_model(tmp_path, "k", TrainedModel(method, cfg, 7, 4, "synthetic"), info={"sweep": "pre"})
    out = tmp_path / "weights" / "bb.safetensors"
    assert main(["export-backbone", str(tmp_path / "k.safetensors"), str(out), "--stem", "infrared"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (card["backbone"], card["stem"], card["source_model"], card["source_sweep"]) == (
        "test_resnet", "infrared", "k", "pre")
    assert card["source_config"] == cfg.to_dict() and "torch" in card["versions"]
    # a run configured with the file starts both stems from the infrared stem of the saved model
    started = create_method(cfg.with_overrides({"model.pretrained_file": str(out)}), 5, 4)
    source_ir = method.net.backbone.stem(1)["conv1"].state_dict()
    for modality in (0, 1):
        for name, value in started.net.backbone.stem(modality)["conv1"].state_dict().items():
            assert torch.equal(value, source_ir[name])
    assert sorted(p.name for p in out.parent.iterdir()) == ["bb.json", "bb.safetensors"]  # no temp left

    assert main(["export-backbone", str(tmp_path / "k.safetensors"), str(tmp_path / "bb.pth")]) == 2
    assert "ending in .safetensors" in capsys.readouterr().err


def test_trial_key_follows_the_content_of_the_pretrained_file(tmp_path, tiny_config):
    from harness.provenance import config_key

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"first weights")
    cfg = tiny_config(**{"model.pretrained_file": str(path)})
    first = config_key(cfg)
    assert config_key(tiny_config(**{"model.pretrained_file": str(path)})) == first  # stable
    path.write_bytes(b"other weights")  # same path, other content: another trial
    assert config_key(cfg) != first
    path.write_bytes(b"first weights")
    assert config_key(cfg) == first


def test_committed_main_job_backbone_matches_its_card():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "benchmarks" / "ablation_synthetic.yaml").read_text())
    weights = root / "benchmarks" / spec["base"]["model"]["pretrained_file"]  # a spec's paths: from its folder
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["backbone"] == spec["base"]["model"]["backbone"]
    pretrain = card["source_config"]["data"]["synthetic"]
    main_data = spec["base"]["data"]["synthetic"]
    assert pretrain["seed"] != main_data["seed"]  # other identities than the main job's
    assert card["source_sweep"] == "pretrain-synthetic"
    assert card["source_config"]["model"]["pretrained"] is None  # itself trained from random init
    assert card["source_config"]["model"]["pretrained_file"] is None


def _saved_mclnet(folder, tiny_config, key="k", **overrides):
    """A saved MCLNet model whose every tensor differs from init."""
    from harness.saved_models import TrainedModel, save_model
    from methods import create_method

    cfg = tiny_config(method="mclnet", **overrides)
    torch.manual_seed(2)
    method = create_method(cfg, 7, 4)
    with torch.no_grad():
        for p in method.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return method.eval(), save_model(folder, key, TrainedModel(method, cfg, 7, 4, "synthetic"))


@pytest.mark.parametrize("stem", ["visible", "infrared"])
def test_export_of_a_model_with_non_local_blocks_is_the_plain_timm_model(stem, tmp_path, tiny_config):
    """Default AGW / MCLNet models wrap layer2 / layer3 blocks with non-local blocks (keys layer2.0.0.*)."""
    from safetensors.torch import load_file

    from methods.backbones import set_last_stride_one

    method, weights = _saved_mclnet(tmp_path, tiny_config, **{"model.non_local": True})
    backbone = method.net.backbone
    assert backbone.inserted_after == ["layer2.0", "layer3.0"]  # test_resnet: one block per stage
    out = tmp_path / "bb.safetensors"
    assert main(["export-backbone", str(weights), str(out), "--stem", stem]) == 0
    plain = timm.create_model("test_resnet", num_classes=0)
    plain.load_state_dict(load_file(str(out)), strict=True)  # every timm name, nothing else (no non-local block)
    set_last_stride_one(plain)  # as the harness backbone runs it (model.last_stride_one: true)
    plain.eval()
    # with the non-local blocks made the identity (x + 0), the harness backbone computes the plain timm model
    for block in (backbone.model.layer2[0][1], backbone.model.layer3[0][1]):
        torch.nn.init.zeros_(block.W[1].weight)
        torch.nn.init.zeros_(block.W[1].bias)
    x = torch.randn(4, 3, 64, 32)
    index = 0 if stem == "visible" else 1
    with torch.inference_mode():
        expected = backbone(x, torch.full((4,), index))
        torch.testing.assert_close(plain.forward_features(x), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(plain.forward_features(x), backbone(x, torch.full((4,), 1 - index)), atol=1e-3)


def test_export_never_writes_onto_a_saved_model(tmp_path, tiny_config, capsys):
    _, weights = _saved_mclnet(tmp_path, tiny_config)
    _, other = _saved_mclnet(tmp_path, tiny_config, key="other")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for source, target in [(weights, weights), (weights.with_suffix(".json"), weights),  # its own files
                           (weights, other)]:  # another model's
        assert main(["export-backbone", str(source), str(target.with_suffix(".safetensors"))]) == 2
        err = capsys.readouterr().err
        assert str(target.with_suffix(".safetensors")) in err and "Traceback" not in err
    card_only = tmp_path / "lonely.json"  # a model whose weights file was moved away: its card stays protected
    card_only.write_bytes(before["other.json"])
    assert main(["export-backbone", str(weights), str(tmp_path / "lonely.safetensors")]) == 2
    assert "saved model" in capsys.readouterr().err
    card_only.unlink()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing replaced, nothing added
    out = tmp_path / "bb.safetensors"
    assert main(["export-backbone", str(weights), str(out)]) == 0
    assert main(["export-backbone", str(weights), str(out), "--stem", "infrared"]) == 0  # an export may be redone
