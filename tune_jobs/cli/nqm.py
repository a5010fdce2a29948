"""`critbatch nqm`: the exact answer of the noisy quadratic model, per batch size and fitted.

With ``--branch-at``: the exact local critical batch size along a base run, by branching
(Merrill et al. 2025; :mod:`trainables.branching`, :func:`trainables.nqm_truth.branched_losses`).
"""

from __future__ import annotations

import json

from analysis.ground_truth import ground_truth
from trainables.api import InputError
from trainables.branching import BranchPlan
from trainables.nqm_truth import NQM, REFERENCE_BATCH_SIZES, branched_losses

# --branch-at mode: its flags, their defaults (a short NQM study), and the plan's field per flag
BRANCH_DEFAULTS = {
    "base_batch_size": 8,
    "base_lr": 0.05,
    "factors": "1,2,4,8,16,32",
    "window_steps": 3200,
    "tolerance": 0.01,
}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parse_ints(flag: str, text: str, example: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(
            f"{flag} {text!r}: give comma-separated integers, e.g. {example}"
        ) from None


def _parse_batch_sizes(text: str) -> list[int]:
    sizes = _parse_ints("--batch-sizes", text, "4,8,16")
    if not sizes or min(sizes) < 1:
        raise InputError(f"--batch-sizes {text!r}: give one or more positive integers, e.g. 4,8,16")
    return sorted(set(sizes))


def _command(args) -> int:
    checks = [
        ("--dim", args.dim >= 1, "give a positive integer, e.g. --dim 10000"),
        ("--exponent", args.exponent >= 0, "give a value >= 0 (h_i = i^-exponent), e.g. 1"),
        ("--noise-scale", args.noise_scale > 0, "give a value > 0 (c_i = scale * h_i), e.g. 1"),
        ("--s0", args.s0 > 0, "give a value > 0 (initial E theta_i^2), e.g. 1"),
        ("--momentum", 0 <= args.momentum < 1, "give a value in [0, 1), e.g. 0.9"),
    ]
    for flag, ok, fix in checks:
        if not ok:
            raise InputError(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}: {fix}")
    nqm = NQM(args.dim, args.exponent, args.noise_scale, args.s0)
    if args.branch_at is not None:
        return _branch_command(args, nqm)
    for field in BRANCH_DEFAULTS:
        if getattr(args, field) is not None:
            raise InputError(
                f"{_flag(field)}: applies only with --branch-at; add --branch-at 0,100,1000"
            )
    args.target = 0.01 if args.target is None else args.target
    if not 0 < args.target < nqm.initial_loss():
        raise InputError(
            f"--target {args.target}: give a loss in (0, {nqm.initial_loss():.4g}) (the initial loss)"
        )
    sizes = (
        _parse_batch_sizes(args.batch_sizes) if args.batch_sizes else list(REFERENCE_BATCH_SIZES)
    )
    if len(sizes) < 3:
        raise InputError("--batch-sizes: give at least three batch sizes to fit B_crit")
    try:
        truth = ground_truth(nqm, sizes, args.target, args.momentum)
    except ValueError as e:
        raise InputError(
            f"--target {args.target}: {e}; raise the target or the batch sizes"
        ) from None
    if args.json:
        print(json.dumps(truth, indent=2))
        return 0
    print(f"NQM dim={nqm.dim} h_i=i^-{nqm.exponent:g} c_i={nqm.noise_scale:g}*h_i s0={nqm.s0:g} "
          f"target={args.target:g} momentum={args.momentum:g}")  # fmt: skip
    print(f"{'batch_size':>10} {'best_lr':>12} {'steps':>12} {'examples':>14}")
    for b, lr, k in zip(truth["batch_sizes"], truth["best_lr"], truth["steps"], strict=True):
        print(f"{b:>10} {lr:>12.5g} {k:>12} {b * k:>14}")
    print(
        f"B_crit = {truth['b_crit']:.5g}  S_min = {truth['s_min']:.5g}  E_min = {truth['e_min']:.5g}"
    )
    return 0


def _branch_command(args, nqm: NQM) -> int:
    for flag, given in (("--batch-sizes", args.batch_sizes), ("--target", args.target is not None),
                        ("--momentum", args.momentum != 0)):  # fmt: skip
        if given:
            raise InputError(f"{flag}: does not apply with --branch-at (plain SGD, losses at the "
                             f"end of each branch's window); drop {flag}")  # fmt: skip
    values = {f: BRANCH_DEFAULTS[f] if getattr(args, f) is None else getattr(args, f)
              for f in BRANCH_DEFAULTS}  # fmt: skip
    plan = BranchPlan(
        base_batch_size=values["base_batch_size"],
        base_lr=values["base_lr"],
        branch_at=tuple(_parse_ints("--branch-at", args.branch_at, "0,100,1000")),
        factors=tuple(_parse_ints("--factors", str(values["factors"]), "1,2,4,8")),
        window_steps=values["window_steps"],
        tolerance=values["tolerance"],
        lr_rule="linear",
    ).check(_flag)
    if plan.base_lr >= nqm.max_stable_lr():
        raise InputError(
            f"--base-lr {plan.base_lr}: at or past the stability edge 2 / h_max = "
            f"{nqm.max_stable_lr():.4g}, where the base run diverges; give a smaller LR"
        )
    out = branched_losses(nqm, plan)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"NQM dim={nqm.dim} h_i=i^-{nqm.exponent:g} c_i={nqm.noise_scale:g}*h_i s0={nqm.s0:g}; "
          f"base B0={plan.base_batch_size} lr0={plan.base_lr:g}, SGD, LR lr0*k; window "
          f"{plan.window_steps} steps at B0 (same examples per branch); pass: loss <= "
          f"(1 + {plan.tolerance:g}) x the k=1 branch's")  # fmt: skip
    print("columns k>1: loss / k=1 loss; ! fails, unstable: LR at or past 2 / h_max")
    head = "".join(f"{'k=' + str(k):>10}" for k in plan.factors[1:])
    print(f"{'branch_at':>10} {'base_loss':>11} {'k=1 loss':>11}{head} {'local_cbs':>10}")
    for j, t in enumerate(out["branch_at"]):
        row, ok = out["losses"][j], out["passes"][j]
        ref = row[plan.factors.index(1)]
        cells = "".join(
            f"{'unstable':>10}"
            if not out["stable"][j][i]
            else f"{row[i] / ref:>9.4f}{' ' if ok[i] else '!'}"
            for i in range(1, len(row))
        )
        cbs = out["local_cbs"][j]
        print(f"{t:>10} {out['base_loss'][j]:>11.5g} {ref:>11.5g}{cells} {cbs if cbs else '-':>10}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nqm",
        help="exact ground truth of the noisy quadratic model: best LR, steps, B_crit",
        description="Optimal learning rate and minimal steps-to-target per batch size of the "
        "noisy quadratic model (exact expected-loss recurrence), and the fitted critical batch "
        "size. Defaults: the reference setup of Zhang et al. 2019.",
    )
    p.add_argument("--dim", type=int, default=10_000, help="number of coordinates (10000)")
    p.add_argument("--exponent", type=float, default=1.0, help="curvature h_i = i^-exponent (1)")
    p.add_argument("--noise-scale", type=float, default=1.0, help="noise c_i = scale * h_i (1)")
    p.add_argument("--s0", type=float, default=1.0, help="initial E theta_i^2 (1)")
    p.add_argument("--target", type=float, default=None, help="target expected loss (0.01)")
    p.add_argument("--batch-sizes", default="", help="comma-separated, e.g. 4,8,16 (2^2..2^21)")
    p.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum beta (0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    b = p.add_argument_group(
        "branching (Merrill et al. 2025)",
        "the exact local critical batch size along a base run: from its state at each branch "
        "point, a branch per factor k trains window/k steps at batch k*B0 and LR lr0*k; the "
        "largest k*B0 whose loss is within the tolerance of the k=1 branch's is the local CBS",
    )
    b.add_argument("--branch-at", default=None, help="base-run steps to branch at, e.g. 0,100,1000")
    b.add_argument("--base-batch-size", type=int, default=None, help="B0 of the base run (8)")
    b.add_argument("--base-lr", type=float, default=None, help="lr0 of the base run (0.05)")
    b.add_argument(
        "--factors", default=None, help="batch multipliers k, 1 included (1,2,4,8,16,32)"
    )
    b.add_argument("--window-steps", type=int, default=None,
                   help="steps of the k=1 branch; k takes window/k (3200)")  # fmt: skip
    b.add_argument("--tolerance", type=float, default=None,
                   help="pass: loss <= (1 + tolerance) x the k=1 loss (0.01)")  # fmt: skip
    p.set_defaults(func=_command)
