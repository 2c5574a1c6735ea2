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
