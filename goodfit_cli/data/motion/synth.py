"""Synthetic motion scenarios: simulate scenes from motion_scenes.py at 10 Hz and write them in
the documented tensor format (data/motion.py), in memory (`generate`: a range of scenes;
generation.py makes a command's scenes in worker processes and writes them as shards).

The simulation is vectorised over a batch of scenes (numpy); every agent moves along its route:

- cars: IDM car following (cars and pedestrians ahead on the route), a speed profile from the
  route's curvature (lateral acceleration ≤ CAR_A_LAT), stop at red, stop or go at yellow;
- pedestrians: lower desired speeds, wait at the kerb until the walk signal, then cross; stand
  still during their pause.

Each scene's random draws come from its own stream SeedSequence([seed, agent type, split, index]),
so a scene does not depend on the batch it was simulated in. `generate` turns scenes into
target-centric scenarios with observation noise and occlusions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from goodfit_cli.data.motion.format import FUTURE, HISTORY, MotionLayout
from goodfit_cli.data.motion.scenes import (
    BURN,
    DT,
    PED_STOP,
    SPACING,
    STEPS,
    Scene,
    direction,
    make_scene,
    resample,
)

AGENT_KINDS = ("car", "pedestrian")
MAP_SPACING = 2.0  # map polyline points (m)

# physical limits (tests check them on the simulated states)
CAR_V_MAX, CAR_ACCEL, CAR_BRAKE, CAR_A_LAT = 20.0, 3.0, 6.0, 2.5
PED_V_MAX, PED_ACCEL, PED_BRAKE = 2.5, 1.0, 1.5  # PED_STOP: motion_scenes.py
IDM_A, IDM_B, IDM_T, IDM_S0 = 1.5, 2.0, 1.2, 2.0
HALF_LEN = {0: 2.25, 1: 0.3}  # car, pedestrian (m)
NOISE_POS, NOISE_VEL, NOISE_HEAD = {0: 0.05, 1: 0.08}, 0.1, {0: 0.01, 1: 0.05}
_SPLIT_CODE = {"train": 0, "test": 1}


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
