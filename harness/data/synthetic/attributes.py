"""Random attributes of identities, scenes and camera sensors, each drawn from its own seed.

An identity keeps its body shape, garment patterns, accessories and garment emissivities in every
camera; garment colour exists only in the visible cameras. Scenes (shared by the cameras of one
`scene`) fix background and viewpoint; sensors fix gain, colour cast, blur and noise.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from harness.data.synthetic.spec import (
    TAG_IDENTITY,
    TAG_SCENE,
    TAG_SENSOR,
    SynthCamera,
    seeded_rng,
)

_PATTERNS = ("plain", "hstripes", "vstripes", "diagonal", "checks", "dots")


@dataclass(frozen=True)
class Garment:
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    emissivity_a: float
    emissivity_b: float
    pattern: str
    frequency: float  # cycles per body height
    angle: float
    phase: float


@dataclass(frozen=True)
class Identity:
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
    upper: Garment
    lower: Garment
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


def random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.random() < 0.25:  # neutral: black, grey or white garments are common
        v = float(rng.uniform(0.08, 0.95))
        return (v, v, v)
    return _hsv(float(rng.random()), float(rng.uniform(0.35, 0.95)), float(rng.uniform(0.25, 0.95)))


def _contrasting_colour(rng: np.random.Generator, base: tuple[float, float, float]) -> tuple[float, float, float]:
    for _ in range(8):
        other = random_colour(rng)
        if float(np.abs(np.subtract(other, base)).sum()) > 0.6:
            return other
    return tuple(float(1.0 - c) for c in base)


def _random_garment(rng: np.random.Generator, patterns: tuple[str, ...], freq_range: tuple[float, float]) -> Garment:
    pattern = patterns[int(rng.integers(len(patterns)))]
    colour_a = random_colour(rng)
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
    return Garment(
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
def identity_of(seed: int, pid: int) -> Identity:
    rng = seeded_rng(seed, TAG_IDENTITY, pid)
    skin = _hsv(float(rng.uniform(0.03, 0.09)), float(rng.uniform(0.25, 0.6)), float(rng.uniform(0.35, 0.95)))
    hair_value = float(rng.choice([0.08, 0.15, 0.3, 0.55]))
    lower_kind = str(rng.choice(["pants", "pants", "shorts", "skirt"]))
    return Identity(
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
        hat_colour=random_colour(rng),
        hat_heat=float(rng.uniform(0.25, 0.6)),
        bag=str(rng.choice(["none", "none", "shoulder", "backpack", "handbag"])),
        bag_side=int(rng.choice([-1, 1])),
        bag_colour=random_colour(rng),
        bag_heat=float(rng.uniform(0.12, 0.4)),
        shoe_colour=random_colour(rng),
        shoe_heat=float(rng.uniform(0.2, 0.45)),
    )


@dataclass(frozen=True)
class Scene:
    person_height: float  # fraction of image height
    foot_y: float  # fraction of image height
    x_offset: float  # fraction of image width
    squeeze: float  # horizontal scale of the lens
    occluder_colour: tuple[float, float, float]
    occluder_heat: float


@functools.lru_cache(maxsize=256)
def scene_of(seed: int, layout_code: int, scene: int) -> Scene:
    rng = seeded_rng(seed, TAG_SCENE, layout_code, scene, 0)
    return Scene(
        person_height=float(rng.uniform(0.78, 0.9)),
        foot_y=float(rng.uniform(0.93, 0.985)),
        x_offset=float(rng.uniform(-0.06, 0.06)),
        squeeze=float(rng.uniform(0.88, 1.12)),
        occluder_colour=random_colour(rng),
        occluder_heat=float(rng.uniform(0.05, 0.3)),
    )


@functools.lru_cache(maxsize=64)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return xs + 0.5, ys + 0.5


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Bilinearly upsampled random grid: low-frequency texture in [-1, 1]."""
    gh, gw = int(np.ceil(height / cell)) + 2, int(np.ceil(width / cell)) + 2
    coarse = rng.uniform(-1, 1, size=(gh, gw))
    X, Y = pixel_grid(height, width)
    fx, fy = X / cell, Y / cell
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    wx, wy = fx - x0, fy - y0
    top = coarse[y0, x0] * (1 - wx) + coarse[y0, x0 + 1] * wx
    bottom = coarse[y0 + 1, x0] * (1 - wx) + coarse[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def muted_colour(rng: np.random.Generator) -> np.ndarray:
    colour = np.asarray(random_colour(rng))
    return 0.45 * colour + 0.55 * colour.mean()


@functools.lru_cache(maxsize=128)
def background(seed: int, layout_code: int, scene: int, height: int, width: int, infrared: bool) -> np.ndarray:
    """Scene background: wall, floor, panels (doors, windows, trees) and texture.

    Geometry is drawn from the scene seed (shared by a visible and an infrared camera of one
    scene); the visible colours and the infrared levels are independent draws.
    """
    geometry = seeded_rng(seed, TAG_SCENE, layout_code, scene, 1)
    X, Y = pixel_grid(height, width)
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

    looks = seeded_rng(seed, TAG_SCENE, layout_code, scene, 2 + int(infrared))
    if infrared:
        wall, ground = looks.uniform(0.06, 0.32), looks.uniform(0.04, 0.28)
        image = wall * (1 - floor) + ground * floor
        image = image * (1 + looks.uniform(-0.2, 0.2) * tiles * floor)
        for x0, x1, y0, y1 in panels:
            mask = (X >= x0) & (X < x1) & (Y >= y0) & (Y < y1)
            image = np.where(mask, looks.uniform(0.04, 0.55), image)
        image = image * (1 + looks.uniform(-0.3, 0.3) * vertical) + looks.uniform(0.02, 0.06) * texture
        return np.clip(image, 0, 1)
    wall, ground = muted_colour(looks), muted_colour(looks)
    image = wall * (1 - floor[..., None]) + ground * floor[..., None]
    image = image * (1 + looks.uniform(-0.25, 0.25) * (tiles * floor)[..., None])
    for x0, x1, y0, y1 in panels:
        mask = ((X >= x0) & (X < x1) & (Y >= y0) & (Y < y1))[..., None]
        image = np.where(mask, muted_colour(looks), image)
    image = image * (1 + looks.uniform(-0.4, 0.4) * vertical[..., None])
    image = image + looks.uniform(0.03, 0.09) * texture[..., None]
    return np.clip(image, 0, 1)


@dataclass(frozen=True)
class SensorResponse:
    gain: float
    offset: float
    cast: tuple[float, float, float]
    light_gradient: float
    blur_sigma: float
    noise_sigma: float
    columns: np.ndarray = dataclasses.field(compare=False)  # fixed-pattern column noise (width,)


@functools.lru_cache(maxsize=256)
def sensor_of(seed: int, layout_code: int, camera: SynthCamera, width: int) -> SensorResponse:
    rng = seeded_rng(seed, TAG_SENSOR, layout_code, camera.number, int(camera.infrared))
    if camera.infrared:
        return SensorResponse(
            gain=float(rng.uniform(0.85, 1.1)),
            offset=float(rng.uniform(0.0, 0.08)),
            cast=(1.0, 1.0, 1.0),
            light_gradient=0.0,
            blur_sigma=float(rng.uniform(0.7, 1.3)),
            noise_sigma=float(rng.uniform(0.02, 0.04)),
            columns=rng.normal(0, rng.uniform(0.01, 0.03), size=width),
        )
    cast = rng.uniform(0.82, 1.18, size=3)
    return SensorResponse(
        gain=float(rng.uniform(0.7, 1.15)),
        offset=0.0,
        cast=tuple(float(c) for c in cast / cast.mean()),
        light_gradient=float(rng.uniform(-0.3, 0.3)),
        blur_sigma=0.0,
        noise_sigma=float(rng.uniform(0.008, 0.02)),
        columns=np.zeros(width),
    )


def muted_colour_tuple(colour: tuple[float, float, float]) -> tuple[float, float, float]:
    mean = sum(colour) / 3
    return tuple(0.45 * c + 0.55 * mean for c in colour)
