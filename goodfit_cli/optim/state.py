"""GoodFit's state_dict in torch's standard shape, and the loading of both formats.

Format 2 (written since issue 13) is what every torch optimizer returns, so
``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` / ``set_optimizer_state_dict``
(FSDP2), Lightning and accelerate handle it like any other::

    {"state": {i: {<main optimizer's state of parameter i>,
                   "goodfit_anchor": θ_ref          (meaningful mid-cycle; stale at phase 0),
                   "goodfit_touched": bool          (moved by this cycle's reference steps),
                   "goodfit_displaced": θ′          (only while the weights are parked),
                   "goodfit_ref_<key>": ...         (a custom reference optimizer's state)}},
     "param_groups": [{<main optimizer's group>, "params": [...],
                       "goodfit": {"format": 2, "n_ref", "ref_ratio", "projection",
                                   "reference" ("sgd", or "custom:<the reference's class>"),
                                   "phase", "main_steps", "parked"},
                       "goodfit_reference": {<reference group's settings>} or None}]}

Like schedule_free, the wrapper's buffers sit in the per-parameter state beside the main
optimizer's, and its scalars in every group. Keys of "state" and of a group's "params" may be
integers or anything else (DCP uses parameter names): they are matched by position, as torch does.
A tensor of a DTensor parameter (FSDP2) is written as a DTensor with the parameter's placements.

Format 1 (``{"main", "reference", "goodfit"}``) is still read by ``GoodFit.load_state_dict``.
``save`` / ``load`` are ``GoodFit.state_dict`` / ``load_state_dict`` without their hooks; ``load``
first refuses a state the optimizer's settings cannot continue (``check_settings``).
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from torch import Tensor

from goodfit_cli.optim.functional import _local

GoodFit = Any  # the optimizer these functions serve (optim/goodfit.py imports this module)

FORMAT = 2
PREFIX = "goodfit_"  # every key GoodFit adds to torch's layout starts with this
REF = "goodfit_ref_"  # per-parameter keys of the reference optimizer's state


def like_param(local: Tensor, p: Tensor) -> Tensor:
    """`local` (this rank's shard) as a tensor of p's kind: a DTensor when p is one (FSDP2)."""
    if not hasattr(p, "device_mesh"):
        return local
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())


def merge(main: dict, ref: dict | None, scalars: dict[str, Any],
          own: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The format-2 state_dict from the main and reference optimizers' state_dicts, GoodFit's
    scalars and its per-parameter entries (`own`, by index; keys without the prefix)."""
    state: dict[Any, dict[str, Any]] = {i: dict(v) for i, v in main["state"].items()}
    for i, entry in own.items():  # every trainable parameter has an entry (DCP's strict load)
        st = state.setdefault(i, {})
        st.update({PREFIX + k: v for k, v in entry.items()})
        st.update({REF + k: v for k, v in ({} if ref is None else ref["state"].get(i, {})).items()})
    groups = []
    for j, g in enumerate(main["param_groups"]):
        extra = None if ref is None else {k: v for k, v in ref["param_groups"][j].items()
                                          if k != "params"}
        groups.append({**g, "goodfit": dict(scalars), "goodfit_reference": extra})
    return {"state": state, "param_groups": groups}


def split(sd: dict[str, Any]) -> tuple[dict, dict | None, dict[str, Any], dict[int, dict]]:
    """A format-2 state_dict → (main's state_dict, reference's or None, scalars, per-index extras).

    The per-index extras are GoodFit's own per-parameter entries (keys without the prefix, the
    reference optimizer's keys under "ref"), indexed by position in the flattened groups.
    """
    groups = sd["param_groups"]
    if not groups or "goodfit" not in groups[0]:
        raise ValueError("not a GoodFit state_dict (its param_groups have no 'goodfit' entry): "
                         "to start GoodFit from the main optimizer's state (e.g. after an AdamW "
                         "warm-up) load it with opt.main.load_state_dict(...)")
    scalars = dict(groups[0]["goodfit"])
    if int(scalars.get("format", 0)) != FORMAT:
        raise ValueError(f"GoodFit state_dict format {scalars.get('format')!r} is not {FORMAT}")
    position = {k: i for i, k in enumerate(chain.from_iterable(g["params"] for g in groups))}
    main_state: dict[Any, dict] = {}
    ref_state: dict[Any, dict] = {}
    extras: dict[int, dict] = {}
    for key, entry in sd["state"].items():
        if key not in position:
            raise ValueError(f"state_dict has state for parameter {key!r}, which no group lists")
        mine = {k: v for k, v in entry.items() if not k.startswith(PREFIX)}
        ref = {k[len(REF):]: v for k, v in entry.items() if k.startswith(REF)}
        own = {k[len(PREFIX):]: v for k, v in entry.items()
               if k.startswith(PREFIX) and not k.startswith(REF)}
        if mine:
            main_state[key] = mine
        if ref:
            ref_state[key] = ref
        extras[position[key]] = own
    main_groups = [{k: v for k, v in g.items() if not k.startswith(PREFIX) and k != "goodfit"}
                   for g in groups]
    main_sd = {"state": main_state, "param_groups": main_groups}
    ref_groups = [g.get("goodfit_reference") for g in groups]
    ref_sd = None
    if any(r is not None for r in ref_groups):
        ref_sd = {"state": ref_state,
                  "param_groups": [{**(r or {}), "params": list(g["params"])}
                                   for r, g in zip(ref_groups, groups)]}
    return main_sd, ref_sd, scalars, extras


def from_format1(sd: dict[str, Any]) -> tuple[dict, dict | None, dict[str, Any], dict[int, dict]]:
    """A format-1 state_dict ({"main", "reference", "goodfit"}) → what `split` returns."""
    try:
        gf = sd["goodfit"]
        main_sd, ref_sd = sd["main"], sd["reference"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a GoodFit state_dict (missing {e})") from None
    scalars = {"n_ref": gf["n_ref"], "phase": gf["phase"], "main_steps": gf["main_steps"],
               "parked": False}
    scalars.update({k: gf[k] for k in ("ref_ratio", "projection") if k in gf})
    extras: dict[int, dict] = {}
    for i, anchor in gf.get("anchor", {}).items():
        extras.setdefault(int(i), {})["anchor"] = anchor
    for i in gf.get("touched", []):
        extras.setdefault(int(i), {})["touched"] = True
    return main_sd, ref_sd, scalars, extras


def require(extras: dict[int, dict], indices: list[int], key: str, message: str) -> None:
    """ValueError(`message` + the first of `indices` whose entry in `extras` lacks `key`)."""
    missing = [i for i in indices if key not in extras.get(i, {})]
    if missing:
        raise ValueError(f"{message} for parameter {missing[0]}")


def reference_name(opt: GoodFit) -> str:
    """"sgd" for the default reference step, else "custom:" + the reference optimizer's class."""
    return "sgd" if opt._ref_opt is None else f"custom:{type(opt._ref_opt).__name__}"


def save(opt: GoodFit) -> dict[str, Any]:
    """``opt.state_dict()`` without its hooks: format 2."""
    scalars = {"format": FORMAT, "n_ref": opt.n_ref, "ref_ratio": opt.ref_ratio,
               "projection": opt.projection, "reference": reference_name(opt),
               "phase": opt._phase, "main_steps": opt._main_steps, "parked": opt.parked}
    # the same keys at every phase, so one state_dict serves as another's template
    # (torch.distributed.checkpoint loads into one); the anchor matters mid-cycle only
    own = {}
    for i, p in opt._in_cycle():
        own[i] = {"anchor": like_param(opt._anchor(p), p), "touched": i in opt._touched}
        if opt._displaced is not None:
            own[i]["displaced"] = like_param(opt._displaced[i], p)
    return merge(opt.main.state_dict(),
                 None if opt._ref_opt is None else opt._ref_opt.state_dict(), scalars, own)


def check_settings(opt: GoodFit, scalars: dict[str, Any], ref_sd: dict | None) -> None:
    """ValueError naming the first setting under which the saved state cannot be continued:
    n_ref or the reference optimizer (its state) at any phase; ref_ratio or projection when the
    state was saved mid-cycle (its θ′ and the coming main step follow the saved rule). At phase
    0 nothing saved depends on those two: the constructor's values apply."""
    phase = int(scalars["phase"])
    saved_ref = scalars.get("reference", "sgd" if ref_sd is None else "custom")
    if (ref_sd is None) != (opt._ref_opt is None) or (
            "reference" in scalars and saved_ref != reference_name(opt)):
        checks = [("reference", saved_ref, reference_name(opt))]
    else:
        checks = []
    checks.insert(0, ("n_ref", int(scalars["n_ref"]), opt.n_ref))
    if phase > 0:
        checks += [(k, scalars[k], getattr(opt, k)) for k in ("ref_ratio", "projection")
                   if k in scalars]
    for name, saved, mine in checks:
        if saved != mine:
            when = f" mid-cycle (phase {phase})" if name in ("ref_ratio", "projection") else ""
            fix = "that reference optimizer" if name == "reference" else f"{name}={saved!r}"
            raise ValueError(f"state_dict was saved{when} with {name}={saved!r} but this "
                             f"optimizer has {name}={mine!r}: build GoodFit with {fix} to "
                             "continue it")


def load(opt: GoodFit, state_dict: dict[str, Any]) -> None:
    """``opt.load_state_dict(state_dict)`` without its hooks: format 2 or format 1."""
    if isinstance(state_dict, dict) and "param_groups" in state_dict and "state" in state_dict:
        main_sd, ref_sd, scalars, extras = split(state_dict)
    else:
        main_sd, ref_sd, scalars, extras = from_format1(state_dict)
    check_settings(opt, scalars, ref_sd)
    opt.main.load_state_dict(main_sd)
    if opt._ref_opt is not None:
        opt._ref_opt.load_state_dict(ref_sd)
    phase = int(scalars["phase"])
    trainable = [i for i, _ in opt._trainable()]
    if phase > 0:
        require(extras, trainable, "anchor", "state_dict is mid-cycle but has no anchor")
    displaced = None
    if scalars.get("parked"):
        require(extras, trainable, "displaced", "state_dict is parked but has no displaced weights")
        displaced = {i: _local(e["displaced"]).clone() for i, e in extras.items()
                     if "displaced" in e}
    opt._phase = phase
    opt._main_steps = int(scalars["main_steps"])
    opt._touched = {i for i, e in extras.items() if e.get("touched")}
    opt._displaced = displaced
    opt._anchored = {i for i, e in extras.items() if "anchor" in e} if phase > 0 else set()
    for i, p in (opt._in_cycle() if phase > 0 else []):  # incl. any frozen mid-cycle
        opt._anchor(p).copy_(_local(extras[i]["anchor"]))
