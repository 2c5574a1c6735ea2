import os

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data import images
from harness.data.images import load_images
from harness.errors import HarnessError
from tests.conftest_trees import write_image


def _halves(path, top, bottom, size=(10, 20)):
    """Top half one colour, bottom half another (width 10, height 20)."""
    image = Image.new("RGB", size, top)
    image.paste(Image.new("RGB", (size[0], size[1] // 2), bottom), (0, size[1] // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def files(tmp_path):
    return [
        str(write_image(tmp_path / "img" / "grey.bmp", 77)),
        str(write_image(tmp_path / "img" / "red.png", (200, 10, 30))),
        str(_halves(tmp_path / "img" / "halves.png", (0, 0, 255), (255, 255, 0))),
        str(write_image(tmp_path / "img" / "green.bmp", (5, 180, 60), size=(3, 3))),
    ]


def _count_decodes(monkeypatch):
    calls = []
    original = images.decode_image

    def counting(path, height, width, resample="bilinear"):
        calls.append(path)
        return original(path, height, width, resample)

    monkeypatch.setattr(images, "decode_image", counting)
    return calls


def test_decode_shapes_channels_and_orientation(files):
    out = load_images(files, 8, 4, cache_dir=None)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (4, 3, 8, 4)
    # single-channel grey becomes three equal channels
    assert (out[0] == 77).all()
    assert out[1, 0].eq(200).all() and out[1, 1].eq(10).all() and out[1, 2].eq(30).all()
    # (H, W) order: the top rows keep the top colour, the bottom rows the bottom one
    assert out[2, :, :3].permute(1, 2, 0).reshape(-1, 3).tolist() == [[0, 0, 255]] * 12
    assert out[2, :, 5:].permute(1, 2, 0).reshape(-1, 3).tolist() == [[255, 255, 0]] * 12
    # upscaling a solid image keeps it solid
    assert out[3, 1].eq(180).all()
    assert tuple(load_images([], 8, 4, cache_dir=None).shape) == (0, 3, 8, 4)


def test_cache_hit_skips_decoding(files, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    cache = tmp_path / "cache"
    first = load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 4
    second = load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 4
    assert torch.equal(first, second)
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
    # another size or order is another entry
    load_images(files, 6, 4, cache_dir=cache)
    load_images(files[::-1], 8, 4, cache_dir=cache)
    assert len(calls) == 12
    assert torch.equal(load_images(files[::-1], 8, 4, cache_dir=cache), first.flip(0))
    assert len(calls) == 12


def test_cache_rebuilt_when_a_file_changes(files, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    cache = tmp_path / "cache"
    load_images(files, 8, 4, cache_dir=cache)
    # same size, new content and modification time
    write_image(tmp_path / "img" / "red.png", (10, 200, 30))
    stat = os.stat(files[1])
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    rebuilt = load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 8
    assert rebuilt[1, 1].eq(200).all()
    assert len(list(cache.iterdir())) == 2  # rebuilt in place, not beside
    assert load_images(files, 8, 4, cache_dir=cache)[1, 1].eq(200).all()
    assert len(calls) == 8
    # only the mtime changes: rebuilt
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 9_000_000_000))
    load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 12


def test_corrupt_file_fails_and_leaves_no_cache(files, tmp_path):
    bad = tmp_path / "img" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    empty = tmp_path / "img" / "empty.png"
    empty.write_bytes(b"")
    cache = tmp_path / "cache"
    with pytest.raises(HarnessError, match=r"broken\.jpg"):
        load_images([*files[:2], str(bad), *files[2:]], 8, 4, cache_dir=cache)
    assert list(cache.iterdir()) == []
    with pytest.raises(HarnessError, match=r"empty\.png.*empty"):
        load_images([str(empty), *files], 8, 4, cache_dir=cache)
    with pytest.raises(HarnessError, match=r"nothere\.png"):
        load_images([*files, str(tmp_path / "nothere.png")], 8, 4, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_truncated_cache_file_is_rebuilt(files, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    cache = tmp_path / "cache"
    expected = load_images(files, 8, 4, cache_dir=cache)
    (array_file,) = cache.glob("*.npy")
    array_file.write_bytes(array_file.read_bytes()[:100])
    again = load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 8 and torch.equal(again, expected)
    assert np.load(array_file).shape == (4, 3, 8, 4)


def test_bad_sizes():
    with pytest.raises(HarnessError, match="height"):
        load_images([], 0, 4, cache_dir=None)
    with pytest.raises(HarnessError, match="width"):
        load_images([], 4, 2.5, cache_dir=None)


def test_zeroed_cache_array_with_a_valid_header_is_rebuilt(files, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    cache = tmp_path / "cache"
    expected = load_images(files, 8, 4, cache_dir=cache)
    (array_file,) = cache.glob("*.npy")
    np.save(array_file, np.zeros((4, 3, 8, 4), np.uint8))  # header, dtype and shape all valid
    again = load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 8 and torch.equal(again, expected)
    assert torch.equal(torch.from_numpy(np.load(array_file)), expected)  # repaired on disk
    load_images(files, 8, 4, cache_dir=cache)
    assert len(calls) == 8  # and trusted again once its digest matches


def test_resize_filters_equal_pil_and_key_the_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(path)
    with Image.open(path) as image:
        lanczos = np.asarray(image.convert("RGB").resize((6, 11), Image.LANCZOS))
        bilinear = np.asarray(image.convert("RGB").resize((6, 11), Image.BILINEAR))
    assert not np.array_equal(lanczos, bilinear)
    calls = _count_decodes(monkeypatch)
    cache = tmp_path / "cache"
    got_lanczos = load_images([str(path)], 11, 6, cache_dir=cache, resample="lanczos")
    got_bilinear = load_images([str(path)], 11, 6, cache_dir=cache, resample="bilinear")
    assert np.array_equal(got_lanczos[0].permute(1, 2, 0).numpy(), lanczos)
    assert np.array_equal(got_bilinear[0].permute(1, 2, 0).numpy(), bilinear)
    assert len(calls) == 2 and len(list(cache.glob("*.npy"))) == 2  # one entry per filter
    assert torch.equal(load_images([str(path)], 11, 6, cache_dir=cache, resample="lanczos"), got_lanczos)
    assert len(calls) == 2
    with pytest.raises(HarnessError, match="antialias.*expected one of"):
        load_images([str(path)], 11, 6, cache_dir=None, resample="antialias")


def test_sixteen_bit_images_scale_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 40], [257 * 128, 65535]], dtype=np.uint16).repeat(4, axis=0).repeat(4, axis=1)
    path = tmp_path / "thermal16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")  # the case: Pillow's own convert("RGB") clips to white
    out = load_images([str(path)], 8, 8, cache_dir=None, resample="nearest")[0]
    expected = np.array([[0, 40], [128, 255]], dtype=np.uint8).repeat(4, axis=0).repeat(4, axis=1)
    for channel in range(3):
        assert np.array_equal(out[channel].numpy(), expected)


def test_thirty_two_bit_images_are_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(path)
    with pytest.raises(HarnessError, match=r"float\.tif.*32-bit float"):
        load_images([str(path)], 4, 4, cache_dir=None)


def test_a_killed_writers_temporary_is_removed_at_the_next_build(files, tmp_path):
    import socket

    cache = tmp_path / "cache"
    cache.mkdir()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    left = cache / f".images-x.npy.{socket.gethostname()}.{dead_pid}.vireid-tmp.abc.npy"
    left.write_bytes(b"half an array")
    two_days_ago = os.stat(left).st_mtime - 2 * 86400  # stale by age too, whatever the host name
    os.utime(left, (two_days_ago, two_days_ago))
    load_images(files, 8, 4, cache_dir=cache)
    assert not left.exists()
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npy"]
