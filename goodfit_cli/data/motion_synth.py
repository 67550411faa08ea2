"""Synthetic driving scenes at 10 Hz: lanes, traffic lights, cars and pedestrians, then scenarios.

A scene is a four-way intersection (arms at jittered angles, turn connectors, crosswalks,
sidewalks, four lights in two phase groups) or a straight or curved two-way road with a
signalled mid-block crosswalk. Every agent follows its own route, resampled every metre:

- cars: IDM car following (cars and pedestrians ahead on the route), a speed profile from the
  route's curvature (lateral acceleration ≤ CAR_A_LAT), stop at red, stop or go at yellow, and a
  random turn (left / straight / right) at intersections — the multi-modal choice;
- pedestrians: lower desired speeds, sidewalks and crosswalks only, wait at the kerb until the
  walk signal, then cross; at corners they cross, turn, or turn and cross; some stand still.

Simulation is vectorised over a batch of scenes (numpy); each scene's random draws come from its
own stream SeedSequence([seed, agent type, split, index]), so a scene does not depend on the
batch it was simulated in. `generate` turns scenes into target-centric scenarios with
observation noise and occlusions (data/motion.py documents the format).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from goodfit_cli.data.motion import (FUTURE, HISTORY, MAP_TYPES, SPLITS, MotionLayout, ShardWriter,
                                     shard_files)
from goodfit_cli.errors import UserError

AGENT_KINDS = ("car", "pedestrian")
DT = 1.0 / 10
BURN = 30  # steps simulated before the first history step, so agents settle
STEPS = BURN + HISTORY + FUTURE
SPACING = 1.0  # route resampling (m)
MAP_SPACING = 2.0  # map polyline points (m)
LANE_W = 3.5
KERB_TO_SIDEWALK = 1.5

# physical limits (tests check them on the simulated states)
CAR_V_MAX, CAR_ACCEL, CAR_BRAKE, CAR_A_LAT = 20.0, 3.0, 6.0, 2.5
PED_V_MAX, PED_ACCEL, PED_BRAKE, PED_STOP = 2.5, 1.0, 1.5, 0.7
IDM_A, IDM_B, IDM_T, IDM_S0 = 1.5, 2.0, 1.2, 2.0
YELLOW, ALL_RED = 3.0, 1.0
HALF_LEN = {0: 2.25, 1: 0.3}  # car, pedestrian (m)
NOISE_POS, NOISE_VEL, NOISE_HEAD = {0: 0.05, 1: 0.08}, 0.1, {0: 0.01, 1: 0.05}
_SPLIT_CODE = {"train": 0, "test": 1}
LANE, SIDEWALK, CROSSWALK, STOP_LINE = (MAP_TYPES.index(t) for t in MAP_TYPES)


# ---------------------------------------------------------------------------------------------
# geometry


def resample(points: np.ndarray, spacing: float) -> np.ndarray:
    """Points every `spacing` metres along a polyline (the last partial step dropped)."""
    p = np.asarray(points, dtype=np.float64)
    d = np.diff(p, axis=0)
    seg = np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2)
    if (seg <= 1e-6).any():  # repeated points
        keep = np.r_[True, seg > 1e-6]
        p, seg = p[keep], seg[keep[1:]]
    s = np.empty(len(p))
    s[0] = 0.0
    np.cumsum(seg, out=s[1:])
    q = np.arange(0.0, s[-1] + 1e-9, spacing)
    return np.column_stack((np.interp(q, s, p[:, 0]), np.interp(q, s, p[:, 1])))


def direction(p: np.ndarray) -> np.ndarray:
    """Unit tangent at each point of a polyline (central differences, one-sided at the ends)."""
    d = np.empty_like(p)
    d[1:-1] = p[2:] - p[:-2]
    d[0], d[-1] = p[1] - p[0], p[-1] - p[-2]
    return d / (np.sqrt(d[:, :1] ** 2 + d[:, 1:] ** 2) + 1e-12)


def bezier(p0, d0, p3, d3, n: int = 24) -> np.ndarray:
    """Cubic Bézier from p0 leaving along d0 to p3 arriving along d3 (≈ circular for 90°)."""
    c = 0.39 * np.linalg.norm(p3 - p0)
    p1, p2 = p0 + c * d0, p3 - c * d3
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


def smooth(points: np.ndarray, width: float = 4.0) -> np.ndarray:
    """Round a polyline's corners (two passes of a `width`-metre moving average): pedestrians do
    not turn on the spot. Straight stretches stay where they are."""
    p = resample(points, 0.25)
    w = max(1, int(width / 0.25))
    if len(p) <= 2 * w:
        return p
    kernel = np.ones(w) / w
    for _ in range(2):
        padded = np.concatenate([np.repeat(p[:1], w, 0), p, np.repeat(p[-1:], w, 0)])
        p = np.stack([np.convolve(padded[:, i], kernel, mode="same")[w:-w] for i in (0, 1)], 1)
    return p


def normals(p: np.ndarray) -> np.ndarray:
    d = direction(p)
    return np.column_stack((-d[:, 1], d[:, 0]))  # left of the direction of travel


# ---------------------------------------------------------------------------------------------
# scenes


@dataclass
class Scene:
    lines: list = field(default_factory=list)  # (points (n, 2), MAP_TYPES index)
    routes: list = field(default_factory=list)  # per agent: (K, 2) every SPACING metres
    kind: list = field(default_factory=list)  # 0 car, 1 pedestrian
    s0: list = field(default_factory=list)
    v0: list = field(default_factory=list)
    v_des: list = field(default_factory=list)
    stop_s: list = field(default_factory=list)  # cars: stop line; pedestrians: kerb (inf: none)
    light: list = field(default_factory=list)  # stops the car / lets the pedestrian walk (-1)
    pause: list = field(default_factory=list)  # pedestrians: (first, last) standing step
    light_pos: list = field(default_factory=list)
    light_state: np.ndarray | None = None  # (lights, STEPS) 0 red, 1 yellow, 2 green
    walk: np.ndarray | None = None  # (lights, STEPS) pedestrians may start crossing
    yellow_left: np.ndarray | None = None  # (lights, STEPS) seconds of yellow left

    def add(self, route, kind, s0, v0, v_des, stop_s=np.inf, light=-1, pause=(-1, -1)):
        self.routes.append(route)
        self.kind.append(kind)
        self.s0.append(s0)
        self.v0.append(v0)
        self.v_des.append(v_des)
        self.stop_s.append(stop_s)
        self.light.append(light)
        self.pause.append(pause)


def _arc_at(route: np.ndarray, point: np.ndarray) -> float:
    return float(np.argmin(np.linalg.norm(route - point, axis=1))) * SPACING


def _schedule(rng, groups: list[int], greens: list[float]) -> tuple[np.ndarray, ...]:
    """States of lights in phase groups that take turns: green, yellow, all-red, next group."""
    cycle = sum(g + YELLOW + ALL_RED for g in greens)
    t = np.arange(STEPS) * DT + rng.uniform(0, cycle)
    starts = np.cumsum([0.0] + [g + YELLOW + ALL_RED for g in greens])[:-1]
    state, walk, left = [], [], []
    for g in groups:
        ph = (t - starts[g]) % cycle
        state.append(np.where(ph < greens[g], 2, np.where(ph < greens[g] + YELLOW, 1, 0)))
        left.append(np.where(state[-1] == 1, greens[g] + YELLOW - ph, 0.0))
        # walk across this light's lanes: red for ≥ 1 s and ≥ 8 s before its next green
        walk.append((ph >= greens[g] + YELLOW + ALL_RED) & (cycle - ph >= 8.0))
    return np.array(state, np.int8), np.array(walk), np.array(left)


def _pause(rng) -> tuple[int, int]:
    if rng.random() < 0.2:
        first = int(rng.integers(0, STEPS))
        return first, first + int(rng.integers(20, 80))
    return -1, -1


def _ped_speed(rng) -> float:
    return float(rng.uniform(2.0, 2.4)) if rng.random() < 0.05 else float(np.clip(rng.normal(1.35, 0.2), 0.7, 1.9))


def _ped(scene: Scene, rng, waypoints: list, wait_at=None, light: int = -1) -> None:
    base = smooth(np.concatenate([np.atleast_2d(w) for w in waypoints]))
    route = resample(base + rng.uniform(-0.7, 0.7) * normals(base), SPACING)
    stop = _arc_at(route, wait_at) - 0.3 if wait_at is not None else np.inf
    v = _ped_speed(rng)
    v0 = min(v * rng.uniform(0.5, 1.0), np.sqrt(2 * PED_STOP * max(stop - 0.5, 0)))  # can stop
    scene.add(route, 1, 0.0, v0, v, stop, light, _pause(rng))


def _cars_on_lane(rng, scene: Scene, routes, s_range, stop_s, light, v_range) -> None:
    """Place 0-4 cars along a lane, front to back, with feasible speeds for the light ahead."""
    s = s_range[1] - np.cumsum(rng.uniform(10, 35, int(rng.integers(0, 5))))
    s = s[s > s_range[0]]
    lead_v = None
    for si in s:
        route = routes[int(rng.integers(len(routes)))] if isinstance(routes, list) else routes
        v_des = rng.uniform(*v_range)
        v0 = v_des * rng.uniform(0.4, 1.0)
        if si < stop_s and scene.light_state[light, 0] != 2:
            v0 = min(v0, np.sqrt(2 * 2.5 * max(stop_s - si - 5.0, 0.0)))
        if lead_v is not None:
            v0 = min(v0, lead_v + 3.0)
        lead_v = v0
        scene.add(route, 0, float(si), float(v0), float(v_des), stop_s if si < stop_s else np.inf, light)


def intersection(rng) -> Scene:
    sc = Scene()
    ang = rng.uniform(0, 2 * np.pi) + np.arange(4) * np.pi / 2 + rng.uniform(-0.2, 0.2, 4)
    u = np.stack([np.cos(ang), np.sin(ang)], 1)
    n = np.stack([-u[:, 1], u[:, 0]], 1)  # left of outward
    r0 = rng.uniform(9, 12)  # junction box
    r_cw, r_sl, side = r0 + 2.0, r0 + 4.5, LANE_W + KERB_TO_SIDEWALK
    l_in, l_out, l_walk = 150.0, 350.0, 150.0
    sc.light_state, sc.walk, sc.yellow_left = _schedule(rng, [0, 1, 0, 1], list(rng.uniform(10, 25, 2)))
    sc.light_pos = [r_sl * u[k] + LANE_W / 2 * n[k] for k in range(4)]
    inbound = [np.stack([l_in * u[k], r0 * u[k]]) + LANE_W / 2 * n[k] for k in range(4)]
    outbound = [np.stack([r0 * u[k], l_out * u[k]]) - LANE_W / 2 * n[k] for k in range(4)]
    routes = {}
    for i in range(4):
        sc.lines += [(inbound[i], LANE), (outbound[i], LANE)]
        sc.lines.append((np.stack([r_sl * u[i], r_sl * u[i] + LANE_W * n[i]]), STOP_LINE))
        sc.lines.append((np.stack([r_cw * u[i] - side * n[i], r_cw * u[i] + side * n[i]]), CROSSWALK))
        for sgn in (1, -1):
            sc.lines.append((np.stack([r_cw, l_walk])[:, None] * u[i] + sgn * side * n[i], SIDEWALK))
        for j in range(4):
            if j != i:
                conn = bezier(inbound[i][1], -u[i], outbound[j][0], u[j])
                sc.lines.append((conn, LANE))
                routes[i, j] = resample(np.concatenate([inbound[i], conn, outbound[j]]), SPACING)
    corners = [bezier(r_cw * u[k] + side * n[k], -u[k], r_cw * u[(k + 1) % 4] - side * n[(k + 1) % 4],
                      u[(k + 1) % 4]) for k in range(4)]
    sc.lines += [(c, SIDEWALK) for c in corners]
    turn_p = [0.25, 0.5, 0.25]  # right, straight, left
    stop_in = l_in - r_sl
    for i in range(4):  # cars approaching the junction, each with its own turn
        choices = [routes[i, (i + d) % 4] for d in rng.choice([1, 2, 3], size=8, p=turn_p)]
        _cars_on_lane(rng, sc, choices, (l_in - 140, stop_in - 3), stop_in, i, (8, 15))
    for j in range(4):  # cars leaving along arm j
        i = (j + int(rng.integers(1, 4))) % 4
        route = routes[i, j]
        start = _arc_at(route, outbound[j][0])
        _cars_on_lane(rng, sc, route, (start + 5, start + 70), np.inf, i, (8, 15))
    if not any(k == 0 for k in sc.kind):
        sc.add(routes[0, 2], 0, stop_in - 40.0, 5.0, 10.0, stop_in, 0)

    def node(k, sgn):  # kerb end of the sidewalk on side sgn of arm k, by the crosswalk
        return r_cw * u[k % 4] + sgn * side * n[k % 4]

    def leg(k, sgn, r):
        return r * u[k % 4] + sgn * side * n[k % 4]

    for _ in range(int(rng.integers(2, 9))):
        k, sgn = int(rng.integers(4)), int(rng.choice([1, -1]))
        if rng.random() < 0.3:  # walking away from the junction
            _ped(sc, rng, [leg(k, sgn, r_cw + rng.uniform(0, 10)), leg(k, sgn, l_walk)])
            continue
        start = leg(k, sgn, r_cw + rng.uniform(1, 20))
        corner = corners[k] if sgn == 1 else corners[(k - 1) % 4][::-1]
        k2, sgn2 = (k + 1, -1) if sgn == 1 else (k - 1, 1)
        choice = rng.choice(3, p=[0.45, 0.3, 0.25])
        if choice == 0:  # cross arm k
            _ped(sc, rng, [start, node(k, sgn), node(k, -sgn), leg(k, -sgn, l_walk)], node(k, sgn), k)
        elif choice == 1:  # round the corner, then along arm k2
            _ped(sc, rng, [start, corner, leg(k2, sgn2, l_walk)])
        else:  # round the corner and cross arm k2
            _ped(sc, rng, [start, corner, node(k2, -sgn2), leg(k2, -sgn2, l_walk)], node(k2, sgn2), k2 % 4)
    return sc


def road(rng, curved: bool) -> Scene:
    """A two-way road (1-2 lanes each way), straight or with bends, and a signalled crosswalk."""
    sc = Scene()
    half = 350
    t = np.arange(-half, half + 1, dtype=np.float64)
    kappa = np.zeros_like(t)
    if curved:
        for _ in range(int(rng.integers(1, 3))):
            radius = rng.uniform(25, 150) * rng.choice([1, -1])
            a = rng.uniform(-80, 40)
            kappa[(t >= a) & (t < a + rng.uniform(20, min(1.6 * abs(radius), 120)))] += 1 / radius
    head = rng.uniform(0, 2 * np.pi) + np.cumsum(kappa)
    c = np.cumsum(np.stack([np.cos(head), np.sin(head)], 1), axis=0)
    c -= c[half]
    nrm = normals(c)
    lanes = int(rng.integers(1, 3))
    side = lanes * LANE_W + KERB_TO_SIDEWALK
    cw = half + int(rng.integers(-20, 21))  # crosswalk index on the centreline
    # both directions share one phase; the second "group" is the pedestrians' phase
    sc.light_state, sc.walk, sc.yellow_left = _schedule(rng, [0, 0], list(rng.uniform([15, 8], [35, 16])))
    sc.lines.append((np.stack([c[cw] - side * nrm[cw], c[cw] + side * nrm[cw]]), CROSSWALK))
    for sgn in (1, -1):
        sc.lines.append((c[half - 150:half + 151] + sgn * side * nrm[half - 150:half + 151], SIDEWALK))
    for d, sgn in ((0, -1), (1, 1)):  # d 0: along t, lanes on the right; d 1: against t
        sl = cw - 4 if d == 0 else cw + 4
        sc.lines.append((np.stack([c[sl], c[sl] + sgn * lanes * LANE_W * nrm[sl]]), STOP_LINE))
        sc.light_pos.append(c[sl] + sgn * lanes * LANE_W / 2 * nrm[sl])
        for j in range(lanes):
            lane = c + sgn * (j + 0.5) * LANE_W * nrm
            lane = lane if d == 0 else lane[::-1]
            sc.lines.append((lane, LANE))
            route = resample(lane, SPACING)
            stop = _arc_at(route, c[sl] + sgn * (j + 0.5) * LANE_W * nrm[sl])
            _cars_on_lane(rng, sc, route, (stop - 230, stop - 3), stop, d, (10, 18))
            _cars_on_lane(rng, sc, route, (stop + 10, stop + 90), np.inf, d, (10, 18))
    if not any(k == 0 for k in sc.kind):
        route = resample(c - 0.5 * LANE_W * nrm, SPACING)
        sc.add(route, 0, 150.0, 8.0, 12.0, _arc_at(route, c[cw - 4]), 0)
    for _ in range(int(rng.integers(2, 8))):
        sgn, d = int(rng.choice([1, -1])), int(rng.choice([1, -1]))
        walk = c + sgn * side * nrm
        if rng.random() < 0.5:  # heading for the crosswalk
            i0 = int(np.clip(cw - d * rng.integers(2, 20), 0, 2 * half))
            far = int(np.clip(cw + int(rng.choice([1, -1])) * 80, 0, 2 * half))
            other = c - sgn * side * nrm
            seg_other = other[cw:far + 1] if far >= cw else other[far:cw + 1][::-1]
            way = walk[min(i0, cw):max(i0, cw) + 1]
            way = way if i0 <= cw else way[::-1]
            _ped(sc, rng, [way, seg_other], walk[cw], 0 if sgn == -1 else 1)
        else:
            i0 = half + int(rng.integers(-60, 61))
            i1 = int(np.clip(i0 + d * 80, 0, 2 * half))
            _ped(sc, rng, [walk[min(i0, i1):max(i0, i1) + 1][:: 1 if i1 >= i0 else -1]])
    return sc


def make_scene(rng) -> Scene:
    r = rng.random()
    return intersection(rng) if r < 0.5 else road(rng, curved=r < 0.75)


# ---------------------------------------------------------------------------------------------
# simulation, vectorised over a batch of scenes


def speed_limit(routes: np.ndarray) -> np.ndarray:
    """(…, K) highest speed at each route point: lateral acceleration ≤ CAR_A_LAT on the curve,
    and reachable with ≤ IDM_B braking from every point before a tighter one."""
    d = np.diff(routes, axis=-2)
    head = np.unwrap(np.arctan2(d[..., 1], d[..., 0]), axis=-1)
    kappa = np.abs(np.diff(head, axis=-1)) / SPACING
    kappa = np.concatenate([kappa[..., :1], kappa, kappa[..., -1:]], axis=-1)
    pad = np.concatenate([kappa[..., :2], kappa, kappa[..., -2:]], axis=-1)
    kappa = np.max([pad[..., i:i + kappa.shape[-1]] for i in range(5)], axis=0)  # ±2 m, the sharper
    v2 = np.minimum(CAR_A_LAT / np.maximum(kappa, 1e-9), CAR_V_MAX ** 2)
    s = np.arange(routes.shape[-2]) * SPACING
    # v_lim(s)² = min over s' ≥ s of v(s')² + 2·b·(s' − s): a reverse running minimum
    run = np.minimum.accumulate((v2 + 2 * IDM_B * s)[..., ::-1], axis=-1)[..., ::-1]
    return np.sqrt(run - 2 * IDM_B * s)


@dataclass
class Sim:
    """A simulated batch, world frame, noise-free: (S scenes, n agents, STEPS steps)."""

    pos: np.ndarray  # (S, n, T, 2) m
    heading: np.ndarray  # (S, n, T) rad
    speed: np.ndarray  # (S, n, T) m/s along the route
    s: np.ndarray  # (S, n, T) m along the route
    kind: np.ndarray  # (S, n) 0 car, 1 pedestrian, -1 padding
    stop_s: np.ndarray  # (S, n) stop line (cars) / kerb (pedestrians); inf: none
    light: np.ndarray  # (S, n) index of the agent's light; -1 none
    light_state: np.ndarray  # (S, m, T) 0 red, 1 yellow, 2 green; -1 padding
    v_limit: np.ndarray  # (S, n, K) the speed profile the cars follow


def simulate(scenes: list[Scene]) -> Sim:
    n_s = len(scenes)
    n = max(len(sc.kind) for sc in scenes)
    K = max(len(r) for sc in scenes for r in sc.routes)
    m = max(len(sc.light_pos) for sc in scenes)
    R = np.zeros((n_s, n, K, 2))
    length = np.zeros((n_s, n))
    kind = np.full((n_s, n), -1)
    st = {k: np.zeros((n_s, n)) for k in ("s0", "v0", "v_des")}
    stop_s = np.full((n_s, n), np.inf)
    light = np.full((n_s, n), -1)
    pause = np.full((n_s, n, 2), -1)
    lstate = np.full((n_s, m, STEPS), -1, np.int8)
    walk = np.zeros((n_s, m, STEPS), bool)
    yleft = np.zeros((n_s, m, STEPS))
    for i, sc in enumerate(scenes):
        for a, r in enumerate(sc.routes):
            R[i, a, :len(r)], R[i, a, len(r):] = r, r[-1]
            length[i, a] = (len(r) - 1) * SPACING
        na, nl = len(sc.kind), len(sc.light_pos)
        kind[i, :na], stop_s[i, :na], light[i, :na] = sc.kind, sc.stop_s, sc.light
        pause[i, :na] = sc.pause
        for k in st:
            st[k][i, :na] = getattr(sc, k)
        lstate[i, :nl], walk[i, :nl], yleft[i, :nl] = sc.light_state, sc.walk, sc.yellow_left
    vlim = np.full((n_s, n, K), PED_V_MAX)
    unique: dict[int, list] = {}  # cars share routes: one profile per route
    for i, sc in enumerate(scenes):
        for a, (r, k) in enumerate(zip(sc.routes, sc.kind)):
            if k == 0:
                unique.setdefault(id(r), []).append((i, a))
    if unique:
        first = [v[0] for v in unique.values()]
        prof = speed_limit(R[tuple(np.array(first).T)])
        for p_, users in zip(prof, unique.values()):
            for i, a in users:
                vlim[i, a] = p_
    s, v, v_des = st["s0"], st["v0"], np.maximum(st["v_des"], 0.1)
    car, ped, real = kind == 0, kind == 1, kind >= 0
    si, ai = np.arange(n_s)[:, None], np.arange(n)[None, :]
    v = np.where(car, np.minimum(v, vlim[si, ai, np.rint(s / SPACING).astype(int)]), v)  # not too fast for the curve
    half = np.where(car, HALF_LEN[0], HALF_LEN[1])
    committed = np.zeros((n_s, n), bool)
    ped_go = np.zeros((n_s, n), bool)
    li = np.maximum(light, 0)
    a_state = np.where((light >= 0)[..., None], lstate[si, li], 2)  # (S, n, T) the agent's light
    a_walk, a_yleft = walk[si, li], yleft[si, li]
    out = {k: np.zeros((n_s, n, STEPS) + e) for k, e in (("pos", (2,)), ("heading", ()), ("speed", ()), ("s", ()))}
    nc = max(1, int(car.sum(1).max()))
    assert all((kind[:, :nc] == 0).sum(1) == car.sum(1)), "scenes must list their cars first"
    mask_pairs = real[:, None, :] & car[:, :nc, None] & ~np.eye(nc, n, dtype=bool)[None]
    thr2 = np.where(car, 1.8, 1.2) ** 2
    for t in range(STEPS):
        x = s / SPACING
        i0 = np.minimum(x.astype(int), K - 2)
        f = (x - i0)[..., None]
        p0, p1 = R[si, ai, i0], R[si, ai, i0 + 1]
        pos = p0 + f * (p1 - p0)
        d = p1 - p0
        hd = np.arctan2(d[..., 1], d[..., 0])
        out["pos"][:, :, t], out["heading"][:, :, t], out["speed"][:, :, t], out["s"][:, :, t] = pos, hd, v, s
        # the nearest agent ahead on each car's own route (cars and pedestrians); scenes list
        # their cars first, so rows [:nc] hold every car
        px, py = pos[..., 0], pos[..., 1]
        rx, ry = px[:, None, :] - px[:, :nc, None], py[:, None, :] - py[:, :nc, None]  # j − i
        dist = np.sqrt(rx * rx + ry * ry)
        ch, sh = np.cos(hd), np.sin(hd)
        ahead = rx * ch[:, :nc, None] + ry * sh[:, :nc, None] > 0
        cos_dh = ch[:, :nc, None] * ch[:, None, :] + sh[:, :nc, None] * sh[:, None, :]
        pre = ahead & (dist < 60) & ((cos_dh > -0.5) | ped[:, None, :]) & mask_pairs
        b, i, jj = np.nonzero(pre)  # only these pairs need the route look-up
        q = np.minimum(np.rint((s[b, i] + dist[b, i, jj]) * (1 / SPACING)).astype(np.intp), K - 1)
        lat2 = ((pos[b, jj] - R[b, i, q]) ** 2).sum(-1)
        hit = lat2 < thr2[b, jj]
        gap = np.full(dist.shape, np.inf)
        b, i, jj = b[hit], i[hit], jj[hit]
        gap[b, i, jj] = dist[b, i, jj] - half[b, i] - half[b, jj]
        j = np.argmin(gap, axis=-1)
        gap_lead = np.full((n_s, n), np.inf)
        v_lead = np.zeros((n_s, n))
        gap_lead[:, :nc] = np.take_along_axis(gap, j[..., None], -1)[..., 0]
        v_lead[:, :nc] = np.maximum(v[si, j] * np.take_along_axis(cos_dh, j[..., None], -1)[..., 0], 0)
        # traffic lights: stop at red; at yellow go only if stopping is hard and the line is near
        state = a_state[:, :, t]
        before = s < stop_s
        dist_line = stop_s - s
        b_req = v ** 2 / (2 * np.maximum(dist_line - 2.75, 0.1))
        go = (state == 1) & before & (b_req > 4.0) & (dist_line / np.maximum(v, 0.1) < a_yleft[:, :, t] - 0.3)
        committed = np.where(state == 2, False, committed | go)
        stop_req = car & before & ((state == 0) | ((state == 1) & ~committed))

        def idm_brake(gap_, dv):
            s_star = IDM_S0 + np.maximum(0, v * IDM_T + v * dv / (2 * np.sqrt(IDM_A * IDM_B)))
            return -IDM_A * (s_star / np.maximum(gap_, 0.1)) ** 2

        a_lead = np.where(np.isfinite(gap_lead), idm_brake(gap_lead, v - v_lead), 0.0)
        a_stop = np.where(stop_req, idm_brake(dist_line - 0.5 - HALF_LEN[0], v), 0.0)
        a_car = IDM_A * (1 - (v / v_des) ** 4) + np.minimum(a_lead, a_stop)
        ahead_lim = vlim[si, ai, np.minimum(np.rint((s + v * DT) / SPACING).astype(int), K - 1)]
        a_car = np.clip(np.minimum(a_car, (ahead_lim - v) / DT), -CAR_BRAKE, CAR_ACCEL)
        # pedestrians: desired speed, standing still in their pause, waiting at the kerb
        # (once within 1.5 m of the kerb on a walk signal, a pedestrian crosses whatever follows)
        paused = (pause[..., 0] <= t) & (t <= pause[..., 1])
        walk_now = a_walk[:, :, t]
        ped_go = np.where(before, ped_go | (walk_now & (dist_line < 1.5)), False)
        waiting = ped & before & ~walk_now & ~ped_go
        a_ped = (np.where(paused, 0.0, v_des) - v) / 0.5
        kerb = np.sqrt(2 * PED_STOP * np.maximum(dist_line - v * DT - 0.2, 0))  # braking curve
        a_ped = np.where(waiting, np.minimum(a_ped, (kerb - v) / DT), a_ped)
        a_ped = np.clip(a_ped, -PED_BRAKE, PED_ACCEL)
        v_new = np.clip(v + np.where(car, a_car, a_ped) * DT, 0, np.where(car, CAR_V_MAX, PED_V_MAX))
        s_new = s + v_new * DT
        s_new = np.where(waiting, np.minimum(s_new, stop_s), s_new)
        s_new = np.minimum(s_new, length)  # routes are long enough that this stays rare
        v = np.where(real, (s_new - s) / DT, 0.0)
        s = s_new
    return Sim(out["pos"], out["heading"], out["speed"], out["s"], kind, stop_s, light, lstate, vlim)


# ---------------------------------------------------------------------------------------------
# scenarios: one target per scene, target-centric, with observation noise and occlusions


def map_chunks(lines: list, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Map polylines every MAP_SPACING m, cut into pieces of `points`: (Q, points, 8), (Q, points)."""
    feats, valid = [], []
    for line, typ in lines:
        p = resample(line, MAP_SPACING)
        if len(p) < 2:
            p = np.asarray(line, dtype=np.float64)[[0, -1]]
        d = direction(p)
        q = -(-len(p) // points)
        f = np.zeros((q * points, 8))
        f[:len(p), :2], f[:len(p), 2:4], f[:len(p), 4 + typ] = p, d, 1.0
        ok = np.zeros(q * points, bool)
        ok[:len(p)] = True
        feats.append(f.reshape(q, points, 8))
        valid.append(ok.reshape(q, points))
    return np.concatenate(feats), np.concatenate(valid)


def _to_frame(xy: np.ndarray, origin: np.ndarray, c: float, s: float) -> np.ndarray:
    d = xy - origin
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def _rotate(v: np.ndarray, c: float, s: float) -> np.ndarray:
    return np.stack([c * v[..., 0] + s * v[..., 1], -s * v[..., 0] + c * v[..., 1]], axis=-1)


def scenario(sc: Scene, sim: Sim, b: int, rng, want: int, layout: MotionLayout, out: dict, row: int) -> None:
    """Write scene `b` of `sim` as scenario `row` of `out`, centred on one agent of kind `want`."""
    na = len(sc.kind)
    kind = sim.kind[b, :na]
    obs = slice(BURN, STEPS)
    pos, head, speed = sim.pos[b, :na, obs], sim.heading[b, :na, obs], sim.speed[b, :na, obs]
    now = HISTORY - 1
    cands = np.flatnonzero(kind == want)
    if want == 0:  # cars near the scene's centre, where the map is
        near = cands[np.linalg.norm(pos[cands, now], axis=1) < 80]
        cands = near if len(near) else cands
    tgt = int(rng.choice(cands))
    k = kind[:, None]
    sig_p = np.where(k == 0, NOISE_POS[0], NOISE_POS[1])[..., None]
    sig_h = np.where(k == 0, NOISE_HEAD[0], NOISE_HEAD[1])
    pos = pos + rng.normal(0, 1, pos.shape) * sig_p
    head = head + rng.normal(0, 1, head.shape) * sig_h
    vel = speed[..., None] * np.stack([np.cos(sim.heading[b, :na, obs]), np.sin(sim.heading[b, :na, obs])], -1)
    vel = vel + rng.normal(0, NOISE_VEL, vel.shape)
    origin, theta = pos[tgt, now], head[tgt, now]
    c, s = np.cos(theta), np.sin(theta)
    feat = np.concatenate([_to_frame(pos, origin, c, s), _rotate(vel, c, s),
                           np.cos(head - theta)[..., None], np.sin(head - theta)[..., None]], -1)
    onehot = np.eye(3)[kind]
    out["target_history"][row] = feat[tgt, :HISTORY]
    out["target_valid"][row] = True
    out["target_type"][row] = onehot[tgt]
    out["target_future"][row] = feat[tgt, HISTORY:, :2]
    fv = np.ones(FUTURE, bool)
    if rng.random() < 0.1:  # the tracker lost the target for a moment
        g0 = int(rng.integers(0, FUTURE - 1))
        fv[g0:g0 + int(rng.integers(1, 11))] = False
    out["target_future_valid"][row] = fv
    # nearby agents: within 60 m now, nearest first; some seen late or lost early
    others = np.array([a for a in range(na) if a != tgt], dtype=int)
    dist = np.linalg.norm(feat[others, now, :2], axis=1)
    others = others[np.argsort(dist, kind="stable")][dist[np.argsort(dist, kind="stable")] < 60][:layout.agents]
    for slot, a in enumerate(others):
        valid = np.ones(HISTORY, bool)
        r = rng.random()
        if r < 0.15:
            valid[:int(rng.integers(1, HISTORY))] = False
        elif r < 0.2:
            valid[HISTORY - int(rng.integers(1, 6)):] = False
        out["agents_history"][row, slot] = feat[a, :HISTORY] * valid[:, None]
        out["agents_valid"][row, slot] = valid
        out["agents_type"][row, slot] = onehot[a]
    # map: the polyline pieces nearest to the target
    mf, mv = map_chunks(sc.lines, layout.points)
    xy = _to_frame(mf[..., :2], origin, c, s)
    dmin = np.where(mv, np.linalg.norm(xy, axis=-1), np.inf).min(1)
    pick = np.argsort(dmin, kind="stable")[:layout.polylines]
    mf = mf[pick]
    mf[..., :2], mf[..., 2:4] = xy[pick], _rotate(mf[..., 2:4], c, s)
    out["map_points"][row, :len(pick)] = mf * mv[pick][..., None]
    out["map_valid"][row, :len(pick)] = mv[pick]
    # traffic lights: nearest first, their state over the history
    lp = _to_frame(np.array(sc.light_pos), origin, c, s)
    order = np.argsort(np.linalg.norm(lp, axis=1), kind="stable")[:layout.lights]
    for slot, li in enumerate(order):
        states = sc.light_state[li, BURN:BURN + HISTORY]
        out["lights_state"][row, slot, :, :2] = lp[li]
        out["lights_state"][row, slot, :, 2:] = np.eye(3)[states]
        out["lights_valid"][row, slot] = True


def generate(agent_type: str, scenes: int, seed: int, split: str = "train",
             layout: MotionLayout = MotionLayout(), start: int = 0, batch: int = 64) -> dict[str, np.ndarray]:
    """Scenarios `start … start+scenes−1` of (agent type, seed, split), as numpy fields (N, …)."""
    if agent_type not in AGENT_KINDS:
        raise ValueError(f"agent_type must be one of {AGENT_KINDS}, got {agent_type!r}")
    want = AGENT_KINDS.index(agent_type)
    out = {k: np.zeros((scenes, *shape), bool if k.endswith("_valid") else np.float32)
           for k, shape in layout.fields().items()}
    for b0 in range(0, scenes, batch):
        idx = range(start + b0, start + min(b0 + batch, scenes))
        rngs = [np.random.default_rng(np.random.SeedSequence([seed, want, _SPLIT_CODE[split], i])) for i in idx]
        scs = [make_scene(r) for r in rngs]
        sim = simulate(scs)
        for j, (sc, r) in enumerate(zip(scs, rngs)):
            scenario(sc, sim, j, r, want, layout, out, b0 + j)
    return out


def write_synthetic(out: Path, agent_type: str, scenes: int, test_scenes: int | None, seed: int,
                    sizes: tuple[int, int, int, int] = (16, 64, 10, 4), shard_size: int = 1000,
                    overwrite: bool = False, log=lambda _m: None) -> dict[str, int]:
    """`goodfit data motion-synth`: train and test shards of `agent_type` scenarios under `out`;
    sizes = (agents, polylines, points, lights) stored per scene."""
    if agent_type not in AGENT_KINDS:
        raise UserError(f"--agents: expected one of {' | '.join(AGENT_KINDS)}, got {agent_type!r}")
    test_scenes = max(1, scenes // 10) if test_scenes is None else test_scenes
    for name, value, low in (("--scenes", scenes, 1), ("--test-scenes", test_scenes, 1),
                             ("--seed", seed, 0), ("--shard-size", shard_size, 1),
                             ("--max-agents", sizes[0], 0), ("--polylines", sizes[1], 1),
                             ("--points", sizes[2], 1), ("--lights", sizes[3], 0)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    layout = MotionLayout(*sizes)
    existing = [f for split in SPLITS for f in shard_files(out / split)]
    if existing and not overwrite:
        raise UserError(f"{out} already holds shards ({existing[0]}); pass --overwrite to replace them")
    for f in existing:
        f.unlink()
    counts = {}
    for split, n in (("train", scenes), ("test", test_scenes)):
        meta = {"source": "goodfit data motion-synth", "agent_type": agent_type, "seed": seed}
        with ShardWriter(out, split, shard_size, meta) as w:
            for start in range(0, n, shard_size):
                w.add_batch(generate(agent_type, min(shard_size, n - start), seed, split, layout, start))
                log(f"{split}: {min(start + shard_size, n)}/{n} scenes")
        counts[split] = n
    return counts
