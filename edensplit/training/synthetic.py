"""Seeded procedural triplets: textured backgrounds, moving shapes, a panning camera; frames at t = 0, 1/2, 1.

Every picture is a function of continuous image coordinates, so a frame at any time (and any sub-pixel pan) is
rendered exactly, and the true middle frame is known. Triplet `index` of stream `seed` depends on (seed, index)
alone: any one can be regenerated without the others. Streams below `HELD_OUT_SEED` are training's; the
benchmarks' held-out triplets use `HELD_OUT_SEED` and above.

A scene (sizes in units of u = min(H, W) / 64, so a larger frame shows the same scene at a higher resolution):
- background: a gradient, value noise (sums of random sinusoids), stripes or checkers, sometimes two blended;
- 1 to 3 objects: ellipses, rectangles, triangles, stars and crosses, solid, striped or shaded, radius 5-12 u;
  each moves along a straight or slightly curved path (a quadratic Bezier, with ease in or out), rotates and
  changes scale; they are layered, so they pass in front of each other;
- sometimes a static occluder in front of everything, and a camera pan that moves the whole picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

HELD_OUT_SEED = 1000  # streams >= this are never used in training
TIMES = (0.0, 0.5, 1.0)
SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross")
BACKGROUNDS = ("gradient", "noise", "stripes", "checkers")
MAX_OBJECTS = 3
MAX_MOTION = 16.0  # u: the largest object displacement from t = 0 to t = 1
MAX_PAN = 8.0  # u: the largest camera pan from t = 0 to t = 1


@dataclass(frozen=True)
class Triplet:
    """Three frames and what is true about them.

    frames: uint8 [3, H, W, 3], I0, It (the true middle frame), I1.
    centroids: float64 [K, 3, 2], each object's centroid (x, y) in pixels at t = 0, 1/2, 1 (pixel centres at
        integer coordinates + 0.5, so (0.5, 0.5) is the top-left pixel's centre).
    tracked: bool [K], the objects that move by themselves (a static occluder is not tracked).
    masks: float32 [K, H, W], each object's visible coverage (0..1) in the middle frame; `extras` only.
    without: uint8 [K, H, W, 3], the middle frame rendered without object k; `extras` only.
    """

    frames: np.ndarray
    centroids: np.ndarray
    tracked: np.ndarray
    masks: np.ndarray | None = None
    without: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Pictures as functions of coordinates (x, y float32 arrays of pixel-centre coordinates)


def _soft_square(phase: np.ndarray, sharpness: float) -> np.ndarray:
    """A square wave in [-1, 1] with edges about 1/sharpness of a period wide (antialiased)."""
    return np.clip(np.sin(phase) * sharpness, -1.0, 1.0)


@dataclass(frozen=True)
class Background:
    kind: str
    colours: np.ndarray  # [2, 3]: the texture is a blend between these
    params: dict

    def render(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = self.params
        if self.kind == "gradient":
            s = (x * p["dx"] + y * p["dy"]) * 0.5 + 0.5
        elif self.kind == "noise":
            s = np.zeros_like(x)
            for (kx, ky), phase, amp in zip(p["freqs"], p["phases"], p["amps"], strict=True):
                s += amp * np.sin(x * kx + y * ky + phase)
            s = s * 0.5 + 0.5
        elif self.kind == "stripes":
            s = _soft_square(x * p["kx"] + y * p["ky"] + p["phase"], p["sharpness"]) * 0.5 + 0.5
        else:  # checkers
            u = x * p["c"] - y * p["s"]
            v = x * p["s"] + y * p["c"]
            s = _soft_square(u * p["k"], p["sharpness"]) * _soft_square(v * p["k"], p["sharpness"]) * 0.5 + 0.5
        s = np.clip(s, 0.0, 1.0)[..., None]
        return self.colours[0] * (1 - s) + self.colours[1] * s


def _random_background(rng: np.random.Generator, unit: float, size: float, kind: str | None = None) -> Background:
    kind = kind or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colours = rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    if kind == "gradient":
        params = {"dx": c / size * 2, "dy": s / size * 2}
    elif kind == "noise":
        freqs, phases, amps = [], [], []
        for octave in range(3):
            wavelength = rng.uniform(24, 40) * unit / 2**octave
            for _ in range(3):
                a = rng.uniform(0, 2 * np.pi)
                freqs.append((np.cos(a) * 2 * np.pi / wavelength, np.sin(a) * 2 * np.pi / wavelength))
                phases.append(rng.uniform(0, 2 * np.pi))
                amps.append(0.35 / 2**octave)
        params = {"freqs": freqs, "phases": phases, "amps": amps}
    elif kind == "stripes":
        k = 2 * np.pi / (rng.uniform(6, 20) * unit)
        params = {"kx": c * k, "ky": s * k, "phase": rng.uniform(0, 2 * np.pi), "sharpness": rng.uniform(1.5, 6)}
    else:
        params = {"c": c, "s": s, "k": np.pi / (rng.uniform(6, 16) * unit), "sharpness": rng.uniform(1.5, 6)}
    return Background(kind, colours, params)


@dataclass(frozen=True)
class Shape:
    """One object: its outline, fill and motion. Positions are image coordinates at the pan's zero (t = 1/2)."""

    kind: str
    radius: float
    aspect: float  # width / height of ellipses and rectangles
    fill: str  # solid, stripes, shaded
    colours: np.ndarray  # [2, 3]
    fill_k: float  # stripes' angular frequency (per pixel of the object's own frame)
    path: np.ndarray  # [3, 2]: Bezier start, control, end
    ease: float  # time warp t -> t + ease * t * (1 - t)
    angle: tuple[float, float]  # at t = 0, change over the interval
    scale: tuple[float, float]  # at t = 0, log-change over the interval
    tracked: bool = True

    def warp(self, t: float) -> float:
        return t + self.ease * t * (1 - t)

    def position(self, t: float) -> np.ndarray:
        t = self.warp(t)
        p0, q, p1 = self.path
        return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * q + t**2 * p1

    def pose(self, t: float) -> tuple[float, float]:
        return self.angle[0] + self.angle[1] * t, self.scale[0] * np.exp(self.scale[1] * t)

    def signed_distance(self, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
        """Approximate distance in pixels outside the outline (negative inside); (u, v) in the object's frame."""
        r = self.radius * scale
        if self.kind == "ellipse":
            a, b = r * np.sqrt(self.aspect), r / np.sqrt(self.aspect)
            return (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * min(a, b)
        if self.kind == "rectangle":
            a, b = 0.8 * r * np.sqrt(self.aspect), 0.8 * r / np.sqrt(self.aspect)
            dx, dy = np.abs(u) - a, np.abs(v) - b
            outside = np.sqrt(np.maximum(dx, 0) ** 2 + np.maximum(dy, 0) ** 2)
            return outside + np.minimum(np.maximum(dx, dy), 0)
        if self.kind == "triangle":  # equilateral, centroid at the origin: the max of three half-planes
            angles = np.pi / 2 + np.arange(3) * 2 * np.pi / 3
            return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], axis=0) - r / 2
        if self.kind == "star":  # five points: the radius swings between r and 0.5 r around the centre
            rho, theta = np.sqrt(u**2 + v**2), np.arctan2(v, u)
            edge = r * (0.75 + 0.25 * np.cos(5 * theta))
            return (rho - edge) * 0.7
        arm = 0.3 * r  # cross: two bars, the min of two rectangles' distances
        bars = []
        for a, b in ((r, arm), (arm, r)):
            dx, dy = np.abs(u) - a, np.abs(v) - b
            bars.append(np.sqrt(np.maximum(dx, 0) ** 2 + np.maximum(dy, 0) ** 2) + np.minimum(np.maximum(dx, dy), 0))
        return np.minimum(*bars)

    def render(self, x: np.ndarray, y: np.ndarray, t: float, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(colour [H, W, 3], coverage [H, W]) of the object at time t, the camera's offset added."""
        cx, cy = self.position(t) + offset
        angle, scale = self.pose(t)
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = x - cx, y - cy
        u, v = c * dx + s * dy, -s * dx + c * dy
        alpha = np.clip(0.5 - self.signed_distance(u, v, scale), 0.0, 1.0)
        if self.fill == "solid":
            w = np.zeros_like(u)
        elif self.fill == "stripes":
            w = _soft_square(u * self.fill_k / scale, 3.0) * 0.5 + 0.5
        else:  # shaded: light from one side of the object, turning with it
            w = np.clip(0.5 + 0.5 * u / (self.radius * scale), 0.0, 1.0)
        colour = self.colours[0] * (1 - w[..., None]) + self.colours[1] * w[..., None]
        return colour, alpha


def _random_shape(rng: np.random.Generator, unit: float, height: int, width: int) -> Shape:
    radius = rng.uniform(5, 12) * unit
    margin = radius * 0.5
    mid = np.array([rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)])
    a = rng.uniform(0, 2 * np.pi)
    motion = np.array([np.cos(a), np.sin(a)]) * rng.uniform(0, MAX_MOTION) * unit
    normal = np.array([-motion[1], motion[0]])
    bend = rng.uniform(-0.2, 0.2) if rng.random() < 0.5 else 0.0  # a curved path half the time
    ease = rng.uniform(-0.15, 0.15) if rng.random() < 0.5 else 0.0
    p0, p1 = mid - motion / 2, mid + motion / 2
    path = np.stack([p0, mid + normal * bend, p1])
    # Place the path so that the object passes its chosen middle point at t = 1/2 (the warp and bend move it).
    shape = Shape(
        kind=SHAPES[rng.integers(len(SHAPES))], radius=radius, aspect=float(np.exp(rng.uniform(-0.5, 0.5))),
        fill=("solid", "stripes", "shaded")[rng.choice(3, p=(0.5, 0.25, 0.25))],
        colours=rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32), fill_k=2 * np.pi / (rng.uniform(4, 8) * unit),
        path=path, ease=ease, angle=(rng.uniform(0, 2 * np.pi), rng.uniform(-np.pi / 4, np.pi / 4)),
        scale=(rng.uniform(0.8, 1.1), rng.uniform(-0.3, 0.3)),
    )
    return _replace_path(shape, path + (mid - shape.position(0.5)))


def _replace_path(shape: Shape, path: np.ndarray) -> Shape:
    return Shape(**{**shape.__dict__, "path": path})


def _random_occluder(rng: np.random.Generator, unit: float, height: int, width: int) -> Shape:
    """A static bar in front of everything (it moves only with the camera)."""
    centre = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height])
    return Shape(kind="rectangle", radius=rng.uniform(10, 20) * unit, aspect=float(rng.choice([1 / 12, 12.0])),
                 fill="solid", colours=rng.uniform(0.0, 1.0, (2, 3)).astype(np.float32), fill_k=1.0,
                 path=np.stack([centre] * 3), ease=0.0, angle=(rng.uniform(-0.3, 0.3), 0.0), scale=(1.0, 0.0),
                 tracked=False)


# ---------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class Scene:
    background: Background
    overlay: Background | None  # a second texture blended over the first
    overlay_weight: float
    shapes: tuple[Shape, ...]  # back to front
    pan: np.ndarray  # [2]: the camera's motion over the interval (the picture moves by -pan)

    def offset(self, t: float) -> np.ndarray:
        return -self.pan * (t - 0.5)

    def render(self, x: np.ndarray, y: np.ndarray, t: float, skip: int | None = None
               ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(frame float32 [H, W, 3] in [0, 1], each object's visible coverage [H, W]) at time t."""
        off = self.offset(t)
        bx, by = x - off[0], y - off[1]
        img = self.background.render(bx, by)
        if self.overlay is not None:
            img = img * (1 - self.overlay_weight) + self.overlay.render(bx, by) * self.overlay_weight
        visible = []
        for k, shape in enumerate(self.shapes):
            colour, alpha = shape.render(x, y, t, off)
            visible = [v * (1 - alpha) for v in visible]
            visible.append(alpha)
            if k != skip:
                img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
        return img, visible

    def centroids(self) -> np.ndarray:
        return np.array([[s.position(t) + self.offset(t) for t in TIMES] for s in self.shapes])


def random_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    unit = min(height, width) / 64
    background = _random_background(rng, unit, max(height, width))
    overlay = _random_background(rng, unit, max(height, width)) if rng.random() < 0.3 else None
    shapes = [_random_shape(rng, unit, height, width) for _ in range(rng.integers(1, MAX_OBJECTS + 1))]
    if rng.random() < 0.25:
        shapes.append(_random_occluder(rng, unit, height, width))
    a = rng.uniform(0, 2 * np.pi)
    pan = np.array([np.cos(a), np.sin(a)]) * rng.uniform(0, MAX_PAN) * unit if rng.random() < 0.5 else np.zeros(2)
    return Scene(background, overlay, float(rng.uniform(0.2, 0.5)), tuple(shapes), pan)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 by floor(x * 255 + 0.5), as edensplit's frames are rounded."""
    return np.floor(np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    return x, y


def triplet(seed: int, index: int, height: int = 64, width: int = 64, extras: bool = False) -> Triplet:
    """Triplet `index` of stream `seed` at height x width; `extras` adds the middle frame's masks and
    object-less renderings (what the centroid measure needs)."""
    rng = np.random.default_rng((seed, index))
    scene = random_scene(rng, height, width)
    x, y = _grid(height, width)
    frames, masks = [], None
    for t in TIMES:
        img, visible = scene.render(x, y, t)
        frames.append(to_uint8(img))
        if t == 0.5:
            masks = np.stack(visible).astype(np.float32)
    tracked = np.array([s.tracked for s in scene.shapes])
    if not extras:
        return Triplet(np.stack(frames), scene.centroids(), tracked)
    without = np.stack([to_uint8(scene.render(x, y, 0.5, skip=k)[0]) for k in range(len(scene.shapes))])
    return Triplet(np.stack(frames), scene.centroids(), tracked, masks, without)


def triplets(seed: int, count: int, height: int = 64, width: int = 64, extras: bool = True,
             start: int = 0) -> Iterator[Triplet]:
    """Triplets start .. start + count - 1 of stream `seed`."""
    for index in range(start, start + count):
        yield triplet(seed, index, height, width, extras)


def frames_batch(seed: int, start: int, count: int, height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 [count, 3, H, W, 3]: the frames of triplets start .. start + count - 1 (training's batches)."""
    return np.stack([triplet(seed, i, height, width).frames for i in range(start, start + count)])
