"""The outer loop: estimate -> clipped Adam on theta -> metrics, evaluation, checkpoints.

Where an outer step's meta-gradient comes from is pluggable (an :class:`EstimateSource`); the
outer update, evaluation, best-theta selection, checkpoints, metrics and resume are this one
implementation for every source:

* :class:`LocalEstimates` (the default): this process's estimator, fused with the update into
  one jitted call per outer step (the estimator's scan/vmap inside, buffers donated, compiled
  once). Every random number derives from ``config.seed`` and the outer step index, and the
  whole mutable state (theta, outer optimizer state, estimator state, best evaluation) is
  checkpointed, so a resumed run computes exactly what an uninterrupted one would have.
* ``lopt.distributed.RayEstimates``: estimates pooled from Ray worker actors, applied with
  :meth:`MetaTrainer.apply_estimate` (see ``docs/distributed.md``).

Files in the output directory:
    config.json         config, seed, versions, slot layout
    metrics.jsonl       one object per outer step (``outer_step, meta_loss, grad_norm,
                        nonfinite_pairs, dropped_pairs, finished_runs, skipped_update,
                        inner_steps_per_s``; ``eval_loss, eval_final_loss`` when evaluated;
                        ``includes_compile`` on a process's first step, whose time includes
                        compilation; plus the estimate source's own keys, e.g. the Ray
                        workers' staleness and restarts)
    eval.jsonl          the fixed held-out evaluations (outer step 0 included)
    checkpoint.safetensors  latest checkpoint, data only (every ``checkpoint_every`` steps, at the
                        end, and on Ctrl-C -- at outer step 0 when that comes before the first step)
    best.safetensors    theta with the best held-out evaluation so far
    theta.safetensors   final theta
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.metatrain.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lopt.metatrain.config import MetaTrainConfig
from lopt.metatrain.estimators import allocate_slots, make_estimator, mean_gradient
from lopt.metatrain.unroll import tree_where
from lopt.utils.compile import compile_concurrently, optimizer_jit
from lopt.utils.interrupt import graceful_interrupt
from lopt.utils.io import atomic_write_bytes, atomic_write_json

CHECKPOINT = "checkpoint.safetensors"
#: the pickle checkpoints of earlier versions: recognised only to say they are no longer loaded
LEGACY_CHECKPOINT = "checkpoint.pkl"
#: config fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = ("outer_steps", "checkpoint_every", "eval_every")


def build_optimizer(config: MetaTrainConfig):
    """The STAR / Blackbox instance named by the config, with its switches."""
    from lopt.optimizers import STAR, Blackbox

    cls = {"star": STAR, "blackbox": Blackbox}[config.optimizer]
    try:
        return cls(**config.optimizer_kwargs)
    except TypeError as err:
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ValueError(
            f"bad optimizer_kwargs for {config.optimizer}: {err}; valid switches: {fields}"
        ) from None


def outer_optimizer(config: MetaTrainConfig) -> optax.GradientTransformation:
    """Adam on theta, after global-norm clipping, with an optional warmup and cosine decay."""
    if config.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(config.outer_lr, config.decay_steps)
    else:
        schedule = optax.constant_schedule(config.outer_lr)
    if config.warmup_steps:
        warmup = optax.linear_schedule(0.0, config.outer_lr, config.warmup_steps)
        schedule = optax.join_schedules([warmup, schedule], [config.warmup_steps])
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm > 0 else []
    return optax.chain(*parts, optax.adam(schedule))


def _group_names(estimator) -> list[str]:
    """The names of an estimator's task groups, as ``config.json`` records them."""
    return [getattr(g, "name", repr(g)) for g in estimator.groups]


def slot_sharding(est_state):
    """Shardings that split every estimator-state leaf's slot axis over the local devices.

    Returns ``(state_shardings, replicated)`` or ``(None, None)`` on a single device. A group
    whose slot count does not divide evenly is replicated rather than refused.
    """
    devices = jax.local_devices()
    if len(devices) < 2:
        return None, None
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("slots",))
    replicated = NamedSharding(mesh, PartitionSpec())
    split = NamedSharding(mesh, PartitionSpec("slots"))

    def pick(x):
        return split if x.shape and x.shape[0] % len(devices) == 0 else replicated

    return jax.tree.map(pick, est_state), replicated


class EstimateSource(Protocol):
    """Where an outer step's meta-gradient comes from; the trainer does everything else.

    ``step`` returns host-side diagnostics with at least ``meta_loss, grad_norm,
    nonfinite_pairs, dropped_pairs, finished_runs, skipped_update`` and ``inner_steps`` (inner
    optimizee steps behind the applied estimate); an ``extra`` dict, if present, is merged into
    the step's ``metrics.jsonl`` record.
    """

    #: True when a step in flight invalidates the state passed to it (donated buffers)
    donates_state: bool

    def init_state(self, trainer: MetaTrainer, theta, key_est, eval_keys) -> tuple[dict, Any]:
        """Checkpointed state this source owns, besides theta and the outer optimizer state
        (traced: called inside the trainer's one compiled initialization), and the held-out
        evaluation's task draws for ``eval_keys`` (one entry per group, see
        :meth:`GradientEstimator.init_and_draw`) if the source draws tasks anyway, else None
        (the trainer then draws them)."""

    def start(self, trainer: MetaTrainer, state: dict, outer_step: int, saved: dict | None):
        """Get ready to run from ``outer_step`` (``saved``: :meth:`checkpoint_meta` of the
        checkpoint resumed from, else None); return the state, placed where it runs."""

    def step(self, trainer: MetaTrainer, state: dict, outer_step: int) -> tuple[dict, dict]:
        """One outer step: ``(new state, diagnostics)``."""

    def checkpoint_meta(self) -> dict:
        """JSON-serializable facts to store in the checkpoint (given back to ``start``)."""

    def describe(self) -> dict:
        """JSON-serializable description for ``config.json``."""

    def close(self) -> None:
        """Release what ``start`` acquired (called on every exit of ``run``)."""


class LocalEstimates:
    """The single-process source: the trainer's own estimator, fused with the outer update into
    one jitted call per outer step (estimator state donated and sharded over local devices)."""

    donates_state = True

    def init_state(self, trainer, theta, key_est, eval_keys):
        est_state, draws = trainer.estimator.init_and_draw(theta, key_est, eval_keys)
        return {"est_state": est_state}, draws

    def start(self, trainer, state, outer_step, saved):
        return trainer._compile(state)

    def step(self, trainer, state, outer_step):
        theta, opt_state, est_state, diag = trainer._step_fn(
            state["theta"], state["opt_state"], state["est_state"], jnp.int32(outer_step),
            trainer.key_loop,
        )
        state = {"theta": theta, "opt_state": opt_state, "est_state": est_state}
        diag = jax.device_get(diag)
        return state, {**diag, "inner_steps": trainer.estimator.inner_steps_per_step}

    def checkpoint_meta(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"kind": "local", "devices": jax.local_device_count()}

    def close(self) -> None:
        pass


class MetaTrainer:
    """Meta-trains one learned optimizer on one task (family or mixture).

    Args:
        config: the run's :class:`MetaTrainConfig`.
        out_dir: where every output goes.
        optimizer, task, eval_task: objects to use instead of the registry names in ``config``
            (``optimizer``, ``tasks``, ``eval_on``; tests and programmatic use); they must
            honour the LearnedOptimizer and Task contracts. With ``eval_task``,
            ``config.eval_on`` must name it (what ``config.json`` records).
        save_theta: ``save_theta(path, theta, metadata)``; default ``lopt.save_meta_params``.
        scan_unroll: ``lax.scan`` unroll factor of the inner loop (a speed knob).
        source: where meta-gradient estimates come from; default :class:`LocalEstimates`
            (e.g. ``lopt.distributed.RayEstimates`` for Ray workers).
    """

    def __init__(
        self,
        config: MetaTrainConfig,
        out_dir: str | Path,
        *,
        optimizer=None,
        task=None,
        eval_task=None,
        save_theta: Callable | None = None,
        scan_unroll: int = 1,
        source: EstimateSource | None = None,
    ):
        if task is None:
            config.check_names()
        self.config = config
        self.out = Path(out_dir)
        self.optimizer = optimizer if optimizer is not None else build_optimizer(config)
        if task is None:
            from lopt import tasks

            task = tasks.get(config.tasks)
        self.task = task
        self.scan_unroll = scan_unroll
        self.source = source if source is not None else LocalEstimates()
        self.estimator = make_estimator(
            self.optimizer, task, config.estimator_config(), scan_unroll=scan_unroll
        )
        self.tx = outer_optimizer(config)
        # lopt's jit with the inner optimizer's compile options, for every program compiled here
        self._jit = optimizer_jit(
            self.optimizer, differentiated=config.differentiates_optimizer
        )
        self._save_theta = save_theta
        root = jax.random.PRNGKey(config.seed)
        self.key_theta, self.key_est, self.key_eval, self.key_loop = jax.random.split(root, 4)
        if eval_task is not None and not config.eval_on:
            raise ValueError(
                "an eval_task object needs config.eval_on set to its name, so that the run's "
                "config.json says where the held-out tasks came from"
            )
        if eval_task is None and config.eval_on:
            from lopt import tasks

            eval_task = tasks.get(config.eval_on)
        #: where the held-out draws come from: the training groups, or those of ``eval_task``
        #: (an estimator of its own, used for its groups' unrolls only)
        self.eval_estimator = self.estimator if eval_task is None else make_estimator(
            self.optimizer, eval_task, config.estimator_config(), scan_unroll=scan_unroll
        )
        self.eval_slots = allocate_slots(config.eval_tasks, self.eval_estimator.weights)
        self._step_fn = None
        self._eval_fn = None
        self._eval_draws = None  # the held-out tasks (TaskDraw per group), drawn once
        self._apply_fn = None
        #: outer step of the checkpoint now in ``out_dir`` (None: none written or loaded yet)
        self.checkpoint_step: int | None = None

    # -- pieces ----------------------------------------------------------------------------
    def _eval_keys(self, key_eval) -> tuple:
        """Per group, the keys of its held-out tasks (None for a group without any)."""
        return tuple(
            jax.random.split(jax.random.fold_in(key_eval, i), n) if n else None
            for i, n in enumerate(self.eval_slots)
        )

    def _draw_eval_tasks(self, key_eval) -> tuple:
        """The held-out tasks drawn on their own (when the source did not draw them)."""
        return tuple(
            None if keys is None else unroll.draws(keys)
            for unroll, keys in zip(
                self.eval_estimator.unrolls, self._eval_keys(key_eval), strict=True
            )
        )

    def _init(self, key_theta, key_est, key_eval) -> tuple[dict, tuple]:
        """The run's initial state and the held-out evaluation's task draws."""
        theta = self.optimizer.init(key_theta)
        # the slots' own groups draw the held-out tasks with their slots; other tasks apart
        draw_with_slots = self.config.eval_every and self.eval_estimator is self.estimator
        eval_keys = (
            self._eval_keys(key_eval) if draw_with_slots
            else (None,) * len(self.estimator.unrolls)
        )
        source_state, draws = self.source.init_state(self, theta, key_est, eval_keys)
        if self.config.eval_every and (draws is None or not draw_with_slots):
            draws = self._draw_eval_tasks(key_eval)
        state = {"theta": theta, "opt_state": self.tx.init(theta), **source_state}
        return state, draws

    def init_state(self) -> dict:
        # one compiled program: run eagerly, the vmapped task and state initializations compiled
        # dozens of one-op programs (~8 CPU-seconds of start-up for a digits family, vs ~4).
        # With the local source, the outer step and the evaluation compile alongside it, from
        # the state's shapes (see _compile_programs).
        keys = (self.key_theta, self.key_est, self.key_eval)
        if isinstance(self.source, LocalEstimates) and self._step_fn is None:
            state, draws = self._compile_programs()(*keys)
        else:
            state, draws = self._jit(self._init)(*keys)
        if self.config.eval_every:
            self._eval_draws = draws
        return state

    def _update(self, theta, opt_state, grad, valid_pairs):
        """The outer update (every source): clipped Adam, skipped for an unusable estimate."""
        grad_norm = optax.tree.norm(grad)
        updates, new_opt_state = self.tx.update(grad, opt_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        # an estimate with no valid pair (or a non-finite one) must not move theta
        ok = (valid_pairs > 0) & jnp.isfinite(grad_norm)
        theta = tree_where(ok, new_theta, theta)
        opt_state = tree_where(ok, new_opt_state, opt_state)
        return theta, opt_state, grad_norm, ~ok

    def _outer(self, theta, opt_state, est_state, step, key_loop):
        # the run's keys are arguments, not captured constants: runs that differ only in their
        # seed compile to the same program (the persistent compilation cache then serves them)
        key = jax.random.fold_in(key_loop, step)
        grad, est_state, diag = self.estimator.step(theta, est_state, key)
        theta, opt_state, grad_norm, skipped = self._update(
            theta, opt_state, grad, diag["valid_pairs"]
        )
        diag = dict(diag, grad_norm=grad_norm, skipped_update=skipped)
        return theta, opt_state, est_state, diag

    def apply_estimate(self, theta, opt_state, grad_sum, valid_pairs):
        """The outer update from pooled estimator sums (``GradientEstimator.step_sum`` of one
        or more estimators, added): returns ``(theta, opt_state, grad_norm, skipped)``."""
        if self._apply_fn is None:
            self._apply_fn = self._jit(
                lambda theta, opt_state, grad_sum, valid: self._update(
                    theta, opt_state, mean_gradient(grad_sum, valid), valid
                )
            )
        return self._apply_fn(theta, opt_state, grad_sum, jnp.int32(valid_pairs))

    def _step_program(self, est_sh, rep):
        """The jitted outer step: state donated; with ``(est_sh, rep)`` from
        :func:`slot_sharding` (``None`` on one device) the slots are sharded over the devices."""
        if est_sh is None:
            return self._jit(self._outer, donate_argnums=(0, 1, 2))
        return self._jit(
            self._outer,
            donate_argnums=(0, 1, 2),
            in_shardings=(rep, rep, est_sh, rep, rep),
            out_shardings=(rep, rep, est_sh, rep),
        )

    def _compile_programs(self):
        """Compile the initialization, the outer step and the held-out evaluation side by side
        (:func:`lopt.utils.compile.compile_concurrently`: XLA releases the GIL, so on a
        multi-core CPU start-up waits for the largest program, not for the sum); returns the
        compiled initialization.

        Order: the initialization is lowered first (half a second) and its shapes give the
        step's and the evaluation's arguments; it compiles on the otherwise idle core while the
        step, the largest program, is traced; the step then compiles while the evaluation is
        traced. (Measured on the 6-group mixture, 2 cores, interleaved runs: 40.1-42.6 s to the
        first outer step over six runs, against 43.9-44.7 s over three with the initialization
        compiled last.)"""
        init = self._jit(self._init).lower(self.key_theta, self.key_est, self.key_eval)
        shapes, draws = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), init.out_info
        )
        theta, opt_state, est_state = shapes["theta"], shapes["opt_state"], shapes["est_state"]
        est_sh, rep = slot_sharding(est_state)
        if est_sh is not None:  # the step and the evaluation see the placed state
            theta = jax.tree.map(lambda x: x.update(sharding=rep), theta)
            opt_state = jax.tree.map(lambda x: x.update(sharding=rep), opt_state)
        programs = [
            init,
            lambda: self._step_program(est_sh, rep).lower(
                theta, opt_state, est_state, jnp.int32(0), self.key_loop
            ),
        ]
        if self.config.eval_every:
            programs.append(lambda: self._eval_program().lower(theta, draws))
        compiled = compile_concurrently(programs)
        self._step_fn = compiled[1]
        if self.config.eval_every:
            self._eval_fn = compiled[2]
        return compiled[0]

    def _compile(self, state):
        """Compile the outer step (unless :meth:`init_state` already did); returns the state
        placed for it."""
        est_sh, rep = slot_sharding(state["est_state"])
        if self._step_fn is None:
            self._step_fn = self._step_program(est_sh, rep)
        if est_sh is None:
            return state
        return {
            "theta": jax.device_put(state["theta"], rep),
            "opt_state": jax.device_put(state["opt_state"], rep),
            "est_state": jax.device_put(state["est_state"], est_sh),
        }

    def _eval_program(self):
        """The jitted held-out evaluation: (theta, task draws) -> (mean loss along, mean
        final loss)."""

        def ev(theta, draws):
            along, final, total = 0.0, 0.0, 0
            for unroll, drawn in zip(self.eval_estimator.unrolls, draws, strict=True):
                if drawn is None:
                    continue
                a, f = unroll.evaluate(theta, drawn, self.config.eval_horizon)
                along, final, total = along + jnp.sum(a), final + jnp.sum(f), total + a.shape[0]
            return along / total, final / total

        return self._jit(ev)

    def evaluate(self, theta) -> dict:
        """Mean normalized loss of ``theta`` on the fixed held-out draws (same every call)."""
        if self._eval_draws is None:  # no initialization drew them (e.g. eval_every = 0)
            self._eval_draws = self._jit(self._draw_eval_tasks)(self.key_eval)
        if self._eval_fn is None:
            self._eval_fn = self._eval_program()
        along, final = self._eval_fn(theta, self._eval_draws)
        return {"eval_loss": float(along), "eval_final_loss": float(final)}

    def save_theta(self, path: Path, theta, metadata: dict) -> None:
        if self._save_theta is not None:
            self._save_theta(path, theta, metadata)
            return
        from lopt.optimizers.io import save_meta_params

        save_meta_params(path, theta, self.optimizer, extra_metadata=metadata)

    # -- files -----------------------------------------------------------------------------
    def _write_config(self, resumed_at: int | None) -> None:
        from lopt.utils.provenance import environment_info

        path = self.out / "config.json"
        history = []
        if resumed_at is not None:
            if path.exists():
                history = json.loads(path.read_text()).get("resumed_at", [])
            history.append(resumed_at)
        atomic_write_json(
            path,
            {
                "config": self.config.to_dict(),
                "seed": self.config.seed,
                "optimizer": (
                    self.optimizer.config()
                    if callable(getattr(self.optimizer, "config", None))
                    else repr(self.optimizer)
                ),
                "slots_per_group": list(self.estimator.slots),
                "groups": _group_names(self.estimator),
                # the held-out evaluation's groups (the training ones unless eval_on names
                # another task) and how many held-out tasks each draws
                "eval_groups": _group_names(self.eval_estimator),
                "eval_tasks_per_group": list(self.eval_slots),
                "inner_steps_per_outer_step": self.estimator.inner_steps_per_step,
                "inner_steps_counting": "slots x truncation x particles (2 for antithetic)",
                "resumed_at": history,
                "engine": self.source.describe(),
                "initial_theta": {
                    "source": "meta-initialization",
                    "key": "optimizer.init(split(PRNGKey(seed), 4)[0])",
                },
                "environment": environment_info(),
            },
        )

    def _truncate_jsonl(self, name: str, upto: int) -> None:
        path = self.out / name
        if not path.exists():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a hard stop
                continue
            if rec["outer_step"] <= upto:
                keep.append(line)
        atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())

    def _checkpoint(self, state, step: int, best: dict) -> None:
        tree = {**state, "key": self.key_loop}
        meta = {
            "outer_step": step,
            "best": best,
            "config": self.config.to_dict(),
            "engine": self.source.checkpoint_meta(),
        }
        save_checkpoint(self.out / CHECKPOINT, tree, meta)
        self.checkpoint_step = step

    def _load(self, template_state) -> tuple[dict, int, dict, dict | None]:
        template = {**template_state, "key": self.key_loop}
        try:
            tree, meta = load_checkpoint(self.out / CHECKPOINT, template)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err} (if the run was started with a different --workers setting: a "
                "checkpoint of a run with Ray workers holds no estimator state, one of a "
                "single-process run does; resume in the mode the run was started in)"
            ) from None
        saved = meta["config"]
        now = json.loads(json.dumps(self.config.to_dict()))  # as stored: tuples become lists
        changed = sorted(
            k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]
        )
        if changed:
            raise CheckpointError(
                f"cannot resume: the checkpoint in {self.out} was made with different "
                f"{', '.join(changed)}; only {', '.join(RESUMABLE_CHANGES)} may change"
            )
        tree.pop("key")
        self.checkpoint_step = int(meta["outer_step"])
        state = jax.tree.map(jnp.asarray, tree)
        return state, int(meta["outer_step"]), meta["best"], meta.get("engine")

    # -- the loop --------------------------------------------------------------------------
    def run(self, *, resume: bool = False, progress: bool = False, callback=None) -> dict:
        """Meta-train up to ``config.outer_steps``; return a summary dict.

        Ctrl-C (SIGINT) stops at a safe point: the first one sets a flag checked between jitted
        calls (after start-up, after the step-0 evaluation, after every outer step); the run then
        checkpoints where it is (outer step 0 if no step has run) and raises
        ``KeyboardInterrupt``. A second Ctrl-C raises at once and keeps the last checkpoint.
        ``checkpoint_step`` says which outer step the checkpoint in the directory holds.
        ``callback(outer_step, record)`` runs after every step (it may raise
        ``KeyboardInterrupt``, which checkpoints and re-raises, as Ctrl-C does).
        ``resume=True`` without a checkpoint raises :class:`CheckpointError`.
        """
        with graceful_interrupt() as interrupted:
            try:
                return self._run(resume, progress, callback, interrupted)
            finally:
                self.source.close()

    def _run(self, resume, progress, callback, interrupted) -> dict:
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / CHECKPOINT
        if resume and not ckpt.exists():
            legacy = (self.out / LEGACY_CHECKPOINT).exists()
            raise CheckpointError(
                f"nothing to resume in {self.out}: "
                + (f"its {LEGACY_CHECKPOINT} is a pickle checkpoint of an earlier lopt, no "
                   "longer loaded because unpickling can run code" if legacy
                   else f"no {CHECKPOINT}")
                + "; start a new run instead"
            )
        state = self.init_state()
        saved_engine = None
        if resume:
            state, start, best, saved_engine = self._load(state)
            self._truncate_jsonl("metrics.jsonl", start)
            # the step-0 evaluation is redone when resuming at step 0 (see below)
            self._truncate_jsonl("eval.jsonl", start if start > 0 else -1)
            self._write_config(resumed_at=start)
        else:
            if ckpt.exists():
                raise FileExistsError(
                    f"{self.out} already holds a run ({CHECKPOINT}); pass --resume to continue "
                    "it or choose another --out"
                )
            start, best = 0, {"eval_loss": None, "outer_step": None}
            for name in ("metrics.jsonl", "eval.jsonl"):
                (self.out / name).unlink(missing_ok=True)
            self._write_config(resumed_at=None)
        state = self.source.start(self, state, start, saved_engine)

        def do_eval(step: int) -> dict:
            rec = self.evaluate(state["theta"])
            with open(self.out / "eval.jsonl", "a") as fh:
                fh.write(json.dumps({"outer_step": step, **rec}) + "\n")
            if best["eval_loss"] is None or rec["eval_loss"] < best["eval_loss"]:
                best.update(eval_loss=rec["eval_loss"], outer_step=step)
                self.save_theta(
                    self.out / "best.safetensors",
                    state["theta"],
                    {"outer_step": step, "tasks": cfg.tasks, **rec},
                )
            return rec

        consistent = True  # False while a step that donated the state's buffers is in flight
        bar = None
        step = start
        last_record: dict = {}
        try:
            if interrupted.is_set():  # Ctrl-C during start-up
                raise KeyboardInterrupt
            if cfg.eval_every and start == 0:
                do_eval(0)
            if interrupted.is_set():
                raise KeyboardInterrupt
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=cfg.outer_steps, initial=start, desc="meta-train", unit="step")
            with open(self.out / "metrics.jsonl", "a") as metrics:
                while step < cfg.outer_steps:
                    t0 = time.perf_counter()
                    consistent = not self.source.donates_state
                    state, diag = self.source.step(self, state, step)
                    consistent = True
                    dt = time.perf_counter() - t0
                    step += 1
                    record = {
                        "outer_step": step,
                        "meta_loss": float(diag["meta_loss"]),
                        "grad_norm": float(diag["grad_norm"]),
                        "nonfinite_pairs": int(diag["nonfinite_pairs"]),
                        "dropped_pairs": int(diag["dropped_pairs"]),
                        "finished_runs": int(diag["finished_runs"]),
                        "skipped_update": bool(diag["skipped_update"]),
                        "inner_steps_per_s": diag["inner_steps"] / dt,
                        **diag.get("extra", {}),
                    }
                    if step == start + 1:  # this process's first step also compiled
                        record["includes_compile"] = True
                    if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.outer_steps):
                        record.update(do_eval(step))
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    last_record = record
                    if step % cfg.checkpoint_every == 0 or step == cfg.outer_steps:
                        self._checkpoint(state, step, best)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            meta_loss=f"{record['meta_loss']:.4f}",
                            inner_steps_per_s=f"{record['inner_steps_per_s']:.0f}",
                        )
                    if callback is not None:
                        callback(step, record)
                    if interrupted.is_set():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if consistent:
                self._checkpoint(state, step, best)
            else:  # interrupted inside a step: its inputs were donated; keep the last checkpoint
                print(f"interrupted mid-step; the last checkpoint in {self.out} is kept")
            raise
        finally:
            if bar is not None:
                bar.close()

        self.save_theta(
            self.out / "theta.safetensors",
            state["theta"],
            {"outer_step": step, "tasks": cfg.tasks},
        )
        if start == step:  # nothing ran (already complete, or outer_steps = 0): (re)write the
            self._checkpoint(state, step, best)  # checkpoint so the directory always holds one
        return {
            "outer_step": step,
            "theta": state["theta"],
            "best": dict(best),
            "last": last_record,
        }
