"""The Fisher-weighted point on the same trials: over finished digits studies run WITHOUT it
(benchmarks/digits_studies.py's folders, `-- --no-fisher` or an older goodfit), each study's
finished trials (their end checkpoints) re-chosen twice, on validation, read on test:

    wise    each trial's WiSE-FT grid (α 0.1 ... 1), the best point within the floor (with the
            study's margin, 0.5 standard errors), then the new-class offset at that point;
    fisher  the same, with the points θ(α, β) = base + α(arm − base)/(1 + βF) for β in
            workflows/fisher.py's BETAS competing as the search has them compete (each β's
            line from α = 1 down to its first point within the floor; F: the base's Fisher on
            16 old-task training batches of 32, every weight, mean 1);

the study's pick the trial with the best point by the default rule (new-task accuracy on
validation, old breaks ties). Both read the same trials, so the paired difference is the
point's own, without the change of path a study run with it takes (docs/results.md, "The
Fisher-weighted point"). Pruned trials, rung weights and the replay reference's own choices are
not re-read: an emulation of the study's choice, not the study.

    python benchmarks/digits_fisher_posthoc.py --floor 0.95 D [D ...]   # D: a --out folder
    python benchmarks/digits_fisher_posthoc.py --floor 0.95 --betas 0.3 1 3 10 -- D   # another set

Nothing is trained: the trials' checkpoints, the seed's base and data are read as stored.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))  # benchmarks/
from digits_evidence import RECIPE  # noqa: E402
from search_table import mean_se  # noqa: E402

from goodfit_cli.models.mlp import mlp  # noqa: E402
from goodfit_cli.workflows.fisher import BATCHES, BETAS  # noqa: E402

MODEL = mlp(**yaml.safe_load(Path(RECIPE).read_text())["model"]["args"])
ALPHAS = [round(0.1 * i, 1) for i in range(1, 11)]
TAUS = [0.25 * i for i in range(-12, 13)]
SPLITS = ("old_val", "new_val", "old_test", "new_test")


def load(p: Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(p)
    return torch.tensor(d["x"]), torch.tensor(d["y"])


def fisher(base: dict, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """The base's diagonal Fisher on the old task (workflows/fisher.py's estimate)."""
    MODEL.load_state_dict(base)
    MODEL.eval()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    F = {n: torch.zeros_like(p) for n, p in MODEL.named_parameters()}
    for b in range(BATCHES):
        idx = order[(b * 32) % len(order):][:32]
        MODEL.zero_grad()
        torch.nn.functional.cross_entropy(MODEL(x[idx]), y[idx]).backward()
        for n, p in MODEL.named_parameters():
            F[n] += p.grad.square() / BATCHES
    scale = sum(f.numel() for f in F.values()) / sum(float(f.sum()) for f in F.values())
    return {n: f * scale for n, f in F.items()}


def study(run: Path, data: Path, base: dict, new: list[int], floor: float, seed: int,
          betas: tuple[float, ...] = BETAS) -> dict:
    D = {k: load(data / f"{k}.npz") for k in (*SPLITS, "old_train")}
    F = fisher(base, *D["old_train"], seed)
    bar = floor + 0.5 * math.sqrt(floor * (1 - floor) / len(D["old_val"][1]))
    points = []  # (beta, alpha, logits per split)
    for ckpt in sorted(run.glob("trials/trial-*/*/model.safetensors")):
        if ckpt.parent.name.startswith("wise"):
            continue
        arm = load_file(ckpt)
        for beta in (0.0, *betas):
            for a in ALPHAS:
                MODEL.load_state_dict({k: base[k] + a * (arm[k] - base[k]) / (1 + beta * F[k])
                                       for k in base})
                with torch.inference_mode():
                    points.append((beta, a, {k: MODEL(D[k][0]) for k in SPLITS}))

    def acc(logits: dict, tau: float) -> dict:
        out = {}
        for k, z in logits.items():
            z = z.clone()
            z[:, new] += tau
            out[k] = (z.argmax(1) == D[k][1]).sum().item() / len(D[k][1])
        return out

    def best(pts: list) -> dict | None:
        ok = [(p, a) for p in pts for a in [acc(p[2], 0.0)] if a["old_val"] >= bar]
        if not ok:
            return None
        return offset(*max(ok, key=lambda e: (e[1]["new_val"], e[1]["old_val"])))

    def walked(pts: list) -> dict | None:
        """workflows/fisher.py's choice: each trial's α alone (its grid's best within the
        floor), against each β's line walked from α = 1 down to its first point within it;
        then the study's best of those."""
        ok = []
        for i in range(0, len(pts), 10 * (1 + len(betas))):  # one trial's points
            trial = pts[i:i + 10 * (1 + len(betas))]
            alone = [(p, a) for p in trial[:10] for a in [acc(p[2], 0.0)] if a["old_val"] >= bar]
            if alone:
                ok.append(max(alone, key=lambda e: (e[1]["new_val"], e[1]["old_val"])))
            for j in range(1, 1 + len(betas)):
                for p in reversed(trial[10 * j:10 * (j + 1)]):  # α = 1 down
                    a = acc(p[2], 0.0)
                    if a["old_val"] >= bar:
                        ok.append((p, a))
                        break
        if not ok:
            return None
        return offset(*max(ok, key=lambda e: (e[1]["new_val"], e[1]["old_val"], -e[0][0])))

    def offset(p: tuple, a0: dict) -> dict:
        taus = [(t, a) for t in TAUS for a in [acc(p[2], t)]
                if a["old_val"] >= a0["old_val"] and a["old_val"] >= bar]
        t, a = max(taus, key=lambda e: (e[1]["new_val"], e[1]["old_val"], -abs(e[0])))
        return {"beta": p[0], "alpha": p[1], "tau": t, **a}

    return {"wise": best([p for p in points if p[0] == 0.0]), "fisher": walked(points)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floor", type=float, required=True, choices=(0.95, 0.97))
    ap.add_argument("--betas", type=float, nargs="+", default=list(BETAS),
                    help="the β of the weighted point's lines (default: the search's)")
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for out in args.folders:
        new = json.loads((out / "classes.json").read_text())["new"]
        rows = []
        for seed_dir in sorted(out.glob("seed*"), key=lambda d: int(d.name[4:])):
            seed = int(seed_dir.name[4:])
            run = out / "studies" / f"seed{seed}-rep0"
            base = load_file(seed_dir / "base" / "model.safetensors")
            r = study(run, seed_dir / "data", base, new, args.floor, seed, tuple(args.betas))
            rows.append(r)
            print(json.dumps({"seed": seed, **{k: v and {x: round(y, 4) for x, y in v.items()}
                                               for k, v in r.items()}}), flush=True)
        for k in ("wise", "fisher"):
            old = [r[k]["old_test"] for r in rows if r[k]]
            new_t = [r[k]["new_test"] if r[k] else 0.0 for r in rows]
            print(f"{out} {k}: old {mean_se(old)}, new {mean_se(new_t)} (test)")
        d = [(r["fisher"] or {}).get("new_test", 0.0) - (r["wise"] or {}).get("new_test", 0.0)
             for r in rows]
        do = [(r["fisher"] or {}).get("old_test", 0.0) - (r["wise"] or {}).get("old_test", 0.0)
              for r in rows if r["fisher"] and r["wise"]]
        print(f"{out} fisher minus wise, paired: new {mean_se(d)}, old {mean_se(do)}; "
              f"changed {sum(x != 0 for x in d)} of {len(d)}")


if __name__ == "__main__":
    main()
