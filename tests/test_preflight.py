"""Every grid point is checked for what only the registries know, before anything trains."""

import re

import pytest

from harness.config import TrialConfig
from harness.errors import ConfigError
from harness.preflight import check_buildable


def _cfg(**model):
    return TrialConfig.from_dict({"model": {"backbone": "resnet18", **model},
                                  "data": {"height": 64, "width": 32}})


def test_a_pretrained_tag_of_another_architecture_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"model\.pretrained='resnet50\.tv_in1k'.*resnet18"):
        check_buildable(_cfg(pretrained="resnet50.tv_in1k"), "spec.yaml grid point 2")


def test_an_unknown_pretrained_tag_names_the_available_ones():
    with pytest.raises(ConfigError, match=r"no weights 'resnet18\.bogus'.*resnet18\.tv_in1k"):
        check_buildable(_cfg(pretrained="bogus"))


def test_pretrained_tag_and_local_file_together_are_refused(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match="set one of them"):
        check_buildable(_cfg(pretrained="imagenet", pretrained_file=str(weights)))


def test_a_known_tag_passes_without_touching_the_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the pre-run check must not open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    check_buildable(_cfg(pretrained="tv_in1k"))


def test_a_missing_weights_file_says_where_a_relative_path_is_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"weights/w\.safetensors is not a file \(a relative path is read "
                                          rf"from the current folder, {re.escape(str(tmp_path))}\)"):
        check_buildable(_cfg(pretrained_file="weights/w.safetensors"))
    with pytest.raises(ConfigError, match=r"is not a file$"):  # an absolute path needs no hint
        check_buildable(_cfg(pretrained_file=str(tmp_path / "w.safetensors")))


# ------------------------------------------------------------------ model.pretrained_file must cover the backbone

def _weights_cfg(path, backbone="test_resnet"):
    return TrialConfig.from_dict({"model": {"backbone": backbone, "non_local": False, "pretrained_file": str(path)},
                                  "data": {"height": 64, "width": 32}})


def _timm_tensors(**kwargs):
    import timm
    import torch

    torch.manual_seed(5)
    model = timm.create_model("test_resnet", **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model.state_dict()


def test_a_weights_file_that_fits_no_backbone_tensor_is_refused_naming_its_kind(tmp_path):
    import torch

    plain = tmp_path / "plain.pth"
    torch.save({"a": torch.zeros(2)}, plain)
    with pytest.raises(ConfigError) as info:
        check_buildable(_weights_cfg(plain), "spec.yaml grid point 3")
    message = str(info.value)
    assert message.startswith("spec.yaml grid point 3: model.pretrained_file: ")
    assert f"{plain} is a plain state dict" in message and "backbone 'test_resnet'" in message
    assert "1 unexpected ['a']" in message and "'bn1.weight'" in message  # what is there, what is not
    assert "vireid export-backbone" in message


def test_a_saved_model_given_as_pretrained_file_says_to_export_its_backbone(tmp_path, tiny_config):
    from harness.saved_models import TrainedModel, save_model
    from methods import create_method

    cfg = tiny_config(method="agw")
    weights = save_model(tmp_path, "k", TrainedModel(create_method(cfg, 5, 4), cfg, 5, 4, "synthetic"))
    with pytest.raises(ConfigError) as info:
        check_buildable(_weights_cfg(weights))
    message = str(info.value)
    assert f"{weights} is a saved model" in message and re.search(r"\d+ unexpected \['net\.backbone\.model\.", message)
    assert f"vireid export-backbone {weights} OUT.safetensors" in message


@pytest.mark.parametrize("damage, fragment", [
    ("drop", "missing 1 of the"),
    ("shape", "another shape: ['layer4.0.conv2.weight (96, 1, 3, 3) for (96, 96, 3, 3)']"),
    ("dtype", "another dtype, never cast: ['layer4.0.conv2.weight torch.int64 for torch.float32']"),
    ("extra", "unexpected ['head.extra.weight']"),
])
def test_one_misfitting_tensor_is_enough_to_refuse(damage, fragment, tmp_path):
    import torch

    tensors = _timm_tensors(num_classes=0)
    key = "layer4.0.conv2.weight"
    if damage == "drop":
        del tensors[key]
    elif damage == "shape":
        tensors[key] = tensors[key][:, :1]
    elif damage == "dtype":
        tensors[key] = (tensors[key] * 1000).long()
    else:
        tensors["head.extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.pth"
    torch.save(tensors, path)
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        check_buildable(_weights_cfg(path))
    if damage == "drop":
        assert f"tensors it needs ['{key}'], 0 unexpected" in str(info.value)


def test_the_listed_exceptions_classifier_and_batch_counters_load(tmp_path, tiny_config):
    """An ImageNet-style file: timm's classifier included, no num_batches_tracked (torchvision's files)."""
    import torch

    from methods import create_method

    tensors = _timm_tensors()  # 1000-class classifier fc.*
    assert "fc.weight" in tensors
    kept = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "imagenet-style.pth"
    torch.save(kept, path)
    check_buildable(_weights_cfg(path))
    method = create_method(tiny_config(**{"model.pretrained_file": str(path)}), 5, 4)
    plain = method.net.backbone.model
    for modality in (0, 1):
        assert torch.equal(method.net.backbone.stem(modality)["conv1"][0].weight, tensors["conv1.0.weight"])
    assert torch.equal(plain.layer4[0].conv2.weight, tensors["layer4.0.conv2.weight"])
    assert torch.equal(plain.layer1[0].bn1.running_var, tensors["layer1.0.bn1.running_var"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_truncated_weights_file_is_refused_before_training(suffix, tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = _timm_tensors(num_classes=0)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(tensors, path)
    else:
        save_file(tensors, str(path))
    check_buildable(_weights_cfg(path))  # whole: accepted
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ConfigError, match=rf"model\.pretrained_file: {re.escape(str(path))}: unreadable weights file"):
        check_buildable(_weights_cfg(path))
