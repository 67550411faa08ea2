"""Synthetic driving scenes: road geometry, lane and sidewalk polylines, traffic-light schedules,
and the agents placed on them with their routes and starting states (motion_synth.py simulates them).

A scene is a four-way intersection (arms at jittered angles, turn connectors, crosswalks,
sidewalks, four lights in two phase groups) or a straight or curved two-way road with a
signalled mid-block crosswalk. Every agent gets its own route, resampled every metre:

- cars: up to four per lane, each with a speed it can still stop from before a light that is not
  green, and a random turn (left / straight / right) at intersections — the multi-modal choice;
- pedestrians: sidewalks and crosswalks only, corners rounded; at corners they cross, turn, or
  turn and cross; a crossing names the kerb where they wait and the light that lets them walk;
  some stand still for a while.

Every random draw comes from the `rng` passed in, one stream per scene. The time base and the
route spacing shared with the simulation are defined here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from goodfit_cli.data.motion.format import FUTURE, HISTORY, MAP_TYPES

DT = 1.0 / 10
BURN = 30  # steps simulated before the first history step, so agents settle
STEPS = BURN + HISTORY + FUTURE
SPACING = 1.0  # route resampling (m)
LANE_W = 3.5
KERB_TO_SIDEWALK = 1.5
PED_STOP = 0.7  # pedestrians' braking (m/s²) when they stop at the kerb
YELLOW, ALL_RED = 3.0, 1.0
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
