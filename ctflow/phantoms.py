"""Procedural anatomical CT phantoms: 2D axial slices in Hounsfield units (HU).

Geometry.  An image of ``size`` × ``size`` pixels covers the fixed square field of view
[−1, 1]² in normalised coordinates (x to the image right = patient left, radiological
convention; y down = posterior).  The body (or head) outline is a randomly deformed
ellipse filling ≈ 75–90 % of the width; outside it every pixel is exactly −1000 HU.

Rendering.  Every structure is an analytic shape (a rotated ellipse whose radius is
modulated by a few harmonics, r(θ) = 1 + Σ_k a_k cos(kθ + φ_k)), painted in a fixed
order onto a supersampled grid of R = s·size pixels (s ≥ 2) and area-averaged:

    HU(pixel) = (1/s²) Σ_{sub-pixels} HU(sub-pixel centre),

so small sizes are anti-aliased and one seed gives the same anatomy at every size.
Soft-tissue texture is band-limited noise (a seeded Gaussian-smoothed lattice on the
field of view, bilinearly interpolated) scaled per tissue: a few HU in soft tissue,
tens of HU in lung and bone.

Randomness.  All variation (organ shapes, sizes, positions, lesion count/positions/
contrast, texture) is drawn from ``numpy.random.default_rng(seed)`` in an order that does
not depend on ``size``.  Data splits use disjoint seed ranges (:data:`SPLIT_SEEDS`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError
from .phantom_shapes import Blob, Canvas, Frame, harmonics, supersampling, texture

KINDS = ("chest", "abdomen", "head")
SPLIT_SEEDS = {"train": 0, "val": 10_000_000, "test": 20_000_000}
SPLIT_STRIDE = 10_000_000  # seeds of one split: SPLIT_SEEDS[name] + [0, SPLIT_STRIDE)
PHANTOM_VERSION = 1  # bump when the distribution changes (invalidates caches)

# Tissue labels of :func:`phantom_labels` (the label of each pixel's central sub-sample).
LABELS = {
    "background": 0, "air": 1, "skin": 2, "fat": 3, "muscle": 4, "lung": 5, "blood": 6,
    "liver": 7, "spleen": 8, "kidney": 9, "bowel": 10, "stomach": 11, "cortical_bone": 12,
    "marrow": 13, "csf": 14, "grey_matter": 15, "white_matter": 16, "lesion": 17,
    "soft_tissue": 18,
}

# Texture amplitude (HU per unit of the normalised noise field) for each label.
_TEXTURE_AMP = np.zeros(len(LABELS), np.float32)
for _name, _amp in {
    "skin": 4.0, "fat": 7.0, "muscle": 6.0, "lung": 22.0, "blood": 4.0, "liver": 6.0,
    "spleen": 5.0, "kidney": 5.0, "bowel": 6.0, "stomach": 5.0, "cortical_bone": 70.0,
    "marrow": 45.0, "csf": 1.5, "grey_matter": 2.0, "white_matter": 2.0, "lesion": 4.0,
    "soft_tissue": 5.0,
}.items():
    _TEXTURE_AMP[LABELS[_name]] = _amp


# ---------------------------------------------------------------------------------------
# shared anatomy (drawing primitives: ctflow.phantom_shapes)
# ---------------------------------------------------------------------------------------
def _body_frame(rng: np.random.Generator, width: tuple[float, float],
                aspect: tuple[float, float]) -> Frame:
    ax = rng.uniform(*width)
    ay = min(ax * rng.uniform(*aspect), 0.84)
    return Frame(rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), ax, ay,
                 math.radians(rng.uniform(-5, 5)))


def _torso_wall(cv: Canvas, rng: np.random.Generator, f: Frame, fat: tuple[float, float],
                cavity_hu: float, cavity_label: str) -> Blob:
    """Skin, subcutaneous fat and muscle wall; returns the body cavity outline."""
    body = f.blob(0, 0, 1, 1, 0, harmonics(rng, (2, 3, 4), 0.04))
    skin = rng.uniform(0.012, 0.02)
    fat_t = rng.uniform(*fat)
    muscle_t = rng.uniform(0.05, 0.08)
    cv.paint(body, rng.uniform(20, 50), "skin")
    cv.paint(body.scaled(1 - skin), rng.uniform(-115, -90), "fat")
    cv.paint(body.scaled(1 - skin - fat_t), rng.uniform(40, 55), "muscle")
    cavity = body.scaled(1 - skin - fat_t - muscle_t)
    cv.paint(cavity, cavity_hu, cavity_label)
    return cavity


def _spine(cv: Canvas, rng: np.random.Generator, f: Frame, q: float) -> None:
    """Paraspinal muscles, vertebral body (cortical shell + marrow), canal with cord,
    lamina and spinous process; vertebral body centre at relative depth q."""
    for side in (-1, 1):
        cv.paint(f.blob(side * 0.17, q + 0.27, 0.16, 0.15, side * 0.3), rng.uniform(40, 55),
                 "muscle", ["fat", "muscle", "soft_tissue"])
    cortex, marrow = rng.uniform(1000, 1400), rng.uniform(180, 300)
    r = rng.uniform(0.085, 0.11)
    body = f.blob(0, q, r * 1.1, r, 0, harmonics(rng, (2, 3), 0.04), scale_x=True)
    cv.shell(body, cortex, "cortical_bone", 0.8, marrow, "marrow")
    rc = r * 0.45
    arch = f.blob(0, q + (r + rc) * f.ax / f.ay + 0.01, rc * 1.7, rc * 1.5, scale_x=True)
    cv.paint(arch, cortex, "cortical_bone")
    spinous = f.blob(0, q + (r + 3 * rc) * f.ax / f.ay, 0.025, rc * 1.6, scale_x=True)
    cv.shell(spinous, cortex, "cortical_bone", 0.5, marrow, "marrow")
    for side in (-1, 1):  # transverse processes
        tp = f.blob(side * rc * 2.0, q + (r + rc) * f.ax / f.ay, rc * 1.6, 0.025,
                    side * 0.35, scale_x=True)
        cv.paint(tp, cortex, "cortical_bone")
    cv.paint(arch.scaled(0.62), rng.uniform(15, 35), "csf")


def _ribs(cv: Canvas, rng: np.random.Generator, f: Frame, radius: float,
          angles: np.ndarray, cortex: float, marrow: float) -> None:
    """Rib cross-sections on the ellipse of relative radius ``radius`` at body-frame angles
    (0 = image right, π/2 = posterior), elongated along the body wall."""
    for alpha in angles:
        p, q = radius * math.cos(alpha), radius * math.sin(alpha)
        tangent = math.atan2(f.ay * math.cos(alpha), -f.ax * math.sin(alpha))
        length = rng.uniform(0.035, 0.06)
        thick = rng.uniform(0.015, 0.022)
        cx, cy = f.point(p, q)
        rib = Blob(cx, cy, length, thick, tangent + f.rot)
        cv.shell(rib, cortex, "cortical_bone", 0.55, marrow, "marrow")


def _lesions(cv: Canvas, rng: np.random.Generator, organ: Blob, base: float,
             contrast: tuple[float, float], count: int, size: tuple[float, float],
             where: Sequence[str], label: str = "lesion") -> None:
    """``count`` round lesions with HU = base + U(contrast) inside ``organ``."""
    for _ in range(count):
        rr = math.sqrt(rng.uniform(0, 0.55))
        th = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(organ.angle), math.sin(organ.angle)
        u, v = rr * organ.a * math.cos(th), rr * organ.b * math.sin(th)
        rad = rng.uniform(*size)
        les = Blob(organ.cx + c * u - s * v, organ.cy + s * u + c * v, rad,
                   rad * rng.uniform(0.7, 1.0), rng.uniform(0, math.pi),
                   harmonics(rng, (2, 3), 0.08))
        cv.paint(les, base + rng.uniform(*contrast), label, where)


# ---------------------------------------------------------------------------------------
# chest
# ---------------------------------------------------------------------------------------
def _chest(cv: Canvas, rng: np.random.Generator) -> None:
    f = _body_frame(rng, (0.76, 0.86), (0.62, 0.76))
    cavity = _torso_wall(cv, rng, f, (0.03, 0.11), rng.uniform(-100, -70), "fat")
    s_in = cavity.a / f.ax
    # lungs (clipped to the thoracic cavity)
    lung_hu = rng.uniform(-880, -820)
    lungs = []
    for side in (-1, 1):
        lung = f.blob(side * rng.uniform(0.40, 0.45) * s_in, rng.uniform(-0.04, 0.04),
                      rng.uniform(0.50, 0.56) * s_in, rng.uniform(0.85, 0.95) * s_in,
                      side * rng.uniform(-0.1, 0.1), harmonics(rng, (2, 3, 4, 5), 0.06))
        cv.paint(lung, lung_hu + rng.uniform(-15, 15), "lung", ["fat"], within=cavity)
        lungs.append(lung)
    # heart anterior-left (image right) in pericardial fat; descending aorta; oesophagus
    heart = f.blob(rng.uniform(0.12, 0.2), rng.uniform(-0.3, -0.15), rng.uniform(0.27, 0.33),
                   rng.uniform(0.33, 0.42), rng.uniform(-0.7, -0.4), harmonics(rng, (2, 3), 0.05))
    cv.paint(heart.scaled(1.12), rng.uniform(-100, -70), "fat", within=cavity)
    blood = rng.uniform(35, 48)
    cv.paint(heart, blood + rng.uniform(3, 8), "blood", within=cavity)
    ventricle = replace(heart.scaled(0.55), cx=heart.cx + 0.25 * heart.a, cy=heart.cy)
    cv.paint(ventricle, blood, "blood")
    cv.paint(f.blob(rng.uniform(0.07, 0.13), rng.uniform(0.3, 0.38), 0.075, 0.075,
                    scale_x=True), blood, "blood")
    oes = f.blob(rng.uniform(-0.04, 0.02), rng.uniform(0.3, 0.36), 0.04, 0.03, scale_x=True)
    cv.paint(oes, rng.uniform(30, 45), "soft_tissue")
    if rng.uniform() < 0.5:
        cv.paint(oes.scaled(rng.uniform(0.2, 0.5)), -1000.0, "air")
    # spine, ribs, sternum, scapulae
    _spine(cv, rng, f, rng.uniform(0.52, 0.6))
    cortex, marrow = rng.uniform(900, 1300), rng.uniform(180, 300)
    n = int(rng.integers(5, 8))
    rib_angles = []
    for side in (-1, 1):
        a = np.linspace(math.radians(-55), math.radians(70), n) + rng.uniform(-0.08, 0.08, n)
        rib_angles.append(a if side == 1 else math.pi - a)
    _ribs(cv, rng, f, s_in + 0.04, np.concatenate(rib_angles), cortex, marrow)
    sternum = f.blob(0, -(s_in + 0.03), 0.07, 0.045, scale_x=True)
    cv.shell(sternum, cortex, "cortical_bone", 0.6, marrow, "marrow")
    if rng.uniform() < 0.7:
        for side in (-1, 1):
            sc = f.blob(side * 0.62, 0.62, rng.uniform(0.16, 0.22), 0.03, side * -0.6,
                        scale_x=True)
            cv.paint(sc, cortex, "cortical_bone", ["muscle", "fat"])
    # pulmonary vessels (denser and larger near the hilum) and a few bronchi
    for side, lung in zip((-1, 1), lungs, strict=True):
        hx, hy = f.point(side * 0.12, 0.0)
        for _ in range(int(rng.integers(25, 45))):
            rr, th = math.sqrt(rng.uniform(0.02, 1.0)), rng.uniform(0, 2 * math.pi)
            px = lung.cx + rr * lung.a * math.cos(th)
            py = lung.cy + rr * lung.b * math.sin(th)
            dist = math.hypot(px - hx, py - hy)
            rad = max(0.004, rng.uniform(0.006, 0.016) * (1.2 - min(dist, 0.9)))
            vessel = Blob(px, py, rad * rng.uniform(1.0, 2.5), rad,
                          math.atan2(py - hy, px - hx))
            cv.paint(vessel, rng.uniform(30, 50), "blood", ["lung"])
        for _ in range(int(rng.integers(1, 4))):
            th = rng.uniform(0, 2 * math.pi)
            rr = rng.uniform(0.15, 0.5)
            px = lung.cx + rr * lung.a * math.cos(th)
            py = lung.cy + rr * lung.b * math.sin(th)
            br = Blob(px, py, rng.uniform(0.008, 0.014), rng.uniform(0.008, 0.014))
            cv.paint(br, 40.0, "soft_tissue", ["lung"])
            cv.paint(br.scaled(0.6), -1000.0, "air", ["soft_tissue"])
    # lesions: solid / ground-glass lung nodules, low-contrast mediastinal node
    for lung in lungs:
        _lesions(cv, rng, lung, 0.0, (-20, 60), int(rng.integers(0, 3)), (0.008, 0.03), ["lung"])
        if rng.uniform() < 0.25:
            _lesions(cv, rng, lung, -600.0, (-50, 150), 1, (0.02, 0.04), ["lung", "blood"])
    if rng.uniform() < 0.3:
        _lesions(cv, rng, heart, blood, (10, 25), 1, (0.015, 0.03), ["blood"])


# ---------------------------------------------------------------------------------------
# abdomen
# ---------------------------------------------------------------------------------------
def _bowel_loop(cv: Canvas, rng: np.random.Generator, loop: Blob, kind: int) -> None:
    """A bowel loop: wall (≈ 40 HU) and content: 0 fluid, 1 fluid with a gas pocket on top,
    2 gas, 3 faeces (mottled, with gas bubbles)."""
    cv.paint(loop, rng.uniform(30, 50), "bowel", ["fat"])
    inner = loop.scaled(rng.uniform(0.6, 0.8))
    if kind == 2:
        cv.paint(inner, -1000.0, "air", ["bowel"])
        return
    cv.paint(inner, rng.uniform(-120, 20) if kind == 3 else rng.uniform(5, 25), "bowel",
             ["bowel"])
    if kind == 1:  # air–fluid level: gas in the anterior (upper) part of the lumen
        level = inner.cy - inner.b * rng.uniform(0.0, 0.6)
        gas = Blob(inner.cx, level - 2 * inner.radius(), 3 * inner.radius(),
                   2 * inner.radius())
        cv.paint(inner, -1000.0, "air", ["bowel"], within=gas)
    if kind == 3:
        for _ in range(int(rng.integers(2, 6))):
            r = rng.uniform(0.1, 0.3) * inner.a
            bx = inner.cx + rng.uniform(-0.5, 0.5) * inner.a
            by = inner.cy + rng.uniform(-0.5, 0.5) * inner.b
            cv.paint(Blob(bx, by, r, r * rng.uniform(0.6, 1.0)), -1000.0, "air",
                     ["bowel"], within=inner)


def _abdomen(cv: Canvas, rng: np.random.Generator) -> None:
    f = _body_frame(rng, (0.75, 0.86), (0.68, 0.82))
    cavity = _torso_wall(cv, rng, f, (0.04, 0.16), rng.uniform(-110, -85), "fat")
    s_in = cavity.a / f.ax
    for side in (-1, 1):  # psoas
        cv.paint(f.blob(side * 0.14, 0.42, 0.07, 0.09, side * 0.3, scale_x=True),
                 rng.uniform(40, 55), "muscle", ["fat"])
    _spine(cv, rng, f, rng.uniform(0.42, 0.5))
    blood = rng.uniform(35, 48)
    aorta = f.blob(rng.uniform(0.04, 0.1), rng.uniform(0.22, 0.28), 0.055, 0.055, scale_x=True)
    cv.paint(aorta, blood, "blood")
    if rng.uniform() < 0.35:  # wall calcification
        th = rng.uniform(0, 2 * math.pi)
        cv.paint(Blob(aorta.cx + 0.9 * aorta.a * math.cos(th),
                      aorta.cy + 0.9 * aorta.a * math.sin(th), 0.008, 0.005, th + 1.57),
                 rng.uniform(400, 900), "lesion")
    cv.paint(f.blob(rng.uniform(-0.16, -0.1), rng.uniform(0.2, 0.26), 0.065, 0.045, 0.2,
                    scale_x=True), blood, "blood", ["fat"])
    # kidneys either side of the spine: cortex, medulla, sinus fat at the hilum
    kidneys = []
    for side in (-1, 1):
        k = f.blob(side * rng.uniform(0.3, 0.36), rng.uniform(0.3, 0.4), rng.uniform(0.1, 0.12),
                   rng.uniform(0.14, 0.17), side * rng.uniform(0.3, 0.6),
                   harmonics(rng, (2, 3), 0.05), scale_x=True)
        cortex_hu = rng.uniform(38, 48)
        cv.paint(k, cortex_hu, "kidney", ["fat", "muscle"])
        cv.paint(k.scaled(0.7), cortex_hu - rng.uniform(6, 12), "kidney", ["kidney"])
        hil = replace(k.scaled(0.35), cx=k.cx - side * 0.55 * k.a, cy=k.cy)
        cv.paint(hil, rng.uniform(-90, -40), "fat", ["kidney"])
        kidneys.append(k)
    # liver on the patient's right (image left), spleen posterior-left, stomach anterior-left
    liver_hu = rng.uniform(52, 68)
    liver = f.blob(rng.uniform(-0.44, -0.36) * s_in, rng.uniform(-0.2, -0.05) * s_in,
                   rng.uniform(0.42, 0.52) * s_in, rng.uniform(0.55, 0.7) * s_in,
                   rng.uniform(-0.3, 0.1), harmonics(rng, (2, 3, 4), 0.1))
    cv.paint(liver, liver_hu, "liver", ["fat"], within=cavity)
    for _ in range(int(rng.integers(3, 7))):  # hepatic / portal vessels
        _lesions(cv, rng, liver, blood, (-8, 8), 1, (0.01, 0.02), ["liver"], "blood")
    if rng.uniform() < 0.4:  # gallbladder
        gb = replace(liver.scaled(0.2), cx=liver.cx + 0.55 * liver.a,
                     cy=liver.cy - 0.1 * liver.b)
        cv.paint(gb, rng.uniform(0, 20), "soft_tissue", ["liver"])
    spleen = f.blob(rng.uniform(0.5, 0.6) * s_in, rng.uniform(0.2, 0.4) * s_in,
                    rng.uniform(0.12, 0.18), rng.uniform(0.22, 0.3), rng.uniform(0.3, 0.7),
                    harmonics(rng, (2, 3), 0.08))
    if rng.uniform() < 0.8:
        cv.paint(spleen, rng.uniform(40, 52), "spleen", ["fat"], within=cavity)
    stomach = f.blob(rng.uniform(0.25, 0.4) * s_in, rng.uniform(-0.5, -0.3) * s_in,
                     rng.uniform(0.18, 0.28), rng.uniform(0.14, 0.22), rng.uniform(-0.5, 0.5),
                     harmonics(rng, (2, 3), 0.08))
    if rng.uniform() < 0.8:
        cv.paint(stomach, rng.uniform(35, 50), "stomach", ["fat"], within=cavity)
        inner = stomach.scaled(0.85)
        cv.paint(inner, rng.uniform(5, 25), "stomach", ["stomach"])
        level = inner.cy + inner.b * rng.uniform(-0.8, 0.3)
        gas = Blob(inner.cx, level - 2 * inner.radius(), 3 * inner.radius(), 2 * inner.radius())
        cv.paint(inner, -1000.0, "air", ["stomach"], within=gas)
    if rng.uniform() < 0.5:  # pancreas anterior to the aorta
        cv.paint(f.blob(rng.uniform(0.0, 0.15), rng.uniform(0.0, 0.1), rng.uniform(0.2, 0.28),
                        0.05, rng.uniform(-0.4, 0.0), harmonics(rng, (3, 5), 0.1)),
                 rng.uniform(35, 48), "soft_tissue", ["fat"], within=cavity)
    # colon at the flanks, small-bowel loops in the anterior/central abdomen
    for side in (-1, 1):
        colon = f.blob(side * rng.uniform(0.55, 0.65) * s_in, rng.uniform(-0.1, 0.25) * s_in,
                       rng.uniform(0.1, 0.14), rng.uniform(0.1, 0.14), 0.0,
                       harmonics(rng, (3, 4, 5), 0.1), scale_x=True)
        _bowel_loop(cv, rng, colon, int(rng.choice([1, 2, 3, 3])))
    for _ in range(int(rng.integers(6, 16))):
        r = rng.uniform(0.05, 0.1)
        loop = f.blob(rng.uniform(-0.6, 0.6) * s_in, rng.uniform(-0.8, 0.2) * s_in, r,
                      r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi),
                      harmonics(rng, (2, 3), 0.06), scale_x=True)
        _bowel_loop(cv, rng, loop, int(rng.choice([0, 0, 1, 2, 3])))
    # lower ribs at the flanks
    cortex, marrow = rng.uniform(900, 1300), rng.uniform(180, 300)
    n = int(rng.integers(0, 4))
    for side in (-1, 1):
        a = rng.uniform(math.radians(-20), math.radians(60), n)
        _ribs(cv, rng, f, s_in + 0.04, a if side == 1 else math.pi - a, cortex, marrow)
    # lesions: low-contrast liver lesions, renal cyst, calcified stone
    _lesions(cv, rng, liver, liver_hu, (-45, -10), int(rng.integers(0, 4)), (0.012, 0.045),
             ["liver", "blood"])
    if rng.uniform() < 0.4:
        _lesions(cv, rng, liver, liver_hu, (10, 25), 1, (0.01, 0.03), ["liver"])
    if rng.uniform() < 0.3:
        _lesions(cv, rng, kidneys[int(rng.integers(2))], 0.0, (0, 15), 1, (0.015, 0.03),
                 ["kidney", "fat"])
    if rng.uniform() < 0.3:
        _lesions(cv, rng, kidneys[int(rng.integers(2))], 0.0, (400, 1000), 1, (0.004, 0.008),
                 ["kidney", "fat"])


# ---------------------------------------------------------------------------------------
# head
# ---------------------------------------------------------------------------------------
def _head(cv: Canvas, rng: np.random.Generator) -> None:
    f = _body_frame(rng, (0.64, 0.74), (1.12, 1.22))
    head = f.blob(0, 0, 1, 1, 0, harmonics(rng, (2, 3, 4), 0.035))
    cv.paint(head, rng.uniform(25, 45), "skin")
    cv.paint(head.scaled(0.975), rng.uniform(-90, -50), "fat")
    skull_out = head.scaled(rng.uniform(0.93, 0.95))
    thick = rng.uniform(0.065, 0.095)
    table = rng.uniform(1350, 1650)
    skull_in = replace(skull_out.scaled(1 - thick), harm=skull_out.harm
                       + harmonics(rng, (2, 3), 0.02))
    cv.paint(skull_out, table, "cortical_bone")
    diploe = skull_out.scaled(1 - 0.35 * thick)
    cv.paint(diploe, rng.uniform(500, 850), "marrow")
    cv.paint(skull_out.scaled(1 - 0.7 * thick), table, "cortical_bone")
    if rng.uniform() < 0.35:  # frontal sinus: air within the anterior skull
        cx, cy = f.point(rng.uniform(-0.05, 0.05), -(1 - 0.5 * thick) * 0.94)
        sinus = Blob(cx, cy, rng.uniform(0.04, 0.08), 0.6 * thick * f.ay, f.rot)
        cv.paint(sinus, -1000.0, "air", ["marrow"])
    csf = rng.uniform(5, 15)
    cv.paint(skull_in, csf, "csf")
    gm, wm = rng.uniform(34, 42), rng.uniform(24, 30)
    cortex = skull_in.scaled(rng.uniform(0.95, 0.975))
    cv.paint(cortex, gm, "grey_matter", ["csf"])
    white = replace(cortex.scaled(rng.uniform(0.78, 0.84)),
                    harm=harmonics(rng, (2, 3), 0.04) + harmonics(rng, range(9, 22, 2), 0.09))
    cv.paint(white, wm, "white_matter", ["grey_matter"])
    # sulci: thin radial CSF clefts from the cortical surface
    for _ in range(int(rng.integers(18, 34))):
        th = rng.uniform(0, 2 * math.pi)
        depth = rng.uniform(0.06, 0.14)
        r0 = 1 - depth / 2
        p, q = r0 * math.cos(th) * cortex.a / f.ax, r0 * math.sin(th) * cortex.b / f.ay
        cx, cy = f.point(p, q)
        ang = math.atan2(f.ay * math.sin(th) / f.ax, math.cos(th)) + f.rot
        cv.paint(Blob(cx, cy, depth * f.ax / 2, rng.uniform(0.004, 0.008), ang), csf, "csf",
                 ["grey_matter", "white_matter"])
    # interhemispheric fissure (anterior and posterior), deep grey matter, ventricles
    for q0, q1 in ((-0.95, -0.45), (0.45, 0.95)):
        cv.paint(f.blob(rng.uniform(-0.01, 0.01), (q0 + q1) / 2, 0.007, (q1 - q0) / 2),
                 csf, "csf", ["grey_matter", "white_matter"])
    vscale = rng.uniform(0.7, 1.4)
    for side in (-1, 1):
        cv.paint(f.blob(side * 0.15, rng.uniform(0.0, 0.1), 0.08, 0.11, side * 0.2), gm - 2,
                 "grey_matter", ["white_matter"])
        cv.paint(f.blob(side * 0.12, -0.22, 0.05, 0.08, side * -0.2), gm - 1, "grey_matter",
                 ["white_matter"])
        front = f.blob(side * 0.07 * vscale, -0.22, 0.035 * vscale, 0.2, side * -0.25)
        back = f.blob(side * 0.13 * vscale, 0.22, 0.04 * vscale, 0.18, side * 0.35)
        cv.paint(front, csf, "csf", ["white_matter", "grey_matter"])
        cv.paint(back, csf, "csf", ["white_matter", "grey_matter"])
        if rng.uniform() < 0.4:  # choroid plexus calcification in the atrium
            cv.paint(back.scaled(0.3), rng.uniform(150, 400), "lesion", ["csf"])
    cv.paint(f.blob(0, 0.05, 0.012 * vscale, 0.07), csf, "csf", ["grey_matter", "white_matter"])
    if rng.uniform() < 0.5:  # pineal calcification
        cv.paint(f.blob(0, 0.16, 0.012, 0.012, scale_x=True), rng.uniform(200, 600), "lesion")
    # lesions: hypodense infarct, hyperdense haemorrhage, meningioma
    brain = cortex.scaled(0.8)
    _lesions(cv, rng, brain, 0.0, (12, 22), int(rng.integers(0, 3)), (0.015, 0.05),
             ["grey_matter", "white_matter"])
    if rng.uniform() < 0.3:
        _lesions(cv, rng, brain, 0.0, (55, 80), 1, (0.01, 0.03),
                 ["grey_matter", "white_matter", "csf"])


_RENDER = {"chest": _chest, "abdomen": _abdomen, "head": _head}


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


def _check(kind: str, size: int, seed: int) -> None:
    if kind not in _RENDER:
        raise InputError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise InputError(f"phantom size must be an integer >= 8, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom seed must be a non-negative integer, got {seed!r}")


def phantom_labels(kind: str = "chest", size: int = 128, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """HU image (float32, area-averaged) and tissue labels (uint8, see :data:`LABELS`; the
    label of each pixel's central sub-sample) of one procedural slice."""
    _check(kind, size, seed)
    size = int(size)
    s = supersampling(size)
    rng = np.random.default_rng(int(seed))
    cv = Canvas(size * s, LABELS)
    _RENDER[kind](cv, rng)
    cv.hu += _TEXTURE_AMP[cv.lab] * rng.uniform(0.7, 1.3) * texture(rng, cv.res)
    hu = cv.hu.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)
    return hu.astype(np.float32), cv.lab[s // 2::s, s // 2::s].copy()


def phantom(kind: str = "chest", size: int = 128, seed: int = 0) -> np.ndarray:
    """A procedural axial CT slice of ``kind`` ("chest", "abdomen", "head") in HU,
    float32 (size, size); deterministic in ``seed``, same anatomy at every size."""
    return phantom_labels(kind, size, seed)[0]


def kind_for_seed(seed: int, kinds: Sequence[str] = KINDS) -> str:
    """The phantom kind of ``seed``: uniform over ``kinds``, drawn from
    default_rng((seed, 1)) (independent of the anatomy stream default_rng(seed))."""
    return kinds[int(np.random.default_rng((int(seed), 1)).integers(len(kinds)))]


def random_phantom(size: int, seed: int, kinds: Sequence[str] = KINDS) -> np.ndarray:
    """``phantom(kind_for_seed(seed, kinds), size, seed)``."""
    _check(kinds[0] if kinds else "", size, seed)
    return phantom(kind_for_seed(seed, kinds), size, seed)


class PhantomDataset(Dataset):
    """Phantoms generated on the fly: item i is ``random_phantom(size, seed + i, kinds)`` as
    a (1, size, size) float32 tensor in HU.

    Splits use disjoint seed ranges: split ``name`` has seeds SPLIT_SEEDS[name] + i,
    0 ≤ i < SPLIT_STRIDE (10⁷).  With ``cache_dir`` each item is stored once as an .npy
    file (written to a temporary name, then renamed) and read back afterwards.
    """

    def __init__(self, size: int, length: int, seed: int = 0,
                 kinds: Sequence[str] = KINDS, cache_dir: str | os.PathLike | None = None):
        kinds = tuple(kinds)
        if not kinds or any(k not in _RENDER for k in kinds):
            raise InputError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        _check(kinds[0], size, seed)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise InputError(f"dataset length must be a non-negative integer, got {length!r}")
        self.size, self.length, self.seed, self.kinds = int(size), int(length), int(seed), kinds
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        if self.cache_dir is not None:
            os.makedirs(self.cache_dir, exist_ok=True)

    @classmethod
    def split(cls, name: str, size: int, length: int, **kw) -> PhantomDataset:
        """The dataset of split ``name`` ("train", "val", "test")."""
        if name not in SPLIT_SEEDS:
            raise InputError(f"unknown split {name!r}; choose one of {tuple(SPLIT_SEEDS)}")
        if length > SPLIT_STRIDE:
            raise InputError(f"a split holds at most {SPLIT_STRIDE} items, got {length}")
        return cls(size, length, seed=SPLIT_SEEDS[name], **kw)

    def __len__(self) -> int:
        return self.length

    def seed_of(self, index: int) -> int:
        """The phantom seed of item ``index`` (negative indices count from the end)."""
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index out of range for PhantomDataset of length {self.length}")
        return self.seed + index

    def _cache_path(self, seed: int) -> str:
        kinds = "-".join(self.kinds)
        return os.path.join(self.cache_dir or "",
                            f"phantom_v{PHANTOM_VERSION}_{kinds}_{self.size}_{seed}.npy")

    def __getitem__(self, index: int) -> torch.Tensor:
        seed = self.seed_of(int(index))
        if self.cache_dir is None:
            img = random_phantom(self.size, seed, self.kinds)
        else:
            path = self._cache_path(seed)
            if os.path.exists(path):
                img = np.load(path)
            else:
                img = random_phantom(self.size, seed, self.kinds)
                fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        np.save(fh, img)
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, path)
                except BaseException:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
                    raise
        return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]
