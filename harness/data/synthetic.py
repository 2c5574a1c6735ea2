"""Procedural visible-infrared person images, written in the SYSU-MM01, RegDB and LLCM layouts.

Tests and smoke runs need data whose modality gap is real: an identity keeps its body shape,
garment patterns, accessories and garment emissivities in every camera, while garment colour
exists only in the visible cameras. Infrared cameras render one intensity channel from
emissivity and temperature (skin bright) with sensor blur, noise and fixed-pattern column noise.
Everything is drawn with numpy masks on coordinate grids, and every image is seeded by
(seed, layout, identity, camera, modality, index), so files are byte-identical whatever the
generation order.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import HarnessError

GENERATOR_VERSION = 1
LAYOUTS = ("sysu", "regdb", "llcm")
JPEG_QUALITY = 90
MARKER_NAME = ".synthetic-complete.json"
REGDB_TRIALS = 10
SYSU_VAL_FRACTION = 0.25  # of the non-test identities, as SYSU's 99 val of 395 train+val

_LAYOUT_CODES = {"sysu": 1, "regdb": 2, "llcm": 3}
_TAG_IDENTITY, _TAG_SCENE, _TAG_SENSOR, _TAG_SAMPLE, _TAG_SPLIT, _TAG_MISSING = range(101, 107)
_STALE_TEMP_SECONDS = 6 * 3600


@dataclass(frozen=True)
class SynthSpec:
    """Size and randomness of a synthetic dataset; the cache key of `ensure_synthetic`."""

    num_identities: int = 60
    images_per_camera: int = 4
    height: int = 128
    width: int = 64
    seed: int = 0
    test_fraction: float = 0.4
    missing_camera_rate: float = 0.1

    def __post_init__(self) -> None:
        # Values are normalised to int / float so that equal specs give equal cache keys.
        def integer(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise HarnessError(f"SynthSpec.{name}={value!r}: expected an integer >= {minimum}")
            object.__setattr__(self, name, int(value))

        def fraction(name: str, zero_allowed: bool) -> None:
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not number or not (0.0 <= float(value) < 1.0) or (float(value) == 0.0 and not zero_allowed):
                raise HarnessError(f"SynthSpec.{name}={value!r}: expected a number in {'[0' if zero_allowed else '(0'}, 1)")
            object.__setattr__(self, name, float(value))

        integer("num_identities", 4)
        integer("images_per_camera", 1)
        integer("height", 32)
        integer("width", 16)
        integer("seed", 0)
        fraction("test_fraction", zero_allowed=False)
        fraction("missing_camera_rate", zero_allowed=True)


@dataclass(frozen=True)
class SynthCamera:
    """A camera of a layout; cameras that share a `scene` share background and viewpoint."""

    number: int
    infrared: bool
    scene: int


SYSU_CAMERAS = (
    SynthCamera(1, False, 1),
    SynthCamera(2, False, 2),
    SynthCamera(3, True, 2),  # same indoor room as cam2
    SynthCamera(4, False, 4),
    SynthCamera(5, False, 5),
    SynthCamera(6, True, 6),
)
REGDB_CAMERAS = (SynthCamera(1, False, 1), SynthCamera(2, True, 1))  # co-located dual camera
LLCM_CAMERAS = tuple(SynthCamera(c, False, c) for c in range(1, 10)) + tuple(
    SynthCamera(c, True, c) for c in (1, 2, 4, 5, 6, 7, 8, 9)
)
CAMERAS = {"sysu": SYSU_CAMERAS, "regdb": REGDB_CAMERAS, "llcm": LLCM_CAMERAS}


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


# ----------------------------------------------------------------------------------------------
# Identity, scene and sensor attributes
# ----------------------------------------------------------------------------------------------

_PATTERNS = ("plain", "hstripes", "vstripes", "diagonal", "checks", "dots")


@dataclass(frozen=True)
class _Garment:
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    emissivity_a: float
    emissivity_b: float
    pattern: str
    frequency: float  # cycles per body height
    angle: float
    phase: float


@dataclass(frozen=True)
class _Identity:
    stature: float
    head_radius: float
    head_aspect: float
    shoulder_half_width: float
    hip_half_width: float
    leg_fraction: float
    arm_radius: float
    leg_radius: float
    sleeve_fraction: float
    lower_kind: str  # pants | shorts | skirt
    upper: _Garment
    lower: _Garment
    skin_colour: tuple[float, float, float]
    skin_heat: float
    hair_colour: tuple[float, float, float]
    hair_heat: float
    hair_long: float  # body units below the head, 0 for short hair
    hair_fringe: float
    hat: str  # none | cap | beanie
    hat_colour: tuple[float, float, float]
    hat_heat: float
    bag: str  # none | shoulder | backpack | handbag
    bag_side: int
    bag_colour: tuple[float, float, float]
    bag_heat: float
    shoe_colour: tuple[float, float, float]
    shoe_heat: float


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.random() < 0.25:  # neutral: black, grey or white garments are common
        v = float(rng.uniform(0.08, 0.95))
        return (v, v, v)
    return _hsv(float(rng.random()), float(rng.uniform(0.35, 0.95)), float(rng.uniform(0.25, 0.95)))


def _contrasting_colour(rng: np.random.Generator, base: tuple[float, float, float]) -> tuple[float, float, float]:
    for _ in range(8):
        other = _random_colour(rng)
        if float(np.abs(np.subtract(other, base)).sum()) > 0.6:
            return other
    return tuple(float(1.0 - c) for c in base)


def _random_garment(rng: np.random.Generator, patterns: tuple[str, ...], freq_range: tuple[float, float]) -> _Garment:
    pattern = patterns[int(rng.integers(len(patterns)))]
    colour_a = _random_colour(rng)
    colour_b = _contrasting_colour(rng, colour_a) if pattern != "plain" else colour_a
    emissivity_a = float(rng.uniform(0.38, 0.88))
    if pattern == "plain":
        emissivity_b = emissivity_a
    else:  # the pattern survives in infrared as an emissivity contrast
        step = float(rng.uniform(0.2, 0.38))
        emissivity_b = emissivity_a - step if emissivity_a - step >= 0.2 else emissivity_a + step
        emissivity_b = float(min(emissivity_b, 0.98))
    angle = {
        "plain": 0.0,
        "hstripes": np.pi / 2,
        "vstripes": 0.0,
        "diagonal": float(rng.choice([np.pi / 4, 3 * np.pi / 4])),
        "checks": float(rng.choice([0.0, np.pi / 4])),
        "dots": float(rng.choice([0.0, np.pi / 4])),
    }[pattern]
    return _Garment(
        colour_a=colour_a,
        colour_b=colour_b,
        emissivity_a=emissivity_a,
        emissivity_b=emissivity_b,
        pattern=pattern,
        frequency=float(rng.uniform(*freq_range)),
        angle=angle,
        phase=float(rng.uniform(0, 2 * np.pi)),
    )


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, pid: int) -> _Identity:
    rng = _rng(seed, _TAG_IDENTITY, pid)
    skin = _hsv(float(rng.uniform(0.03, 0.09)), float(rng.uniform(0.25, 0.6)), float(rng.uniform(0.35, 0.95)))
    hair_value = float(rng.choice([0.08, 0.15, 0.3, 0.55]))
    lower_kind = str(rng.choice(["pants", "pants", "shorts", "skirt"]))
    return _Identity(
        stature=float(rng.uniform(0.86, 1.0)),
        head_radius=float(rng.uniform(0.05, 0.072)),
        head_aspect=float(rng.uniform(1.1, 1.35)),
        shoulder_half_width=float(rng.uniform(0.1, 0.16)),
        hip_half_width=float(rng.uniform(0.075, 0.12)),
        leg_fraction=float(rng.uniform(0.42, 0.52)),
        arm_radius=float(rng.uniform(0.022, 0.034)),
        leg_radius=float(rng.uniform(0.032, 0.05)),
        sleeve_fraction=float(rng.choice([0.35, 0.55, 1.0, 1.0])),
        lower_kind=lower_kind,
        upper=_random_garment(rng, _PATTERNS, (7.0, 16.0)),
        lower=_random_garment(rng, ("plain", "plain", "hstripes", "vstripes", "checks"), (6.0, 12.0)),
        skin_colour=skin,
        skin_heat=float(rng.uniform(0.88, 0.98)),
        hair_colour=_hsv(float(rng.uniform(0.02, 0.12)), float(rng.uniform(0.3, 0.7)), hair_value),
        hair_heat=float(rng.uniform(0.45, 0.65)),
        hair_long=float(rng.choice([0.0, 0.0, rng.uniform(0.06, 0.16)])),
        hair_fringe=float(rng.uniform(0.05, 0.4)),
        hat=str(rng.choice(["none", "none", "none", "cap", "beanie"])),
        hat_colour=_random_colour(rng),
        hat_heat=float(rng.uniform(0.25, 0.6)),
        bag=str(rng.choice(["none", "none", "shoulder", "backpack", "handbag"])),
        bag_side=int(rng.choice([-1, 1])),
        bag_colour=_random_colour(rng),
        bag_heat=float(rng.uniform(0.12, 0.4)),
        shoe_colour=_random_colour(rng),
        shoe_heat=float(rng.uniform(0.2, 0.45)),
    )


@dataclass(frozen=True)
class _Scene:
    person_height: float  # fraction of image height
    foot_y: float  # fraction of image height
    x_offset: float  # fraction of image width
    squeeze: float  # horizontal scale of the lens
    occluder_colour: tuple[float, float, float]
    occluder_heat: float


@functools.lru_cache(maxsize=256)
def _scene(seed: int, layout_code: int, scene: int) -> _Scene:
    rng = _rng(seed, _TAG_SCENE, layout_code, scene, 0)
    return _Scene(
        person_height=float(rng.uniform(0.78, 0.9)),
        foot_y=float(rng.uniform(0.93, 0.985)),
        x_offset=float(rng.uniform(-0.06, 0.06)),
        squeeze=float(rng.uniform(0.88, 1.12)),
        occluder_colour=_random_colour(rng),
        occluder_heat=float(rng.uniform(0.05, 0.3)),
    )


@functools.lru_cache(maxsize=64)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs + 0.5, ys + 0.5


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Bilinearly upsampled random grid: low-frequency texture in [-1, 1]."""
    gh, gw = int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2
    coarse = rng.uniform(-1, 1, size=(gh, gw))
    X, Y = _grid(height, width)
    fx, fy = X / cell, Y / cell
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    wx, wy = fx - x0, fy - y0
    top = coarse[y0, x0] * (1 - wx) + coarse[y0, x0 + 1] * wx
    bottom = coarse[y0 + 1, x0] * (1 - wx) + coarse[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    colour = np.asarray(_random_colour(rng))
    return 0.45 * colour + 0.55 * colour.mean()


@functools.lru_cache(maxsize=128)
def _background(seed: int, layout_code: int, scene: int, height: int, width: int, infrared: bool) -> np.ndarray:
    """Scene background: wall, floor, panels (doors, windows, trees) and texture.

    Geometry is drawn from the scene seed (shared by a visible and an infrared camera of one
    scene); the visible colours and the infrared levels are independent draws.
    """
    geometry = _rng(seed, _TAG_SCENE, layout_code, scene, 1)
    X, Y = _grid(height, width)
    horizon = geometry.uniform(0.45, 0.8) * height
    panels = []
    for _ in range(int(geometry.integers(1, 4))):
        x0 = geometry.uniform(-0.2, 1.0) * width
        w = geometry.uniform(0.1, 0.4) * width
        y0 = geometry.uniform(0.0, 0.35) * horizon
        y1 = geometry.uniform(0.6, 1.0) * horizon
        panels.append((x0, x0 + w, y0, y1))
    tile_period = geometry.uniform(5, 14)
    tile_angle = geometry.uniform(-0.6, 0.6)
    texture = _smooth_noise(geometry, height, width, cell=geometry.uniform(4, 12))
    floor = np.clip(Y - horizon + 0.5, 0, 1)
    tiles = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (Y * np.cos(tile_angle) + X * np.sin(tile_angle)) / tile_period))
    vertical = (Y / height) - 0.5

    looks = _rng(seed, _TAG_SCENE, layout_code, scene, 2 + int(infrared))
    if infrared:
        wall, ground = looks.uniform(0.06, 0.32), looks.uniform(0.04, 0.28)
        image = wall * (1 - floor) + ground * floor
        image = image * (1 + looks.uniform(-0.2, 0.2) * tiles * floor)
        for x0, x1, y0, y1 in panels:
            mask = (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)
            image = np.where(mask, looks.uniform(0.04, 0.55), image)
        image = image * (1 + looks.uniform(-0.3, 0.3) * vertical) + looks.uniform(0.02, 0.06) * texture
        return np.clip(image, 0, 1)
    wall, ground = _muted_colour(looks), _muted_colour(looks)
    image = wall * (1 - floor[..., None]) + ground * floor[..., None]
    image = image * (1 + looks.uniform(-0.25, 0.25) * (tiles * floor)[..., None])
    for x0, x1, y0, y1 in panels:
        mask = ((X >= x0) & (X < x1) & (Y >= y0) & (Y < y1))[..., None]
        image = np.where(mask, _muted_colour(looks), image)
    image = image * (1 + looks.uniform(-0.4, 0.4) * vertical[..., None])
    image = image + looks.uniform(0.03, 0.09) * texture[..., None]
    return np.clip(image, 0, 1)


@dataclass(frozen=True)
class _Sensor:
    gain: float
    offset: float
    cast: tuple[float, float, float]
    light_gradient: float
    blur_sigma: float
    noise_sigma: float
    columns: np.ndarray = dataclasses.field(compare=False)  # fixed-pattern column noise (width,)


@functools.lru_cache(maxsize=256)
def _sensor(seed: int, layout_code: int, camera: SynthCamera, width: int) -> _Sensor:
    rng = _rng(seed, _TAG_SENSOR, layout_code, camera.number, int(camera.infrared))
    if camera.infrared:
        return _Sensor(
            gain=float(rng.uniform(0.85, 1.1)),
            offset=float(rng.uniform(0.0, 0.08)),
            cast=(1.0, 1.0, 1.0),
            light_gradient=0.0,
            blur_sigma=float(rng.uniform(0.7, 1.3)),
            noise_sigma=float(rng.uniform(0.02, 0.04)),
            columns=rng.normal(0, rng.uniform(0.01, 0.03), size=width),
        )
    cast = rng.uniform(0.82, 1.18, size=3)
    return _Sensor(
        gain=float(rng.uniform(0.7, 1.15)),
        offset=0.0,
        cast=tuple(float(c) for c in cast / cast.mean()),
        light_gradient=float(rng.uniform(-0.3, 0.3)),
        blur_sigma=0.0,
        noise_sigma=float(rng.uniform(0.008, 0.02)),
        columns=np.zeros(width),
    )


# ----------------------------------------------------------------------------------------------
# Drawing primitives: anti-aliased coverage from signed distances (pixels)
# ----------------------------------------------------------------------------------------------


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _ellipse(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    radial = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)
    return _coverage((radial - 1.0) * min(rx, ry))


def _box(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, half_w: float, half_h: float, round_r: float = 0.0) -> np.ndarray:
    qx = np.abs(X - cx) - half_w + round_r
    qy = np.abs(Y - cy) - half_h + round_r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return _coverage(outside + np.minimum(np.maximum(qx, qy), 0) - round_r)


def _trapezoid(X: np.ndarray, Y: np.ndarray, cx: float, y0: float, y1: float, w0: float, w1: float) -> np.ndarray:
    s = np.clip((Y - y0) / (y1 - y0), 0, 1)
    half = w0 + (w1 - w0) * s
    return _coverage(np.maximum(np.abs(X - cx) - half, np.maximum(y0 - Y, Y - y1)))


def _capsule(X: np.ndarray, Y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of a thick segment and the position t in [0, 1] along it."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((X - p0[0]) * dx + (Y - p0[1]) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    distance = np.hypot(X - (p0[0] + t * dx), Y - (p0[1] + t * dy))
    return _coverage(distance - radius), t


def _pattern(garment: _Garment, u: np.ndarray, v: np.ndarray, phase_jitter: float) -> np.ndarray | None:
    """Pattern weight in [0, 1] on body coordinates (u, v in body heights)."""
    if garment.pattern == "plain":
        return None
    c, s = np.cos(garment.angle), np.sin(garment.angle)
    a = 2 * np.pi * garment.frequency * (u * c + v * s) + garment.phase + phase_jitter
    if garment.pattern in ("hstripes", "vstripes", "diagonal"):
        return np.clip(0.5 + 2.0 * np.sin(a), 0, 1)
    b = 2 * np.pi * garment.frequency * (-u * s + v * c) + garment.phase * 0.7
    if garment.pattern == "checks":
        return np.clip(0.5 + 3.0 * np.sin(a) * np.sin(b), 0, 1)
    return np.clip(4.0 * (np.sin(a) * np.sin(b) - 0.45), 0, 1)  # dots


Window = tuple[slice, slice]
Shape = tuple[Window, np.ndarray]


class _Frame:
    """Pixel grid of one image, person coordinates optionally mirrored about `cx`.

    Primitives are evaluated only inside their bounding window, which keeps the per-image
    cost proportional to the area actually drawn.
    """

    def __init__(self, height: int, width: int, cx: float, mirrored: bool) -> None:
        X, Y = _grid(height, width)
        self.X = 2 * cx - X if mirrored else X
        self.Y = Y
        self.height, self.width, self.cx, self.mirrored = height, width, cx, mirrored

    def grid(self, x0: float, x1: float, y0: float, y1: float) -> tuple[Window, np.ndarray, np.ndarray] | None:
        if self.mirrored:
            x0, x1 = 2 * self.cx - x1, 2 * self.cx - x0
        r0, r1 = max(int(np.floor(y0)) - 1, 0), min(int(np.ceil(y1)) + 2, self.height)
        c0, c1 = max(int(np.floor(x0)) - 1, 0), min(int(np.ceil(x1)) + 2, self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        window = (slice(r0, r1), slice(c0, c1))
        return window, self.X[window], self.Y[window]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> Shape | None:
        g = self.grid(cx - rx, cx + rx, cy - ry, cy + ry)
        return None if g is None else (g[0], _ellipse(g[1], g[2], cx, cy, rx, ry))

    def box(self, cx: float, cy: float, half_w: float, half_h: float, round_r: float = 0.0) -> Shape | None:
        g = self.grid(cx - half_w, cx + half_w, cy - half_h, cy + half_h)
        return None if g is None else (g[0], _box(g[1], g[2], cx, cy, half_w, half_h, round_r))

    def capsule(self, p0: tuple[float, float], p1: tuple[float, float], radius: float) -> tuple[Window, np.ndarray, np.ndarray] | None:
        g = self.grid(min(p0[0], p1[0]) - radius, max(p0[0], p1[0]) + radius, min(p0[1], p1[1]) - radius, max(p0[1], p1[1]) + radius)
        if g is None:
            return None
        alpha, t = _capsule(g[1], g[2], p0, p1, radius)
        return g[0], alpha, t


class _Canvas:
    """Paints layers back to front, either as RGB albedo or as infrared radiance."""

    def __init__(self, background: np.ndarray, infrared: bool) -> None:
        self.image = background.copy()
        self.infrared = infrared

    def paint(self, shape: Shape | None, colour: tuple[float, float, float], heat: float, shade: np.ndarray | None = None) -> None:
        if shape is None:
            return
        window, alpha = shape
        target = self.image[window]
        if self.infrared:
            value: np.ndarray | float = heat if shade is None else heat * (0.85 + 0.15 * shade[window])
            target += alpha * (value - target)
        else:
            value = np.asarray(colour) if shade is None else np.asarray(colour) * shade[window][..., None]
            target += alpha[..., None] * (value - target)

    def paint_garment(self, shape: Shape | None, garment: _Garment, pattern: np.ndarray | None, shade: np.ndarray | None) -> None:
        if shape is None:
            return
        if pattern is None:
            self.paint(shape, garment.colour_a, garment.emissivity_a, shade)
            return
        window, alpha = shape
        target = self.image[window]
        weight = pattern[window]
        if self.infrared:
            value = garment.emissivity_a + (garment.emissivity_b - garment.emissivity_a) * weight
            if shade is not None:
                value = value * (0.85 + 0.15 * shade[window])
            target += alpha * (value - target)
        else:
            ca, cb = np.asarray(garment.colour_a), np.asarray(garment.colour_b)
            value = ca + (cb - ca) * weight[..., None]
            if shade is not None:
                value = value * shade[window][..., None]
            target += alpha[..., None] * (value - target)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, mode="edge")
    h, w = image.shape
    rows = sum(t * padded[:, k : k + w] for k, t in enumerate(taps))
    return sum(t * rows[k : k + h, :] for k, t in enumerate(taps))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def _masked(shape: Shape | tuple[Window, np.ndarray, np.ndarray] | None, weight) -> Shape | None:
    """Coverage of `shape` times a weight computed from its window arrays."""
    if shape is None:
        return None
    return shape[0], shape[1] * weight(*shape)


def _on_window(values: np.ndarray | None, window: Window, height: int, width: int) -> np.ndarray | None:
    if values is None:
        return None
    full = np.zeros((height, width))
    full[window] = values
    return full


def render_person(spec: SynthSpec, layout: str, pid: int, camera: SynthCamera, index: int) -> np.ndarray:
    """One image of identity `pid` seen by `camera`: uint8 (H, W, 3) visible or (H, W) infrared."""
    layout_code = _layout_code(layout)
    H, W = spec.height, spec.width
    ident = _identity(spec.seed, pid)
    scene = _scene(spec.seed, layout_code, camera.scene)
    sensor = _sensor(spec.seed, layout_code, camera, W)
    rng = _rng(spec.seed, _TAG_SAMPLE, layout_code, pid, camera.number, int(camera.infrared), index)
    canvas = _Canvas(_background(spec.seed, layout_code, camera.scene, H, W, camera.infrared), camera.infrared)

    # Placement: scene viewpoint times per-sample jitter; walking direction mirrors the person.
    mirrored = bool(rng.random() < 0.5)
    unit = scene.person_height * H * ident.stature * rng.uniform(0.92, 1.05)  # pixels per body height
    ux = unit * scene.squeeze * rng.uniform(0.94, 1.06)
    foot_y = scene.foot_y * H + rng.normal(0, 0.012 * H)
    cx = W * (0.5 + scene.x_offset + rng.uniform(-0.07, 0.07))
    frame = _Frame(H, W, cx, mirrored)
    Y = frame.Y
    top = foot_y - unit
    head_ry = ident.head_radius * unit * ident.head_aspect
    head_rx = ident.head_radius * ux
    head_cy = top + head_ry
    shoulder_y = top + 2 * head_ry + 0.03 * unit
    hip_y = foot_y - ident.leg_fraction * unit
    sw, hw = ident.shoulder_half_width * ux, ident.hip_half_width * ux
    arm_r, leg_r = max(ident.arm_radius * ux, 1.0), max(ident.leg_radius * ux, 1.2)
    # Garment patterns and shading move with the body; evaluated on the body's window only.
    body = frame.grid(cx - 0.45 * ux, cx + 0.45 * ux, shoulder_y - 0.05 * unit, foot_y + 0.05 * unit)
    torso_shade = np.ones((H, W))
    upper_pattern = lower_pattern = None
    if body is not None:
        body_window, bx, by = body
        u, v = (bx - cx) / unit, (by - shoulder_y) / unit
        torso_shade[body_window] = 1.0 - 0.35 * np.clip(((bx - cx) / max(sw, 1.0)) ** 2, 0, 1)
        upper_pattern = _on_window(_pattern(ident.upper, u, v, rng.uniform(-0.4, 0.4)), body_window, H, W)
        lower_pattern = _on_window(_pattern(ident.lower, u, v, rng.uniform(-0.4, 0.4)), body_window, H, W)
    skin_heat = min(ident.skin_heat * rng.uniform(0.95, 1.05), 1.0)
    skin = (ident.skin_colour, skin_heat)
    hair = (ident.hair_colour, ident.hair_heat)
    bag = (ident.bag_colour, ident.bag_heat)

    # Long hair and backpack sit behind the body.
    if ident.hair_long > 0:
        hair_bottom = shoulder_y + ident.hair_long * unit
        canvas.paint(frame.box(cx, (head_cy + hair_bottom) / 2, head_rx * 1.1, (hair_bottom - head_cy) / 2, head_rx * 0.6), *hair)
    if ident.bag == "backpack":
        canvas.paint(frame.box(cx, (shoulder_y + hip_y) / 2, sw + 0.025 * ux, (hip_y - shoulder_y) * 0.4, 0.03 * ux), *bag)

    # Legs: skin, lower garment over the top part, shoes.
    stride = rng.uniform(-0.2, 0.2)
    foot_r = leg_r * 1.15
    covered = {"pants": 1.01, "shorts": 0.45, "skirt": 0.0}[ident.lower_kind]
    for side in (-1, 1):
        hip = (cx + side * hw * 0.55, hip_y)
        angle = side * 0.03 + side * stride
        length = (foot_y - hip_y - foot_r * 0.6) / max(np.cos(angle), 0.5)
        foot = (hip[0] + np.sin(angle) * length, hip[1] + np.cos(angle) * length)
        leg = frame.capsule(hip, foot, leg_r)
        if leg is not None:
            canvas.paint(leg[:2], *skin)
            if covered > 0:
                canvas.paint_garment(_masked(leg, lambda w, a, t: np.clip((covered - t) * length + 0.5, 0, 1)), ident.lower, lower_pattern, None)
        canvas.paint(frame.ellipse(foot[0] + side * foot_r * 0.3, foot[1] + foot_r * 0.2, foot_r * 1.25, foot_r * 0.8), ident.shoe_colour, ident.shoe_heat)
    canvas.paint_garment(frame.box(cx, hip_y + 0.01 * unit, hw, 0.04 * unit, 0.01 * unit), ident.lower, lower_pattern, torso_shade)
    if ident.lower_kind == "skirt":
        y0, y1 = hip_y - 0.03 * unit, hip_y + 0.2 * unit
        g = frame.grid(cx - hw * 1.6, cx + hw * 1.6, y0, y1)
        if g is not None:
            canvas.paint_garment((g[0], _trapezoid(g[1], g[2], cx, y0, y1, hw, hw * 1.6)), ident.lower, lower_pattern, torso_shade)

    # Neck, torso with rounded shoulders.
    canvas.paint(frame.box(cx, shoulder_y - 0.02 * unit, head_rx * 0.45, 0.04 * unit), *skin)
    torso_bottom = hip_y + 0.015 * unit
    g = frame.grid(cx - sw, cx + sw, shoulder_y, torso_bottom)
    if g is not None:
        window, gx, gy = g
        torso = _trapezoid(gx, gy, cx, shoulder_y + arm_r * 0.6, torso_bottom, sw, hw * 1.05)
        shoulders, _ = _capsule(gx, gy, (cx - sw + arm_r, shoulder_y + arm_r), (cx + sw - arm_r, shoulder_y + arm_r), arm_r)
        canvas.paint_garment((window, np.maximum(torso, shoulders)), ident.upper, upper_pattern, torso_shade)
    if ident.bag == "backpack":
        for side in (-1, 1):
            canvas.paint(frame.box(cx + side * sw * 0.55, shoulder_y + 0.09 * unit, 0.012 * ux + 0.5, 0.09 * unit), *bag)

    # Arms: sleeve over the upper part, skin below, hand.
    swing = rng.uniform(-0.25, 0.25)
    for side in (-1, 1):
        shoulder = (cx + side * (sw - arm_r * 0.7), shoulder_y + arm_r)
        angle = side * (0.1 + rng.uniform(-0.04, 0.1))
        length = 0.4 * unit * np.cos(side * swing)
        hand = (shoulder[0] + np.sin(angle) * length, shoulder[1] + np.cos(angle) * length)
        arm = frame.capsule(shoulder, hand, arm_r)
        if arm is not None:
            canvas.paint(arm[:2], *skin)
            sleeve = _masked(arm, lambda w, a, t: np.clip((ident.sleeve_fraction - t) * length + 0.5, 0, 1))
            canvas.paint_garment(sleeve, ident.upper, upper_pattern, None)
        canvas.paint(frame.ellipse(hand[0], hand[1] + arm_r * 0.4, arm_r * 1.1, arm_r * 1.35), *skin)
        if ident.bag == "handbag" and side == ident.bag_side:
            canvas.paint(frame.box(hand[0], hand[1] + 0.06 * unit, 0.05 * ux, 0.045 * unit, 0.01 * unit), *bag)
    if ident.bag == "shoulder":
        side = ident.bag_side
        strap = frame.capsule((cx - side * sw * 0.6, shoulder_y), (cx + side * hw * 1.1, hip_y - 0.02 * unit), 0.012 * ux + 0.4)
        canvas.paint(None if strap is None else strap[:2], *bag)
        canvas.paint(frame.box(cx + side * (hw + 0.035 * ux), hip_y + 0.02 * unit, 0.055 * ux, 0.05 * unit, 0.01 * unit), *bag)

    # Head: face, hair cap with fringe, hat.
    canvas.paint(frame.ellipse(cx, head_cy, head_rx, head_ry), *skin)
    fringe_y = head_cy - head_ry * ident.hair_fringe
    hair_cap = frame.ellipse(cx, head_cy - head_ry * 0.05, head_rx * 1.08, head_ry * 1.04)
    canvas.paint(_masked(hair_cap, lambda w, a: np.clip(fringe_y - Y[w] + 0.5, 0, 1)), *hair)
    hat = (ident.hat_colour, ident.hat_heat)
    if ident.hat == "cap":
        crown_y = head_cy - head_ry * 0.3
        crown = frame.ellipse(cx, head_cy - head_ry * 0.25, head_rx * 1.1, head_ry * 0.85)
        canvas.paint(_masked(crown, lambda w, a: np.clip(crown_y - Y[w] + 0.5, 0, 1)), *hat)
        canvas.paint(frame.box(cx + ident.bag_side * head_rx * 0.35, head_cy - head_ry * 0.35, head_rx * 1.35, max(head_ry * 0.08, 0.6)), *hat)
    elif ident.hat == "beanie":
        crown_y = head_cy - head_ry * 0.15
        crown = frame.ellipse(cx, crown_y, head_rx * 1.12, head_ry * 1.05)
        canvas.paint(_masked(crown, lambda w, a: np.clip(crown_y - Y[w] + 0.5, 0, 1)), *hat)

    # Occluder: a pole or a low wall in front of the person, in image coordinates.
    if rng.random() < 0.15:
        scene_frame = _Frame(H, W, cx, mirrored=False)
        if rng.random() < 0.5:
            occluder = scene_frame.box(rng.uniform(0, W), H / 2, rng.uniform(0.04, 0.09) * W, H)
        else:
            occluder = scene_frame.box(W / 2, H, W, rng.uniform(0.1, 0.25) * H)
        canvas.paint(occluder, _muted_colour_tuple(scene.occluder_colour), scene.occluder_heat)

    return _expose(canvas.image, sensor, rng, camera.infrared)


def _muted_colour_tuple(colour: tuple[float, float, float]) -> tuple[float, float, float]:
    mean = sum(colour) / 3
    return tuple(0.45 * c + 0.55 * mean for c in colour)


def _expose(image: np.ndarray, sensor: _Sensor, rng: np.random.Generator, infrared: bool) -> np.ndarray:
    """Sensor response: visible gain / colour cast / light gradient; infrared blur and noise."""
    H, W = image.shape[:2]
    if infrared:
        out = sensor.offset + sensor.gain * rng.uniform(0.93, 1.07) * image
        out = _gaussian_blur(out, max(sensor.blur_sigma * H / 128.0, 0.4))  # optics scale with the image
        out = out + sensor.noise_sigma * rng.standard_normal(size=(H, W), dtype=np.float32) + sensor.columns[None, :]
    else:
        light = sensor.gain * rng.uniform(0.88, 1.12) * (1 + sensor.light_gradient * (np.arange(H) / H - 0.5))
        out = image * light[:, None, None] * np.asarray(sensor.cast)
        out = out + sensor.noise_sigma * rng.standard_normal(size=out.shape, dtype=np.float32)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def render_identity_images(spec: SynthSpec, layout: str, pid: int, camera: SynthCamera) -> list[np.ndarray]:
    """The `spec.images_per_camera` images of one (identity, camera) folder."""
    return [render_person(spec, layout, pid, camera, k) for k in range(spec.images_per_camera)]


def _save(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="BMP")


# ----------------------------------------------------------------------------------------------
# Identity splits and camera presence
# ----------------------------------------------------------------------------------------------


def _layout_code(layout: str) -> int:
    if layout not in _LAYOUT_CODES:
        raise HarnessError(f"synthetic layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return _LAYOUT_CODES[layout]


def _test_count(spec: SynthSpec, layout: str) -> int:
    n_test = int(round(spec.num_identities * spec.test_fraction))
    if n_test < 2:
        raise HarnessError(
            f"SynthSpec: num_identities={spec.num_identities} x test_fraction={spec.test_fraction} "
            f"gives {n_test} test identities for {layout}; expected >= 2"
        )
    return n_test


def sysu_identity_split(spec: SynthSpec) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) identity lists, each ascending; ids are 1..num_identities."""
    n_test = _test_count(spec, "sysu")
    n_val = max(1, int(round((spec.num_identities - n_test) * SYSU_VAL_FRACTION)))
    n_train = spec.num_identities - n_test - n_val
    if n_train < 2:
        raise HarnessError(
            f"SynthSpec: num_identities={spec.num_identities} leaves {n_train} SYSU train identities "
            f"after {n_test} test and {n_val} val; expected >= 2 (raise num_identities or lower test_fraction)"
        )
    order = _rng(spec.seed, _TAG_SPLIT, _LAYOUT_CODES["sysu"]).permutation(np.arange(1, spec.num_identities + 1))
    test = sorted(int(p) for p in order[:n_test])
    val = sorted(int(p) for p in order[n_test : n_test + n_val])
    train = sorted(int(p) for p in order[n_test + n_val :])
    return train, val, test


def llcm_identity_split(spec: SynthSpec) -> tuple[list[int], list[int]]:
    """(train, test) identity lists, each ascending."""
    n_test = _test_count(spec, "llcm")
    if spec.num_identities - n_test < 2:
        raise HarnessError(
            f"SynthSpec: num_identities={spec.num_identities} leaves {spec.num_identities - n_test} LLCM train "
            "identities; expected >= 2 (raise num_identities or lower test_fraction)"
        )
    order = _rng(spec.seed, _TAG_SPLIT, _LAYOUT_CODES["llcm"]).permutation(np.arange(1, spec.num_identities + 1))
    return sorted(int(p) for p in order[n_test:]), sorted(int(p) for p in order[:n_test])


def regdb_trial_split(spec: SynthSpec, trial: int) -> tuple[list[int], list[int]]:
    """(train, test) identities of RegDB trial 1..10: a fresh random half per trial."""
    order = _rng(spec.seed, _TAG_SPLIT, _LAYOUT_CODES["regdb"], trial).permutation(np.arange(1, spec.num_identities + 1))
    half = spec.num_identities // 2
    return sorted(int(p) for p in order[:half]), sorted(int(p) for p in order[half:])


def present_cameras(spec: SynthSpec, layout: str) -> dict[int, tuple[SynthCamera, ...]]:
    """Cameras that hold a folder for each identity.

    round(missing_camera_rate x #pairs) (identity, camera) pairs are dropped in a seeded order,
    skipping any drop that would leave an identity without a visible or an infrared camera.
    """
    _layout_code(layout)
    cameras = CAMERAS[layout]
    pids = range(1, spec.num_identities + 1)
    pairs = [(pid, cam) for pid in pids for cam in cameras]
    target = int(round(spec.missing_camera_rate * len(pairs)))
    remaining = {(pid, ir): sum(c.infrared == ir for c in cameras) for pid in pids for ir in (False, True)}
    dropped: set[tuple[int, SynthCamera]] = set()
    order = _rng(spec.seed, _TAG_MISSING, _LAYOUT_CODES[layout]).permutation(len(pairs))
    for i in order:
        if len(dropped) >= target:
            break
        pid, cam = pairs[int(i)]
        if remaining[(pid, cam.infrared)] > 1:
            remaining[(pid, cam.infrared)] -= 1
            dropped.add((pid, cam))
    return {pid: tuple(c for c in cameras if (pid, c) not in dropped) for pid in pids}


# ----------------------------------------------------------------------------------------------
# Layout writers
# ----------------------------------------------------------------------------------------------


def _prepare_output(out: Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"synthetic output folder {out}: expected a missing or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _id_line(ids: list[int]) -> str:
    return ",".join(str(p) for p in ids) + "\n"


def write_sysu(out: Path, spec: SynthSpec) -> Path:
    """SYSU-MM01 layout under `out`: cam1..cam6/%04d/%04d.jpg (cam3, cam6 infrared) and exp/*.txt."""
    train, val, test = sysu_identity_split(spec)
    out = _prepare_output(out)
    for pid, cameras in present_cameras(spec, "sysu").items():
        for camera in cameras:
            folder = out / f"cam{camera.number}" / f"{pid:04d}"
            folder.mkdir(parents=True)
            for k, image in enumerate(render_identity_images(spec, "sysu", pid, camera)):
                _save(image, folder / f"{k + 1:04d}.jpg")
    (out / "exp").mkdir()
    for name, ids in (("train_id", train), ("val_id", val), ("test_id", test)):
        (out / "exp" / f"{name}.txt").write_text(_id_line(ids))
    return out


def regdb_file_name(pid: int, infrared: bool, k: int) -> str:
    return f"{'t' if infrared else 'v'}_{pid:05d}_{k + 1:02d}.bmp"


def write_regdb(out: Path, spec: SynthSpec) -> Path:
    """RegDB layout under `out`: Visible/<id>/*.bmp, Thermal/<id>/*.bmp (single channel), idx/*.txt.

    Every identity has one visible and one thermal camera (no missing folders); index labels
    are 0..K-1 in ascending identity order within each file's identity set.
    """
    if spec.num_identities < 4:
        raise HarnessError(f"SynthSpec.num_identities={spec.num_identities}: RegDB needs >= 4 (2 train + 2 test)")
    out = _prepare_output(out)
    for pid in range(1, spec.num_identities + 1):
        for camera in REGDB_CAMERAS:
            folder = out / ("Thermal" if camera.infrared else "Visible") / str(pid)
            folder.mkdir(parents=True)
            for k, image in enumerate(render_identity_images(spec, "regdb", pid, camera)):
                _save(image, folder / regdb_file_name(pid, camera.infrared, k))
    (out / "idx").mkdir()
    for trial in range(1, REGDB_TRIALS + 1):
        train, test = regdb_trial_split(spec, trial)
        for part, ids in (("train", train), ("test", test)):
            for modality, folder, infrared in (("visible", "Visible", False), ("thermal", "Thermal", True)):
                lines = [
                    f"{folder}/{pid}/{regdb_file_name(pid, infrared, k)} {label}\n"
                    for label, pid in enumerate(ids)
                    for k in range(spec.images_per_camera)
                ]
                (out / "idx" / f"{part}_{modality}_{trial}.txt").write_text("".join(lines))
    return out


def llcm_file_name(pid: int, camera: SynthCamera, k: int) -> str:
    return f"{pid:04d}_c{camera.number:02d}_s000000_f{k:04d}_{'nir' if camera.infrared else 'vis'}.jpg"


def write_llcm(out: Path, spec: SynthSpec) -> Path:
    """LLCM layout under `out`: vis/ nir/ training folders with idx/train_{vis,nir}.txt, test_vis/ test_nir/.

    Training index labels are 0..K-1 in ascending identity order.
    """
    train, test = llcm_identity_split(spec)
    out = _prepare_output(out)
    present = present_cameras(spec, "llcm")
    train_label = {pid: label for label, pid in enumerate(train)}
    index_lines: dict[bool, list[str]] = {False: [], True: []}
    test_set = set(test)
    for pid, cameras in present.items():
        for camera in cameras:
            modality = "nir" if camera.infrared else "vis"
            if pid in test_set:
                folder = out / f"test_{modality}" / f"cam{camera.number}" / f"{pid:04d}"
            else:
                folder = out / modality / f"{pid:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k, image in enumerate(render_identity_images(spec, "llcm", pid, camera)):
                name = llcm_file_name(pid, camera, k)
                _save(image, folder / name)
                if pid not in test_set:
                    index_lines[camera.infrared].append(f"{modality}/{pid:04d}/{name} {train_label[pid]}\n")
    (out / "idx").mkdir()
    (out / "idx" / "train_vis.txt").write_text("".join(index_lines[False]))
    (out / "idx" / "train_nir.txt").write_text("".join(index_lines[True]))
    (out / "idx" / "test_id.txt").write_text(_id_line(test))
    return out


_WRITERS = {"sysu": write_sysu, "regdb": write_regdb, "llcm": write_llcm}


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$VIREID_CACHE/synthetic, or ~/.cache/vireid/synthetic."""
    root = os.environ.get("VIREID_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vireid") / "synthetic"


def cache_key(layout: str, spec: SynthSpec) -> str:
    """Folder name that changes with the layout, every spec field and the generator version."""
    _layout_code(layout)
    payload = json.dumps({"layout": layout, "spec": dataclasses.asdict(spec), "version": GENERATOR_VERSION}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return f"{layout}-n{spec.num_identities}-s{spec.seed}-{digest}"


def ensure_synthetic(layout: str, spec: SynthSpec, cache_dir: Path | None = None) -> Path:
    """Return a complete cached dataset root, generating it first when needed.

    Generation goes to a temporary sibling that is renamed into place only after its marker
    file is written, so an interrupted run never leaves a tree that looks complete.
    """
    if layout not in _WRITERS:
        raise HarnessError(f"synthetic layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / cache_key(layout, spec)
    if (final / MARKER_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, final.name)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        started = time.perf_counter()
        _WRITERS[layout](temporary, spec)
        marker = {
            "layout": layout,
            "spec": dataclasses.asdict(spec),
            "generator_version": GENERATOR_VERSION,
            "seconds": round(time.perf_counter() - started, 3),
        }
        (temporary / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
        if final.exists() and not (final / MARKER_NAME).is_file():
            shutil.rmtree(final)  # an incomplete tree from an older or interrupted writer
        try:
            os.replace(temporary, final)
        except OSError:
            if not (final / MARKER_NAME).is_file():  # a concurrent writer did not finish it either
                raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final


def _remove_stale_temporaries(root: Path, name: str) -> None:
    now = time.time()
    for leftover in root.glob(f".{name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TEMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def contact_sheet(spec: SynthSpec, layout: str = "sysu", identities: int = 8, images_per_camera: int = 2) -> np.ndarray:
    """RGB grid: one row per identity, columns = cameras (visible first, then infrared) x images."""
    _layout_code(layout)
    cameras = sorted(CAMERAS[layout], key=lambda c: (c.infrared, c.number))
    H, W, gap = spec.height, spec.width, 2
    rows = min(identities, spec.num_identities)
    cols = len(cameras) * images_per_camera
    sheet = np.full((rows * (H + gap), cols * (W + gap) + gap * len(cameras), 3), 255, np.uint8)
    for r in range(rows):
        for c, camera in enumerate(cameras):
            for k in range(images_per_camera):
                image = render_person(spec, layout, r + 1, camera, k)
                if image.ndim == 2:
                    image = np.repeat(image[..., None], 3, axis=2)
                x = (c * images_per_camera + k) * (W + gap) + c * gap
                sheet[r * (H + gap) : r * (H + gap) + H, x : x + W] = image
    return sheet
