"""The top of each example's Jacobian spectrum from matrix-free products: singular values and vectors, effective
ranks, a condition estimate, and the top directions mapped back to parameter leaves, channels and positions.

**Library: SciPy.** ``scipy.sparse.linalg.svds`` with ``solver="propack"`` (Golub–Kahan–Lanczos bidiagonalization
of J itself, implicitly restarted, so the condition number is not squared), over a ``LinearOperator`` whose
products are one linearization's jitted JVP and VJP blocks; ARPACK (Lanczos on the smaller of JᵀJ and JJᵀ) where
an older SciPy keeps PROPACK opt-in. Measured against matfree 0.6.3 (``eig.svd_partial(decomp.bidiag(d))``, the
JAX-native choice) on LeNet's relu1 (15,680 × 240), relu2 (6,272 × 6,096) and fc1 (128 × 206,928), one example,
k = 6, CPU (2 shared cores), error relative to ``np.linalg.svd`` of the dense float32 Jacobian in float64:

* accuracy: PROPACK ≤ 1.4e-6, ARPACK ≤ 5.0e-7 (both restarted until converged, tol = machine precision);
  matfree at depth 24 ≤ 8.6e-7, but at depth 12 (no restart, no convergence test) σ₅, σ₆ were off by 7–16 %
  (relu1), 1.6–3.1 % (fc1), 5.8–8.5 % (relu2): its depth must be chosen, or searched for, recompiling each time;
* time after compilation (best of 3 on a shared machine): PROPACK 107 / 41 / 106 ms (relu1 / relu2 / fc1; 51 /
  45 / 35 products), ARPACK 46 / 88 / 128 ms (70 / 70 / 48), matfree depth 24: 19 / 53 / 203 ms (48 products);
  compilation: SciPy needs only the JVP and VJP programs (0.6–1.2 s), matfree compiles its whole loop per depth
  (1.3–3.1 s, up to 9.5 s under load), which dominates a one-off analysis;
* extra resident memory: SciPy 20–62 MB, matfree 64–157 MB (its d × (M + P) Krylov basis on the device).

So SciPy: equal accuracy with a convergence criterion and restarts, less memory, less compilation, no new
dependency (JAX requires SciPy; ``scipy>=1.11`` is declared), and Python 3.10 kept (matfree 0.6 needs 3.11). Its
cost is a host round trip per product block, small next to a layer's JVP. Results carry a posteriori residual
bounds whichever solver ran.
"""

from __future__ import annotations

import functools
import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputShapeError, ModeError
from ..results import Spectrum
from ._estimate import PILOT, _draws, exact_values, sample
from ._linops import Products, exact_passes, operator

METHODS = ("auto", "krylov", "dense")
# "auto" forms J_n (min(M, P) passes) when that is no more than the products PROPACK took for the top 6 on LeNet's
# layers (35–51, about 6k).
DENSE_FACTOR = 6


def _seeding(svds, seed: int) -> dict:
    """A fresh seeded generator for svds (``rng`` from SciPy 1.15, ``random_state`` before)."""
    if "rng" in inspect.signature(svds).parameters:
        return {"rng": np.random.default_rng(seed)}
    return {"random_state": seed}


def _svds(prod: Products, k: int, tol: float, seed: int):
    """Top-k triplets by PROPACK (ARPACK where PROPACK is opt-in): ``(U (M, k), s, V (P, k), products, solver)``."""
    from scipy.sparse.linalg import LinearOperator, svds

    m, p, count = prod.m, prod.p, [0]

    def fwd(v):
        v = np.asarray(v).reshape(p, -1)
        count[0] += v.shape[1]
        return prod.jmat(v)

    def rev(u):
        u = np.asarray(u).reshape(m, -1)
        count[0] += u.shape[1]
        return prod.jtmat(u)

    a = LinearOperator(
        (m, p), matvec=lambda v: fwd(v)[:, 0], rmatvec=lambda u: rev(u)[:, 0], matmat=fwd, rmatmat=rev, dtype=prod.dtype
    )
    try:
        u, s, vt = svds(a, k=k, tol=tol, solver="propack", **_seeding(svds, seed))
        solver = "propack"
    except (ValueError, np.linalg.LinAlgError) as e:
        # SciPy 1.8–1.1x has PROPACK only with SCIPY_USE_PROPACK set; and PROPACK's restarts can fail to converge
        # (LeNet's bn1 at k = 1, 2: "did not converge within kmax"), where ARPACK's implicitly restarted Lanczos on
        # JᵀJ / JJᵀ does (it squares the condition number, which only the smallest of the top k feel).
        if not isinstance(e, np.linalg.LinAlgError) and "PROPACK" not in str(e):  # (LinAlgError is a ValueError)
            raise
        u, s, vt = svds(a, k=k, tol=tol, solver="arpack", **_seeding(svds, seed))
        solver = "arpack"
    return u, s, vt.T, count[0], solver


def _triplets(prod: Products, k: int, dense: bool, tol: float | None, seed: int):
    """One example's top-k triplets, sorted and signed (each right vector's largest entry positive), with J V,
    Jᵀ U, the products spent, the solver, and ‖J‖²_F when J was formed (else ``None``)."""
    if dense:
        j = prod.dense().astype(np.float64)
        u, s, vt = np.linalg.svd(j, full_matrices=False)
        u, s, v, used, solver = u[:, :k], s[:k], vt[:k].T, min(prod.m, prod.p), "dense"
    else:
        u, s, v, used, solver = _svds(prod, k, 0.0 if tol is None else float(tol), seed)
    order = np.argsort(-s, kind="stable")
    u, s, v = (np.asarray(a, np.float64)[..., order] for a in (u, s, v))
    flip = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(k)])
    flip[flip == 0] = 1
    u, v = u * flip, v * flip
    if dense:
        return u, s, v, j @ v, j.T @ u, used, solver, float(np.square(j).sum())
    # one vector at a time: the programs PROPACK compiled already
    jv = np.hstack([prod.jmat(v[:, [i]]) for i in range(k)]).astype(np.float64)
    jtu = np.hstack([prod.jtmat(u[:, [i]]) for i in range(k)]).astype(np.float64)
    return u, s, v, jv, jtu, used + 2 * k, solver, None


def spectrum(
    split,
    inputs=None,
    k: int = 6,
    *,
    tol: float | None = None,
    seed: int = 0,
    method: str = "auto",
    frobenius_rtol: float = 0.01,
    max_samples: int = 1000,
) -> Spectrum:
    """The ``k`` largest singular values and vectors of J_n (M × P) for each example, never forming J when
    min(M, P) is large, with effective ranks and the top directions by names (:class:`Spectrum`).

    ``split`` and ``inputs`` as for :func:`layersens.jacobian`, or a :class:`LinearizedLayer` and ``inputs=None``.
    ``tol``: relative accuracy of the singular values (``None``: machine precision); each value comes with an a
    posteriori residual bound (``Spectrum.residuals``). ``method``: ``"krylov"`` (SciPy's PROPACK on products),
    ``"dense"`` (J formed by min(M, P) products, then ``np.linalg.svd``), ``"auto"``: dense when min(M, P) ≤ 6k.
    The stable rank needs ‖J‖²_F: exact for a dense J, else the Hutchinson estimate of ‖J (I − VVᵀ)‖²_F added to
    ‖J V‖²_F (V the top-k right vectors) to ``frobenius_rtol`` (at most ``max_samples`` probes), or exact
    (``layersens.compute.sensitivity``) where that costs no more; its standard error is reported.

    Cost per example: Krylov, about 6k–9k products (35–51 for k = 6 on LeNet's layers) plus 2k for the residuals
    and the probes of ‖J‖²_F; memory that of a few products and PROPACK's basis (≤ 10k vectors of M + P).
    Use it for spectra, ranks and dominant directions of layers whose Jacobian is too large to form or to
    decompose densely (relu2's 6,272 × 6,096: ``np.linalg.svd`` took 246 s; this, 0.1 s after compilation)."""
    start = time.perf_counter()
    if method not in METHODS:
        raise ModeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    op = operator(split, inputs)
    count, m, p = op.shape
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= min(m, p)):
        raise InputShapeError(f"k is {k!r}; J of {op.split.layer!r} is {m} × {p}, so 1 <= k <= {min(m, p)}.")
    dense = method == "dense" or (method == "auto" and min(m, p) <= DENSE_FACTOR * k)
    if not dense and op._no_reverse is not None:
        op._check_reverse()  # Krylov needs Jᵀ: the error says why there is none
    values, residuals = np.zeros((count, k)), np.zeros((count, k))
    left, right = np.zeros((count, k, m), op.activation.dtype), np.zeros((count, k, p), op.activation.dtype)
    fro, fro_err, fro_exact = np.zeros(count), np.zeros(count), np.zeros(count, bool)
    passes, solvers, todo = np.zeros(count, np.int64), set(), []
    cost = functools.lru_cache(maxsize=None)(lambda: exact_passes(op))  # the plan, made once if needed
    for n in range(count):
        u, s, v, jv, jtu, passes[n], solver, dense_fro = _triplets(Products(op, n), k, dense, tol, seed)
        solvers.add(solver)
        residuals[n] = np.sqrt((np.square(jv - u * s).sum(axis=0) + np.square(jtu - v * s).sum(axis=0)) / 2)
        values[n], left[n], right[n] = s, u.T, v.T
        if dense_fro is not None:
            fro[n], fro_exact[n] = dense_fro, True
        elif cost() <= min(PILOT, max_samples):
            todo.append(n)
        else:  # ‖J‖²_F = ‖J V‖²_F + ‖J (I − VVᵀ)‖²_F, the second by probes
            probes = _draws(
                op._maps[n],
                "frobenius_sq",
                jax.random.split(jax.random.fold_in(jax.random.key(seed), n))[1],
                jnp.asarray(v, op.activation.dtype),
            )
            f, e, drawn = sample(
                probes,
                float(np.square(jv).sum()),
                rtol=frobenius_rtol,
                max_samples=max_samples,
                exact=None,
                exact_cost=cost,
                per_probe=1,
            )
            passes[n] += drawn
            if f is None:
                todo.append(n)
            else:
                fro[n], fro_err[n] = f, e
    if todo:
        fro[todo], fro_exact[todo] = exact_values(op, todo, "frobenius_sq"), True
        passes[todo] += cost()
    split = op.split
    return Spectrum(
        layer=split.layer,
        model=split.model.name,
        param_names=split.param_names,
        param_shapes=split.param_shapes,
        activation_shape=tuple(split.activation_shape),
        values=values,
        residuals=residuals,
        left=left,
        right=right,
        frobenius_sq=fro,
        frobenius_sq_stderr=fro_err,
        frobenius_exact=fro_exact,
        method="+".join(sorted(solvers)),
        tol=tol,
        passes=passes,
        seconds=time.perf_counter() - start,
    )
