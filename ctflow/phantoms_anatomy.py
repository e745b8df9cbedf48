"""The anatomy of the procedural phantoms (:mod:`ctflow.phantoms`): one renderer per kind
(:func:`render_chest`, :func:`render_abdomen`, :func:`render_head`) painting body wall,
organs, bones, vessels and lesions onto a :class:`~ctflow.phantom_shapes.Canvas`.

Every random draw comes from the ``rng`` passed in, in a fixed order that does not depend
on the image size (so one seed gives the same anatomy at every size); reordering draws
changes every phantom and needs a new ``PHANTOM_VERSION``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .phantom_shapes import Blob, Canvas, Frame, harmonics


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
def render_chest(cv: Canvas, rng: np.random.Generator) -> None:
    """Chest slice: body wall, lungs, heart and great vessels, spine, ribs, lesions."""
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


def _kidneys(cv: Canvas, rng: np.random.Generator, f: Frame) -> list[Blob]:
    """Kidneys either side of the spine: cortex, medulla, sinus fat at the hilum."""
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
    return kidneys


def _upper_abdomen(cv: Canvas, rng: np.random.Generator, f: Frame, cavity: Blob,
                   s_in: float, blood: float) -> tuple[Blob, float]:
    """Liver on the patient's right (image left) with vessels and gallbladder, spleen
    posterior-left, stomach anterior-left, pancreas; returns the liver and its HU."""
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
    return liver, liver_hu


def render_abdomen(cv: Canvas, rng: np.random.Generator) -> None:
    """Abdomen slice: body wall, spine, vessels, kidneys, upper-abdominal organs,
    bowel, lower ribs, lesions."""
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
    kidneys = _kidneys(cv, rng, f)
    liver, liver_hu = _upper_abdomen(cv, rng, f, cavity, s_in, blood)
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
def render_head(cv: Canvas, rng: np.random.Generator) -> None:
    """Head slice: scalp, skull with diploë, brain (grey/white matter, sulci,
    ventricles), calcifications, lesions."""
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
