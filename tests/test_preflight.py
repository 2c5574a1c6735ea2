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
