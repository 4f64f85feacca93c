"""A plain, unfused NumPy reference of the Adafactor-MLP learned optimizers (Blackbox, STAR).

Test code only: the ground truth the fused JAX update in ``lopt.optimizers`` is compared with.
It is written straight from ``method.md`` section 3 plus the deviations this codebase documents
(README and the docstrings of ``lopt.optimizers``), and shares no code with ``lopt``: it reads a
theta pytree (nested dicts of arrays) and an optimizer's ``config()`` dict, nothing else.
Slow and obvious on purpose: float64 throughout, the ``[num_params, 39]`` input matrix is built
explicitly, the MLP is three matrix products.

What it implements, per parameter tensor (scalars are treated as shape-(1,) tensors):

* decays ``beta = 1 - sigmoid(logit(1 - beta0) + 10 theta_beta)``, clipped to
  ``[1e-4, 1 - 1e-6]`` (the codebase's bounded replacement of ``1 - (1 - beta0) exp(10 theta)``)
  and rounded to float32, the precision at which the product stores a decay;
* accumulators updated with the current gradient before the features, no bias correction:
  3 momenta, 1 second moment ``v``, 3 factored second moments (EMAs of the mean of
  ``g^2 + 1e-30`` over the largest dimension -- "row" -- and over the second largest --
  "column" -- for tensors with 2+ dims, a full EMA of ``g^2 + 1e-30`` otherwise; the largest
  of equal sizes is the later dimension);
* 28 features, in this order: g, p, m1..m3, v, m_i/sqrt(v+1e-6) (3), 1/sqrt(v+1e-6),
  3 factored-normalized gradients, 3 row stats, 3 column stats, 3 row 1/sqrt(.+1e-30),
  3 column 1/sqrt(.+1e-30), 3 factored-normalized momenta. "Factored-normalized" x is
  ``x / sqrt(row / (mean_over_d0(row) + 1e-30)) / sqrt(col + 1e-30)`` (Adafactor's
  reconstruction ``v ~ row * col / mean(row)``); for unfactored tensors row = col = the full
  EMA ``f`` and the normalization is ``x / sqrt(f + 1e-30)``. Each channel is divided by
  ``sqrt(mean over the tensor of channel^2 + 1e-5)``;
* 11 time features ``tanh(t / tau - 1)``, t = updates done before this one;
* with ``distance_feature`` on, one more input after the time features, the same for every
  coordinate of every tensor: ``log(d / unit) / 5``, ``unit`` = STAR's ``alpha`` (1e-3 for the
  blackbox or ``alpha = 0``), ``d`` Prodigy's distance estimate *before* this step, written as
  in Prodigy (Mishchenko & Defazio 2023) and optax.contrib.prodigy, with their ``1 / d0``
  scaling: ``d0 = 1e-6``; per step ``t = 1, 2, ...``,
  ``lr_t = d sqrt(1 - 0.999^t) / (1 - 0.9^t)``, ``num <- sqrt(0.999) num + (d / d0) lr_t
  <g, x0 - x>``, ``s <- sqrt(0.999) s + (d / d0) lr_t g`` (all tensors, ``x`` where the
  gradient was taken, ``x0`` the initial parameters), ``d <- max(d, num / sum |s|)``;
* with ``tensor_features`` on, 6 tensor-level inputs after those, the same for every
  coordinate of the tensor: ``log sqrt(mean over the tensor of (m_i / sqrt(v + 1e-6))^2 + 1e-5)``
  for the three momenta (the log of the Adam-ratio features' normalizer), then the cosines
  ``<g, m_i> / (|g| |m_i|)`` over the whole tensor (0 when either is zero);
* MLP ``39 (+1 with distance_feature, +6 with tensor_features) -> hidden... -> outputs``, ReLU
  on hidden layers, linear output layer;
* outputs ``[d, m]`` then ``n`` (if the nominal controller is on), ``r`` (if the
  regularization controller is on) and ``c`` (if the step size controller is on);
* Blackbox: ``phi <- phi - lambda_s d exp(lambda_0 m)``;
* STAR: ``phi <- (1 - w_eff) phi - k (s_bb + s_nom)`` with
  ``s_bb = lambda_s d exp(lambda_0 m)``, preconditioned (if on) by ``/ sqrt(v + 1e-6)``
  (``divide``) or ``* sqrt(v / (v + precondition_epsilon))`` (``ratio``),
  ``s_nom = alpha exp(lambda_1 n) g_hat``,
  ``w_eff = (alpha k w if decay_mode == "scaled" else w) exp(lambda_2 r)``,
  ``k = exp(R tanh(lambda_c c / R))`` (the learned step size; 1 when its switch is off);
  ``n`` / ``r`` / ``c`` are per coordinate or the mean over the tensor.

Every config key the reference accepts is listed in ``CONFIG_KEYS``; an unknown key raises, so a
new switch added to the product cannot silently go untested.
"""

from __future__ import annotations

import numpy as np

TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
ADAM_EPS = 1e-6
FACTORED_EPS = 1e-30
RMS_EPS = 1e-5
DECAY_LIMITS = (1e-4, 1.0 - 1e-6)
NUM_FEATURES = 28 + len(TIME_SCALES)
NUM_TENSOR_INPUTS = 6  # with ``tensor_features``: 3 log-RMS of the Adam ratios, 3 cosines
PRODIGY_D0 = 1e-6
PRODIGY_BETAS = (0.9, 0.999)

_COMMON_KEYS = {
    "hidden_sizes",
    "accumulators",
    "step_multiplier",
    "magnitude_multiplier",
    "output_init_scale",  # only scales the initial output layer: no effect on the update
    "tensor_features",
    "distance_feature",
}
CONFIG_KEYS = {
    "blackbox": _COMMON_KEYS,
    "star": _COMMON_KEYS
    | {
        "nominal",
        "alpha",
        "precondition",
        "precondition_mode",
        "precondition_epsilon",
        "weight_decay",
        "decay_mode",
        "nominal_controller",
        "nominal_controller_multiplier",
        "nominal_controller_aggregation",
        "regularization_controller",
        "regularization_controller_multiplier",
        "regularization_controller_aggregation",
        "step_size_controller",
        "step_size_multiplier",
        "step_size_range",
        "step_size_aggregation",
        "step_scale",
    },
}
ACCUMULATOR_KEYS = {"momentum_decays", "rms_decay", "factored_decays"}


def _np(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def bounded_decay(base, offset) -> np.ndarray:
    base, offset = _np(base), _np(offset)
    logit = np.log(1.0 - base) - np.log(base)
    one_minus = 1.0 / (1.0 + np.exp(-(logit + 10.0 * offset)))
    # The product stores a decay as a float32 number (JAX and torch alike). Near 1 that rounding
    # moves ``1 - beta`` by up to ~3e-5 relative (float32 spacing 6e-8 against 1 - beta = 1e-3),
    # which a trained optimizer with large steps amplifies along a trajectory beyond any
    # float32-level tolerance. The reference models that representation (beta rounded to the
    # nearest float32) instead of widening tolerances; everything else stays float64.
    return np.clip(1.0 - one_minus, *DECAY_LIMITS).astype(np.float32).astype(np.float64)


def factored_axes(shape) -> tuple[int, int] | None:
    """``(second largest, largest)`` dimension; of equal sizes the later one counts as larger."""
    if len(shape) < 2:
        return None
    by_size = sorted(range(len(shape)), key=lambda i: (shape[i], i))
    return by_size[-2], by_size[-1]


class ReferenceOptimizer:
    """``kind`` is ``"blackbox"`` or ``"star"``; ``config`` is the optimizer's ``config()``."""

    def __init__(self, kind: str, config: dict):
        if kind not in CONFIG_KEYS:
            raise ValueError(f"unknown optimizer kind {kind!r}")
        unknown = set(config) - CONFIG_KEYS[kind]
        if unknown:
            raise KeyError(f"the reference does not implement {sorted(unknown)} of {kind}")
        missing = CONFIG_KEYS[kind] - set(config)
        if missing:
            raise KeyError(f"config lacks {sorted(missing)}")
        acc = dict(config["accumulators"])
        if set(acc) != ACCUMULATOR_KEYS:
            raise KeyError(f"unexpected accumulator settings {sorted(acc)}")
        self.kind = kind
        self.c = dict(config)
        self.base_decays = {
            "momentum": _np(acc["momentum_decays"]),
            "rms": _np(acc["rms_decay"]),
            "factored": _np(acc["factored_decays"]),
        }

    # -- outputs of the MLP -------------------------------------------------------------
    def output_names(self) -> list[str]:
        names = ["d", "m"]
        if self.kind == "star" and self.c["nominal_controller"]:
            names.append("n")
        if self.kind == "star" and self.c["regularization_controller"]:
            names.append("r")
        if self.kind == "star" and self.c["step_size_controller"]:
            names.append("c")
        return names

    def num_inputs(self) -> int:
        return (NUM_FEATURES + int(self.c["distance_feature"])
                + (NUM_TENSOR_INPUTS if self.c["tensor_features"] else 0))

    def distance_unit(self) -> float:
        alpha = self.c["alpha"] if self.kind == "star" else 0.0
        return alpha if alpha > 0 else 1e-3

    # -- state --------------------------------------------------------------------------
    def init_state(self, params: list) -> dict:
        leaves = []
        for p in params:
            shape = np.shape(p) or (1,)
            axes = factored_axes(shape)
            if axes is None:
                fac = {"full": np.zeros((3, *shape))}
            else:
                d0, d1 = axes
                fac = {
                    "row": np.zeros((3, *[1 if i == d1 else n for i, n in enumerate(shape)])),
                    "col": np.zeros((3, *[1 if i == d0 else n for i, n in enumerate(shape)])),
                }
            leaves.append({"m": np.zeros((3, *shape)), "v": np.zeros(shape), **fac})
        state = {"t": 0, "leaves": leaves}
        if self.c["distance_feature"]:
            state["distance"] = {
                "d": PRODIGY_D0, "num": 0.0,
                "s": [np.zeros(np.shape(p)) for p in params], "x0": [_np(p) for p in params],
            }
        return state

    @staticmethod
    def distance_step(dist: dict, t: int, grads: list, params: list) -> dict:
        """Prodigy's estimate after step ``t`` (1-based) with ``grads`` taken at ``params``."""
        b1, b2 = PRODIGY_BETAS
        b3 = np.sqrt(b2)
        d = dist["d"]
        lr = d * np.sqrt(1 - b2**t) / (1 - b1**t)
        scale = d / PRODIGY_D0 * lr
        gs = [_np(g) for g in grads]
        moved = sum(
            np.sum(g * (x0 - _np(p))) for g, x0, p in zip(gs, dist["x0"], params, strict=True)
        )
        num = b3 * dist["num"] + scale * moved
        s = [b3 * s_i + scale * g for s_i, g in zip(dist["s"], gs, strict=True)]
        den = sum(np.sum(np.abs(s_i)) for s_i in s)
        d_new = max(d, num / den) if den > 0 else d
        return {"d": d_new, "num": num, "s": s, "x0": dist["x0"]}

    def decays(self, theta) -> dict:
        off = theta["decays"]
        return {k: bounded_decay(self.base_decays[k], off[k]) for k in self.base_decays}

    # -- one step -----------------------------------------------------------------------
    def step(self, theta, state: dict, grads: list, params: list):
        """Returns ``(new_params, new_state, info)``; ``info[i]`` holds, for tensor ``i`` (as a
        shape-(1,) tensor if it is a scalar), the parameter ``p`` and gradient ``g`` of this step,
        the updated accumulators ``acc``, the raw ``[N, 28]`` feature matrix, the ``[N, 39]``
        (one more column with ``distance_feature``, six with ``tensor_features``) MLP inputs,
        the ``[N, outputs]`` MLP outputs, the summands ``terms`` of the parameter change and the
        change ``delta`` itself."""
        b = self.decays(theta)
        time_feats = np.tanh(state["t"] / np.array(TIME_SCALES) - 1.0)
        new_params, new_leaves, info = [], [], []
        for p_in, g_in, st in zip(params, grads, state["leaves"], strict=True):
            shape = np.shape(p_in)
            p = _np(p_in).reshape(np.shape(p_in) or (1,))
            g = _np(g_in).reshape(p.shape)
            st = self.update_accumulators(st, g, b)
            raw = self.features(p, g, st)  # [N, 28]
            normalized = raw / np.sqrt(np.mean(raw**2, axis=0) + RMS_EPS)
            same_everywhere = time_feats
            if self.c["distance_feature"]:
                d_input = np.log(state["distance"]["d"] / self.distance_unit()) / 5.0
                same_everywhere = np.concatenate([same_everywhere, [d_input]])
            if self.c["tensor_features"]:
                same_everywhere = np.concatenate([same_everywhere, self.tensor_inputs(g, st)])
            inputs = np.concatenate(
                [normalized, np.tile(same_everywhere, (raw.shape[0], 1))], 1
            )
            out = self.mlp(theta["mlp"], inputs)  # [N, outputs]
            if out.shape[1] != len(self.output_names()):
                raise ValueError(f"theta has {out.shape[1]} outputs, the switches say "
                                 f"{self.output_names()}")
            outs = {name: out[:, i].reshape(p.shape) for i, name in enumerate(self.output_names())}
            terms = self.terms(outs, p, g, st)
            delta = sum(terms.values())
            new_params.append((p + delta).reshape(shape))
            new_leaves.append(st)
            info.append(
                {"p": p, "g": g, "acc": st, "features": raw, "inputs": inputs, "outputs": out,
                 "terms": terms, "delta": delta}
            )
        new_state = {"t": state["t"] + 1, "leaves": new_leaves}
        if self.c["distance_feature"]:
            new_state["distance"] = self.distance_step(
                state["distance"], state["t"] + 1, grads, params
            )
        return new_params, new_state, info

    def update_accumulators(self, st: dict, g: np.ndarray, b: dict) -> dict:
        bm = b["momentum"].reshape((3,) + (1,) * g.ndim)
        bf = b["factored"].reshape((3,) + (1,) * g.ndim)
        new = {
            "m": bm * st["m"] + (1 - bm) * g,
            "v": b["rms"] * st["v"] + (1 - b["rms"]) * g**2,
        }
        g2 = g**2 + FACTORED_EPS
        axes = factored_axes(g.shape)
        if axes is None:
            new["full"] = bf * st["full"] + (1 - bf) * g2
        else:
            d0, d1 = axes
            new["row"] = bf * st["row"] + (1 - bf) * g2.mean(axis=d1, keepdims=True)
            new["col"] = bf * st["col"] + (1 - bf) * g2.mean(axis=d0, keepdims=True)
        return new

    def features(self, p: np.ndarray, g: np.ndarray, st: dict) -> np.ndarray:
        """The 28 raw (unnormalized) features as columns of an ``[N, 28]`` matrix."""
        full = lambda x: np.broadcast_to(x, p.shape)
        m, v = st["m"], st["v"]
        axes = factored_axes(p.shape)
        rows, cols, fac_scale = [], [], []
        for i in range(3):
            if axes is None:
                row = col = st["full"][i]
                scale = 1.0 / np.sqrt(st["full"][i] + FACTORED_EPS)
            else:
                d0, _ = axes
                row, col = full(st["row"][i]), full(st["col"][i])
                row_mean = row.mean(axis=d0, keepdims=True)
                scale = 1.0 / np.sqrt(row / (row_mean + FACTORED_EPS))
                scale = scale / np.sqrt(col + FACTORED_EPS)
            rows.append(full(row))
            cols.append(full(col))
            fac_scale.append(full(scale))
        columns = [g, p, m[0], m[1], m[2], v]
        columns += [m[i] / np.sqrt(v + ADAM_EPS) for i in range(3)]
        columns += [1.0 / np.sqrt(v + ADAM_EPS)]
        columns += [g * fac_scale[i] for i in range(3)]
        columns += rows
        columns += cols
        columns += [1.0 / np.sqrt(rows[i] + FACTORED_EPS) for i in range(3)]
        columns += [1.0 / np.sqrt(cols[i] + FACTORED_EPS) for i in range(3)]
        columns += [m[i] * fac_scale[i] for i in range(3)]
        assert len(columns) == 28
        return np.stack([full(c).reshape(-1) for c in columns], axis=1)

    @staticmethod
    def tensor_inputs(g: np.ndarray, st: dict) -> np.ndarray:
        """The 6 tensor-level inputs of ``tensor_features``: how consistent the gradients are."""
        m, v = st["m"], st["v"]
        log_rms = [
            np.log(np.sqrt(np.mean((m[i] / np.sqrt(v + ADAM_EPS)) ** 2) + RMS_EPS))
            for i in range(3)
        ]
        cosines = []
        for i in range(3):
            norms = np.sqrt(np.sum(g**2)) * np.sqrt(np.sum(m[i] ** 2))
            cosines.append(np.sum(g * m[i]) / norms if norms > 0 else 0.0)
        return np.array(log_rms + cosines)

    def mlp(self, weights: dict, x: np.ndarray) -> np.ndarray:
        layers = sorted(int(k[1:]) for k in weights if k.startswith("w"))
        assert layers == list(range(len(layers))) and len(weights) == 2 * len(layers)
        widths = [np.shape(weights[f"w{i}"])[1] for i in layers[:-1]]
        n_in = self.num_inputs()
        if np.shape(weights["w0"])[0] != n_in or widths != list(self.c["hidden_sizes"]):
            raise ValueError(f"theta's MLP {np.shape(weights['w0'])[0]} -> {widths} does not "
                             f"match {n_in} -> {list(self.c['hidden_sizes'])}")
        h = x
        for i in layers:
            h = h @ _np(weights[f"w{i}"]) + _np(weights[f"b{i}"])
            if i != layers[-1]:
                h = np.maximum(h, 0.0)
        return h

    # -- how outputs become a parameter change: one switch per block --------------------
    def blackbox_step(self, outs: dict) -> np.ndarray:
        return self.c["step_multiplier"] * outs["d"] * np.exp(
            self.c["magnitude_multiplier"] * outs["m"]
        )

    def delta(self, outs: dict, p, g, st) -> np.ndarray:
        return sum(self.terms(outs, p, g, st).values())

    def terms(self, outs: dict, p, g, st) -> dict:
        """The summands of the parameter change: ``-s_bb``, and for STAR ``-s_nom`` and
        ``-w_eff p`` (a test's tolerance is relative to the largest of them)."""
        s_bb = self.blackbox_step(outs)
        if self.kind == "blackbox":
            return {"learned": -s_bb}
        c = self.c
        # switch: precondition, the paper's division or the ratio that vanishes with |g|
        if c["precondition"]:
            v = st["v"]
            s_bb = {
                "divide": lambda: s_bb / np.sqrt(v + ADAM_EPS),
                "ratio": lambda: s_bb * np.sqrt(v / (v + c["precondition_epsilon"])),
            }[c["precondition_mode"]]()
        # switch: nominal (+ nominal controller)
        s_nom = c["alpha"] * self.nominal_direction(c["nominal"], g, st["m"], st["v"])
        if c["nominal_controller"]:
            n = self.aggregate(outs["n"], c["nominal_controller_aggregation"])
            s_nom = s_nom * np.exp(c["nominal_controller_multiplier"] * n)
        # switch: step size controller: k = exp(R tanh(lambda_c c / R)) scales the whole step
        k = 1.0
        if c["step_size_controller"]:
            cc = self.aggregate(outs["c"], c["step_size_aggregation"])
            R = c["step_size_range"]
            k = np.exp(R * np.tanh(c["step_size_multiplier"] * cc / R))
        # switch: weight_decay, decay_mode (+ regularization controller); the scaled decay is
        # a multiple of the step, so k scales it too
        w_eff = {"scaled": c["alpha"] * k * c["weight_decay"], "raw": c["weight_decay"]}[
            c["decay_mode"]
        ]
        if c["regularization_controller"]:
            r = self.aggregate(outs["r"], c["regularization_controller_aggregation"])
            w_eff = w_eff * np.exp(c["regularization_controller_multiplier"] * r)
        # step_scale: the whole change, decay included, as a learning rate in AdamW
        scale = c["step_scale"]
        return {"learned": -scale * k * s_bb, "nominal": -scale * k * s_nom,
                "decay": -scale * w_eff * p}

    @staticmethod
    def nominal_direction(kind: str, g, m, v) -> np.ndarray:
        rsqrt_v = 1.0 / np.sqrt(v + ADAM_EPS)
        return {
            "sgd": lambda: g,
            "sgdm": lambda: m[2],
            "aggmo": lambda: m.mean(axis=0),
            "adam": lambda: m[2] * rsqrt_v,
            "adam_aggmo": lambda: m.mean(axis=0) * rsqrt_v,
            "none": lambda: np.zeros_like(g),
        }[kind]()

    @staticmethod
    def aggregate(x: np.ndarray, how: str) -> np.ndarray:
        return {"coordinate": lambda: x, "tensor": lambda: np.full_like(x, x.mean())}[how]()


def run(ref: ReferenceOptimizer, theta, params: list, grads_per_step: list):
    """Apply ``ref`` for every gradient list in ``grads_per_step``; returns the params after
    each step and the final state."""
    state = ref.init_state(params)
    trajectory = []
    for grads in grads_per_step:
        params, state, _ = ref.step(theta, state, grads, params)
        trajectory.append(params)
    return trajectory, state
