import numpy as np
import pytest
import torch

from harness.data import augment
from harness.data.sampler import IdentitySampler
from harness.errors import HarnessError


def _labels():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(10), 7)
    mods = rng.integers(0, 2, size=len(pids))
    mods[::7] = 0
    mods[1::7] = 1  # every identity has both modalities
    return pids, mods


def test_identity_sampler_layout():
    pids, mods = _labels()
    s = IdentitySampler(pids, mods, num_identities=4, images_per_modality=3, seed=1)
    for _ in range(20):
        idx = s.next_batch()
        assert len(idx) == s.batch_size == 24
        vis, ir = idx[:12], idx[12:]
        assert (mods[vis] == 0).all() and (mods[ir] == 1).all()
        # identity-major: each block of K shares one identity, P distinct identities, same order in both halves
        vis_ids = pids[vis].reshape(4, 3)
        ir_ids = pids[ir].reshape(4, 3)
        assert (vis_ids == vis_ids[:, :1]).all() and (ir_ids == ir_ids[:, :1]).all()
        assert (vis_ids[:, 0] == ir_ids[:, 0]).all() and len(set(vis_ids[:, 0])) == 4


def test_identity_sampler_resumes_exactly_and_is_seeded():
    pids, mods = _labels()
    a = IdentitySampler(pids, mods, num_identities=4, images_per_modality=2, seed=3)
    a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(3)]
    b = IdentitySampler(pids, mods, num_identities=4, images_per_modality=2, seed=99)
    b.load_state_dict(state)
    assert all((x == y).all() for x, y in zip(expected, [b.next_batch() for _ in range(3)]))


def test_identity_sampler_rejects_too_few_identities():
    pids, mods = _labels()
    with pytest.raises(HarnessError, match="train.num_identities=11"):
        IdentitySampler(pids, mods, num_identities=11, images_per_modality=2, seed=0)


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_pad_crop_matches_per_image_reference():
    x = torch.randint(0, 256, (5, 3, 8, 6), dtype=torch.uint8)
    out = augment.random_pad_crop(x, 2, _gen(4))
    g = _gen(4)
    oy = (torch.rand(5, generator=g) * 5).long()
    ox = (torch.rand(5, generator=g) * 5).long()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(5):
        assert torch.equal(out[i], padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 6])


def test_flip_and_normalize():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).view(2, 3, 2, 4)
    out = augment.random_flip(x, _gen(1), p=1.0)
    assert torch.equal(out, x.flip(-1))
    assert torch.equal(augment.random_flip(x, _gen(1), p=0.0), x)
    n = augment.normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    expected = [(1 - m) / s for m, s in zip(augment.IMAGENET_MEAN, augment.IMAGENET_STD)]
    assert torch.allclose(n.flatten(), torch.tensor(expected))


def test_random_erasing_boxes():
    x = torch.zeros(64, 3, 32, 16)
    out = augment.random_erasing(x, _gen(2), p=0.5, area=(0.1, 0.3))
    erased = (out != 0).any(1)  # (B, H, W)
    n_erased = erased.flatten(1).any(1)
    assert 15 < n_erased.sum() < 50
    for img in erased[n_erased]:
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        # one axis-aligned box: its bounding rectangle is fully erased
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and box.sum() == img.sum()
        assert 0.03 <= img.float().mean() <= 0.45  # area fraction within the bounds, up to rounding/clipping


def test_train_augment_is_deterministic_per_seed():
    x = torch.randint(0, 256, (4, 3, 16, 8), dtype=torch.uint8)
    kw = dict(pad=2, flip=True, erasing_p=0.5, erasing_area=(0.02, 0.4))
    a = augment.train_augment(x, _gen(7), **kw)
    b = augment.train_augment(x, _gen(7), **kw)
    c = augment.train_augment(x, _gen(8), **kw)
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)


def test_random_grayscale_uses_luma_and_probability():
    x = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8)
    out = augment.random_grayscale(x, _gen(5), p=0.5)
    gray = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert 70 < int(gray.sum()) < 130
    i = int(gray.nonzero()[0])
    r, g, b = x[i].double()
    assert torch.equal(out[i, 0], (0.299 * r + 0.587 * g + 0.114 * b).round().to(torch.uint8))
    unchanged = ~gray
    assert torch.equal(out[unchanged], x[unchanged])
    assert torch.equal(augment.random_grayscale(x, _gen(5), p=0.0), x)
