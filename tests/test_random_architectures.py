"""Property tests over random small architectures, linen and NNX: every Jacobian mode against ``jax.jacrev``, and the
upstream parameter set against perturbation, in float64.

Each example is a *recipe*, a tuple of layer specs drawn by hypothesis (so a failure shrinks to a minimal recipe),
built into a linen module and into an NNX module with the same parameter names (``m<i>/kernel``, ...):

* ``Dense``; ``Conv`` with kernel 1-3, strides 1-2, ``SAME``/``VALID`` padding and ``feature_group_count``;
  ``Norm`` (BatchNorm in evaluation mode with nontrivial running means and variances, LayerNorm); ``Act`` (relu,
  tanh, gelu, sigmoid); ``Pool`` (max/avg, windows 2-3, strides 1-2, ``SAME``/``VALID``); ``Residual``
  (``h + act(dense(h))`` or ``h + act(conv(h))``, grouped or not); ``Flatten`` and ``ToSequence`` (reshapes);
  ``Scan``: a small tanh RNN cell over the first axis of a sequence, by ``jax.lax.scan`` or by Flax's own scan
  (linen ``nn.scan`` / ``nnx.scan`` with broadcast parameters), returning the final carry or the whole sequence;
  ``Side``: a side branch ``act(dense(h))`` that is sown and added (as a mean) to the model's output only, so
  it runs before later layers without feeding them.
* Inputs are a 4-vector, a 5x5x2 image or a 3x2 sequence; at most ``PARAM_BUDGET`` (200) parameters; parameter
  values are seeded (kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.3²), scales ~ 1 + N(0, 0.3²), BatchNorm means
  ~ N(0, 1) and variances 0.5 + |N(0, 1)|).
* After every main-path op the value is sown as ``h<i>``, a side branch as ``s<i>``; the captured layer is drawn
  from those and ``output``, the batch size from 1-3.

For each drawn case (``layersens.split(model, layer, dtype=np.float64)``):

1. ``split.apply`` equals the Flax model's own value of the layer (computed by ``module.apply`` / ``nnx.capture``,
   without layersens), so the reference below is the model's; then every strategy (``Forward``, ``Reverse``,
   ``PerLeaf``, ``Structured``, ``Auto``, chunked ``Forward(chunk_size=2)``, ``Reverse(chunk_size=3)``,
   ``Structured(chunk_size=2)``) and ``compressed_jacobian(...).to_dense()`` equal the per-example float64
   ``jax.jacrev`` of ``split.apply``, leaf by leaf and as the flat matrix. All mode failures of one case are
   reported together.
2. Upstream set: every parameter leaf whose perturbation (noise added to the leaf, Flax model re-run) changes the
   layer at all (bit for bit) must be in ``set(split.param_names)``. The converse is not asserted: a leaf may be
   upstream yet leave the layer unchanged under a finite perturbation when its derivative is zero at (and near)
   this point — a ReLU dead for every example of the batch (also through a residual's inner ReLU), a max-pool
   window whose maximum comes from elsewhere — and the dependence analysis may be conservative. Such leaves are
   recorded as hypothesis events (``--hypothesis-show-statistics``) as ``upstream, unmoved (zero Jacobian)`` or,
   if a leaf is upstream only because the analysis is conservative (not on the recipe's data path to the layer),
   ``upstream, not on the data path``.

Tolerances: rtol=1e-9, atol=1e-11, both sides in float64. Activations and Jacobian entries are O(0.01-10) and come
from a few dozen float64 operations, so the two sides agree to ~1e-14 absolute; the tolerances leave orders of
magnitude for differences in summation order (forward vs reverse accumulation, chunked contractions, fusion).

Run time (2-core CPU): the default ("fast", 5 examples per test) profile takes about 35 s for the file. The thorough
profile, ``LAYERSENS_HYPOTHESIS=thorough python -m pytest tests/test_random_architectures.py`` (200 examples per
framework, 400 models), takes about 25 minutes.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import math
import weakref

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import layersens
from tests.compile_options import fast_jit
from tests.zoo import _flatten, _unflatten

TOL = dict(rtol=1e-9, atol=1e-11)
PARAM_BUDGET = 200

INPUTS = {"vector": (4,), "image": (5, 5, 2), "sequence": (3, 2)}
ACTS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu, "sigmoid": jax.nn.sigmoid}
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MODES = {
    "fwd": lambda: layersens.Forward(),
    "rev": lambda: layersens.Reverse(),
    "per-leaf": lambda: layersens.PerLeaf(),
    "structured": lambda: layersens.Structured(),
    "auto": lambda: layersens.Auto(),
    "fwd2": lambda: layersens.Forward(chunk_size=2),
    "rev3": lambda: layersens.Reverse(chunk_size=3),
    "structured2": lambda: layersens.Structured(chunk_size=2),
    "compressed": None,  # layersens.compressed_jacobian(split, x).to_dense()
}


def max_ops() -> int:
    """Recipe length: up to 3 ops under the default ("fast", 5 examples) profile, which keeps the file near 30 s
    (every layersens call compiles a few XLA programs, 0.1-0.5 s each, and 4-op recipes already took 45-65 s);
    up to 5 under a profile of 50 or more examples (``thorough``)."""
    return 5 if settings.default.max_examples >= 50 else 3


# The references (Flax values, jax.jacrev of split.apply) are compiled without XLA's backend optimizations, as in
# test_zoo: half the compile time, float64 results far inside TOL. layersens compiles its programs as it chooses.
jit = fast_jit


# ---------------------------------------------------------------------------------------------------------------
# Layer specs. Shapes are per example; every op acts on the last axis as features.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Act:
    fn: str


@dataclasses.dataclass(frozen=True)
class Dense:
    features: int


@dataclasses.dataclass(frozen=True)
class Norm:
    kind: str  # "layer" | "batch"


@dataclasses.dataclass(frozen=True)
class Conv:
    features: int
    kernel: int
    stride: int
    padding: str
    groups: int


@dataclasses.dataclass(frozen=True)
class Pool:
    kind: str  # "max" | "avg"
    window: int
    stride: int
    padding: str


@dataclasses.dataclass(frozen=True)
class Residual:
    inner: str  # "dense" | "conv" (SAME, stride 1, as many features as the input)
    act: str
    kernel: int = 1
    groups: int = 1


@dataclasses.dataclass(frozen=True)
class Flatten:
    pass


@dataclasses.dataclass(frozen=True)
class ToSequence:
    shape: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Scan:
    hidden: int
    impl: str  # "lax" (jax.lax.scan) | "flax" (nn.scan / nnx.scan)
    out: str  # "last" (final carry) | "seq" (every step's hidden state)


@dataclasses.dataclass(frozen=True)
class Side:
    features: int
    act: str


@dataclasses.dataclass(frozen=True)
class Case:
    framework: str
    input_shape: tuple[int, ...]
    ops: tuple
    layer: str
    batch: int
    seed: int


def _spatial(size, window, stride, padding):
    return -(-size // stride) if padding == "SAME" else (size - window) // stride + 1


def out_shape(op, shape):
    if isinstance(op, (Act, Norm, Residual, Side)):
        return shape
    if isinstance(op, Dense):
        return shape[:-1] + (op.features,)
    if isinstance(op, Conv):
        return tuple(_spatial(s, op.kernel, op.stride, op.padding) for s in shape[:2]) + (op.features,)
    if isinstance(op, Pool):
        return tuple(_spatial(s, op.window, op.stride, op.padding) for s in shape[:2]) + shape[2:]
    if isinstance(op, Flatten):
        return (math.prod(shape),)
    if isinstance(op, ToSequence):
        return op.shape
    if isinstance(op, Scan):
        return (op.hidden,) if op.out == "last" else (shape[0], op.hidden)
    raise TypeError(op)


def num_params(op, shape):
    c = shape[-1]
    if isinstance(op, (Dense, Side)):
        return c * op.features + op.features
    if isinstance(op, Norm):
        return 2 * c
    if isinstance(op, Conv):
        return op.kernel**2 * (c // op.groups) * op.features + op.features
    if isinstance(op, Residual):
        return (c * c if op.inner == "dense" else op.kernel**2 * (c // op.groups) * c) + c
    if isinstance(op, Scan):
        return c * op.hidden + op.hidden**2 + op.hidden
    return 0


def has_params(op) -> bool:
    return isinstance(op, (Dense, Conv, Norm, Residual, Scan, Side))


def candidates(shape, budget) -> dict[str, list]:
    """Every op that applies to a value of this per-example shape within the remaining parameter budget, by kind
    (simplest kinds and ops first: hypothesis shrinks toward them)."""
    rank, c = len(shape), shape[-1]
    out: dict[str, list] = {
        "act": [Act(f) for f in ACTS],
        "dense": [Dense(f) for f in (2, 3, 4)],
        "norm": [Norm("layer"), Norm("batch")],
        "residual": [Residual("dense", a) for a in ACTS],
        "side": [Side(f, a) for f in (2, 3) for a in ACTS],
    }
    if rank == 3:
        h, w = shape[:2]
        out["conv"] = [
            Conv(f, k, s, p, g)
            for f in (2, 3, 4)
            for k in (1, 2, 3)
            for s in (1, 2)
            for p in ("SAME", "VALID")
            for g in (1, 2, 3)
            if c % g == 0 and f % g == 0 and (p == "SAME" or min(h, w) >= k)
        ]
        if h * w > 1:
            out["pool"] = [
                Pool(kind, win, s, p)
                for kind in ("max", "avg")
                for win in (2, 3)
                for s in (1, 2)
                for p in ("SAME", "VALID")
                if p == "SAME" or min(h, w) >= win
            ]
        out["residual"] += [Residual("conv", a, k, g) for a in ACTS for k in (1, 3) for g in (1, 2, 3) if c % g == 0]
        out["reshape"] = [ToSequence((h, w * c))]
    if rank >= 2:
        out["flatten"] = [Flatten()]
    if rank == 1:
        out["reshape"] = [ToSequence((t, c // t)) for t in (2, 3) if c % t == 0 and c // t >= 2]
    if rank == 2:
        out["scan"] = [Scan(hid, impl, o) for hid in (2, 3) for impl in ("lax", "flax") for o in ("last", "seq")]
    kinds = {k: [op for op in v if num_params(op, shape) <= budget] for k, v in out.items()}
    return {k: v for k, v in kinds.items() if v}


# How often each kind of op is drawn, among those that apply (the first kinds are the ones failures shrink to).
# Uniform kinds left convolutions, pooling and scans in under 7 % of recipes (they apply to fewer shapes).
KIND_WEIGHTS = {
    "act": 1,
    "dense": 1,
    "norm": 1,
    "conv": 4,
    "pool": 3,
    "residual": 2,
    "flatten": 1,
    "reshape": 1,
    "scan": 4,
    "side": 1,
}


def layer_names(ops) -> list[str]:
    """The capturable values: ``h<i>`` after each main-path op, ``s<i>`` for side branches, and ``output``."""
    return [f"s{i}" if isinstance(op, Side) else f"h{i}" for i, op in enumerate(ops)] + ["output"]


def data_path(ops, layer) -> set[str]:
    """The modules ``m<i>`` with parameters that feed ``layer`` by the recipe's own data flow."""
    if layer == "output":
        feeding = range(len(ops))  # the main path and every side branch
    elif layer.startswith("s"):
        feeding = [i for i in range(int(layer[1:])) if not isinstance(ops[i], Side)] + [int(layer[1:])]
    else:
        feeding = [i for i in range(int(layer[1:]) + 1) if not isinstance(ops[i], Side)]
    return {f"m{i}" for i in feeding if has_params(ops[i])}


def coverage(case: Case) -> set[str]:
    """Labels for what a case exercises (hypothesis events), over the ops up to the captured layer."""
    names = layer_names(case.ops)
    end = names.index(case.layer) if case.layer != "output" else len(case.ops) - 1
    labels = set()
    for i, op in enumerate(case.ops[: end + 1]):
        if isinstance(op, Side) and names[i] != case.layer and case.layer != "output":
            labels.add("side branch run before the layer, not feeding it")
            continue
        kind = type(op).__name__
        labels.add(f"op: {kind}")
        if isinstance(op, Conv):
            labels |= {f"op: Conv {op.padding}", f"op: Conv stride {op.stride}"} | (
                {"op: Conv grouped"} if op.groups > 1 else set()
            )
        elif isinstance(op, Pool):
            labels.add(f"op: Pool {op.kind} {op.padding}")
        elif isinstance(op, Scan):
            labels.add(f"op: Scan {op.impl} {op.out}")
        elif isinstance(op, Residual):
            labels.add(f"op: Residual {op.inner}")
        elif isinstance(op, Norm):
            labels.add(f"op: Norm {op.kind}")
    return labels


@st.composite
def cases(draw, framework: str) -> Case:
    kind = draw(st.sampled_from(["image", "sequence", "vector"]))
    shape = INPUTS[kind]
    budget, ops = PARAM_BUDGET, []
    for _ in range(draw(st.integers(1, max_ops()))):
        options = candidates(shape, budget)
        weighted = [options[k] for k, w in KIND_WEIGHTS.items() if k in options for _ in range(w)]
        op = draw(st.sampled_from(weighted).flatmap(st.sampled_from))
        budget -= num_params(op, shape)
        ops.append(op)
        shape = out_shape(op, shape)
    if not any(map(has_params, ops)):  # a model holds parameters (a linen model needs some)
        ops.append(Dense(2))
    # layers computed from the input alone are a documented error (SpecError), not drawn
    layer = draw(st.sampled_from([n for n in layer_names(ops) if data_path(ops, n)]))
    return Case(framework, INPUTS[kind], tuple(ops), layer, draw(st.integers(1, 3)), draw(st.integers(0, 2**16)))


# ---------------------------------------------------------------------------------------------------------------
# One forward pass for both frameworks; the modules are made by `module_for(i)`.
# ---------------------------------------------------------------------------------------------------------------


def _pool(op, h):
    pool = nn.max_pool if op.kind == "max" else nn.avg_pool
    return pool(h, (op.window, op.window), strides=(op.stride, op.stride), padding=op.padding)


def run_recipe(ops, x, module_for, sow):
    h, sides = x, []
    for i, op in enumerate(ops):
        if isinstance(op, Act):
            h = ACTS[op.fn](h)
        elif isinstance(op, Pool):
            h = _pool(op, h)
        elif isinstance(op, (Flatten, ToSequence)):
            h = h.reshape((h.shape[0],) + out_shape(op, h.shape[1:]))
        elif isinstance(op, Residual):
            h = h + ACTS[op.act](module_for(i)(h))
        elif isinstance(op, Side):
            s = ACTS[op.act](module_for(i)(h))
            sow(f"s{i}", s)
            sides.append(s.reshape(s.shape[0], -1).mean(-1))
            continue
        else:
            h = module_for(i)(h)
        sow(f"h{i}", h)
    for s in sides:
        h = h + s.reshape(s.shape + (1,) * (h.ndim - 1))
    return h


def _rnn_step(w_x, w_h, b, h, x_t):
    h = jnp.tanh(x_t @ w_x + h @ w_h + b)
    return h, h


def _rnn_output(out, h, ys_time_major):
    return h if out == "last" else jnp.swapaxes(ys_time_major, 0, 1)


# linen

_init = nn.initializers.normal(0.5)  # shapes only: the values are filled by `_fill`


class LinenLaxRNN(nn.Module):
    hidden: int
    out: str

    @nn.compact
    def __call__(self, xs):  # (batch, time, features)
        w_x = self.param("w_x", _init, (xs.shape[-1], self.hidden), jnp.float32)
        w_h = self.param("w_h", _init, (self.hidden, self.hidden), jnp.float32)
        b = self.param("b", _init, (self.hidden,), jnp.float32)
        h0 = jnp.zeros((xs.shape[0], self.hidden), jnp.result_type(xs, w_x, w_h, b))  # the carry keeps one dtype
        h, ys = jax.lax.scan(lambda h, x_t: _rnn_step(w_x, w_h, b, h, x_t), h0, jnp.swapaxes(xs, 0, 1))
        return _rnn_output(self.out, h, ys)


class LinenCell(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, h, x_t):
        w_x = self.param("w_x", _init, (x_t.shape[-1], self.hidden), jnp.float32)
        w_h = self.param("w_h", _init, (self.hidden, self.hidden), jnp.float32)
        b = self.param("b", _init, (self.hidden,), jnp.float32)
        return _rnn_step(w_x, w_h, b, h, x_t)


LinenScanCell = nn.scan(LinenCell, variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1)


class LinenNet(nn.Module):
    ops: tuple

    @nn.compact
    def __call__(self, x):
        def module_for(i):
            op, name = self.ops[i], f"m{i}"
            if isinstance(op, (Dense, Side)):
                return nn.Dense(op.features, name=name)
            if isinstance(op, Conv):
                return nn.Conv(
                    op.features,
                    (op.kernel,) * 2,
                    strides=(op.stride,) * 2,
                    padding=op.padding,
                    feature_group_count=op.groups,
                    name=name,
                )
            if isinstance(op, Norm):
                return (
                    nn.LayerNorm(name=name) if op.kind == "layer" else nn.BatchNorm(use_running_average=True, name=name)
                )
            if isinstance(op, Residual):
                if op.inner == "dense":
                    return lambda h: nn.Dense(h.shape[-1], name=name)(h)
                return lambda h: nn.Conv(
                    h.shape[-1], (op.kernel,) * 2, padding="SAME", feature_group_count=op.groups, name=name
                )(h)
            if isinstance(op, Scan):
                if op.impl == "lax":
                    return LinenLaxRNN(op.hidden, op.out, name=name)

                def scanned(xs):
                    h0 = jnp.zeros((xs.shape[0], op.hidden), xs.dtype)
                    h, ys = LinenScanCell(op.hidden, name=name)(h0, xs)
                    return h if op.out == "last" else ys

                return scanned
            raise TypeError(op)

        return run_recipe(self.ops, x, module_for, lambda name, v: self.sow("intermediates", name, v))


# NNX


class NNXRNN(nnx.Module):
    def __init__(self, features, hidden, impl, out, rngs):
        self.impl, self.out, self.hidden = impl, out, hidden
        self.w_x = nnx.Param(jnp.zeros((features, hidden), jnp.float32))
        self.w_h = nnx.Param(jnp.zeros((hidden, hidden), jnp.float32))
        self.b = nnx.Param(jnp.zeros((hidden,), jnp.float32))

    def step(self, h, x_t):
        return _rnn_step(self.w_x[...], self.w_h[...], self.b[...], h, x_t)

    def __call__(self, xs):
        dtype = jnp.result_type(xs, self.w_x[...], self.w_h[...], self.b[...])
        h0 = jnp.zeros((xs.shape[0], self.hidden), dtype)
        if self.impl == "lax":
            w_x, w_h, b = self.w_x[...], self.w_h[...], self.b[...]
            h, ys = jax.lax.scan(lambda h, x_t: _rnn_step(w_x, w_h, b, h, x_t), h0, jnp.swapaxes(xs, 0, 1))
            return _rnn_output(self.out, h, ys)

        @nnx.scan(in_axes=(None, nnx.Carry, 1), out_axes=(nnx.Carry, 1))
        def scan(cell, h, x_t):
            return cell.step(h, x_t)

        h, ys = scan(self, h0, xs)
        return h if self.out == "last" else ys


class NNXNet(nnx.Module):
    def __init__(self, ops, input_shape, rngs: nnx.Rngs):
        self.ops = ops
        shape = input_shape
        for i, op in enumerate(ops):
            c = shape[-1]
            module = None
            if isinstance(op, (Dense, Side)):
                module = nnx.Linear(c, op.features, rngs=rngs)
            elif isinstance(op, Conv):
                module = nnx.Conv(
                    c,
                    op.features,
                    (op.kernel,) * 2,
                    strides=(op.stride,) * 2,
                    padding=op.padding,
                    feature_group_count=op.groups,
                    rngs=rngs,
                )
            elif isinstance(op, Norm):
                module = (
                    nnx.LayerNorm(c, rngs=rngs)
                    if op.kind == "layer"
                    else nnx.BatchNorm(c, use_running_average=True, rngs=rngs)
                )
            elif isinstance(op, Residual):
                module = (
                    nnx.Linear(c, c, rngs=rngs)
                    if op.inner == "dense"
                    else nnx.Conv(c, c, (op.kernel,) * 2, padding="SAME", feature_group_count=op.groups, rngs=rngs)
                )
            elif isinstance(op, Scan):
                module = NNXRNN(c, op.hidden, op.impl, op.out, rngs)
            if module is not None:
                setattr(self, f"m{i}", module)
            shape = out_shape(op, shape)

    def __call__(self, x):
        return run_recipe(
            self.ops, x, lambda i: getattr(self, f"m{i}"), lambda name, v: self.sow(nnx.Intermediate, name, v)
        )


# ---------------------------------------------------------------------------------------------------------------
# Building a case: seeded values, the layersens model, and the Flax model's own value of the layer (float64)
# ---------------------------------------------------------------------------------------------------------------


def _fill(tree, rng):
    """Seeded values for a tree of shapes (filling with numpy needs no compilation)."""

    def fill(path, leaf):
        last = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        noise = rng.normal(size=shape)
        if last == "var":
            value = 0.5 + np.abs(noise)
        elif last == "mean":
            value = noise
        elif last == "scale":
            value = 1.0 + 0.3 * noise
        elif last in ("kernel", "w_x", "w_h"):
            value = noise / np.sqrt(max(1, math.prod(shape[:-1])))
        else:
            value = 0.3 * noise
        return value.astype(dtype)

    return jax.tree_util.tree_map_with_path(fill, tree)


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class Built:
    model: layersens.Model
    flat_params: dict  # every parameter leaf, float64, keyed "m<i>/<param>"
    flax_value: object  # jitted flax_value(flat_params, x_batch) -> the layer's value, by Flax alone
    x: np.ndarray


def build(case: Case) -> Built:
    rng = np.random.default_rng(case.seed)
    x = rng.normal(size=(case.batch,) + case.input_shape)
    layer = case.layer
    if case.framework == "linen":
        module = LinenNet(case.ops)
        shapes = jax.eval_shape(
            module.init, jax.random.key(0), jax.ShapeDtypeStruct((1,) + case.input_shape, jnp.float32)
        )
        variables = _fill(nn.meta.unbox(dict(shapes)), rng)
        model = layersens.from_linen(module, variables, case.input_shape)
        constants = _f64({k: v for k, v in variables.items() if k not in ("params", "intermediates")})
        flat = _flatten(variables["params"])

        def flax_value(flat_params, xb):
            y, state = module.apply({"params": _unflatten(flat_params), **constants}, xb, mutable=["intermediates"])
            return y if layer == "output" else state["intermediates"][layer][0]
    else:
        abstract = nnx.eval_shape(lambda: NNXNet(case.ops, case.input_shape, nnx.Rngs(0)))
        graphdef, pstate, stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
        pure = _fill(nnx.to_pure_dict(pstate), rng)
        pure_stats = _fill(nnx.to_pure_dict(stats), rng)
        assert not jax.tree.leaves(rest), "the recipe's NNX models hold only parameters and batch statistics"
        nnx.replace_by_pure_dict(pstate, jax.tree.map(jnp.asarray, pure))
        nnx.replace_by_pure_dict(stats, jax.tree.map(jnp.asarray, pure_stats))
        model = layersens.from_nnx(nnx.merge(graphdef, pstate, stats, rest), case.input_shape)
        flat = _flatten(pure)
        stats64 = jax.tree.map(lambda v: v, stats)
        nnx.replace_by_pure_dict(stats64, _f64(pure_stats))

        def flax_value(flat_params, xb):
            p = jax.tree.map(lambda v: v, pstate)  # fresh containers per trace
            nnx.replace_by_pure_dict(p, _unflatten(flat_params))
            m = nnx.merge(graphdef, p, stats64, rest, copy=True)
            y, captured = nnx.capture(m, nnx.Intermediate)(xb)
            return y if layer == "output" else nnx.to_pure_dict(captured)[layer][0]

    flat = {k: np.asarray(v, np.float64) for k, v in flat.items()}
    return Built(model, flat, jit(flax_value), x)


# ---------------------------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------------------------


def reference(split, x):
    """Per example: ``split.apply`` and its float64 ``jax.jacrev`` (one compilation for the batch)."""
    fn = jit(jax.vmap(lambda p, xi: (split.apply(p, xi), jax.jacrev(split.apply)(p, xi)), in_axes=(None, 0)))
    values, jac = fn({n: jnp.asarray(v, jnp.float64) for n, v in split.params.items()}, jnp.asarray(x))
    return np.asarray(values), {n: np.asarray(v) for n, v in jac.items()}


def _short(error: Exception, lines: int = 12) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return "\n    ".join(text[:lines] + (["..."] if len(text) > lines else []))


def compare_mode(split, x, mode, ref):
    if MODES[mode] is None:
        jac = layersens.compressed_jacobian(split, x).to_dense()
    else:
        jac = layersens.jacobian(split, x, mode=MODES[mode]())
    assert jac.matrix.dtype == np.float64, jac.matrix.dtype
    missing = set(ref) - set(jac.param_names)
    assert not missing, f"upstream leaves missing from the Jacobian: {sorted(missing)}"
    n = len(x)
    columns = []
    for name in jac.param_names:
        got = np.asarray(jac[name])
        want = ref.get(name)
        if want is None:  # not a column of the reference: must be all zeros
            assert not np.any(got), f"{name} is not upstream but has nonzero columns"
            want = np.zeros_like(got)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_allclose(got, want, **TOL, err_msg=name)
        columns.append(want.reshape(n, split.num_outputs, -1))
    np.testing.assert_allclose(jac.matrix, np.concatenate(columns, axis=-1), **TOL, err_msg="matrix")


def release(split):
    """Works around a leak in layersens (see ``test_dropped_splits_and_models_are_freed``): its per-split cache of
    compiled plans and per-model cache of traces are ``WeakKeyDictionary``s whose values refer to their keys
    (``PreparedJacobian.split``, ``ModelTrace.model``), so no split or model is ever freed, nor its compiled XLA
    programs (~270 memory maps per case here). Under the thorough profile the process crossed the kernel's
    ``vm.max_map_count`` (65,530) after ~230 cases and XLA segfaulted while compiling. This drops the case's
    entries once it is checked (private names, looked up defensively: nothing happens if they change)."""
    for module, cache, key in (
        ("layersens.compute._jacobian", "_PREPARED", split),
        ("layersens.tracing._trace", "_TRACES", split.model),
    ):
        try:
            getattr(importlib.import_module(module), cache, {}).pop(key, None)
        except (ImportError, TypeError):
            pass


def check_case(case: Case):
    built = build(case)
    split = layersens.split(built.model, case.layer, dtype=np.float64)
    try:
        _check_split(case, built, split)
    finally:
        release(split)


def _check_split(case: Case, built: Built, split):
    flat, x = built.flat_params, built.x
    assert set(split.param_names) | set(split.excluded) | set(split.frozen) == set(flat)

    # The split is the model: split.apply equals the Flax model's own float64 value of the layer.
    base = np.asarray(built.flax_value(flat, x))
    assert base.dtype == np.float64
    values, ref = reference(split, x)
    np.testing.assert_allclose(values, base, **TOL, err_msg="split.apply against the Flax model")

    # 2. Upstream set against perturbation.
    upstream = set(split.param_names)
    rng = np.random.default_rng(case.seed + 1)
    moved = set()
    for name in sorted(flat):
        p = dict(flat)
        p[name] = flat[name] + 0.5 * rng.normal(size=flat[name].shape)
        if not np.array_equal(np.asarray(built.flax_value(p, x)), base):
            moved.add(name)
    assert moved <= upstream, f"perturbing {sorted(moved - upstream)} moves {case.layer}, but not upstream"
    on_path = data_path(case.ops, case.layer)
    for name in sorted(upstream - moved):
        if name.split("/")[0] not in on_path:
            event("upstream, not on the data path")
            note(f"conservative: {name} is upstream of {case.layer} but not on its data path")
        elif np.any(ref[name]):
            event("upstream, unmoved, nonzero Jacobian")
            note(f"{name}: upstream, unmoved by a perturbation, nonzero Jacobian")
        else:
            event("upstream, unmoved (zero Jacobian)")
    event(f"layer with {len(upstream)} upstream leaves" if upstream else "layer without upstream leaves")
    for label in coverage(case):
        event(label)

    # 1. Every mode against jax.jacrev of split.apply; every failing mode is reported.
    failures = []
    for mode in MODES:
        try:
            compare_mode(split, x, mode, ref)
        except Exception as e:  # noqa: BLE001 - a mode that raises is a failure of that mode, reported with the rest
            failures.append(f"{mode}: {_short(e)}")
    assert not failures, f"{len(failures)} of {len(MODES)} modes disagree with jax.jacrev:\n" + "\n".join(failures)


@SETTINGS
@given(case=cases("linen"))
def test_linen(case):
    check_case(case)


@SETTINGS
@given(case=cases("nnx"))
def test_nnx(case):
    check_case(case)


def test_dropped_splits_and_models_are_freed():
    """A split and its model that the caller no longer holds are freed, with their compiled programs. Fails while
    layersens's caches keep them (see ``release``): a long session (400 random models) then runs out of memory maps
    and XLA segfaults."""
    case = Case("linen", (4,), (Dense(2),), "h0", 2, 0)
    built = build(case)
    split = layersens.split(built.model, case.layer, dtype=np.float64)
    layersens.jacobian(split, built.x, mode=layersens.Forward())
    split_ref, model_ref = weakref.ref(split), weakref.ref(built.model)
    del split, built
    gc.collect()
    assert split_ref() is None, "a split nobody holds is kept alive (with its compiled programs) by layersens"
    assert model_ref() is None, "a model nobody holds is kept alive (with its trace) by layersens"
