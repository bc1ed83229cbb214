"""Summaries of a Jacobian: per-leaf norms and sparsity, and per-example rank and conditioning."""

from __future__ import annotations

import dataclasses

import numpy as np

from .._repr import Summarized
from ._result import LayerJacobian

# Singular values come from the Gram matrix of the smaller side (min(M, P)² entries, eigvalsh in float64).
# Above this size that is slow enough that the user should ask for it explicitly.
RANK_AUTO_LIMIT = 2048


@dataclasses.dataclass(frozen=True)
class LeafSummary:
    name: str
    shape: tuple[int, ...]
    frobenius: float
    max_abs: float
    zero_fraction: float


@dataclasses.dataclass(frozen=True, repr=False)
class JacobianSummary(Summarized):
    """Norms and structure of a :class:`LayerJacobian`.

    ``rank`` and ``condition`` are per example: the numerical rank (singular values above
    ``max(M, P) · eps · σ_max``) and ``σ_max / σ_min`` over those nonzero singular values; ``None`` when not
    computed (see ``summarize(..., spectrum=)``).
    """

    layer: str
    shape: tuple[int, int, int]
    frobenius: float
    zero_fraction: float
    leaves: tuple[LeafSummary, ...]
    rank: tuple[int, ...] | None
    condition: tuple[float, ...] | None
    singular_values: tuple[np.ndarray, ...] | None = dataclasses.field(default=None, repr=False)
    finite: bool = True  # False: the matrix holds NaN or Inf, and rank and condition were not computed

    def _summary(self):
        return [
            ("layer", self.layer),
            ("shape", self.shape),
            ("frobenius", f"{self.frobenius:.6g}"),
            ("zero_fraction", f"{self.zero_fraction:.3g}"),
            ("leaves", tuple(leaf.name for leaf in self.leaves)),
            ("rank", self.rank),
            ("finite", self.finite),
        ]


def _scaled_singular_values(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """``(s / scale, scale)`` for the singular values ``s`` of one finite (M, P) matrix, descending, with
    ``scale`` its largest |entry|: the Gram matrix of the smaller side is formed from the matrix divided by it, so it
    cannot overflow (entries up to float64's maximum would square to inf). A complex matrix's Gram matrix is
    Hermitian (the conjugate transpose)."""
    a = np.asarray(matrix, np.complex128 if np.iscomplexobj(matrix) else np.float64)
    scale = float(np.abs(a).max()) if a.size else 0.0
    if scale == 0.0:
        return np.zeros(min(a.shape)), 0.0
    a = a / scale
    gram = a.conj().T @ a if a.shape[1] <= a.shape[0] else a @ a.conj().T
    eig = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(eig, 0.0, None)), scale


def singular_values(matrix: np.ndarray) -> np.ndarray:
    """Singular values of one finite (M, P) matrix, descending, via the Gram matrix of its smaller side in float64
    (values beyond float64's range are inf)."""
    scaled, scale = _scaled_singular_values(matrix)
    with np.errstate(over="ignore"):
        return scaled * scale


def _frobenius(a: np.ndarray) -> float:
    """The Frobenius norm of ``a``. Entries near the float maximum, whose squares overflow, are scaled first (one
    example at a time), so the norm is inf only where it is itself beyond the float range, and quietly."""
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(a))
        if norm == float("inf") and np.isfinite(a).all():
            scale = float(np.abs(a).max())
            norm = scale * sum(float(np.linalg.norm(m / scale)) ** 2 for m in a) ** 0.5
    return norm


def summarize(jac: LayerJacobian, spectrum: bool | None = None) -> JacobianSummary:
    """Per-leaf Frobenius norms, largest entries and exact-zero fractions; rank and condition per example.

    ``spectrum=None`` computes rank and condition when min(M, P) ≤ 2048; ``True`` always; ``False`` never.
    The rank counts singular values above ``max(n·eps, √(n·eps64))·s_max`` (n = max(M, P), eps of the result's
    dtype): for float32 results the first term, for float64 ones the resolution of the Gram matrix it is read from.
    """
    leaves = []
    for name, (a, b) in jac.column_ranges.items():
        block = jac.matrix[:, :, a:b]
        leaves.append(
            LeafSummary(
                name=name,
                shape=jac.param_shapes[jac.param_names.index(name)],
                frobenius=_frobenius(block),
                max_abs=float(np.abs(block).max()) if block.size else 0.0,
                zero_fraction=float(np.mean(block == 0)) if block.size else 1.0,
            )
        )
    small_side = min(jac.num_outputs, jac.num_params)
    finite = bool(np.isfinite(jac.matrix).all())
    if spectrum is None:
        spectrum = small_side <= RANK_AUTO_LIMIT
    spectrum = spectrum and finite  # singular values of NaN or Inf mean nothing
    ranks: tuple[int, ...] | None = None
    conditions: tuple[float, ...] | None = None
    values = None
    if spectrum:
        scaled = [_scaled_singular_values(m) for m in jac.matrix]
        with np.errstate(over="ignore"):
            values = tuple(s * scale for s, scale in scaled)
        eps = np.finfo(jac.matrix.dtype).eps
        rank_list: list[int] = []
        condition_list: list[float] = []
        n = max(jac.num_outputs, jac.num_params)
        # Eigenvalues of the float64 Gram matrix are exact to about n·eps64·s0², so singular values below
        # √(n·eps64)·s0 cannot be told from zero this way: the threshold is the larger of that and n·eps·s0.
        relative = max(n * eps, float(np.sqrt(n * np.finfo(np.float64).eps)))
        for s, _ in scaled:  # rank and condition are scale-free: read on the scaled values, which cannot overflow
            tol = relative * (s[0] if s.size else 0.0)
            nonzero = s[s > tol]
            rank_list.append(int(nonzero.size))
            condition_list.append(float(nonzero[0] / nonzero[-1]) if nonzero.size else float("inf"))
        ranks, conditions = tuple(rank_list), tuple(condition_list)
    return JacobianSummary(
        layer=jac.layer,
        shape=tuple(jac.matrix.shape),
        frobenius=_frobenius(jac.matrix),
        zero_fraction=float(np.mean(jac.matrix == 0)) if jac.matrix.size else 1.0,
        leaves=tuple(leaves),
        rank=ranks,
        condition=conditions,
        singular_values=values,
        finite=finite,
    )
