"""The methods a benchmark compares, each computing the same ``(examples, M, P)`` Jacobian of one split.

Every method works on the split's own per-example function and the same inputs, and loops over examples in
Python the way :func:`layersens.jacobian` does, writing into a fresh host array (for one example the dense JAX
methods return their program's output as it is, uncopied), so the methods differ only in how one example's
Jacobian is computed:

* ``loop-jit``: one ``jax.jit`` of the scalar gradient of output ``i`` (``i`` traced, compiled once), called for
  every output element of every example: the loop a competent user writes.
* ``loop-nojit``: the same gradient without ``jax.jit``, op by op.
* ``vmap-vjp``: one ``jax.vjp``, its pullback vmapped over the identity basis of the outputs, jitted.
* ``jacrev`` / ``jacfwd``: ``jax.jit(jax.jacrev(...))`` / ``jax.jit(jax.jacfwd(...))``.
* ``layersens-<strategy>``: :func:`layersens.jacobian` with each strategy in ``layersens.MODE_NAMES``;
  ``layersens-<strategy>@<size>`` with ``max_memory=<size>`` (peak memory is then read against the budget).
* ``layersens-compressed``: :func:`layersens.compressed_jacobian` (per-channel blocks, not the dense matrix).
  It is verified through its lossless ``to_dense()``, but timed (and its memory measured) as a user calls it,
  without that conversion; the report ranks it apart from the methods that return the dense matrix.

Every method has ``full()`` (the dense ``(examples, M, P)`` result, for verification) and ``run()`` (what a
user of that method gets, timed); they differ only for ``layersens-compressed``.

The dense methods differentiate one flat function of the upstream parameters concatenated in
``split.param_names`` order, so columns line up with layersens' and every method yields the same matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

import jax
import jax.numpy as jnp
import numpy as np

import layersens
from layersens import LayerSplit
from layersens.compute import program_memory

from ._names import (
    BUDGETS,
    COMPRESSED_METHOD,
    DENSE_METHODS,
    LAYERSENS_PREFIX,
    LOOP_METHODS,
    available_methods,
    is_method,
    layersens_modes,
    method_budget,
)
from ._timing import timed

if TYPE_CHECKING:
    from layersens.results import CompressedJacobian, LayerJacobian

__all__ = [
    "BUDGETS",
    "COMPRESSED_METHOD",
    "DENSE_METHODS",
    "LAYERSENS_PREFIX",
    "LOOP_METHODS",
    "CompressedMethod",
    "DenseMethod",
    "LayersensMethod",
    "LoopMethod",
    "available_methods",
    "compare",
    "flat_parameters",
    "is_method",
    "layersens_modes",
    "make_method",
    "method_budget",
    "sample_pairs",
]


def flat_parameters(split: LayerSplit):
    """The upstream leaves concatenated in ``param_names`` order, and the function of that vector.

    ``g(theta, x)`` is the raveled activation for one example, so ``d g / d theta`` is one example's ``(M, P)``
    block of the flat Jacobian, with layersens' row and column order.
    """
    names, shapes = split.param_names, split.param_shapes
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    bounds = np.cumsum([0] + sizes)
    theta = jnp.concatenate([jnp.ravel(split.params[n]) for n in names])

    def g(t, x):
        params = {n: t[a:b].reshape(s) for n, a, b, s in zip(names, bounds[:-1], bounds[1:], shapes)}
        return jnp.ravel(split.apply(params, x))

    return theta, g


def _vmap_vjp(g):
    def jac(theta, x):
        y, pullback = jax.vjp(lambda t: g(t, x), theta)
        return jax.vmap(pullback)(jnp.eye(y.size, dtype=y.dtype))[0]

    return jac


_DENSE_TRANSFORMS = {
    "vmap-vjp": _vmap_vjp,
    "jacrev": jax.jacrev,
    "jacfwd": jax.jacfwd,
}


class DenseMethod:
    """``jax.jit`` of one whole-example Jacobian transform, called once per example.

    Cost: one compilation, then per example one call whose working memory holds the full identity basis and
    one tangent (or cotangent) of every intermediate per basis vector: see :meth:`working_bytes`.
    """

    def __init__(self, name: str, split: LayerSplit, xs: np.ndarray):
        self.name, self.split = name, split
        theta, g = flat_parameters(split)
        self.theta = jax.device_put(theta)
        self.xs = jax.device_put(jnp.asarray(xs))
        self._jitted = jax.jit(_DENSE_TRANSFORMS[name](g))
        self._compiled: jax.stages.Compiled | None = None

    def compile(self) -> float:
        self._compiled, seconds = timed(lambda: self._jitted.lower(self.theta, self.xs[0]).compile())
        return seconds

    def working_bytes(self) -> int | None:
        """XLA's own count of the compiled program's buffers (temporaries, arguments, output), or ``None`` where
        the backend does not say."""
        return program_memory(self._compiled, with_arguments=True)

    def full(self) -> np.ndarray:
        split = self.split
        assert self._compiled is not None, "compile() first"
        if len(self.xs) == 1:  # the program's own output, as a user would take it: no copy
            return np.asarray(self._compiled(self.theta, self.xs[0]))[None]
        out = np.empty((len(self.xs), split.num_outputs, split.num_params), split.activation_dtype)
        for n in range(len(self.xs)):
            out[n] = np.asarray(self._compiled(self.theta, self.xs[n]))
        return out

    def run(self) -> np.ndarray:
        return self.full()


class LoopMethod:
    """One scalar gradient per output element: ``grad(lambda p: ravel(apply(p, x))[i])``.

    With ``jit=True`` the gradient is compiled once with ``i`` traced, and each call costs one forward and one
    backward pass from the first upstream parameter to the layer, plus dispatch. Without jit every call
    re-traces and runs op by op, including the layers after the split point. :meth:`rows` computes any subset
    of the ``(example, output)`` pairs, so a loop too slow to run in full can be timed on a sample.
    """

    def __init__(self, name: str, split: LayerSplit, xs: np.ndarray):
        self.name, self.split = name, split
        self.params = jax.device_put(split.params)
        self.xs = jax.device_put(jnp.asarray(xs))
        names = split.param_names

        def row(p, x, i):
            gradient = jax.grad(lambda q: jnp.ravel(split.apply(q, x))[i])(p)
            return jnp.concatenate([jnp.ravel(gradient[n]) for n in names])

        self._row = row
        self._call: Callable[..., Any] | None = None if name == "loop-jit" else row

    def compile(self) -> float | None:
        if self.name != "loop-jit":
            return None
        self._call, seconds = timed(lambda: jax.jit(self._row).lower(self.params, self.xs[0], np.int32(0)).compile())
        return seconds

    def rows(self, pairs: np.ndarray) -> np.ndarray:
        """Gradients of the given ``(example, output)`` pairs, shape ``(len(pairs), P)``."""
        assert self._call is not None, "compile() first"
        out = np.empty((len(pairs), self.split.num_params), self.split.activation_dtype)
        for k, (n, i) in enumerate(pairs):
            out[k] = np.asarray(self._call(self.params, self.xs[n], np.int32(i)))
        return out

    def full(self) -> np.ndarray:
        split = self.split
        assert self._call is not None, "compile() first"
        out = np.empty((len(self.xs), split.num_outputs, split.num_params), split.activation_dtype)
        for n in range(len(self.xs)):
            x = self.xs[n]
            for i in range(split.num_outputs):
                out[n, i] = np.asarray(self._call(self.params, x, np.int32(i)))
        return out

    def run(self) -> np.ndarray:
        return self.full()


class LayersensMethod:
    """:func:`layersens.jacobian` with one strategy. Its first call compiles (kept on the split for later calls);
    each call reports compile time (``compile_seconds``) and compute time (``seconds``) separately."""

    def __init__(self, name: str, split: LayerSplit, xs: np.ndarray):
        self.name, self.split, self.xs = name, split, xs
        self.mode = name[len(LAYERSENS_PREFIX) :].partition("@")[0]
        self.max_memory = method_budget(name)
        self.last: LayerJacobian | CompressedJacobian | None = None  # a CompressedJacobian for CompressedMethod
        self.first_compile_seconds: float | None = None

    def compile(self) -> None:
        return None  # compiled inside each call; see ``last.compile_seconds``

    def full(self) -> np.ndarray:
        self.last = None  # let the previous result go before the next is allocated
        # Looked up on the package at call time, so a replaced ``layersens.jacobian`` is what gets measured.
        last: LayerJacobian = layersens.jacobian(self.split, self.xs, mode=self.mode, max_memory=self.max_memory)
        self.last = last
        if self.first_compile_seconds is None:
            self.first_compile_seconds = last.compile_seconds
        return last.matrix

    def run(self) -> np.ndarray:
        return self.full()

    @property
    def last_seconds(self) -> float | None:
        """What the latest call reported as its compute time (``LayerJacobian.seconds``)."""
        return None if self.last is None else cast("LayerJacobian", self.last).seconds


class CompressedMethod(LayersensMethod):
    """:func:`layersens.compressed_jacobian` with its default strategy (Structured). ``run()`` returns what the
    call returns, per-channel blocks; ``full()`` converts them to the dense matrix, for verification only."""

    def __init__(self, name: str, split: LayerSplit, xs: np.ndarray):
        # A split of its own: compiled programs are kept per split, and sharing layersens-structured's would
        # report no compile time here.
        super().__init__(name, layersens.split(split.model, split.layer), xs)
        self.mode, self.max_memory = "structured", None

    def run(self):
        self.last = None
        self.last = layersens.compressed_jacobian(self.split, self.xs)
        if self.first_compile_seconds is None:
            self.first_compile_seconds = self.last.dense_part.compile_seconds
        return self.last

    def full(self) -> np.ndarray:
        return self.run().to_dense().matrix

    @property
    def last_seconds(self) -> float | None:
        return None if self.last is None else cast("CompressedJacobian", self.last).dense_part.seconds


def make_method(name: str, split: LayerSplit, xs: np.ndarray):
    if name in LOOP_METHODS:
        return LoopMethod(name, split, xs)
    if name in DENSE_METHODS:
        return DenseMethod(name, split, xs)
    if name == COMPRESSED_METHOD:
        return CompressedMethod(name, split, xs)
    if is_method(name):
        return LayersensMethod(name, split, xs)
    raise KeyError(name)


def sample_pairs(num_examples: int, num_outputs: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct ``(example, output)`` pairs drawn uniformly without replacement (all of them if fewer)."""
    total = num_examples * num_outputs
    if k >= total:
        flat = np.arange(total)
    else:
        flat = np.sort(np.random.default_rng(seed).choice(total, size=k, replace=False))
    return np.stack([flat // num_outputs, flat % num_outputs], axis=1)


def compare(result: np.ndarray, reference: np.ndarray, rtol: float, atol: float) -> tuple[bool, float]:
    """Whether ``|result - reference| <= atol + rtol·|reference|`` everywhere, and the largest error.

    Works one example (first axis) at a time, so the float64 differences never cost more than one example."""
    if result.shape != reference.shape:
        return False, float("inf")
    ok, worst = True, 0.0
    for r, ref in zip(result, reference):
        if not np.all(np.isfinite(r)):
            return False, float("inf")
        error = np.abs(r.astype(np.float64) - ref)
        ok &= bool(np.all(error <= atol + rtol * np.abs(ref)))
        worst = max(worst, float(error.max()) if error.size else 0.0)
    return ok, worst
