"""Drawing a person: anti-aliased primitives on coordinate grids, painted back to front.

Visible cameras paint RGB albedo; infrared cameras paint one radiance channel from emissivity and
temperature (skin bright), then apply sensor blur, noise and fixed-pattern column noise.
Primitives are evaluated only inside their bounding window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.data.synthetic.attributes import (
    Garment,
    Identity,
    Scene,
    SensorResponse,
    background,
    identity_of,
    muted_colour_tuple,
    pixel_grid,
    scene_of,
    sensor_of,
)
from harness.data.synthetic.spec import (
    TAG_SAMPLE,
    SynthCamera,
    SynthLayout,
    SynthSpec,
    seeded_rng,
)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


def _ellipse(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    radial = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)
    return _coverage((radial - 1.0) * min(rx, ry))


def _box(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, half_w: float, half_h: float,
         round_r: float = 0.0) -> np.ndarray:
    qx = np.abs(X - cx) - half_w + round_r
    qy = np.abs(Y - cy) - half_h + round_r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return _coverage(outside + np.minimum(np.maximum(qx, qy), 0) - round_r)


def _trapezoid(X: np.ndarray, Y: np.ndarray, cx: float, y0: float, y1: float, w0: float, w1: float) -> np.ndarray:
    s = np.clip((Y - y0) / (y1 - y0), 0, 1)
    half = w0 + (w1 - w0) * s
    return _coverage(np.maximum(np.abs(X - cx) - half, np.maximum(y0 - Y, Y - y1)))


def _capsule(X: np.ndarray, Y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
             radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of a thick segment and the position t in [0, 1] along it."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((X - p0[0]) * dx + (Y - p0[1]) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
    distance = np.hypot(X - (p0[0] + t * dx), Y - (p0[1] + t * dy))
    return _coverage(distance - radius), t


def _pattern(garment: Garment, u: np.ndarray, v: np.ndarray, phase_jitter: float) -> np.ndarray | None:
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
        X, Y = pixel_grid(height, width)
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

    def capsule(self, p0: tuple[float, float], p1: tuple[float, float],
                radius: float) -> tuple[Window, np.ndarray, np.ndarray] | None:
        g = self.grid(min(p0[0], p1[0]) - radius, max(p0[0], p1[0]) + radius, min(p0[1], p1[1]) - radius,
                      max(p0[1], p1[1]) + radius)
        if g is None:
            return None
        alpha, t = _capsule(g[1], g[2], p0, p1, radius)
        return g[0], alpha, t


class _Canvas:
    """Paints layers back to front, either as RGB albedo or as infrared radiance."""

    def __init__(self, background: np.ndarray, infrared: bool) -> None:
        self.image = background.copy()
        self.infrared = infrared

    def paint(self, shape: Shape | None, colour: tuple[float, float, float], heat: float,
              shade: np.ndarray | None = None) -> None:
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

    def paint_garment(self, shape: Shape | None, garment: Garment, pattern: np.ndarray | None,
                      shade: np.ndarray | None) -> None:
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


@dataclass
class _Figure:
    """Where one person stands in one image: the frame, body geometry in pixels, the garment
    pattern and shading maps, and the looks (colour, heat) of skin, hair and bag."""

    ident: Identity
    frame: _Frame
    cx: float
    unit: float  # pixels per body height
    ux: float  # horizontal pixels per body height (lens squeeze)
    foot_y: float
    head_cy: float
    head_rx: float
    head_ry: float
    shoulder_y: float
    hip_y: float
    sw: float  # shoulder half-width
    hw: float  # hip half-width
    arm_r: float
    leg_r: float
    torso_shade: np.ndarray
    upper_pattern: np.ndarray | None
    lower_pattern: np.ndarray | None
    skin: tuple
    hair: tuple
    bag: tuple


def render_person(spec: SynthSpec, layout: SynthLayout, pid: int, camera: SynthCamera, index: int) -> np.ndarray:
    """One image of identity `pid` seen by `camera`: uint8 (H, W, 3) visible or (H, W) infrared.

    Layers are painted back to front; every random draw comes from one per-image generator in a
    fixed order (placement, patterns, skin, legs, arms, occluder, sensor).
    """
    layout_code = layout.synthetic_code
    H, W = spec.height, spec.width
    ident = identity_of(spec.seed, pid)
    scene = scene_of(spec.seed, layout_code, camera.scene)
    sensor = sensor_of(spec.seed, layout_code, camera, W)
    rng = seeded_rng(spec.seed, TAG_SAMPLE, layout_code, pid, camera.number, int(camera.infrared), index)
    canvas = _Canvas(background(spec.seed, layout_code, camera.scene, H, W, camera.infrared), camera.infrared)
    figure = _place(ident, scene, rng, H, W)
    _paint_behind_body(canvas, figure)
    _paint_legs(canvas, figure, rng)
    _paint_torso(canvas, figure)
    _paint_arms(canvas, figure, rng)
    _paint_head(canvas, figure)
    _paint_occluder(canvas, figure, scene, rng, H, W)
    return _expose(canvas.image, sensor, rng, camera.infrared)


def _place(ident: Identity, scene: Scene, rng: np.random.Generator, H: int, W: int) -> _Figure:
    """Placement: scene viewpoint times per-sample jitter; walking direction mirrors the person.
    Garment patterns and shading move with the body and are evaluated on its window only."""
    mirrored = bool(rng.random() < 0.5)
    unit = scene.person_height * H * ident.stature * rng.uniform(0.92, 1.05)  # pixels per body height
    ux = unit * scene.squeeze * rng.uniform(0.94, 1.06)
    foot_y = scene.foot_y * H + rng.normal(0, 0.012 * H)
    cx = W * (0.5 + scene.x_offset + rng.uniform(-0.07, 0.07))
    frame = _Frame(H, W, cx, mirrored)
    top = foot_y - unit
    head_ry = ident.head_radius * unit * ident.head_aspect
    head_rx = ident.head_radius * ux
    shoulder_y = top + 2 * head_ry + 0.03 * unit
    sw = ident.shoulder_half_width * ux
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
    return _Figure(
        ident=ident, frame=frame, cx=cx, unit=unit, ux=ux, foot_y=foot_y,
        head_cy=top + head_ry, head_rx=head_rx, head_ry=head_ry, shoulder_y=shoulder_y,
        hip_y=foot_y - ident.leg_fraction * unit, sw=sw, hw=ident.hip_half_width * ux,
        arm_r=max(ident.arm_radius * ux, 1.0), leg_r=max(ident.leg_radius * ux, 1.2),
        torso_shade=torso_shade, upper_pattern=upper_pattern, lower_pattern=lower_pattern,
        skin=(ident.skin_colour, skin_heat), hair=(ident.hair_colour, ident.hair_heat),
        bag=(ident.bag_colour, ident.bag_heat),
    )


def _paint_behind_body(canvas: _Canvas, f: _Figure) -> None:
    """Long hair and backpack sit behind the body."""
    if f.ident.hair_long > 0:
        hair_bottom = f.shoulder_y + f.ident.hair_long * f.unit
        canvas.paint(f.frame.box(f.cx, (f.head_cy + hair_bottom) / 2, f.head_rx * 1.1, (hair_bottom - f.head_cy) / 2,
                                 f.head_rx * 0.6), *f.hair)
    if f.ident.bag == "backpack":
        canvas.paint(f.frame.box(f.cx, (f.shoulder_y + f.hip_y) / 2, f.sw + 0.025 * f.ux,
                                 (f.hip_y - f.shoulder_y) * 0.4, 0.03 * f.ux), *f.bag)


def _paint_legs(canvas: _Canvas, f: _Figure, rng: np.random.Generator) -> None:
    """Legs: skin, lower garment over the top part, shoes; then the waist band and a skirt."""
    ident, frame, cx, unit, hw = f.ident, f.frame, f.cx, f.unit, f.hw
    stride = rng.uniform(-0.2, 0.2)
    foot_r = f.leg_r * 1.15
    covered = {"pants": 1.01, "shorts": 0.45, "skirt": 0.0}[ident.lower_kind]
    for side in (-1, 1):
        hip = (cx + side * hw * 0.55, f.hip_y)
        angle = side * 0.03 + side * stride
        length = (f.foot_y - f.hip_y - foot_r * 0.6) / max(np.cos(angle), 0.5)
        foot = (hip[0] + np.sin(angle) * length, hip[1] + np.cos(angle) * length)
        leg = frame.capsule(hip, foot, f.leg_r)
        if leg is not None:
            canvas.paint(leg[:2], *f.skin)
            if covered > 0:
                trouser = _masked(leg, lambda w, a, t, length=length: np.clip((covered - t) * length + 0.5, 0, 1))
                canvas.paint_garment(trouser, ident.lower, f.lower_pattern, None)
        canvas.paint(frame.ellipse(foot[0] + side * foot_r * 0.3, foot[1] + foot_r * 0.2, foot_r * 1.25, foot_r * 0.8),
                     ident.shoe_colour, ident.shoe_heat)
    canvas.paint_garment(frame.box(cx, f.hip_y + 0.01 * unit, hw, 0.04 * unit, 0.01 * unit), ident.lower,
                         f.lower_pattern, f.torso_shade)
    if ident.lower_kind == "skirt":
        y0, y1 = f.hip_y - 0.03 * unit, f.hip_y + 0.2 * unit
        g = frame.grid(cx - hw * 1.6, cx + hw * 1.6, y0, y1)
        if g is not None:
            canvas.paint_garment((g[0], _trapezoid(g[1], g[2], cx, y0, y1, hw, hw * 1.6)), ident.lower,
                                 f.lower_pattern, f.torso_shade)


def _paint_torso(canvas: _Canvas, f: _Figure) -> None:
    """Neck, torso with rounded shoulders, backpack straps."""
    frame, cx, unit, sw, arm_r, shoulder_y = f.frame, f.cx, f.unit, f.sw, f.arm_r, f.shoulder_y
    canvas.paint(frame.box(cx, shoulder_y - 0.02 * unit, f.head_rx * 0.45, 0.04 * unit), *f.skin)
    torso_bottom = f.hip_y + 0.015 * unit
    g = frame.grid(cx - sw, cx + sw, shoulder_y, torso_bottom)
    if g is not None:
        window, gx, gy = g
        torso = _trapezoid(gx, gy, cx, shoulder_y + arm_r * 0.6, torso_bottom, sw, f.hw * 1.05)
        shoulders, _ = _capsule(gx, gy, (cx - sw + arm_r, shoulder_y + arm_r), (cx + sw - arm_r, shoulder_y + arm_r),
                                arm_r)
        canvas.paint_garment((window, np.maximum(torso, shoulders)), f.ident.upper, f.upper_pattern, f.torso_shade)
    if f.ident.bag == "backpack":
        for side in (-1, 1):
            canvas.paint(frame.box(cx + side * sw * 0.55, shoulder_y + 0.09 * unit, 0.012 * f.ux + 0.5, 0.09 * unit),
                         *f.bag)


def _paint_arms(canvas: _Canvas, f: _Figure, rng: np.random.Generator) -> None:
    """Arms: sleeve over the upper part, skin below, hand; a handbag or a shoulder bag."""
    ident, frame, cx, unit, ux, arm_r = f.ident, f.frame, f.cx, f.unit, f.ux, f.arm_r
    swing = rng.uniform(-0.25, 0.25)
    for side in (-1, 1):
        shoulder = (cx + side * (f.sw - arm_r * 0.7), f.shoulder_y + arm_r)
        angle = side * (0.1 + rng.uniform(-0.04, 0.1))
        length = 0.4 * unit * np.cos(side * swing)
        hand = (shoulder[0] + np.sin(angle) * length, shoulder[1] + np.cos(angle) * length)
        arm = frame.capsule(shoulder, hand, arm_r)
        if arm is not None:
            canvas.paint(arm[:2], *f.skin)
            sleeve = _masked(
                arm, lambda w, a, t, length=length: np.clip((ident.sleeve_fraction - t) * length + 0.5, 0, 1))
            canvas.paint_garment(sleeve, ident.upper, f.upper_pattern, None)
        canvas.paint(frame.ellipse(hand[0], hand[1] + arm_r * 0.4, arm_r * 1.1, arm_r * 1.35), *f.skin)
        if ident.bag == "handbag" and side == ident.bag_side:
            canvas.paint(frame.box(hand[0], hand[1] + 0.06 * unit, 0.05 * ux, 0.045 * unit, 0.01 * unit), *f.bag)
    if ident.bag == "shoulder":
        side = ident.bag_side
        strap = frame.capsule((cx - side * f.sw * 0.6, f.shoulder_y), (cx + side * f.hw * 1.1, f.hip_y - 0.02 * unit),
                              0.012 * ux + 0.4)
        canvas.paint(None if strap is None else strap[:2], *f.bag)
        canvas.paint(frame.box(cx + side * (f.hw + 0.035 * ux), f.hip_y + 0.02 * unit, 0.055 * ux, 0.05 * unit,
                               0.01 * unit), *f.bag)


def _paint_head(canvas: _Canvas, f: _Figure) -> None:
    """Head: face, hair cap with fringe, hat."""
    ident, frame, cx, Y = f.ident, f.frame, f.cx, f.frame.Y
    head_cy, head_rx, head_ry = f.head_cy, f.head_rx, f.head_ry
    canvas.paint(frame.ellipse(cx, head_cy, head_rx, head_ry), *f.skin)
    fringe_y = head_cy - head_ry * ident.hair_fringe
    hair_cap = frame.ellipse(cx, head_cy - head_ry * 0.05, head_rx * 1.08, head_ry * 1.04)
    canvas.paint(_masked(hair_cap, lambda w, a: np.clip(fringe_y - Y[w] + 0.5, 0, 1)), *f.hair)
    hat = (ident.hat_colour, ident.hat_heat)
    if ident.hat == "cap":
        crown_y = head_cy - head_ry * 0.3
        crown = frame.ellipse(cx, head_cy - head_ry * 0.25, head_rx * 1.1, head_ry * 0.85)
        canvas.paint(_masked(crown, lambda w, a: np.clip(crown_y - Y[w] + 0.5, 0, 1)), *hat)
        canvas.paint(frame.box(cx + ident.bag_side * head_rx * 0.35, head_cy - head_ry * 0.35, head_rx * 1.35,
                               max(head_ry * 0.08, 0.6)), *hat)
    elif ident.hat == "beanie":
        crown_y = head_cy - head_ry * 0.15
        crown = frame.ellipse(cx, crown_y, head_rx * 1.12, head_ry * 1.05)
        canvas.paint(_masked(crown, lambda w, a: np.clip(crown_y - Y[w] + 0.5, 0, 1)), *hat)


def _paint_occluder(canvas: _Canvas, f: _Figure, scene: Scene, rng: np.random.Generator, H: int, W: int) -> None:
    """Occluder: a pole or a low wall in front of the person, in image coordinates."""
    if rng.random() < 0.15:
        scene_frame = _Frame(H, W, f.cx, mirrored=False)
        if rng.random() < 0.5:
            occluder = scene_frame.box(rng.uniform(0, W), H / 2, rng.uniform(0.04, 0.09) * W, H)
        else:
            occluder = scene_frame.box(W / 2, H, W, rng.uniform(0.1, 0.25) * H)
        canvas.paint(occluder, muted_colour_tuple(scene.occluder_colour), scene.occluder_heat)


def _expose(image: np.ndarray, sensor: SensorResponse, rng: np.random.Generator, infrared: bool) -> np.ndarray:
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


def render_identity_images(spec: SynthSpec, layout: SynthLayout, pid: int, camera: SynthCamera) -> list[np.ndarray]:
    """The `spec.images_per_camera` images of one (identity, camera) folder."""
    return [render_person(spec, layout, pid, camera, k) for k in range(spec.images_per_camera)]
