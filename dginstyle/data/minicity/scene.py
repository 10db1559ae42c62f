"""Street-scene geometry of the miniature world: a pinhole camera over a 3-D street layout.

World coordinates: X to the right (road centre line at X = 0), Y up (ground at 0), Z forward.
`sample_layout` draws a style-independent scene (road, sidewalks, building blocks with side
streets and parks, street furniture, vehicles, people); `draw_scene` rasterises it far to near
onto a supersampled `Canvas`, taking surface colours and sun shading from a `Style`. All
domains share this generator (only the camera distribution differs slightly), so their label
statistics agree while their looks differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .raster import Canvas, banks, crop, hash01

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TLIGHT, TSIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTO, BIKE = range(11, 19)
IGN = 255
ZNEAR = 1.0
# Segment types along each side of the street.
SEG_BUILDING, SEG_PARK, SEG_CROSS, SEG_ALLEY = range(4)


@dataclass
class Camera:
    w: int
    h: int
    f: float
    cx: float
    yh: float
    hcam: float
    camx: float = 0.0

    def sx(self, X, Z):
        return self.cx + self.f * (X - self.camx) / Z

    def sy(self, Y, Z):
        return self.yh + self.f * (self.hcam - Y) / Z


@dataclass
class Scene:
    cam: Camera
    lanes: int
    lane_w: float
    road_half: float
    two_way: bool
    sw: tuple
    grass: tuple
    xb: tuple
    seg_edges: list
    seg_types: list
    seg_heights: list
    crosswalks: list
    tracks: list
    sun_side: int
    items: list = field(default_factory=list)


def _side(s: int) -> int:
    return 0 if s < 0 else 1


def sample_layout(rng: np.random.Generator, w2: int, h2: int, camera: dict) -> Scene:
    u = rng.uniform
    lanes = int(rng.choice([2, 2, 3, 4, 4, 6]))
    lane_w = u(3.0, 3.6)
    road_half = lanes * lane_w / 2
    two_way = lanes >= 4 or rng.random() < 0.75
    centres = [-road_half + lane_w * (i + 0.5) for i in range(lanes)]
    ego_lanes = [c for c in centres if c > 0.1] if two_way else centres
    camx = float(rng.choice(ego_lanes)) + u(-0.3, 0.3)
    f = camera["focal"] * w2
    cam = Camera(w2, h2, f, w2 * (0.5 + camera["vp_shift"]), h2 * camera["horizon"], camera["height"], camx)

    sw = (u(1.8, 4.5), u(1.8, 4.5))
    grass = tuple(0.0 if rng.random() < 0.65 else u(1.0, 3.0) for _ in range(2))
    setback = (u(0.0, 1.5), u(0.0, 1.5))
    xb = tuple(road_half + sw[i] + grass[i] + setback[i] for i in range(2))
    sun_side = int(rng.choice([-1, 1]))
    zmax = u(120, 180)
    zsky = zmax + u(10, 60)

    # Cross streets (both sides at once) and the blocks between them.
    cross = []
    z = u(12, 45)
    while z < 110 and rng.random() < 0.7:
        wdt = u(9, 16)
        cross.append((z, z + wdt))
        z += wdt + u(35, 90)
    park_p = float(rng.choice([0.05, 0.15, 0.5]))
    height0 = u(9, 28)
    items: list = []
    seg_edges, seg_types, seg_heights = [], [], []
    for si, s in enumerate((-1, 1)):
        edges, types, heights = [], [], []
        z = 0.0
        ci = 0
        while z < zmax:
            if ci < len(cross) and z >= cross[ci][0] - 1e-6:
                edges.append(z), types.append(SEG_CROSS), heights.append(0.0)
                z = cross[ci][1]
                ci += 1
                continue
            limit = cross[ci][0] if ci < len(cross) else zmax
            r = rng.random()
            if r < park_p:
                length = min(u(15, 45), limit - z)
                edges.append(z), types.append(SEG_PARK), heights.append(0.0)
            elif r < park_p + 0.07:
                length = min(u(3, 7), limit - z)
                edges.append(z), types.append(SEG_ALLEY), heights.append(0.0)
            else:
                length = min(u(8, 32), limit - z)
                H = height0 * u(0.55, 1.5)
                edges.append(z), types.append(SEG_BUILDING), heights.append(H)
                items.append((1, z, "facade", dict(
                    s=s, X=s * xb[si], z0=z, z1=z + length, H=H, D=u(8, 20), u=rng.random(),
                    sp=u(2.2, 4.0), wf=u(0.35, 0.7), fh=u(3.0, 3.6), gf=u(3.4, 4.6), shop=rng.random() < 0.5,
                    salt=int(rng.integers(1 << 20)), lit=u(0.15, 0.6), end=True)))
            if length < 1.0:
                edges.pop(), types.pop(), heights.pop()
                if types and types[-1] != SEG_CROSS:
                    pass
                z = limit
                continue
            # Park and alley segments: trees and a backdrop behind them.
            if types[-1] == SEG_PARK:
                for _ in range(rng.poisson(length / 8)):
                    zt = z + u(0, length)
                    xt = s * (road_half + sw[si] + u(1.5, 15))
                    items.append((2, zt, "tree", _tree(rng, xt, zt)))
                if rng.random() < 0.4:
                    items.append((3, z, "fence" if rng.random() < 0.6 else "hedge", dict(s=s, X=s * (road_half + sw[si] + grass[si]), z0=z, z1=z + length, h=u(0.8, 1.8), u=rng.random())))
            z += length
        edges.append(max(z, zmax)), types.append(SEG_BUILDING), heights.append(height0)
        seg_edges.append(np.asarray(edges, np.float32))
        seg_types.append(np.asarray(types, np.int8))
        seg_heights.append(np.asarray(heights, np.float32))
        # Backdrop: a second row of taller buildings far from the street, seen through gaps.
        if rng.random() < 0.85:
            xback = s * (xb[si] + u(18, 45))
            zb = u(0, 10)
            while zb < zsky:
                length = u(25, 70)
                items.append((0, zb, "facade", dict(
                    s=s, X=xback, z0=zb, z1=zb + length, H=height0 * u(0.8, 2.2), D=20.0, u=rng.random(),
                    sp=u(2.5, 4.0), wf=u(0.4, 0.7), fh=u(3.0, 3.6), gf=3.5, shop=False, salt=int(rng.integers(1 << 20)), lit=u(0.1, 0.5), end=False)))
                zb += length + (u(5, 20) if rng.random() < 0.2 else 0.0)

    # The far skyline facing the camera, with occasional gaps (sky) and tree clumps.
    x_lo = camx + (0 - cam.cx) * zsky / f - 10
    x_hi = camx + (w2 - cam.cx) * zsky / f + 10
    segs = []
    x = x_lo
    while x < x_hi:
        wdt = u(8, 35)
        r = rng.random()
        kind = "gap" if r < 0.12 else ("trees" if r < 0.3 else "building")
        segs.append((x, x + wdt, kind, height0 * u(0.4, 2.0) if kind == "building" else u(6, 14), rng.random()))
        x += wdt
    items.append((0, zsky, "skyline", dict(Z=zsky, segs=segs)))

    # Walls, fences and hedges along the outer edge of the sidewalks.
    for si, s in enumerate((-1, 1)):
        for kind, p in (("wall", 0.25), ("fence", 0.25), ("hedge", 0.18)):
            if rng.random() < p:
                z0 = u(0, 40)
                items.append((3, z0, kind, dict(s=s, X=s * (road_half + sw[si] + (grass[si] if kind != "hedge" else 0.2)), z0=z0, z1=z0 + u(8, 60), h=u(0.7, 2.3) if kind != "hedge" else u(0.8, 1.6), u=rng.random())))
        # Street trees.
        if rng.random() < 0.45:
            spacing = u(7, 14)
            xt = s * (road_half + sw[si] + grass[si] / 2) if grass[si] > 0 else s * (road_half + sw[si] - u(0.6, 1.0))
            zt = u(2, 10)
            while zt < 110:
                items.append((4 if grass[si] == 0 else 2, zt, "tree", _tree(rng, xt, zt)))
                zt += spacing * u(0.85, 1.15)
        # Street lamps.
        if rng.random() < 0.32:
            spacing = u(22, 40)
            zp = u(3, 20)
            while zp < 120:
                items.append((4, zp, "pole", dict(X=s * (road_half + 0.45), Z=zp, h=u(6.5, 9.0), w=u(0.16, 0.24), arm=-s * u(1.0, 2.2), lamp=True,
                                                  tl=None, sign=(_sign(rng) if rng.random() < 0.12 else None))))
                zp += spacing * u(0.9, 1.1)

    # Traffic lights at the near corners of cross streets; crosswalks in front of them.
    crosswalks = []
    for zc0, zc1 in cross:
        if zc0 < 100 and rng.random() < 0.5:
            crosswalks.append((zc0 - u(3.5, 5.0), zc0 - 0.8))
            for s in (-1, 1):
                if rng.random() < 0.8:
                    items.append((4, zc0 - 0.5, "pole", dict(X=s * (road_half + 0.5), Z=zc0 - 0.5, h=u(3.2, 4.2), w=0.16, arm=0.0, lamp=False,
                                                             tl=dict(Y=u(2.4, 3.2), off=0.0), sign=(_sign(rng) if rng.random() < 0.25 else None))))
            if rng.random() < 0.5:
                s = 1
                items.append((4, zc1 + 1.0, "pole", dict(X=s * (road_half + 0.5), Z=zc1 + 1.0, h=u(5.5, 6.5), w=0.22, arm=-s * u(3.0, road_half + 1.0), lamp=False,
                                                         tl=dict(Y=5.2, off=None), sign=None)))
    # Stand-alone traffic signs.
    for _ in range(rng.poisson(0.6)):
        s = int(rng.choice([-1, 1]))
        zs = u(5, 60)
        items.append((4, zs, "pole", dict(X=s * (road_half + u(0.3, 0.7)), Z=zs, h=u(2.2, 3.2), w=0.09, arm=0.0, lamp=False, tl=None, sign=_sign(rng, top=True))))
    # Occasional plain poles (utility poles, bollards).
    for _ in range(rng.poisson(0.3)):
        s = int(rng.choice([-1, 1]))
        zs = u(5, 80)
        items.append((4, zs, "pole", dict(X=s * (road_half + u(0.3, 1.0)), Z=zs, h=u(1.0, 9.0), w=u(0.12, 0.3), arm=0.0, lamp=False, tl=None, sign=None)))

    # Trams: rails in a lane (sometimes on their own track bed, ignore), rarely a train on them.
    tracks = []
    tram_lane = None
    if rng.random() < 0.14:
        tram_lane = float(rng.choice(centres[: max(1, lanes // 2)])) if two_way and lanes >= 2 else float(centres[0])
        bed = lanes >= 4 and rng.random() < 0.4
        tracks.append((tram_lane, 1.5 if bed else 0.0))
        if rng.random() < 0.5:
            z0 = u(8, 55)
            items.append((4, z0, "vehicle", dict(kind="train", X=tram_lane, z0=z0, w=2.6, h=u(3.3, 3.8), L=u(25, 40), facing=int(rng.choice([-1, 1])), u=rng.random())))

    # Traffic.
    dens = u(0.15, 1.0)
    parked = [rng.random() < 0.35, rng.random() < 0.35]
    for c in centres:
        if tram_lane is not None and abs(c - tram_lane) < 0.1:
            continue
        s = 1 if c > 0 else -1
        if parked[_side(s)] and abs(c) > road_half - lane_w and abs(c - camx) > lane_w / 2:
            continue
        facing = 1 if (c > -0.1 or not two_way) else -1
        z = u(8, 14) if abs(c - camx) < lane_w / 2 else u(3, 10)
        while z < 110:
            z += rng.exponential(22 / dens) * (0.5 if z < 20 else 1.0)
            if z > 110:
                break
            items.append((4, z, "vehicle", _vehicle(rng, c + u(-0.3, 0.3), z, facing)))
            z += 6
    for si, s in enumerate((-1, 1)):
        if parked[si]:
            z = u(2, 8)
            while z < 70:
                if rng.random() < 0.8:
                    v = _vehicle(rng, s * (road_half - 1.1), z, int(rng.choice([-1, 1])), parked=True)
                    items.append((4, z, "vehicle", v))
                    z += v["L"] + u(0.8, 3.0)
                else:
                    z += u(5, 12)

    # People on the sidewalks and crosswalks.
    lam = float(rng.choice([0.3, 1.5, 4.0, 8.0]))
    for _ in range(rng.poisson(lam)):
        si = int(rng.integers(2))
        s = (-1, 1)[si]
        zp = 4 + 50 * rng.random() ** 1.5
        xp = s * (road_half + u(0.3, max(0.4, sw[si] - 0.3)))
        items.append((4, zp, "person", _person(rng, xp, zp)))
    for z0, z1 in crosswalks:
        for _ in range(rng.poisson(1.0)):
            zp = u(z0, z1)
            items.append((4, zp, "person", _person(rng, u(-road_half, road_half), zp)))
    # Riders (rare) and parked bicycles.
    if rng.random() < 0.22:
        for _ in range(1 + (rng.random() < 0.25)):
            moto = rng.random() < 0.35
            zr = u(6, 45)
            if crosswalks and rng.random() < 0.3:
                xr, view = u(-road_half, road_half), "side"
                zr = u(*crosswalks[0])
            else:
                xr, view = (road_half - u(0.6, 1.0)) if not moto else float(rng.choice(centres)) + u(-0.8, 0.8), "rear"
            items.append((4, zr, "rider", dict(X=xr, Z=zr, moto=moto, view=view, dir=int(rng.choice([-1, 1])), u=rng.random(), person=_person(rng, xr, zr))))
    if rng.random() < 0.12:
        si = int(rng.integers(2))
        s = (-1, 1)[si]
        zb = u(5, 25)
        for k in range(int(rng.integers(1, 5))):
            items.append((4, zb + 0.7 * k, "bicycle", dict(X=s * (road_half + sw[si] - 0.8), Z=zb + 0.7 * k, dir=int(rng.choice([-1, 1])), u=rng.random())))
    # Unlabelled clutter (bins, boxes: "static", ignore).
    for _ in range(rng.poisson(0.8)):
        si = int(rng.integers(2))
        s = (-1, 1)[si]
        zc = u(4, 50)
        items.append((4, zc, "clutter", dict(X=s * (road_half + u(0.4, sw[si])), Z=zc, w=u(0.4, 1.2), h=u(0.6, 1.3), u=rng.random())))

    return Scene(cam, lanes, lane_w, road_half, two_way, sw, grass, xb, seg_edges, seg_types, seg_heights, crosswalks, tracks, sun_side, items)


def _tree(rng, X, Z) -> dict:
    r = rng.uniform(1.3, 3.0)
    return dict(X=X, Z=Z, r=r, cy=r + rng.uniform(1.8, 3.5), trunk=rng.uniform(0.22, 0.4), u=rng.random(), sx=rng.uniform(0.8, 1.2))


def _sign(rng, top: bool = False) -> dict:
    return dict(shape=int(rng.integers(4)), size=rng.uniform(0.5, 0.8), u=rng.random(), top=top)


def _vehicle(rng, X, z, facing, parked: bool = False) -> dict:
    r = rng.random()
    kind = "car" if (r < 0.86 or parked) else ("truck" if r < 0.94 else "bus")
    dims = {"car": (rng.uniform(1.7, 1.95), rng.uniform(1.4, 1.65), rng.uniform(4.0, 4.8)),
            "truck": (2.5, rng.uniform(2.8, 3.6), rng.uniform(6.5, 9.0)),
            "bus": (2.55, rng.uniform(3.0, 3.3), rng.uniform(11.0, 13.0))}[kind]
    return dict(kind=kind, X=X, z0=z, w=dims[0], h=dims[1], L=dims[2], facing=facing, u=rng.random())


def _person(rng, X, Z) -> dict:
    return dict(X=X, Z=Z, h=rng.uniform(1.55, 1.92), u=rng.random(3), phase=rng.uniform(-1, 1), wide=rng.uniform(0.9, 1.15))


# -- drawing ------------------------------------------------------------------------------------


def _shade(st, sc: Scene, normal_side: int) -> float:
    """Brightness of a vertical face whose normal points to `normal_side` (0: towards camera)."""
    sun = st.sun
    if normal_side == 0:
        return 1.0 - 0.22 * sun
    return 1.0 + 0.08 * sun if normal_side == sc.sun_side else 1.0 - 0.5 * sun


def face_x(cv: Canvas, cam: Camera, X, z0, z1, ylo, yhi):
    """Pixels of the plane X = const between z0..z1 and heights ylo..yhi: (bb, mask, Z, Y)."""
    z0 = max(z0, ZNEAR)
    dx = X - cam.camx
    if z1 <= z0 or abs(dx) < 1e-3:
        return None
    xa, xb = cam.sx(X, z0), cam.sx(X, z1)
    ys = (cam.sy(ylo, z0), cam.sy(ylo, z1), cam.sy(yhi, z0), cam.sy(yhi, z1))
    bb = cv.box(min(xa, xb), max(xa, xb), min(ys), max(ys))
    if bb is None:
        return None
    yg, xg = cv.grid(bb)
    with np.errstate(divide="ignore", invalid="ignore"):
        Zc = cam.f * dx / (xg - cam.cx)
    valid = (Zc >= z0) & (Zc <= z1)
    Zc = np.where(valid, Zc, z1).astype(np.float32)
    Yp = cam.hcam - (yg - cam.yh) * Zc / cam.f
    mask = valid & (Yp >= ylo) & (Yp < yhi)
    return bb, mask, Zc, Yp


def face_z(cv: Canvas, cam: Camera, Z, x0, x1, y0, y1, minw: float = 0.0, minh: float = 0.0):
    """Pixels of the plane Z = const over x0..x1, y0..y1: (bb, X, Y) world coordinates."""
    if Z < ZNEAR:
        return None
    a, b = cam.sx(x0, Z), cam.sx(x1, Z)
    c, d = cam.sy(y1, Z), cam.sy(y0, Z)
    if b - a < minw:
        m = 0.5 * (a + b)
        a, b = m - minw / 2, m + minw / 2
    if d - c < minh:
        m = 0.5 * (c + d)
        c, d = m - minh / 2, m + minh / 2
    bb = cv.box(a, b, c, d)
    if bb is None:
        return None
    yg, xg = cv.grid(bb)
    k = Z / cam.f
    return bb, cam.camx + (xg - cam.cx) * k, cam.hcam - (yg - cam.yh) * k


def _class_lut(st) -> np.ndarray:
    lut = np.zeros((256, 3), np.float32)
    for c, key in ((ROAD, "road"), (SIDEWALK, "sidewalk"), (TERRAIN, "terrain"), (IGN, "gravel")):
        lut[c] = st.palette[key][0]
    return lut


def draw_ground(cv: Canvas, sc: Scene, st, shadow_len: float) -> None:
    cam = sc.cam
    r0 = max(0, math.ceil(cam.yh))
    if r0 >= cv.h:
        return
    yg = cv.yc[r0:, None]
    Z = cam.f * cam.hcam / (yg - cam.yh)  # (R, 1)
    X = cam.camx + (cv.xc[None, :] - cam.cx) * Z / cam.f
    ad = np.abs(X)
    right = X > 0
    rh = sc.road_half
    tl = sc.seg_types[0][np.clip(np.searchsorted(sc.seg_edges[0], Z[:, 0], "right") - 1, 0, None)]
    tr = sc.seg_types[1][np.clip(np.searchsorted(sc.seg_edges[1], Z[:, 0], "right") - 1, 0, None)]
    t = np.where(right, tr[:, None], tl[:, None])
    e = np.where(right, rh + sc.sw[1], rh + sc.sw[0])
    g = np.where(right, sc.grass[1], sc.grass[0])
    cls = np.where(ad < rh, ROAD, SIDEWALK).astype(np.uint8)
    beyond = ad >= e
    cls[beyond & ((ad < e + g) | (t == SEG_PARK))] = TERRAIN
    cross = (t == SEG_CROSS) & (ad >= rh)
    cls[cross] = ROAD
    for xt, hw in sc.tracks:
        if hw > 0:
            cls[np.abs(X - xt) < hw] = IGN
    rgb = _class_lut(st)[cls]
    # Lane markings, crosswalks and rails (all on road pixels).
    road = cls == ROAD
    b = (X + rh) / sc.lane_w
    k = np.rint(b)
    near_line = (np.abs(b - k) * sc.lane_w < 0.075) & (k >= 1) & (k <= sc.lanes - 1) & road & ~cross
    centre = (k == sc.lanes // 2) & sc.two_way & (sc.lanes % 2 == 0)
    dashed = (np.mod(Z, 9.0) < 4.0) | centre
    edge = (np.abs(ad - (rh - 0.3)) < 0.06) & road & ~cross
    lane = st.palette["lane"][0]
    rgb[(near_line & dashed & ~centre) | edge] = lane
    rgb[near_line & centre] = st.palette["lane2"][0]
    for z0, z1 in sc.crosswalks:
        zebra = road & (Z >= z0) & (Z < z1) & (np.mod(X, 1.1) < 0.55) & (ad < rh - 0.2)
        rgb[zebra] = lane * 0.95
    for xt, _ in sc.tracks:
        rail = np.abs(np.abs(X - xt) - 0.72) < 0.05
        rgb[rail] = st.palette["rail"][0]
    # Curbs: a thin darker line where sidewalk meets road.
    curb = (ad >= rh) & (ad < rh + 0.15) & (cls == SIDEWALK)
    rgb[curb] *= 0.8
    # Hard shadows cast by the buildings on the sun's side.
    if shadow_len > 0:
        si = _side(sc.sun_side)
        idx = np.clip(np.searchsorted(sc.seg_edges[si], Z[:, 0], "right") - 1, 0, None)
        hgt = sc.seg_heights[si][idx][:, None]
        sh = (sc.sun_side * X > sc.xb[si] - shadow_len * hgt) & (hgt > 0)
        rgb[sh] *= 1.0 - 0.55 * st.sun
    cv.cls[r0:] = cls
    cv.rgb[r0:] = rgb
    cv.depth[r0:] = np.broadcast_to(Z, cls.shape)


def draw_sky(cv: Canvas, st) -> None:
    t = np.clip(cv.yc / max(cv.h * 0.5, 1.0), 0, 1)[:, None, None]
    cv.rgb[:] = st.palette["sky_top"][0] * (1 - t) + st.palette["sky_bottom"][0] * t


def _windows(U, V, it, H, fade):
    sp, wf, fh, gf = it["sp"], it["wf"], it["fh"], it["gf"]
    a = U * np.float32(1.0 / sp)
    fu = a - np.floor(a)
    b = (V - np.float32(gf)) * np.float32(1.0 / fh)
    fv = b - np.floor(b)
    win = (fu < wf) & (fv > 0.28) & (fv < 0.82) & (V > gf) & (V < H - 0.8)
    if it["shop"]:
        win |= (np.mod(U / (2 * sp), 1.0) < 0.72) & (V > 0.4) & (V < gf - 0.9)
    return win & (fade > 0.15)


def draw_facade(cv: Canvas, sc: Scene, st, it: dict) -> None:
    cam = sc.cam
    base = st.pick("building", it["u"])
    H = it["H"]
    night = st.night > 0 or st.condition == "dusk"
    faces = []
    if it["end"] and it["z0"] >= ZNEAR:
        res = face_z(cv, cam, it["z0"], min(it["X"], it["X"] + it["s"] * it["D"]), max(it["X"], it["X"] + it["s"] * it["D"]), 0.0, H)
        if res is not None:
            bb, Xp, Yp = res
            faces.append((bb, None, np.abs(Xp - it["X"]), np.broadcast_to(Yp, (Yp.shape[0], Xp.shape[1])), it["z0"], _shade(st, sc, 0)))
    res = face_x(cv, cam, it["X"], it["z0"], it["z1"], 0.0, H)
    if res is not None:
        bb, mask, Zc, Yp = res
        faces.append((bb, mask, np.broadcast_to(Zc, Yp.shape), Yp, Zc, _shade(st, sc, -it["s"])))
    wcol = st.palette["window"][0]
    for bb, mask, U, V, depth, shade in faces:
        shape = V.shape
        img = np.empty(shape + (3,), np.float32)
        img[:] = base * shade
        fade = np.clip(1.6 - (np.asarray(depth, dtype=np.float32) / cam.f) / 0.35, 0.0, 1.0)
        img[V > H - 0.5] *= 0.8
        emit = None
        if fade.max() <= 0.15:
            cv.put(bb, mask if mask is not None else np.ones(shape, bool), BUILDING, img, depth, emit)
            continue
        fade = np.broadcast_to(fade, shape)
        win = _windows(U, V, it, H, fade)
        if win.any():
            wc = (wcol * (0.8 + 0.4 * shade) * st.window_contrast + base * shade * (1 - st.window_contrast) * 0.5)
            f = fade[win][:, None]
            img[win] = img[win] * (1 - f) + wc * f
            if night:
                lit = hash01(np.floor(U / it["sp"]), np.floor(V / it["fh"]), it["salt"]) < it["lit"]
                lit &= win
                if lit.any():
                    img[lit] = st.palette["window_lit"][0] * 0.7
                    if cv.emit is not None:
                        emit = np.zeros_like(img)
                        emit[lit] = st.palette["window_lit"][0] * 0.5 * st.lights
        cv.put(bb, mask if mask is not None else np.ones(shape, bool), BUILDING, img, depth, emit)


def draw_skyline(cv: Canvas, sc: Scene, st, it: dict, rng) -> None:
    cam = sc.cam
    Z = it["Z"]
    for x0, x1, kind, H, u in it["segs"]:
        if kind == "gap":
            continue
        res = face_z(cv, cam, Z, x0, x1, 0.0, H)
        if res is None:
            continue
        bb, Xp, Yp = res
        shape = (Yp.shape[0], Xp.shape[1])
        if kind == "building":
            col = st.pick("building", u) * _shade(st, sc, 0) * 0.95
            cv.put(bb, None, BUILDING, col, Z)
        else:
            top = H * (0.75 + 0.25 * np.sin(Xp * 0.9 + u * 6) * np.cos(Xp * 0.37))
            mask = np.broadcast_to(Yp < top, shape)
            cv.put(bb, mask, VEG, st.pick("vegetation", u) * 0.85, Z)


def draw_wallish(cv: Canvas, sc: Scene, st, it: dict, kind: str) -> None:
    res = face_x(cv, sc.cam, it["X"], it["z0"], it["z1"], 0.0, it["h"] + (0.25 if kind == "hedge" else 0.0))
    if res is None:
        return
    bb, mask, Zc, Yp = res
    shade = _shade(st, sc, -int(np.sign(it["X"])))
    if kind == "hedge":
        mask = mask & (Yp < it["h"] + 0.15 * np.sin(Zc * 2.1 + it["u"] * 9) + 0.08 * np.sin(Zc * 5.3))
        col = st.pick("vegetation", it["u"]) * shade * 0.9
        img = np.broadcast_to(col, Yp.shape + (3,)) * (0.85 + 0.15 * np.clip(Yp / it["h"], 0, 1))[..., None]
        cv.put(bb, mask, VEG, img, Zc)
        return
    if kind == "wall":
        col = st.pick("wall", it["u"]) * shade
        img = np.empty(Yp.shape + (3,), np.float32)
        img[:] = col
        img[np.mod(Yp, 0.35) < 0.05] *= 0.85
        img[Yp > it["h"] - 0.12] *= 1.1
        cv.put(bb, mask, WALL, img, Zc)
        return
    col = st.pick("fence", it["u"]) * shade
    r0, r1, c0, c1 = bb
    behind = cv.rgb[r0:r1, c0:c1]
    bars = (np.mod(Zc, 0.9) < 0.12) | (np.mod(Yp, 0.45) < 0.07) | (Yp > it["h"] - 0.08)
    img = np.where(bars[..., None], col, 0.55 * behind + 0.45 * col * 0.8)
    cv.put(bb, mask, FENCE, img, Zc)


def draw_tree(cv: Canvas, sc: Scene, st, it: dict, rng) -> None:
    cam = sc.cam
    Z = it["Z"]
    if Z < ZNEAR + 0.5:
        return
    k = cam.f / Z
    x = cam.sx(it["X"], Z)
    yb = cam.sy(0.0, Z)
    depth = Z
    trunk_col = st.palette["trunk"][0] * _shade(st, sc, 0)
    cv.rect(x - it["trunk"] / 2 * k, x + it["trunk"] / 2 * k, yb - it["cy"] * k, yb, VEG, trunk_col, depth, minw=1.5)
    rx, ry = it["r"] * k * it["sx"], it["r"] * k
    cy = yb - it["cy"] * k
    col = st.pick("vegetation", it["u"])
    if ry < 4.0:  # far away: a plain crown
        cv.ellipse(x, cy, rx, ry, VEG, col * (1.0 + 0.1 * st.sun), depth)
        return
    bb = cv.box(x - 1.3 * rx, x + 1.3 * rx, cy - 1.3 * ry, cy + 1.2 * ry)
    if bb is None:
        return
    yg, xg = cv.grid(bb)
    dx, dy = (xg - x) / max(rx, 0.7), (yg - cy) / max(ry, 0.7)
    shape = (bb[1] - bb[0], bb[3] - bb[2])
    n = crop(_bank(st)["mid"], shape[0], shape[1], rng)
    field_ = np.minimum(dx**2 + dy**2, np.minimum((dx - 0.45) ** 2 + (dy - 0.3) ** 2, (dx + 0.45) ** 2 + (dy - 0.25) ** 2) * 1.6)
    mask = field_ < 1.0 + 0.22 * n
    light = 1.0 + 0.25 * st.sun * np.clip(-dy, -1, 1) + 0.2 * st.sun * sc.sun_side * np.clip(dx, -1, 1)
    img = col[None, None, :] * (light * (0.9 + 0.12 * n))[..., None]
    cv.put(bb, mask, VEG, img, depth)


def _bank(st):
    return banks(st.tex_salt)


def draw_pole(cv: Canvas, sc: Scene, st, it: dict, lights: list) -> None:
    cam = sc.cam
    Z = it["Z"]
    if Z < 2.0:
        return
    k = cam.f / Z
    x = cam.sx(it["X"], Z)
    yb = cam.sy(0.0, Z)
    pcol = st.palette["pole"][0] * _shade(st, sc, 0)
    h = it["h"]
    # The thin-object minimum (canvas pixels; 0 for physical sizes): pole and arm widths, the
    # traffic light's box (1.5 x 3 times) and the sign's size (2 times). See thin_objects_px.
    m = cv.thin_min
    cv.rect(x - it["w"] / 2 * k, x + it["w"] / 2 * k, yb - h * k, yb, POLE, pcol, Z, minw=max(1.6, m))
    arm = it["arm"]
    if arm:
        xe = cam.sx(it["X"] + arm, Z)
        cv.rect(min(x, xe), max(x, xe), yb - (h - 0.05) * k, yb - (h - 0.2) * k, POLE, pcol, Z, minh=max(1.3, m))
        if it["lamp"]:
            lamp_col = st.palette["lamp"][0]
            night = cv.emit is not None
            cv.rect(xe - 0.35 * k, xe + 0.35 * k, yb - (h - 0.05) * k, yb - (h - 0.3) * k, POLE,
                    lamp_col if night else pcol * 1.2, Z, minw=2, minh=1.3, emit=lamp_col * st.lights * 1.5 if night else None)
            lights.append(("lamp", it["X"] + arm, h - 0.3, Z))
    tl = it["tl"]
    if tl is not None:
        off = arm * 0.8 if tl["off"] is None else tl["off"]
        xt = cam.sx(it["X"] + off, Z)
        yt = yb - tl["Y"] * k
        bw, bh = max(0.36 * k, 1.5 * m), max(0.95 * k, 3 * m)
        cv.rect(xt - bw / 2, xt + bw / 2, yt - bh, yt, TLIGHT, st.palette["tl_box"][0], Z - 0.05, minw=2, minh=3)
        state = int((it["Z"] * 7.3) % 3)
        colors = ([0.95, 0.1, 0.05], [1.0, 0.7, 0.0], [0.1, 0.95, 0.35])
        for i in range(3):
            on = i == state
            c = np.asarray(colors[i], np.float32) * (1.0 if on else 0.25)
            cv.ellipse(xt, yt - bh * (0.8 - 0.3 * i), bw * 0.3, bw * 0.3, TLIGHT, c, Z - 0.06, minr=0.5,
                       emit=(c * 2.0 * st.lights) if on and cv.emit is not None else None)
    sg = it["sign"]
    if sg is not None:
        size = max(sg["size"] * k, 2 * m)
        ys = yb - (h - sg["size"] / 2) * k if sg["top"] else yb - (h * 0.55) * k
        col = st.pick("sign", sg["u"])
        inner = np.asarray([0.95, 0.95, 0.95], np.float32) * (1.0 if st.night == 0 else 0.6)
        shape = sg["shape"]
        zs = Z - 0.05
        if shape == 0:
            cv.ellipse(x, ys, size / 2, size / 2, TSIGN, col, zs, minr=1.0)
            cv.ellipse(x, ys, size / 3, size / 3, TSIGN, inner, zs, minr=0.4)
        elif shape == 1:
            cv.poly([(x - size / 2, ys + size * 0.4), (x + size / 2, ys + size * 0.4), (x, ys - size * 0.5)], TSIGN, col, zs)
        elif shape == 2:
            cv.rect(x - size / 2, x + size / 2, ys - size * 0.35, ys + size * 0.35, TSIGN, col, zs, minw=2, minh=1.5)
            cv.rect(x - size / 3, x + size / 3, ys - size * 0.15, ys + size * 0.15, TSIGN, inner, zs)
        else:
            cv.poly([(x, ys - size / 2), (x + size / 2, ys), (x, ys + size / 2), (x - size / 2, ys)], TSIGN, col, zs)


def draw_vehicle(cv: Canvas, sc: Scene, st, it: dict, lights: list) -> None:
    cam = sc.cam
    kind, X, z0, w, h, L, facing = it["kind"], it["X"], it["z0"], it["w"], it["h"], it["L"], it["facing"]
    if z0 < ZNEAR + 0.5:
        return
    cls = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}[kind]
    base = st.pick(kind, it["u"])
    tyre = st.palette["tyre"][0]
    glass = st.palette["glass"][0]
    # Side face towards the camera's line of sight.
    off = X - cam.camx
    if abs(off) > w / 2:
        sgn = 1 if off > 0 else -1
        res = face_x(cv, cam, X - sgn * w / 2, z0, z0 + L, 0.0, h + (0.6 if kind == "train" else 0.0))
        if res is not None:
            bb, mask, Zc, Yp = res
            t = np.broadcast_to(Zc - z0, Yp.shape)
            tt = t if facing < 0 else L - t  # distance from the vehicle's front
            wheels = np.zeros(Yp.shape, bool)
            for wt in (0.17, 0.83) if kind != "train" else ():
                wheels |= (t - wt * L) ** 2 + (Yp - 0.33) ** 2 < 0.33**2
            shade = _shade(st, sc, -sgn)
            img = np.empty(Yp.shape + (3,), np.float32)
            img[:] = base * shade
            if kind == "car":
                body = (Yp >= 0.3) & (Yp < 0.95)
                cab = (Yp >= 0.95) & (Yp < h) & (tt > 0.28 * L + (Yp - 0.95) * 0.9) & (tt < 0.8 * L - (Yp - 0.95) * 0.5)
                win = cab & (Yp > 1.0) & (Yp < h - 0.07)
                shape_m = body | cab | wheels
            elif kind == "truck":
                cabz = tt < 2.3
                shape_m = ((Yp >= 0.5) & (((Yp < 2.7) & cabz) | ((Yp < h) & ~cabz & (tt > 2.5)))) | wheels
                win = cabz & (Yp > 1.6) & (Yp < 2.5) & (tt > 0.3)
                img[~cabz] = st.pick("truck", (it["u"] * 7) % 1.0) * shade
            else:
                shape_m = ((Yp >= (0.3 if kind == "bus" else 0.5)) & (Yp < h)) | wheels
                win = (Yp > 1.3) & (Yp < h - 0.45) & (np.mod(t, 1.9) < 1.6)
                if kind == "train":
                    shape_m |= (Yp >= h) & (Yp < h + 0.6) & (np.abs(t - L / 2) < 0.25 + 1.2 * (Yp - h))
            img[win] = glass * (0.9 + 0.3 * shade)
            img[wheels] = tyre
            cv.put(bb, mask & shape_m, cls, img, Zc)
    # The end facing the camera (rear, or front of oncoming traffic).
    if kind == "truck" and facing < 0:  # box above the cab, set back
        res = face_z(cv, cam, z0 + 2.5, X - w / 2, X + w / 2, 2.7, h)
        if res is not None:
            cv.put(res[0], None, cls, st.pick("truck", (it["u"] * 7) % 1.0) * _shade(st, sc, 0), z0 + 2.5)
    res = face_z(cv, cam, z0, X - w / 2, X + w / 2, 0.0, h + (0.6 if kind == "train" else 0.0), minw=1.5, minh=1.5)
    if res is None:
        return
    bb, Xp, Yp = res
    dX = np.abs(Xp - X)
    dX, Yp = np.broadcast_arrays(dX, Yp)
    shade = _shade(st, sc, 0)
    img = np.empty(Yp.shape + (3,), np.float32)
    img[:] = base * shade
    wheels = (dX > w / 2 - 0.38) & (dX < w / 2 - 0.06) & (Yp < 0.32)
    if kind == "car":
        cab_half = w / 2 - 0.12 - (Yp - 0.95) * 0.35
        m = ((Yp >= 0.3) & (Yp < 0.95)) | ((Yp >= 0.95) & (Yp < h) & (dX < cab_half)) | wheels
        win = (Yp > 1.0) & (Yp < h - 0.08) & (dX < cab_half - 0.1)
        ly = (Yp > 0.62) & (Yp < 0.8)
    elif kind == "truck":
        top = 2.7 if facing < 0 else h
        m = ((Yp >= 0.5) & (Yp < top)) | wheels
        win = (Yp > 1.6) & (Yp < 2.5) & (dX < w / 2 - 0.12) if facing < 0 else np.zeros_like(wheels)
        ly = (Yp > 0.7) & (Yp < 0.9)
    else:
        lo = 0.3 if kind == "bus" else 0.5
        m = ((Yp >= lo) & (Yp < h)) | (wheels if kind == "bus" else False)
        if kind == "train":
            m |= (Yp >= h) & (Yp < h + 0.6) & (dX < 0.25 + 1.0 * (Yp - h))
        win = (Yp > 1.2) & (Yp < h - 0.45) & (dX < w / 2 - 0.15)
        ly = (Yp > lo + 0.3) & (Yp < lo + 0.5)
    lamps = ly & (dX > w / 2 - 0.38) & (dX < w / 2 - 0.05)
    img[win] = glass * (0.9 + 0.3 * shade)
    img[wheels] = tyre
    lamp_col = st.palette["taillight"][0] if facing > 0 else st.palette["headlight"][0]
    img[lamps] = lamp_col * (0.8 if facing > 0 else 0.95)
    emit = None
    if cv.emit is not None:
        emit = np.zeros_like(img)
        emit[lamps] = lamp_col * st.lights * (0.8 if facing > 0 else 1.1)
        for s in (-1, 1):
            lights.append(("tail" if facing > 0 else "head", X + s * (w / 2 - 0.22), 0.7, z0))
    cv.put(bb, m, cls, img, z0, emit)


def _draw_person_shape(cv, cam, st, p: dict, cls: int, Z: float, base_y: float = 0.0, seated: bool = False, lean: float = 0.0):
    k = cam.f / Z
    x = cam.sx(p["X"], Z)
    yb = cam.sy(base_y, Z)
    h = p["h"] * (0.72 if seated else 1.0)
    skin = st.pick("skin", p["u"][0])
    top = st.pick("cloth", p["u"][1])
    bottom = st.pick("cloth", p["u"][2] * 0.7)
    wd = 0.22 * p["wide"]
    xl = x + lean * k
    if not seated:
        spread = 0.05 * p["phase"] * k
        cv.rect(x - (0.15 * p["wide"]) * k - spread, x - 0.015 * k - spread * 0.3, yb - 0.49 * h * k, yb, cls, bottom, Z, minw=1.0)
        cv.rect(x + 0.015 * k + spread * 0.3, x + (0.15 * p["wide"]) * k + spread, yb - 0.49 * h * k, yb, cls, bottom, Z, minw=1.0)
    cv.rect(xl - wd * k, xl + wd * k, yb - 0.84 * h * k, yb - 0.47 * h * k, cls, top, Z, minw=1.5, minh=1.5)
    cv.rect(xl - (wd + 0.07) * k, xl - wd * k, yb - 0.82 * h * k, yb - 0.5 * h * k, cls, top * 0.85, Z)
    cv.rect(xl + wd * k, xl + (wd + 0.07) * k, yb - 0.82 * h * k, yb - 0.5 * h * k, cls, top * 0.85, Z)
    cv.ellipse(xl + lean * 0.3 * k, yb - (0.93 * h) * k, 0.1 * k, 0.12 * k, cls, skin, Z, minr=0.8)


def draw_person(cv: Canvas, sc: Scene, st, it: dict) -> None:
    if it["Z"] < ZNEAR + 1.0:
        return
    _draw_person_shape(cv, sc.cam, st, it, PERSON, it["Z"])


def _two_wheeler_side(cv, cam, st, X, Z, d, moto, u):
    k = cam.f / Z
    cls = MOTO if moto else BIKE
    x = cam.sx(X, Z)
    yb = cam.sy(0.0, Z)
    r = 0.32 if moto else 0.34
    half = 0.62 if moto else 0.52
    tyre = st.palette["tyre"][0]
    frame = st.pick("moto" if moto else "bike", u)
    spokes = np.asarray([0.45, 0.45, 0.45], np.float32)
    for s in (-1, 1):
        wx = x + s * half * k
        cv.ellipse(wx, yb - r * k, r * k, r * k, cls, tyre, Z, minr=1.0)
        cv.ellipse(wx, yb - r * k, r * k * (0.55 if moto else 0.8), r * k * (0.55 if moto else 0.8), cls, spokes if not moto else frame * 0.6, Z, minr=0.5)
    if moto:
        cv.poly([(x - 0.5 * d * k, yb - 0.5 * k), (x + 0.5 * d * k, yb - 0.45 * k), (x + 0.45 * d * k, yb - 0.95 * k), (x - 0.35 * d * k, yb - 0.9 * k)], cls, frame, Z)
    else:
        lw = 0.05 * k
        pts = {"rear": (x - half * d * k, yb - r * k), "bb": (x, yb - 0.3 * k), "seat": (x - 0.15 * d * k, yb - 0.9 * k),
               "head": (x + 0.38 * d * k, yb - 0.95 * k), "front": (x + half * d * k, yb - r * k)}
        for a, b in (("rear", "bb"), ("bb", "seat"), ("seat", "rear"), ("seat", "head"), ("bb", "head"), ("head", "front")):
            cv.thick_line(*pts[a], *pts[b], lw, cls, frame, Z)


def draw_rider(cv: Canvas, sc: Scene, st, it: dict) -> None:
    cam = sc.cam
    Z = it["Z"]
    if Z < ZNEAR + 1.5:
        return
    k = cam.f / Z
    moto = it["moto"]
    p = it["person"]
    p["X"] = it["X"]
    if it["view"] == "side":
        d = it["dir"]
        _two_wheeler_side(cv, cam, st, it["X"], Z, d, moto, it["u"])
        _draw_person_shape(cv, cam, st, p, RIDER, Z - 0.01, base_y=0.75 if not moto else 0.6, seated=True, lean=0.12 * d)
        return
    x = cam.sx(it["X"], Z)
    yb = cam.sy(0.0, Z)
    cls = MOTO if moto else BIKE
    tyre = st.palette["tyre"][0]
    frame = st.pick("moto" if moto else "bike", it["u"])
    # Rear view: tyre, mudguard/body, then the rider above.
    cv.rect(x - (0.07 if moto else 0.03) * k, x + (0.07 if moto else 0.03) * k, yb - 0.66 * k, yb, cls, tyre, Z + 0.4, minw=1.5)
    if moto:
        cv.rect(x - 0.27 * k, x + 0.27 * k, yb - 0.95 * k, yb - 0.35 * k, cls, frame, Z + 0.2, minw=2)
        cv.rect(x - 0.08 * k, x + 0.08 * k, yb - 0.75 * k, yb - 0.65 * k, cls, st.palette["taillight"][0], Z + 0.1)
    else:
        cv.rect(x - 0.25 * k, x + 0.25 * k, yb - 1.05 * k, yb - 0.98 * k, cls, frame, Z + 0.3, minh=1.0)
    _draw_person_shape(cv, cam, st, p, RIDER, Z, base_y=0.55 if moto else 0.45, seated=True)


def draw_bicycle(cv: Canvas, sc: Scene, st, it: dict) -> None:
    if it["Z"] < ZNEAR + 1.5:
        return
    _two_wheeler_side(cv, sc.cam, st, it["X"], it["Z"], it["dir"], False, it["u"])


def draw_clutter(cv: Canvas, sc: Scene, st, it: dict) -> None:
    res = face_z(cv, sc.cam, it["Z"], it["X"] - it["w"] / 2, it["X"] + it["w"] / 2, 0.0, it["h"], minw=1.5, minh=1.5)
    if res is not None:
        cv.put(res[0], None, IGN, st.pick("clutter", it["u"]) * _shade(st, sc, 0), it["Z"])


def draw_hood(cv: Canvas, sc: Scene, st, depth: float = 1.5) -> None:
    h, w = cv.h, cv.w
    top = int(h * 0.84)
    yg, xg = cv.yc[top:, None], cv.xc[None, :]
    hh = h * 0.14
    edge = h - hh * (1 - ((xg - sc.cam.cx) / (0.8 * w)) ** 2)
    mask = yg >= edge
    col = st.palette["hood"][0]
    grad = 1.0 + 0.5 * np.clip(1 - (yg - edge) / (hh + 1e-6), 0, 1) ** 3
    img = col[None, None, :] * grad[..., None] + 0.12 * st.palette["sky_bottom"][0] * np.clip(1 - (yg - edge) / 3, 0, 1)[..., None]
    cv.put((top, h, 0, w), mask, IGN, img, depth)


def draw_scene(cv: Canvas, sc: Scene, st, rng: np.random.Generator) -> list:
    """Paint everything far to near; returns the light sources (for night rendering)."""
    lights: list = []
    draw_sky(cv, st)
    shadow_len = rng.uniform(0.3, 0.9) if (st.sun > 0.1 and rng.random() < st.shadow_p) else 0.0
    draw_ground(cv, sc, st, shadow_len)
    order = sorted(range(len(sc.items)), key=lambda i: (sc.items[i][0], -sc.items[i][1], i))
    for i in order:
        layer, _, kind, it = sc.items[i]
        if kind == "facade":
            draw_facade(cv, sc, st, it)
        elif kind == "skyline":
            draw_skyline(cv, sc, st, it, rng)
        elif kind == "tree":
            draw_tree(cv, sc, st, it, rng)
        elif kind in ("wall", "fence", "hedge"):
            draw_wallish(cv, sc, st, it, kind)
        elif kind == "pole":
            draw_pole(cv, sc, st, it, lights)
        elif kind == "vehicle":
            draw_vehicle(cv, sc, st, it, lights)
        elif kind == "person":
            draw_person(cv, sc, st, it)
        elif kind == "rider":
            draw_rider(cv, sc, st, it)
        elif kind == "bicycle":
            draw_bicycle(cv, sc, st, it)
        elif kind == "clutter":
            draw_clutter(cv, sc, st, it)
    if st.camera.get("hood"):
        draw_hood(cv, sc, st)
    return lights
