"""Estimators with a stated error of ‖J_n‖²_F, diag(J_nᵀJ_n) (per parameter) and diag(J_nJ_nᵀ) (per unit), from
products of one linearization, for when the exact values (``layersens.compute.sensitivity``) cost too much.

Probes are Rademacher vectors drawn on the device in vmapped blocks of ``BLOCK``:

* ‖J‖²_F = E‖J z‖², z ∈ {±1}^P (Hutchinson; one JVP a probe). ``"hutch++"`` first sketches the top of JᵀJ
  (Q = orth(JᵀJ S), S of ``sketch`` columns: 3·sketch passes), takes ‖J Q‖²_F exactly and probes only the rest,
  ‖J (I − QQᵀ) z‖² (Meyer et al. 2021, in the adaptive form of Persson et al. 2022): far fewer probes when a few
  directions dominate, as they do in trained layers.
* diag(JᵀJ)_p = Σ_i J[i, p]² = E[(Jᵀw)_p²], w ∈ {±1}^M (one VJP a probe; matfree's ``rownorms_squared`` applied
  to Jᵀ). Each entry's variance is 2((Σ_i J_ip²)² − Σ_i J_ip⁴) ≤ 2·diag_p²: relative error at most sqrt(2/s)
  after s probes, entries with one nonzero row exact from the first.
* diag(JJᵀ)_i = ‖∂h_i/∂θ‖² = E[(J z)_i²], z ∈ {±1}^P (one JVP a probe), with the same bound.

The standard error is the sample standard deviation over sqrt(samples): for a mean this is exactly the
leave-one-out (jackknife) standard error that matfree reports. Stopping rule: after a pilot of ``PILOT`` (32)
probes, the count needed for a relative standard error of ``rtol`` (for a vector, ‖stderr‖₂ / ‖value‖₂) is
predicted (the error falls as 1/sqrt(samples)) and drawn without looking in between (stopping whenever the running
error dips would bias skewed estimates low), then the rule is checked again; never more than ``max_samples``. At
each check, when the exact computation costs no more passes than the probes still needed (the plan's passes per
example: 12 for LeNet's relu1, 129 for fc1, 423 for relu2), the example is computed exactly by
``layersens.compute.sensitivity`` and reported with stderr 0 and ``exact=True``; before the pilot too, when the
exact passes are no more than it.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import ModeError
from ..results import Estimate
from ._linops import exact_passes, operator

BLOCK = 16  # probes per vmapped block
# Probes drawn before the first look, the fewest an estimate uses: with 16, the standard error of skewed squared
# norms is itself too uncertain (±2 stderr covered the truth 88–89 % of 300 seeds on a small CNN layer at 16–26
# probes); with 32, 93–96 %.
PILOT = 2 * BLOCK
METHODS = ("hutchinson", "hutch++")


def _probe(m, key, rows: int, b: int):
    return jax.random.rademacher(key, (rows, b), dtype=m.primal.dtype)


@functools.partial(jax.jit, static_argnums=2)
def _frobenius_block(m, key, b, basis):
    """``(b,)``: ‖J (I − QQᵀ) z‖² for ``b`` probes (``basis`` Q is ``(P, s)``, possibly s = 0)."""
    z = _probe(m, key, m.primal.shape[0], b)
    z = z - basis @ (basis.T @ z)
    y = jax.vmap(m.forward_fn(), in_axes=1, out_axes=1)(z)
    return jnp.sum(y * y, axis=0)


def _moments(x):
    mean = jnp.mean(x, axis=1)
    return mean, jnp.sum(jnp.square(x - mean[:, None]), axis=1)


@functools.partial(jax.jit, static_argnums=2)
def _parameter_block(m, key, b):
    """Mean and summed squared deviation over ``b`` probes of (Jᵀw)², each ``(P,)``."""
    g = jax.vmap(m.reverse_fn(), in_axes=1, out_axes=1)(_probe(m, key, m.output.shape[0], b))
    return _moments(g * g)


@functools.partial(jax.jit, static_argnums=2)
def _unit_block(m, key, b):
    """Mean and summed squared deviation over ``b`` probes of (J z)², each ``(M,)``."""
    y = jax.vmap(m.forward_fn(), in_axes=1, out_axes=1)(_probe(m, key, m.primal.shape[0], b))
    return _moments(y * y)


@functools.partial(jax.jit, static_argnums=2)
def _sketch(m, key, s):
    """Q = orth(JᵀJ S) ``(P, s)`` and ‖J Q‖²_F: 3s passes."""
    fwd = jax.vmap(m.forward_fn(), in_axes=1, out_axes=1)
    y = jax.vmap(m.reverse_fn(), in_axes=1, out_axes=1)(fwd(_probe(m, key, m.primal.shape[0], s)))
    q = jnp.linalg.qr(y)[0]
    return q, jnp.sum(jnp.square(fwd(q)))


class _Moments:
    """Count, mean and summed squared deviations of the probes so far (Chan et al.'s pairwise update, float64)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, b: int, mean, m2) -> None:
        mean, m2 = np.asarray(mean, np.float64), np.asarray(m2, np.float64)
        total = self.n + b
        delta = mean - self.mean
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + m2 + np.square(delta) * (self.n * b / total)
        self.n = total

    def stderr(self):
        if self.n < 2:
            return np.full(np.shape(self.mean), np.inf)
        return np.sqrt(self.m2 / (self.n - 1) / self.n)


def relative(value, stderr) -> float:
    """‖stderr‖₂ / ‖value‖₂ (0 when both vanish)."""
    err, size = float(np.linalg.norm(np.ravel(stderr))), float(np.linalg.norm(np.ravel(value)))
    return err / size if size > 0 else (0.0 if err == 0 else math.inf)


def switch_to_exact(drawn: int, rse: float, rtol: float, max_samples: int, per_probe: int, exact_cost: int) -> bool:
    """Whether the exact computation (``exact_cost`` passes) costs no more than the probes still to draw: those
    needed for ``rtol`` predicted from the relative standard error ``rse`` after ``drawn`` probes (it falls as
    1/sqrt(samples)), at most up to ``max_samples``, ``per_probe`` passes each."""
    needed = math.inf if rtol <= 0 or not math.isfinite(rse) else drawn * (rse / rtol) ** 2
    return exact_cost <= (min(needed, max_samples) - drawn) * per_probe


def sample(draw, baseline, *, rtol, max_samples, exact, exact_cost, per_probe):
    """Draws blocks (``draw(block_index, b) -> (mean, m2)``) in stages until the rule stops: ``(value, stderr,
    drawn)``, value ``None`` where the exact computation became the cheaper way (``exact`` ``None``: switch
    automatically; ``exact_cost()`` gives its passes).

    A pilot of ``PILOT`` probes estimates the spread; the count it predicts for ``rtol`` is then drawn
    without looking (stopping whenever the running error happens to dip would bias skewed estimates low), and the
    rule is checked again only after it."""
    moments, block, target = _Moments(), 0, min(PILOT, max_samples)
    while True:
        while moments.n < target:
            b = min(BLOCK, target - moments.n)
            moments.add(b, *draw(block, b))
            block += 1
        value, stderr = baseline + moments.mean, moments.stderr()
        rse = relative(value, stderr)
        if rse <= rtol or moments.n >= max_samples:
            return value, stderr, moments.n
        if exact is None and switch_to_exact(moments.n, rse, rtol, max_samples, per_probe, exact_cost()):
            return None, None, moments.n
        needed = moments.n * (rse / rtol) ** 2 if rtol > 0 and math.isfinite(rse) else math.inf
        target = max_samples if needed >= max_samples else max(moments.n + BLOCK, BLOCK * math.ceil(needed / BLOCK))
        target = min(max_samples, int(target))


def _check(rtol, max_samples, method=None):
    if not (isinstance(rtol, (int, float)) and rtol >= 0 and math.isfinite(rtol)):
        raise ModeError(f"rtol is {rtol!r}; give a relative standard error such as 0.05 (0: exact where possible).")
    if not (isinstance(max_samples, (int, np.integer)) and max_samples >= 1):
        raise ModeError(f"max_samples is {max_samples!r}; give a positive number of probes.")
    if method is not None and method not in METHODS:
        raise ModeError(f"unknown estimator {method!r}; choose one of {', '.join(METHODS)}.")


def exact_values(op, indices, quantity: str) -> np.ndarray:
    """The exact ``quantity`` for the examples ``indices``, by ``layersens.compute.sensitivity`` (float64)."""
    from ..compute import sensitivity

    s = sensitivity(op.split, op.inputs[np.asarray(indices)])
    if quantity == "frobenius_sq":
        return np.square(s.frobenius)
    if quantity == "unit_diagonal":
        return np.square(s.unit)
    return np.concatenate([s.parameter[name].reshape(len(indices), -1) for name in op.split.param_names], axis=1)


def _draws(mapping, quantity: str, key, basis):
    """The sampler's ``draw(block_index, b)`` for one example's map."""
    if quantity == "frobenius_sq":

        def draw(i, b):
            x = np.asarray(_frobenius_block(mapping, jax.random.fold_in(key, i), b, basis), np.float64)
            return x.mean(), np.square(x - x.mean()).sum()

        return draw
    block = _parameter_block if quantity == "parameter_diagonal" else _unit_block
    return lambda i, b: block(mapping, jax.random.fold_in(key, i), b)


def _estimate(split, inputs, quantity, *, rtol, max_samples, method, exact, seed, sketch) -> Estimate:
    start = time.perf_counter()
    op = operator(split, inputs)
    count, _, p = op.shape
    if quantity == "parameter_diagonal" and op._no_reverse is not None:
        exact = True  # its probes are VJPs
    if method == "hutch++" and op._no_reverse is not None:
        method = "hutchinson"  # the sketch needs Jᵀ
    cost = functools.lru_cache(maxsize=None)(lambda: exact_passes(op))  # the plan, made once if needed
    shape = {"frobenius_sq": (), "parameter_diagonal": (p,), "unit_diagonal": tuple(op.split.activation_shape)}
    value = np.zeros((count,) + shape[quantity])
    stderr = np.zeros_like(value)
    samples, passes, todo = np.zeros(count, np.int64), np.zeros(count, np.int64), []
    setup = 3 * min(sketch, p) if quantity == "frobenius_sq" and method == "hutch++" else 0
    for n in range(count):
        if exact is True or (exact is None and cost() <= setup + min(PILOT, max_samples)):
            todo.append(n)
            continue
        sketch_key, probe_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), n))
        basis, baseline = jnp.zeros((p, 0), op.activation.dtype), 0.0
        if setup:
            basis, top = _sketch(op._maps[n], sketch_key, min(sketch, p))
            baseline = float(top)
        v, e, samples[n] = sample(
            _draws(op._maps[n], quantity, probe_key, basis),
            baseline,
            rtol=rtol,
            max_samples=max_samples,
            exact=exact,
            exact_cost=cost,
            per_probe=1,
        )
        passes[n] = setup + samples[n]
        if v is None:
            todo.append(n)
        else:
            value[n], stderr[n] = np.reshape(v, shape[quantity]), np.reshape(e, shape[quantity])
    is_exact = np.zeros(count, bool)
    if todo:
        value[todo] = exact_values(op, todo, quantity).reshape((len(todo),) + shape[quantity])
        is_exact[todo] = True
        passes[todo] += cost()
    split = op.split
    return Estimate(
        quantity=quantity,
        value=value,
        stderr=stderr,
        samples=samples,
        exact=is_exact,
        passes=passes,
        method="exact" if is_exact.all() else method,
        rtol=float(rtol),
        max_samples=int(max_samples),
        layer=split.layer,
        model=split.model.name,
        param_names=split.param_names,
        param_shapes=split.param_shapes,
        activation_shape=tuple(split.activation_shape),
        seconds=time.perf_counter() - start,
    )


def estimate_frobenius(
    split,
    inputs=None,
    *,
    rtol: float = 0.05,
    max_samples: int = 1000,
    method: str = "hutch++",
    exact: bool | None = None,
    seed: int = 0,
    sketch: int = BLOCK,
) -> Estimate:
    """‖J_n‖²_F = tr(J_nᵀJ_n) per example, with its standard error (``value``, ``stderr``: ``(examples,)``).

    ``split`` and ``inputs`` as for :func:`layersens.jacobian`, or a :class:`LinearizedLayer` and ``inputs=None``
    (one linearization for several analyses). ``rtol``: the relative standard error to stop at (0: exact where that
    costs no more than ``max_samples`` probes); ``max_samples``: the most probes per example; ``exact``: ``None``
    switches to the exact computation where it costs no more passes than the probes still needed, ``True``
    always computes exactly, ``False`` never; ``seed``: of the probes (reproducible per example); ``method``:
    ``"hutch++"`` or ``"hutchinson"``; ``sketch``: the columns of hutch++'s sketch.

    Cost per example: ``"hutch++"`` 3·``sketch`` passes, then one JVP per probe; ``"hutchinson"`` one JVP per
    probe (relative standard error ≤ sqrt(2 / samples) whatever J); at least 32 probes; or the exact passes where
    they are no more. Memory: a block of 16 probes, 16·(M + P) values, and the sketch's ``sketch``·P. Use it
    where the exact norm (the plan's passes, ``layersens.compute.sensitivity``) costs too much; hutch++ when a few
    directions dominate J, as in trained layers."""
    _check(rtol, max_samples, method)
    return _estimate(
        split,
        inputs,
        "frobenius_sq",
        rtol=rtol,
        max_samples=max_samples,
        method=method,
        exact=exact,
        seed=seed,
        sketch=sketch,
    )


def estimate_parameter_diagonal(
    split, inputs=None, *, rtol: float = 0.05, max_samples: int = 1000, exact: bool | None = None, seed: int = 0
) -> Estimate:
    """diag(J_nᵀJ_n): each parameter's Σ_i (∂h_i/∂θ_p)², per example, with standard errors (``(examples, P)``;
    :meth:`Estimate.per_leaf` by leaf). Arguments as :func:`estimate_frobenius`.

    Cost per example: one VJP per probe (relative error of every entry ≤ sqrt(2 / samples)), at least 32; or the
    exact passes where they are no more. Memory 16·(M + P) values a block. Use it when the exact diagonal (the
    plan's passes) costs too much; a layer without reverse products is computed exactly."""
    _check(rtol, max_samples)
    return _estimate(
        split,
        inputs,
        "parameter_diagonal",
        rtol=rtol,
        max_samples=max_samples,
        method="hutchinson",
        exact=exact,
        seed=seed,
        sketch=0,
    )


def estimate_unit_diagonal(
    split, inputs=None, *, rtol: float = 0.05, max_samples: int = 1000, exact: bool | None = None, seed: int = 0
) -> Estimate:
    """diag(J_nJ_nᵀ): each unit's ‖∂h_i/∂θ‖², per example, with standard errors (``(examples,) +
    activation_shape``). Arguments as :func:`estimate_frobenius`.

    Cost per example: one JVP per probe (relative error of every entry ≤ sqrt(2 / samples)), at least 32; or the
    exact passes where they are no more. Memory 16·(M + P) values a block. Use it when the exact row norms cost
    too much."""
    _check(rtol, max_samples)
    return _estimate(
        split,
        inputs,
        "unit_diagonal",
        rtol=rtol,
        max_samples=max_samples,
        method="hutchinson",
        exact=exact,
        seed=seed,
        sketch=0,
    )
