"""Mutation check: do the fast tests fail on deliberately wrong code?

Each entry of ``MUTATIONS`` is one small semantic bug in ``src/lopt`` (an exact text
replacement) and the tests that must catch it. For every mutation the source tree is copied to a
temporary folder, the bug is put into the copy (never into the real files), the tests of this
checkout run against the copy (``PYTHONPATH=<copy>/src``), and the outcome is recorded: *caught*
(a test failed), *MISSED* (all passed) or *ERROR* (pytest could not run). An unmutated copy is
checked first: its tests must pass, or every "caught" would mean nothing.

    python scripts/mutation_check.py                 # every mutation, its targeted tests
    python scripts/mutation_check.py --list          # the mutations and their tests
    python scripts/mutation_check.py --only star-aggregate-identity mlp-no-rms
    python scripts/mutation_check.py --full-suite    # the whole fast suite per mutation (slow)
    python scripts/mutation_check.py --full-suite --tests-root OLD  # what older tests miss

Exit status 0 only if every mutation was caught. Meant for developers, not CI: it takes
several minutes (each mutation compiles its tests' JAX programs afresh).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    id: str
    description: str
    file: str  # relative to src/lopt
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement); each text occurs once
    tests: tuple[str, ...]  # pytest targets relative to the repository root


REFERENCE = "tests/optimizers/test_update_vs_reference.py"
ESTIMATORS = "tests/metatrain/test_estimators.py"
TRAINER = "tests/metatrain/test_trainer.py"

MUTATIONS = (
    # 1. the learned step
    Mutation(
        "mlp-no-rms", "features are not divided by their RMS", "optimizers/mlp.py",
        (("coef = w0[:n_ch] / rms[:, None]", "coef = w0[:n_ch] + 0.0 * rms[:, None]"),),
        (REFERENCE,),
    ),
    Mutation(
        "mlp-no-time-features", "the 11 time features are dropped", "optimizers/mlp.py",
        (('bias = mlp["b0"] + global_inputs @ w0[n_ch:]',
          'bias = mlp["b0"] + 0.0 * (global_inputs @ w0[n_ch:])'),),
        (REFERENCE,),
    ),
    Mutation(
        "features-swap-g-p", "the g and p channels are swapped", "optimizers/features.py",
        (("channels = [g, p, *unstack_leading(st.m)", "channels = [p, g, *unstack_leading(st.m)"),),
        (REFERENCE,),
    ),
    Mutation(
        "features-drop-row-factor", "the factored gradient lacks the row factor",
        "optimizers/features.py",
        (("fac_g = g[None] * row_factor * col_factor", "fac_g = g[None] * col_factor"),),
        (REFERENCE,),
    ),
    Mutation(
        "features-rms-eps", "feature normalization epsilon 1e-5 -> 1e-3", "optimizers/features.py",
        (("RMS_EPS = 1e-5", "RMS_EPS = 1e-3"),),
        ("tests/optimizers/test_features.py",),
    ),
    # beyond the issue: more of what only the reference can see
    Mutation(
        "features-momenta-reversed", "the three momentum channels in reverse order",
        "optimizers/features.py",
        (("channels = [g, p, *unstack_leading(st.m), st.v]",
          "channels = [g, p, *unstack_leading(st.m)[::-1], st.v]"),),
        (REFERENCE,),
    ),
    Mutation(
        "time-features-shifted", "time features use t + 1 (updates done after this one)",
        "optimizers/learned.py",
        (("tfeat = time_features(state.step)", "tfeat = time_features(state.step + 1)"),),
        (REFERENCE,),
    ),
    Mutation(
        "decay-offset-scale", "decays move by theta instead of 10 theta", "optimizers/features.py",
        (("jnp.log(base) + 10.0 * theta", "jnp.log(base) + 1.0 * theta"),),
        (REFERENCE,),
    ),
    Mutation(
        "adam-eps", "1/sqrt(v + 1e-6) uses 1e-8", "optimizers/features.py",
        (("ADAM_EPS = 1e-6", "ADAM_EPS = 1e-8"),),
        (REFERENCE,),
    ),
    Mutation(
        "star-controllers-swapped", "the nominal and regularization controllers swap outputs",
        "optimizers/star.py",
        (("        n = next(extra) if self.nominal_controller else None\n"
          "        r = next(extra) if self.regularization_controller else None\n",
          "        r = next(extra) if self.regularization_controller else None\n"
          "        n = next(extra) if self.nominal_controller else None\n"),),
        (REFERENCE,),
    ),
    Mutation(
        "step-size-not-on-scaled-decay", "the learned step size does not scale the scaled decay",
        "optimizers/star.py",
        (("            if k is not None and self.decay_mode == \"scaled\":\n"
          "                w_eff = w_eff * k\n", ""),),
        (REFERENCE,),
    ),
    Mutation(
        "ratio-ignores-epsilon", "the ratio preconditioner ignores precondition_epsilon",
        "optimizers/star.py",
        (("jax.lax.rsqrt(st.v + self.precondition_epsilon)", "jax.lax.rsqrt(st.v + 1e-6)"),),
        (REFERENCE,),
    ),
    Mutation(
        "tensor-features-cos-sign", "tensor_features: cos(g, m_i) has the wrong sign",
        "optimizers/features.py",
        (("jnp.sum(g * m) * jax.lax.rsqrt", "-jnp.sum(g * m) * jax.lax.rsqrt"),),
        (REFERENCE,),
    ),
    Mutation(
        "tensor-features-momenta-not-adam", "tensor_features: log RMS of m_i, not m_i/sqrt(v)",
        "optimizers/features.py",
        (("ADAM_CHANNELS = (6, 7, 8)", "ADAM_CHANNELS = (2, 3, 4)"),),
        (REFERENCE,),
    ),
    # 2. stability of the learned optimizers
    Mutation(
        "star-ascent-no-learned",
        "default STAR ascends (Adam-AggMo direction negated); learned step forced to 0",
        "optimizers/star.py",
        (("return mean_m * rsqrt_v", "return -mean_m * rsqrt_v"),
         ("if self.step_multiplier > 0:", "if False:")),
        ("tests/analysis/test_analysis_learned.py",),
    ),
    # 3. front-ends on the blackbox
    Mutation(
        "frontend-blackbox-is-star", "lopt.blackbox() is STAR at meta-init",
        "optimizers/pretrained.py",
        (('theta, opt = resolve("blackbox", theta)', 'theta, opt = resolve("star", None)'),),
        ("tests/optimizers/test_optax_frontend.py",),
    ),
    Mutation(
        "train-cli-ignores-optimizer", "lopt train runs STAR whichever learned optimizer is named",
        "training/optimizers.py",
        (("theta, opt = resolve_learned(name)", 'theta, opt = resolve_learned("star")'),),
        ("tests/cli/test_train_cli.py",),
    ),
    Mutation(
        "load-ignores-config", "a meta-parameter file's switches are ignored on loading",
        "optimizers/io.py",
        (('optimizer = kinds[kind].from_config(json.loads(meta["config"]))',
          "optimizer = kinds[kind]()"),),
        ("tests/cli/test_train_cli.py",),
    ),
    Mutation(
        "train-cli-path-ignores-theta", "lopt train uses meta-init theta, not the file's",
        "training/optimizers.py",
        (("make_tx=lambda th: optimizer.as_optax(th),",
          "make_tx=lambda th: optimizer.as_optax("
          'optimizer.init(__import__("jax").random.PRNGKey(0))),'),),
        ("tests/cli/test_train_cli.py",),
    ),
    # 4. per-tensor controllers
    Mutation(
        "star-aggregate-identity", "per-tensor controllers act per coordinate",
        "optimizers/star.py",
        (('return jnp.mean(x) if how == "tensor" else x', "return x"),),
        ("tests/optimizers/test_star.py",),
    ),
    # 5. non-finite pairs
    Mutation(
        "estimator-mean-over-all-slots", "dropped pairs count as zeros in the mean",
        "metatrain/estimators.py",
        (('mean_gradient(grad_sum, totals["valid_pairs"])',
          "mean_gradient(grad_sum, self.config.num_slots)"),),
        (ESTIMATORS,),
    ),
    # 6. truncated and non-antithetic ES/PES
    Mutation(
        "es-no-resync", "truncated ES does not restart the pair from the positive member",
        "metatrain/estimators.py",
        (("sync = lambda x: jnp.broadcast_to(x[:, :1], x.shape)", "sync = lambda x: x"),),
        (ESTIMATORS,),
    ),
    Mutation(
        "es-non-antithetic-sign", "the non-antithetic coefficient has the wrong sign",
        "metatrain/estimators.py",
        (("coef = meta_loss[:, 0] / sigma**2", "coef = -meta_loss[:, 0] / sigma**2"),),
        (ESTIMATORS,),
    ),
    Mutation(
        "unroll-same-batches", "every truncation repeats the same batches", "metatrain/unroll.py",
        (("thetas_p, *carry, cfg, run_key, step0 + t", "thetas_p, *carry, cfg, run_key, t"),
         ("step(thetas, *carry, cfg, run_key, step0 + t)",
          "step(thetas, *carry, cfg, run_key, 0 * step0 + t)")),
        (ESTIMATORS,),
    ),
    Mutation(
        "unroll-eval-draws-shifted", "the held-out tasks drawn with the slots are one key off",
        "metatrain/unroll.py",
        (("return state, jax.tree.map(lambda x: x[num_slots:], drawn)",
          "return state, jax.tree.map(lambda x: x[num_slots - 1:-1], drawn)"),),
        ("tests/metatrain/test_unroll.py",),
    ),
    # 7. trainer
    Mutation(
        "trainer-never-skips", "every outer update is applied, non-finite or empty ones too",
        "metatrain/trainer.py",
        (("ok = (valid_pairs > 0) & jnp.isfinite(grad_norm)", "ok = jnp.bool_(True)"),),
        (TRAINER,),
    ),
    Mutation(
        "trainer-best-is-zeros", "best.safetensors holds zeros", "metatrain/trainer.py",
        (('self.out / "best.safetensors",\n                    state["theta"],',
          'self.out / "best.safetensors",\n'
          '                    jax.tree.map(jnp.zeros_like, state["theta"]),'),),
        (TRAINER,),
    ),
    Mutation(
        "trainer-eval-draws-other-keys", "an evaluation-only trainer draws other held-out tasks",
        "metatrain/trainer.py",
        (("None if keys is None else unroll.draws(keys)",
          "None if keys is None else unroll.draws(jax.random.split(keys[0], keys.shape[0]))"),),
        (TRAINER,),
    ),
    Mutation(
        "lstm-batched-qr", "the LSTM's orthogonal initializer batches its QR under vmap again",
        "tasks/lm.py",
        (("nn.OptimizedLSTMCell(self.hidden, recurrent_kernel_init=orthogonal())",
          "nn.OptimizedLSTMCell(self.hidden)"),),
        ("tests/tasks/test_initializers.py",),
    ),
    # 8. MNIST-1D cache
    Mutation(
        "mnist1d-cache-never-read", "the MNIST-1D cache is written but never read",
        "tasks/data/mnist1d.py",
        (("arrays = load_npz(path) if use_cache else None", "arrays = None"),),
        ("tests/tasks/test_data.py",),
    ),
    # 9. frozen-preconditioner Adam with momentum
    Mutation(
        "adam-frozen-heavy-ball-gains", "Adam's EMA gain (1 - beta) becomes heavy-ball gains",
        "analysis/linear.py",
        (("N = np.vstack([-alpha * (1.0 - beta) * P, (1.0 - beta) * eye])",
          "N = np.vstack([-alpha * P, eye])"),),
        ("tests/analysis/test_analysis_linear.py",),
    ),
    # 10. numerics and compile options of the update
    Mutation(
        "rms-all-axes-at-once", "the RMS normalizers reduce every axis in one reduction again",
        "optimizers/features.py",
        (("sums = _sums_of_squares(tuple(channels[i] for i in idx), (ndim - 1,) if ndim else ())",
          "sums = _sums_of_squares(tuple(channels[i] for i in idx), tuple(range(ndim)))"),
         ("        if ndim > 1:\n            sums = unstack_leading(",
          "        if False:\n            sums = unstack_leading(")),
        ("tests/optimizers/test_features.py",),
    ),
    Mutation(
        "rms-derivative-halved", "the hand-written derivative of the RMS sums loses its factor 2",
        "optimizers/features.py",
        (("jnp.sum(2.0 * a * da, axis=axes)", "jnp.sum(1.0 * a * da, axis=axes)"),),
        ("tests/optimizers/test_features.py",),
    ),
    Mutation(
        "library-reductions-kept", "per-tensor controllers keep XLA's library reductions",
        "utils/compile.py",
        (("    return {LIBRARY_FUSION_OPTION: \"\"}\n", "    return {}\n"),),
        ("tests/utils/test_compile.py",),
    ),
    Mutation(
        "layout-params-not-transposed",
        "a tensor computed in another axis order reads its parameters reshaped, not transposed",
        "optimizers/learned.py",
        ((
            "p32, g32 = jnp.transpose(p32, perm), jnp.transpose(g32, perm)",
            "p32, g32 = p32.reshape([p32.shape[i] for i in perm]), jnp.transpose(g32, perm)",
        ),),
        ("tests/optimizers/test_update_vs_reference.py", "tests/optimizers/test_features.py"),
    ),
    Mutation(
        "layout-columns-not-moved",
        "the column statistics of a tensor computed in another axis order keep their own order",
        "optimizers/features.py",
        (("col=move(st.col, 1 + in_col)", "col=st.col"),),
        ("tests/optimizers/test_features.py",),
    ),
    Mutation(
        "distance-no-bias-correction",
        "Prodigy's distance estimate weighs its terms without Adam's bias correction",
        "optimizers/distance.py",
        (("jnp.sqrt(1 - BETA2**t) / (1 - BETA1**t)", "jnp.sqrt(1 - BETA2**t)"),),
        ("tests/optimizers/test_distance.py", REFERENCE),
    ),
    Mutation(
        "distance-feature-wrong-unit",
        "the distance input is measured in 1e-3 instead of the nominal step alpha",
        "optimizers/learned.py",
        (("distance_feature(state.distance.d, self.distance_unit)",
          "distance_feature(state.distance.d, 1e-3)"),),
        (REFERENCE,),
    ),
)


def copy_tree(dest: Path) -> Path:
    """A copy of ``src/`` under ``dest``; returns the copy's ``src``."""
    src = dest / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return src


def apply(mutation: Mutation, src: Path) -> None:
    path = src / "lopt" / mutation.file
    text = path.read_text()
    for old, new in mutation.edits:
        count = text.count(old)
        if count != 1:
            raise SystemExit(
                f"{mutation.id}: the text to mutate occurs {count} times in {mutation.file} "
                "(the source changed: update the mutation)"
            )
        text = text.replace(old, new)
    path.write_text(text)


def run_tests(src: Path, targets, timeout: float, tests_root: Path = ROOT, workers: int = 0):
    """``(returncode, seconds, summary line)`` of pytest on ``targets`` with lopt from ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    parallel = ["-n", str(workers)] if workers else ["-p", "no:xdist", "-x"]
    cmd = [sys.executable, "-m", "pytest", *parallel, "-p", "no:cacheprovider", "-q",
           "--no-header", *targets]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tests_root, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, time.perf_counter() - t0, "timeout"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    summary = (failed or lines or [proc.stderr[-200:]])[-1 if not failed else 0]
    return proc.returncode, time.perf_counter() - t0, summary


def check_import_path(src: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", "import lopt; print(lopt.__file__)"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"`import lopt` resolves to {out}, not to the copy {src}: an installed "
                         "lopt shadows PYTHONPATH, so the check would test the wrong code")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--only", nargs="+", metavar="ID", help="run these mutations only")
    ap.add_argument("--full-suite", action="store_true",
                    help="run the whole fast suite for each mutation instead of its tests")
    ap.add_argument("--tests", nargs="+", metavar="TARGET",
                    help="run these pytest targets for every mutation instead of its own")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    ap.add_argument("--workers", type=int, default=0,
                    help="pytest-xdist workers per run (default: one process, stop at the first "
                         "failure)")
    ap.add_argument("--tests-root", type=Path, default=ROOT,
                    help="take the tests from this checkout instead (e.g. an older revision "
                         "exported with `git archive`, to see which mutations its tests miss)")
    args = ap.parse_args(argv)
    chosen = list(MUTATIONS)
    if args.only:
        unknown = set(args.only) - {m.id for m in MUTATIONS}
        if unknown:
            ap.error(f"unknown mutation(s) {sorted(unknown)}; see --list")
        chosen = [m for m in MUTATIONS if m.id in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.id:32s} {m.file:26s} {m.description}\n{'':32s} tests: {' '.join(m.tests)}")
        return 0
    targets_of = lambda m: ["tests"] if args.full_suite else list(args.tests or m.tests)

    with tempfile.TemporaryDirectory(prefix="lopt-mutation-") as tmp:
        base = copy_tree(Path(tmp) / "baseline")
        check_import_path(base)
        baseline_targets = sorted({t for m in chosen for t in targets_of(m)})
        run = lambda src, targets, timeout=args.timeout: run_tests(
            src, targets, timeout, args.tests_root, args.workers
        )
        # the baseline runs every targeted file at once: give it more time than one mutation
        rc, secs, summary = run(base, baseline_targets, 4 * args.timeout)
        print(f"baseline (unmutated copy): rc={rc} in {secs:.0f}s: {summary}", flush=True)
        if rc != 0:
            why = "timed out" if rc == -1 else "fail"
            print(f"the tests {why} without any mutation: fix that first", file=sys.stderr)
            return 2
        rows = []
        for m in chosen:
            src = copy_tree(Path(tmp) / m.id)
            apply(m, src)
            rc, secs, summary = run(src, targets_of(m))
            result = {0: "MISSED", 1: "caught"}.get(rc, "ERROR")
            rows.append((m, result, secs, summary))
            print(f"{m.id:32s} {result:7s} {secs:5.0f}s  {summary}", flush=True)
            shutil.rmtree(src.parent)

    print("\n| mutation | file | what is wrong | result | seconds |")
    print("|---|---|---|---|---|")
    for m, result, secs, _ in rows:
        print(f"| `{m.id}` | `{m.file}` | {m.description} | {result} | {secs:.0f} |")
    missed = [m.id for m, result, _, _ in rows if result != "caught"]
    print(f"\n{len(rows) - len(missed)}/{len(rows)} mutations caught"
          + (f"; not caught: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
