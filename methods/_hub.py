"""Pretrained timm weights named by a tag (`model.pretrained`): from the local caches first, without
a network call; only weights that are not cached are downloaded, and only after a short probe of
the server answers.

The hub client, asked for a file while the machine is offline, retries with back-off for about a
minute per file before it falls back to its cache (and it is offline only when HF_HUB_OFFLINE says
so). Here a cached tag loads without the network whatever the environment, and an uncached one
on a machine that cannot reach the server fails within PROBE_SECONDS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlparse

import timm
import torch

PROBE_SECONDS = 5.0
"""How long the name lookup and TCP connection to the weights' server (or proxy) may take."""

T = TypeVar("T")


class WeightsNotCached(OSError):
    """The weights are in no local cache and their server did not answer the probe."""


def weights_location(tag: str) -> tuple[str, str]:
    """("hf-hub", the hub's URL) or ("url", the file's URL): where timm fetches `tag`'s weights from
    (the hub where the tag has a hub id and the hub client is installed, as timm chooses)."""
    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is not None and cfg.hf_hub_id and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import constants

        return "hf-hub", constants.ENDPOINT
    if cfg is not None and cfg.url:
        return "url", cfg.url
    return "hf-hub", "https://huggingface.co"


def torch_hub_file(url: str) -> str:
    """Where torch.hub keeps the download of `url` (timm's default for URL weights)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """The Hugging Face hub client in offline mode (files come from its cache or not at all)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def probe_address(url: str) -> tuple[str, int]:
    """The host and port a download of `url` connects to first: the proxy where one applies."""
    parts = urlparse(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or "", proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    return host, port


def reachable(url: str, timeout: float | None = None) -> bool:
    """Whether a TCP connection to `url`'s server (or proxy) opens within `timeout` seconds (default
    PROBE_SECONDS), name lookup included (it runs in a helper thread: a lookup has no timeout of its own)."""
    timeout = PROBE_SECONDS if timeout is None else timeout
    host, port = probe_address(url)
    opened = threading.Event()

    def attempt() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            opened.set()

    probe = threading.Thread(target=attempt, name="vireid-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)  # a refused connection or a failed lookup ends it at once
    return opened.is_set()


def load_tagged(tag: str, create: Callable[[], T]) -> T:
    """`create()` (which builds the model and loads `tag`'s weights through timm) from the caches only;
    where the weights are not cached, again online once the server answers the probe.

    Raises WeightsNotCached when they are not cached and the server (or proxy) cannot be reached
    within PROBE_SECONDS, or when HF_HUB_OFFLINE is set; other errors of `create` propagate.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    kind, location = weights_location(tag)
    if kind == "hf-hub" or os.path.isfile(torch_hub_file(location)):
        try:
            with hub_offline():
                return create()
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            pass  # not cached: download below
    if constants.HF_HUB_OFFLINE:
        raise WeightsNotCached("not in the local cache, and HF_HUB_OFFLINE is set")
    if not reachable(location):
        host, port = probe_address(location)
        raise WeightsNotCached(f"not in the local cache, and {host}:{port} did not answer within {PROBE_SECONDS:g} s "
                               "(offline?)")
    return create()
