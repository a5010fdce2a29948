"""`critbatch nqm`: the exact answer of the noisy quadratic model, per batch size and fitted."""

from __future__ import annotations

import json

from analysis.ground_truth import ground_truth
from trainables.api import InputError
from trainables.nqm_truth import NQM, REFERENCE_BATCH_SIZES


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(
            f"--batch-sizes {text!r}: give comma-separated integers, e.g. 4,8,16"
        ) from None
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
    p.add_argument("--target", type=float, default=0.01, help="target expected loss (0.01)")
    p.add_argument("--batch-sizes", default="", help="comma-separated, e.g. 4,8,16 (2^2..2^21)")
    p.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum beta (0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_command)
