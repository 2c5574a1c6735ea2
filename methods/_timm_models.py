"""timm models built for the harness: the model by name (with the closest names suggested for a
typo), pretrained weights by tag (local caches first, methods._hub) or from a local file that must
cover every tensor of the model (harness.weights), the classifier always removed (num_classes=0).
"""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
import torch
from torch import nn

from harness.errors import ConfigError, InputError
from methods._hub import load_tagged


def _suggest_models(name: str) -> list[str]:
    available = timm.list_models()
    close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
    contains = [m for m in timm.list_models(f"*{name}*") if m not in close]
    return (close + contains)[:8]


PRETRAINED_IMAGENET = "imagenet"


def resolve_pretrained_tag(backbone: str, pretrained: str) -> str:
    """`model.pretrained` -> a timm pretrained name `arch.tag`.

    "imagenet" is timm's default weights of the backbone; "tv_in1k" or "resnet50.tv_in1k" name
    one set of weights of the backbone's architecture (`timm.list_pretrained("resnet50.*")`).
    """
    arch = backbone.split(".")[0]
    if pretrained == PRETRAINED_IMAGENET:
        cfg = timm.models.get_pretrained_cfg(backbone)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id and (cfg is None or not getattr(cfg, "url", None)):
            raise ConfigError(f"model.pretrained={pretrained!r}: timm has no pretrained weights for {backbone!r}")
        return hub_id.split("/")[-1] if hub_id else backbone
    tag = pretrained if "." in pretrained else f"{arch}.{pretrained}"
    if tag.split(".")[0] != arch:
        raise ConfigError(f"model.pretrained={pretrained!r}: weights of {tag.split('.')[0]!r} do not fit the backbone "
                          f"{backbone!r}; expected {arch}.<tag>")
    if tag not in timm.list_pretrained(f"{arch}.*"):
        available = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise ConfigError(f"model.pretrained={pretrained!r}: timm has no weights {tag!r}; available: {available}")
    return tag


def _weights_unavailable(tag: str, pretrained: str, error: BaseException) -> Exception:
    """The InputError for pretrained weights that cannot be fetched (offline, hub unreachable, not cached)."""
    from huggingface_hub import constants

    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return InputError(
        f"model.pretrained={pretrained!r}: cannot load timm weights {tag!r} ({type(error).__name__}: {reason}). "
        f"timm fetches them through the Hugging Face hub cache ({constants.HF_HUB_CACHE}; torch hub downloads: "
        f"{torch.hub.get_dir()}). On a machine without internet either pre-fetch them into that cache elsewhere "
        f"(python -c \"import timm; timm.create_model('{tag}', pretrained=True)\") and copy the cache over, or "
        "save the weights to a local file and set model.pretrained_file to it (the offline route).")


def create_timm_model(name: str, *, pretrained: str | None = None, pretrained_file: str | None = None,
                      **timm_kwargs: Any) -> nn.Module:
    """Build a classifier-free timm model; pretrained weights from a local file or through timm's hub cache.

    `pretrained` ("imagenet" or a timm tag, see `resolve_pretrained_tag`) loads from timm's caches
    without a network call when the weights are there, else through timm's download
    (methods._hub); offline or with the hub unreachable, it raises InputError within seconds naming
    the tag, the cache and `model.pretrained_file`. `pretrained_file` never touches the network and
    must cover the model (`pretrained_tensors`).
    """
    if not isinstance(name, str) or not timm.is_model(name):
        suggestions = _suggest_models(str(name))
        hint = f"; close matches: {', '.join(suggestions)}" if suggestions else "; see timm.list_models()"
        raise ConfigError(f"unknown timm backbone {name!r}{hint}")
    for reserved in ("num_classes", "pretrained", "pretrained_cfg_overlay", "features_only"):
        if reserved in timm_kwargs:
            raise ConfigError(
                f"timm keyword {reserved!r} is set by the two-stream backbone and cannot be passed for {name!r}"
            )
    if pretrained is not None and pretrained_file is not None:
        raise ConfigError(f"model.pretrained={pretrained!r} and model.pretrained_file={pretrained_file!r}: "
                          "set one of them")
    kwargs: dict[str, Any] = dict(timm_kwargs, num_classes=0)
    model_name = name
    if pretrained is not None:
        model_name = resolve_pretrained_tag(name, pretrained)
        kwargs.update(pretrained=True)
    try:
        if pretrained is not None:  # cached weights load without the network; others fail fast offline
            model = load_tagged(model_name, lambda: timm.create_model(model_name, **kwargs))
        else:
            model = timm.create_model(model_name, **kwargs)
    except TypeError as error:
        raise ConfigError(f"timm rejected the keyword arguments {sorted(timm_kwargs)} for {name!r}: {error}") from error
    except Exception as error:
        if pretrained is not None:
            raise _weights_unavailable(model_name, pretrained, error) from None
        raise
    if pretrained_file is not None:
        # strict=False only for the listed exceptions: pretrained_tensors checked every other name
        model.load_state_dict(pretrained_tensors(model, name, pretrained_file), strict=False)
    return model


def _classifier_names(model: nn.Module) -> set[str]:
    """State-dict names of the timm classifier a model built with num_classes=0 has not (e.g. fc.weight)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    modules = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {f"{module}.{tensor}" for module in modules for tensor in ("weight", "bias")}


OPTIONAL_PRETRAINED_SUFFIXES = (".num_batches_tracked",)
"""Tensors a `model.pretrained_file` may lack (torchvision-era files): BatchNorm with a momentum never reads them."""


def pretrained_tensors(model: nn.Module, name: str, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of `model.pretrained_file` for timm model `model` (built with num_classes=0).

    The file must hold every tensor of the model, with its shape and dtype, under timm's names:
    a file that fits nothing would otherwise leave the backbone at random init without a word.
    Deliberate exceptions: the classifier (present in ImageNet files) is dropped, and
    `num_batches_tracked` may be absent. Raises ConfigError naming the file, its kind (saved
    model, exported backbone, plain state dict), the missing and unexpected names.
    """
    from harness.weights import SAVED_MODEL_FORMAT, check_fit, read_weights

    try:
        weights = read_weights(path)
        expected = model.state_dict()
        if weights.format == SAVED_MODEL_FORMAT:
            hint = (f". `vireid export-backbone {path} OUT.safetensors` writes its backbone as the timm weights "
                    "model.pretrained_file takes")
        else:
            hint = (f". model.pretrained_file takes the timm model's own tensor names: a file written by `vireid "
                    f"export-backbone` from a model of backbone {name!r}, or torch.save(timm.create_model("
                    f"{name!r}).state_dict(), ...)")
        check_fit(weights, expected, network=f"backbone {name!r}", hint=hint, ignored=_classifier_names(model),
                  optional={k for k in expected if k.endswith(OPTIONAL_PRETRAINED_SUFFIXES)})
    except InputError as exc:
        raise ConfigError(f"model.pretrained_file: {exc}") from None
    return {k: v for k, v in weights.tensors.items() if k in expected}


def check_pretrained_file(name: str, path: str | os.PathLike[str]) -> None:
    """ConfigError unless `path` reads as weights that cover timm model `name` (built on the meta device)."""
    with torch.device("meta"):
        model = create_timm_model(name)
    pretrained_tensors(model, name, path)
