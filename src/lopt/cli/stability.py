"""``lopt stability``: is an optimizer stable on a quadratic, and where is its edge?

Three modes share one flag set (the mode is an optional first word, ``point`` by default):
``point`` prints the spectral radius at one setting, ``map`` writes it over a grid, and
``meta-linear`` runs experiment E1 (linear optimizers meta-learned on the noisy quadratic
model). :data:`DESCRIPTION` is the user-facing text (``lopt stability --help``).

``map`` and ``meta-linear`` follow the run-directory contract of :mod:`lopt.utils.rundir`,
write ``config.json`` first (settings, the weights used) and its ``result`` last, show progress,
and stop cleanly on Ctrl-C (a flag checked between rows / outer steps), writing what was done.
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

DESCRIPTION = """\
Is an optimizer stable on a quadratic, and where is its edge of stability?

modes (an optional first word; point by default):
  point        spectral radius of the optimizer's linear dynamics on the quadratic with
               curvature --curvature (a comma list is a diagonal Hessian; the radius is the
               maximum over directions) and whether it is below 1, i.e. stable. Example:
                 lopt stability --optimizer momentum --lr 0.1 --curvature 10 --beta 0.9
  map          the radius over learning rate x curvature (or x momentum with --axis beta),
               written to --out DIR as map.png, map.json, map.csv, config.json, metrics.json.
  meta-linear  experiment E1 of the STAR paper: linear optimizers meta-learned with exact
               gradients on the noisy quadratic model (NQM: a fixed quadratic whose minimum
               is redrawn with noise at every step), with and without a nominal term and
               weight decay. Writes e1.png, e1.json, config.json, metrics.json to --out DIR.

Learned optimizers (star, blackbox, or the path of saved meta-parameters) are analysed by
linearizing one step (jax.jacfwd) after --warmup real steps. They choose their own step
size, so --lr does not apply to them; the gradient scale --grad-scale varies instead (a
map's x axis). star and blackbox use the weights the package ships, or their
meta-initialization when it ships none (see lopt info).

--out must be a new or empty directory (--overwrite replaces an earlier run). Ctrl-C stops
map and meta-linear after the current row or outer step and writes what was computed.
"""


def add_parser(sub) -> None:
    from lopt.cli.main import RawHelpFormatter
    from lopt.utils.rundir import add_run_dir_flags

    p = sub.add_parser(
        "stability",
        help="spectral radius of an optimizer on a quadratic; stability maps; experiment E1",
        description=DESCRIPTION,
        formatter_class=RawHelpFormatter,
    )
    p.add_argument("mode", nargs="?", default="point", choices=MODES, help="what to compute")
    p.add_argument(
        "--optimizer",
        help=f"one of {', '.join(ANALYTIC + LEARNED)}, or a path to saved meta-parameters",
    )
    p.add_argument("--lr", type=float, help="learning rate (analytic optimizers; must be > 0)")
    p.add_argument(
        "--curvature",
        help="curvature h >= 0, or a comma list (diagonal Hessian); map: the y range LO,HI "
        "(default there: 1e-3,1e2)",
    )
    p.add_argument("--beta", type=float, default=0.9, help="momentum in [0, 1)")
    p.add_argument("--betas", default="0,0.9,0.99", help="aggmo: its momenta, a comma list")
    p.add_argument(
        "--second-moment",
        type=float,
        default=1.0,
        help="adam: frozen second moment v (step lr / sqrt(v)); adam uses --beta as its b1",
    )
    p.add_argument(
        "--weight-decay", type=float, default=0.0, help="decoupled, per step: phi <- (1-W) phi"
    )
    p.add_argument("--grad-scale", type=float, default=1.0,
                   help="learned optimizers: RMS of the gradient at the linearization point")
    p.add_argument("--dim", type=int, default=8,
                   help="learned optimizers: number of parameters of the quadratic")
    p.add_argument("--warmup", type=int, default=100,
                   help="learned optimizers: real steps before linearizing")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the learned optimizers' quadratic and of meta-linear")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("map / meta-linear")
    g.add_argument("--out", help="output directory (required for map and meta-linear)")
    g.add_argument("--lr-range", default="1e-3,1e2", help="map x range LO,HI (analytic)")
    g.add_argument("--grad-scale-range", default="1e-4,1e2", help="map x range LO,HI (learned)")
    g.add_argument("--axis", choices=("curvature", "beta"), default="curvature",
                   help="map y axis")
    g.add_argument("--resolution", type=int, default=60, help="map grid points per axis")
    g.add_argument("--outer-steps", type=int, default=200, help="meta-linear: outer steps")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_dir_flags(g)
    p.set_defaults(func=run)


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
    from lopt.training.optimizers import looks_like_path

    if Path(name).is_dir():
        raise _usage(f"--optimizer {name} is a directory, not a file of saved meta-parameters")
    if looks_like_path(name):
        raise _usage(f"file not found: {name} (--optimizer as a path to saved meta-parameters)")
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
    """``(optimizer, theta, weights record)`` for star / blackbox / PATH; the record is what
    ``config.json`` keeps: ``{"path", "sha256"}`` or ``{"source": "meta-initialization"}``."""
    from lopt.training.optimizers import weights_record

    try:
        if args.optimizer in LEARNED:
            from lopt.optimizers import pretrained

            theta, opt = pretrained.resolve(args.optimizer)
            return opt, theta, weights_record(pretrained.shipped_weights(args.optimizer))
        import lopt

        theta, opt = lopt.load_meta_params(args.optimizer)
        return opt, theta, weights_record(args.optimizer)
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
    if args.mode == "point" and (args.out or args.overwrite):
        raise _usage("--out and --overwrite apply to map and meta-linear; point prints only")
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


def _check_out(args) -> None:
    from lopt.utils.rundir import check_run_dir

    check_run_dir(args.out, command=f"stability {args.mode}", overwrite=args.overwrite)


def _start_run(args, **extra) -> tuple[Path, dict]:
    """Prepare --out (after every argument was checked) and write config.json without a
    result; returns the directory and the config to finish with :func:`_finish_run`."""
    from lopt.utils.io import atomic_write_json
    from lopt.utils.provenance import environment_info
    from lopt.utils.rundir import prepare_run_dir

    out_dir = prepare_run_dir(args.out, command=f"stability {args.mode}",
                              overwrite=args.overwrite)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config.update(command=f"stability {args.mode}", **extra, environment=environment_info())
    atomic_write_json(out_dir / "config.json", config)
    return out_dir, config


def _finish_run(out_dir: Path, config: dict, metrics: dict, result: dict) -> None:
    from lopt.utils.io import atomic_write_json

    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_json(out_dir / "config.json", {**config, "result": result})


def _progress(args, total: int, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=args.no_progress, file=sys.stderr, unit=unit,
                mininterval=0.5)


def _interruptible(what: str):
    from lopt.utils.interrupt import graceful_interrupt

    return graceful_interrupt(f"lopt stability: stopping after the current {what} "
                              "(Ctrl-C again to abort)")


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
    n = args.resolution
    extra: dict = {}
    # every argument is checked (and learned weights loaded) before --out is touched
    if kind == "analytic":
        lrs = np.logspace(*np.log10(_range(args.lr_range, "--lr-range")), n)
        kw = _linear_kwargs(args)
        if args.axis == "beta":
            hs = _curvatures(args) if args.curvature else [1.0]
            if len(hs) != 1:
                raise _usage("--axis beta needs a single --curvature")
            betas = np.linspace(0.0, 0.99, n)
            kw.pop("beta")
            rows = n
        else:
            hs = _map_curvatures(args, n)
            rows = len(hs)
    else:
        if args.axis == "beta":
            raise _usage("--axis beta applies to analytic optimizers only")
        scales = np.logspace(*np.log10(_range(args.grad_scale_range, "--grad-scale-range")), n)
        hs = _map_curvatures(args, n)
        _check_out(args)  # before loading weights (starts JAX)
        opt, theta, weights = _load_learned(args)
        rows = len(hs)
        extra["weights"] = weights
    out_dir, config = _start_run(args, **extra)
    t0 = time.perf_counter()
    with _interruptible("row of the map") as stop:
        if kind == "analytic":
            with _progress(args, rows, "row") as bar:
                on_row = lambda: bar.update(1)  # noqa: E731
                if args.axis == "beta":
                    smap = maps.stability_map(args.optimizer, lrs, hs[0], betas_axis=betas,
                                              should_stop=stop.is_set, on_row=on_row, **kw)
                else:
                    smap = maps.stability_map(args.optimizer, lrs, hs, should_stop=stop.is_set,
                                              on_row=on_row, **kw)
        else:
            _note_lr(args)
            print(f"lopt stability: compiling the linearized step of {args.optimizer} ...",
                  file=sys.stderr, flush=True)
            with _progress(args, rows * n, "point") as bar:
                smap = maps.learned_map(
                    opt, theta, scales, hs, dim=args.dim, warmup_steps=args.warmup,
                    seed=args.seed, should_stop=stop.is_set, on_point=lambda: bar.update(1),
                )
            smap.settings["weights"] = weights
    done = len(smap.y_values)
    status = "ok" if done == rows else "interrupted"
    rho = smap.spectral_radius
    files = maps.save_map(smap, out_dir) if done else {}
    metrics = {
        "status": status,
        "rows_done": done,
        "rows": rows,
        "stable_fraction": float(np.mean(rho < 1.0)) if done else None,
        "min_spectral_radius": _json_num(np.nanmin(rho)) if done else None,
        "max_spectral_radius": _json_num(np.nanmax(rho)) if done else None,
        "rows_with_edge": sum(b is not None for b in smap.boundary),
        "seconds": time.perf_counter() - t0,
        "files": files,
    }
    _finish_run(out_dir, config, metrics, {"status": status, "rows_done": done, "rows": rows})
    if status == "interrupted":
        saved = (f"map.png, map.json and map.csv hold the {done} finished rows" if done
                 else "no row was finished, so there is no map")
        print(f"lopt stability: interrupted after {done} of {rows} rows; {saved}; config.json "
              f"(result: interrupted) and metrics.json are in {out_dir}", file=sys.stderr)
        return 130
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
    configs = {
        name: NQMMetaConfig(**kw, outer_steps=args.outer_steps, seed=args.seed)
        for name, kw in VARIANTS.items()
    }
    out_dir, config = _start_run(
        args, variants={name: dataclasses.asdict(cfg) for name, cfg in configs.items()}
    )
    t0 = time.perf_counter()
    results = {}
    with _interruptible("outer step") as stop:
        print("lopt stability: compiling the meta-training step of E1 ...", file=sys.stderr,
              flush=True)
        with _progress(args, len(configs) * args.outer_steps, "step") as bar:
            for name, cfg in configs.items():
                if stop.is_set():
                    break
                r = meta_train_linear(cfg, should_stop=stop.is_set,
                                      on_step=lambda: bar.update(1))
                if len(r.meta_loss):
                    results[name] = r
    steps = {name: len(r.meta_loss) for name, r in results.items()}
    status = ("ok" if len(results) == len(configs) and all(
        v == args.outer_steps for v in steps.values()) else "interrupted")
    from lopt.plotting import linear_meta_training
    from lopt.utils.io import atomic_write_json

    if results:
        atomic_write_json(out_dir / "e1.json", {k: r.to_dict() for k, r in results.items()})
        linear_meta_training(results, out_dir / "e1.png")
    metrics = {}
    for name, r in results.items():
        tail = max(1, len(r.meta_loss) // 4)
        metrics[name] = {
            "outer_steps_done": len(r.meta_loss),
            "final_spectral_radius": float(r.spectral_radius[-1]),
            "final_min_real_eigenvalue": float(r.min_real[-1]),
            "stiff_margin_last_quarter": float(1.0 + np.mean(r.min_real[-tail:])),
            "flat_margin_last_quarter": float(1.0 - np.mean(r.max_real[-tail:])),
            "meta_loss_first": float(r.meta_loss[0]),
            "meta_loss_last_quarter": float(np.mean(r.meta_loss[-tail:])),
        }
    metrics["seconds"] = time.perf_counter() - t0
    metrics["status"] = status
    _finish_run(out_dir, config, metrics, {"status": status, "outer_steps_done": steps})
    if status == "interrupted":
        done = ", ".join(f"{k} {v}" for k, v in steps.items()) or "none"
        saved = "e1.png and e1.json hold them" if results else "there is no e1.png/e1.json"
        print(f"lopt stability: interrupted; outer steps done per variant: {done} of "
              f"{args.outer_steps}; {saved}; config.json (result: interrupted) and metrics.json "
              f"are in {out_dir}", file=sys.stderr)
        return 130
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
