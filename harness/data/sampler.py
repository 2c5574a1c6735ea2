"""Identity sampler: each batch holds P identities x (K visible + K infrared) images."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.data.splits import MODALITY_INFRARED, MODALITY_VISIBLE
from harness.errors import ConfigError


class IdentitySampler:
    """Draws index batches for cross-modality metric learning.

    Identities are drawn without replacement within a batch; images of an identity with
    replacement (as the AGW sampler does), so identities with fewer than K images still fill
    their slots. Batch layout: P*K visible indices, then P*K infrared indices, identity-major.
    All state is one NumPy generator, so `state_dict` / `load_state_dict` resume exactly.
    """

    def __init__(self, pids: np.ndarray, modalities: np.ndarray, *, num_identities: int,
                 images_per_modality: int, seed: int) -> None:
        pids = np.asarray(pids, dtype=np.int64)
        modalities = np.asarray(modalities, dtype=np.int64)
        self.P, self.K = num_identities, images_per_modality
        self._tables = {}
        usable = None
        for m in (MODALITY_VISIBLE, MODALITY_INFRARED):
            idx = np.flatnonzero(modalities == m)
            order = idx[np.argsort(pids[idx], kind="stable")]
            ids, starts, counts = np.unique(pids[order], return_index=True, return_counts=True)
            self._tables[m] = (order, dict(zip(ids.tolist(), zip(starts.tolist(), counts.tolist()))))
            usable = set(ids.tolist()) if usable is None else usable & set(ids.tolist())
        self.identities = np.array(sorted(usable or ()), dtype=np.int64)
        if len(self.identities) < self.P:
            raise ConfigError(
                f"train.num_identities={self.P}: only {len(self.identities)} training identities have both "
                f"visible and infrared images; lower train.num_identities")
        # Per identity and modality: (start, count) into the modality's sorted index table.
        self._start = np.zeros((2, len(self.identities)), dtype=np.int64)
        self._count = np.zeros((2, len(self.identities)), dtype=np.int64)
        for m in (MODALITY_VISIBLE, MODALITY_INFRARED):
            lookup = self._tables[m][1]
            for j, pid in enumerate(self.identities.tolist()):
                self._start[m, j], self._count[m, j] = lookup[pid]
        self.rng = np.random.default_rng(seed)

    @property
    def batch_size(self) -> int:
        return 2 * self.P * self.K

    def next_batch(self) -> np.ndarray:
        chosen = self.rng.choice(len(self.identities), size=self.P, replace=False)
        parts = []
        for m in (MODALITY_VISIBLE, MODALITY_INFRARED):
            offs = (self.rng.random((self.P, self.K)) * self._count[m, chosen][:, None]).astype(np.int64)
            parts.append(self._tables[m][0][self._start[m, chosen][:, None] + offs].reshape(-1))
        return np.concatenate(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
