"""``lopt stability``: is an optimizer stable on a quadratic, and where is its edge?

Three modes share one flag set (the mode is an optional first word, ``point`` by default):

* ``lopt stability --optimizer momentum --lr 0.1 --curvature 10 --beta 0.9 [--json]``: spectral
  radius of the optimizer's dynamics on the quadratic with that curvature (a comma list means a
  diagonal Hessian; the radius is the maximum over directions) and whether it is < 1.
* ``lopt stability map --optimizer sgd --out DIR``: radius over learning rate x curvature (or x beta
  with ``--axis beta``), written as ``map.png``, ``map.json``, ``map.csv``, ``config.json`` and
  ``metrics.json``.
* ``lopt stability meta-linear --out DIR``: experiment E1, linear optimizers meta-learned
  on the NQM.

Learned optimizers (``star``, ``blackbox``, or a PATH to saved meta-parameters) are analysed by
linearizing one step with ``jax.jacfwd`` after a few warm-up steps. They choose their own step size,
so ``--lr`` does not apply to them (it is ignored with a note); what varies instead is the
gradient scale ``--grad-scale`` (in ``map`` mode: the x axis). ``star``/``blackbox`` use the
shipped weights when the package has them and the meta-initialization otherwise.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

ANALYTIC = ("sgd", "momentum", "heavy_ball", "nesterov", "aggmo", "adam")
LEARNED = ("star", "blackbox")
MODES = ("point", "map", "meta-linear")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stability",
        help="spectral radius of an optimizer on a quadratic; stability maps; E1",
        description=__doc__,
        formatter_class=_formatter(),
    )
    p.add_argument(
        "mode", nargs="?", default="point", choices=MODES, help="what to compute (default: point)"
    )
    p.add_argument(
        "--optimizer",
        help=f"one of {', '.join(ANALYTIC + LEARNED)}, or a path to saved meta-parameters",
    )
    p.add_argument("--lr", type=float, help="learning rate (analytic optimizers; must be > 0)")
    p.add_argument(
        "--curvature",
        help="curvature h >= 0, or a comma list (diagonal Hessian); map: the y range LO,HI",
    )
    p.add_argument("--beta", type=float, default=0.9, help="momentum in [0, 1) (default 0.9)")
    p.add_argument("--betas", default="0,0.9,0.99", help="AggMo momenta, comma list")
    p.add_argument(
        "--second-moment",
        type=float,
        default=1.0,
        help="adam: frozen second moment v (step lr / sqrt(v)); adam uses --beta as its b1",
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.0, help="decoupled, per step: phi <- (1-W) phi"
    )
    p.add_argument("--grad-scale", type=float, default=1.0, help="learned optimizers: grad RMS")
    p.add_argument("--dim", type=int, default=8, help="learned: parameters of the quadratic")
    p.add_argument("--warmup", type=int, default=100, help="learned: steps before linearizing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("map / meta-linear")
    g.add_argument("--out", help="output directory (required for map and meta-linear)")
    g.add_argument("--lr-range", default="1e-3,1e2", help="map x range LO,HI (analytic)")
    g.add_argument("--grad-scale-range", default="1e-4,1e2", help="map x range (learned)")
    g.add_argument("--axis", choices=("curvature", "beta"), default="curvature", help="map y axis")
    g.add_argument("--resolution", type=int, default=60, help="map grid points per axis")
    g.add_argument("--outer-steps", type=int, default=200, help="meta-linear: outer steps")
    p.set_defaults(func=run)


def _formatter():
    import argparse

    return argparse.RawDescriptionHelpFormatter


def _usage(msg: str):
    from lopt.cli.main import UsageError

    return UsageError(msg)


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise _usage(f"{what} must be a number or a comma list of numbers, got {text!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise _usage(f"{what} must be finite numbers, got {text!r}")
    return vals


def _range(text: str, what: str, positive: bool = True) -> tuple[float, float]:
    vals = _floats(text, what)
    if len(vals) != 2 or not vals[0] < vals[1] or (positive and vals[0] <= 0):
        raise _usage(f"{what} must be LO,HI with 0 < LO < HI, got {text!r}")
    return vals[0], vals[1]


def _check_common(args) -> None:
    if not 0.0 <= args.beta < 1.0:
        raise _usage(f"--beta must be in [0, 1), got {args.beta}")
    for b in _floats(args.betas, "--betas"):
        if not 0.0 <= b < 1.0:
            raise _usage(f"every --betas value must be in [0, 1), got {b}")
    if not (math.isfinite(args.weight_decay) and 0.0 <= args.weight_decay < 1.0):
        raise _usage(f"--weight-decay must be in [0, 1), got {args.weight_decay}")
    if not (math.isfinite(args.second_moment) and args.second_moment > 0):
        raise _usage(f"--second-moment must be > 0, got {args.second_moment}")
    if not (math.isfinite(args.grad_scale) and args.grad_scale > 0):
        raise _usage(f"--grad-scale must be > 0, got {args.grad_scale}")
    if args.dim < 1 or args.warmup < 0 or args.resolution < 2:
        raise _usage("--dim must be >= 1, --warmup >= 0 and --resolution >= 2")


def _kind(args) -> str:
    """'analytic', 'learned' or 'path' (validated)."""
    name = args.optimizer
    if not name:
        choices = ", ".join(ANALYTIC + LEARNED)
        raise _usage(f"--optimizer is required: one of {choices}, or a path to meta-parameters")
    if name in ANALYTIC:
        return "analytic"
    if name in LEARNED:
        return "learned"
    if Path(name).is_file():
        return "path"
    raise _usage(
        f"unknown optimizer {name!r}: choose one of {', '.join(ANALYTIC + LEARNED)}, "
        "or give the path of an existing meta-parameters file"
    )


def _curvatures(args) -> list[float]:
    if args.curvature is None:
        raise _usage("--curvature is required (h >= 0, or a comma list)")
    hs = _floats(args.curvature, "--curvature")
    if any(h < 0 for h in hs):
        raise _usage(f"--curvature must be >= 0 (a Hessian is positive semi-definite), got {hs}")
    return hs


def _linear_kwargs(args) -> dict:
    return {
        "beta": args.beta,
        "betas": tuple(_floats(args.betas, "--betas")),
        "second_moment": args.second_moment,
        "weight_decay": args.weight_decay,
    }


def _load_learned(args):
    """``(optimizer, theta, weights description)`` for star / blackbox / PATH."""
    try:
        if args.optimizer in LEARNED:
            from lopt.optimizers import pretrained

            theta, opt = pretrained.resolve(args.optimizer)
            shipped = pretrained.shipped_weights(args.optimizer)
            return opt, theta, str(shipped) if shipped else "meta-init"
        import lopt

        theta, opt = lopt.load_meta_params(args.optimizer)
        return opt, theta, str(args.optimizer)
    except ImportError as err:
        raise _usage(f"learned optimizers are not available in this installation: {err}") from err
    except (OSError, ValueError, KeyError) as err:
        raise _usage(f"cannot load meta-parameters from {args.optimizer!r}: {err}") from err


def _note_lr(args) -> str | None:
    if args.lr is None:
        return None
    note = (
        f"--lr {args.lr} does not apply to learned optimizers (they choose their own step); "
        "the gradient scale --grad-scale is what varies"
    )
    print(f"lopt stability: note: {note}", file=sys.stderr)
    return note


def _json_num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def run(args) -> int:
    _check_common(args)
    if args.mode == "meta-linear":
        return _run_meta_linear(args)
    kind = _kind(args)
    if args.mode == "map":
        return _run_map(args, kind)
    return _run_point(args, kind)


def _run_point(args, kind: str) -> int:
    hs = _curvatures(args)
    out = {"optimizer": args.optimizer, "curvature": hs if len(hs) > 1 else hs[0]}
    if kind == "analytic":
        if args.lr is None:
            raise _usage("--lr is required for analytic optimizers (a learning rate > 0)")
        if not (math.isfinite(args.lr) and args.lr > 0):
            raise _usage(f"--lr must be > 0, got {args.lr}")
        from lopt.analysis import linear
        from lopt.analysis.maps import per_direction_radius

        kw = _linear_kwargs(args)
        dyn = linear.build(args.optimizer, hs, args.lr, **kw)
        per = per_direction_radius(dyn)
        eig = dyn.eigenvalues()
        relevant = {"weight_decay"} | {
            "momentum": {"beta"},
            "heavy_ball": {"beta"},
            "nesterov": {"beta"},
            "aggmo": {"betas"},
            "adam": {"beta", "second_moment"},
        }.get(args.optimizer, set())
        out.update(lr=args.lr)
        out.update(
            {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items() if k in relevant}
        )
        out["state_dim"] = dyn.state_dim
        out["eigenvalues"] = [[float(z.real), float(z.imag)] for z in eig]
    else:
        import numpy as np

        from lopt.analysis.linearize import stability_report

        opt, theta, weights = _load_learned(args)
        note = _note_lr(args)
        rep = stability_report(
            opt,
            theta,
            hs,
            [args.grad_scale],
            dim=args.dim,
            warmup_steps=args.warmup,
            seed=args.seed,
        )
        per = rep.spectral_radius[:, 0]
        out.update(
            lr=None,
            grad_scale=args.grad_scale,
            grad_rms=[float(x) for x in rep.grad_rms[:, 0]],
            weights=weights,
            dim=args.dim,
            warmup=args.warmup,
            seed=args.seed,
            state_dim=rep.settings["state_dim"],
            method="jacfwd linearization after warm-up",
        )
        if note:
            out["note"] = note
        per = np.asarray(per)
    rho = float(max(per))
    out["spectral_radius"] = _json_num(rho)
    out["stable"] = bool(rho < 1.0)
    out["margin"] = _json_num(1.0 - rho)
    if len(hs) > 1:
        out["spectral_radius_per_curvature"] = [_json_num(r) for r in per]
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        setting = ", ".join(
            f"{k}={out[k]}"
            for k in ("lr", "grad_scale", "curvature", "beta", "weight_decay")
            if out.get(k) is not None and not (kind != "analytic" and k == "beta")
        )
        print(f"optimizer: {args.optimizer} ({setting})")
        print(f"spectral radius: {rho:.6g}")
        verdict = "yes" if rho < 1.0 else "NO"
        print(f"stable: {verdict} (margin 1 - rho = {1.0 - rho:.4g})")
    return 0


def _write_run_files(out_dir: Path, config: dict, metrics: dict) -> None:
    from lopt.utils.io import atomic_write_json
    from lopt.utils.provenance import environment_info

    atomic_write_json(out_dir / "config.json", {**config, "environment": environment_info()})
    atomic_write_json(out_dir / "metrics.json", metrics)


def _config(args) -> dict:
    cfg = {k: v for k, v in vars(args).items() if k != "func"}
    cfg["command"] = f"stability {args.mode}"
    return cfg


def _map_curvatures(args, n: int):
    """The map's y grid: ``LO,HI`` (log-spaced, ``n`` points) or one curvature (a single row)."""
    import numpy as np

    text = args.curvature or "1e-3,1e2"
    vals = _floats(text, "--curvature")
    if len(vals) == 1:
        if vals[0] < 0:
            raise _usage(f"--curvature must be >= 0, got {vals[0]}")
        return np.asarray(vals)
    lo, hi = _range(text, "--curvature (map range LO,HI)")
    return np.logspace(np.log10(lo), np.log10(hi), n)


def _run_map(args, kind: str) -> int:
    import numpy as np

    from lopt.analysis import maps

    if not args.out:
        raise _usage("map needs --out DIR")
    out_dir = Path(args.out)
    n = args.resolution
    t0 = time.perf_counter()
    if kind == "analytic":
        lo, hi = _range(args.lr_range, "--lr-range")
        lrs = np.logspace(np.log10(lo), np.log10(hi), n)
        kw = _linear_kwargs(args)
        if args.axis == "beta":
            hs = _curvatures(args) if args.curvature else [1.0]
            if len(hs) != 1:
                raise _usage("--axis beta needs a single --curvature")
            betas = np.linspace(0.0, 0.99, n)
            kw.pop("beta")
            smap = maps.stability_map(args.optimizer, lrs, hs[0], betas_axis=betas, **kw)
        else:
            hs = _map_curvatures(args, n)
            smap = maps.stability_map(args.optimizer, lrs, hs, **kw)
    else:
        if args.axis == "beta":
            raise _usage("--axis beta applies to analytic optimizers only")
        opt, theta, weights = _load_learned(args)
        _note_lr(args)
        lo, hi = _range(args.grad_scale_range, "--grad-scale-range")
        smap = maps.learned_map(
            opt,
            theta,
            np.logspace(np.log10(lo), np.log10(hi), n),
            _map_curvatures(args, n),
            dim=args.dim,
            warmup_steps=args.warmup,
            seed=args.seed,
        )
        smap.settings["weights"] = weights
    files = maps.save_map(smap, out_dir)
    rho = smap.spectral_radius
    finite_edges = [b for b in smap.boundary if b is not None]
    metrics = {
        "stable_fraction": float(np.mean(rho < 1.0)),
        "min_spectral_radius": _json_num(np.nanmin(rho)),
        "max_spectral_radius": _json_num(np.nanmax(rho)),
        "rows_with_edge": len(finite_edges),
        "seconds": time.perf_counter() - t0,
        "files": files,
    }
    _write_run_files(out_dir, _config(args), metrics)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        print(f"wrote {files['png']}, {files['json']}, {files['csv']} and config.json")
        print(f"stable fraction of the grid: {metrics['stable_fraction']:.3f}")
    return 0


def _run_meta_linear(args) -> int:
    import dataclasses

    import numpy as np

    from lopt.analysis.nqm_meta import VARIANTS, NQMMetaConfig, meta_train_linear

    if not args.out:
        raise _usage("meta-linear needs --out DIR")
    if args.outer_steps < 1:
        raise _usage(f"--outer-steps must be >= 1, got {args.outer_steps}")
    out_dir = Path(args.out)
    t0 = time.perf_counter()
    configs = {
        name: NQMMetaConfig(**kw, outer_steps=args.outer_steps, seed=args.seed)
        for name, kw in VARIANTS.items()
    }
    results = {name: meta_train_linear(cfg) for name, cfg in configs.items()}
    from lopt.plotting import linear_meta_training
    from lopt.utils.io import atomic_write_json

    atomic_write_json(out_dir / "e1.json", {k: r.to_dict() for k, r in results.items()})
    linear_meta_training(results, out_dir / "e1.png")
    tail = max(1, args.outer_steps // 4)
    metrics = {
        name: {
            "final_spectral_radius": float(r.spectral_radius[-1]),
            "final_min_real_eigenvalue": float(r.min_real[-1]),
            "stiff_margin_last_quarter": float(1.0 + np.mean(r.min_real[-tail:])),
            "flat_margin_last_quarter": float(1.0 - np.mean(r.max_real[-tail:])),
            "meta_loss_first": float(r.meta_loss[0]),
            "meta_loss_last_quarter": float(np.mean(r.meta_loss[-tail:])),
        }
        for name, r in results.items()
    }
    metrics["seconds"] = time.perf_counter() - t0
    config = _config(args)
    config["variants"] = {name: dataclasses.asdict(cfg) for name, cfg in configs.items()}
    _write_run_files(out_dir, config, metrics)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        for name in results:
            m = metrics[name]
            print(
                f"{name:>11}: rho {m['final_spectral_radius']:.4f}, stiff eigenvalue "
                f"{m['final_min_real_eigenvalue']:+.3f} (edge -1), meta-loss "
                f"{m['meta_loss_first']:.3f} -> {m['meta_loss_last_quarter']:.3f}"
            )
        print(f"wrote {out_dir / 'e1.png'}, {out_dir / 'e1.json'}")
    return 0
