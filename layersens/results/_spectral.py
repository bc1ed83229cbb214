"""The top of a layer Jacobian's spectrum, per example, and its directions mapped back to names: for each top
singular direction, the share of its right vector's squared mass in each parameter leaf, and of its left vector in
each channel (the activation's last axis) and each position (the other axes).

Made by :func:`layersens.derivatives.spectrum`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._repr import Summarized
from ._storage import write_npz

NPZ_FORMAT = "layersens-spectrum/1"
_TOP = 5  # channels and positions listed in a direction's record


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SingularDirection(Summarized):
    """One singular triplet (σ, u, v) of one example's J, by names.

    Attributes:
      example, index: which example, and the rank of σ (0 is the largest).
      value, residual: σ, and the residual bound: some singular value of J lies within ``residual`` of it.
      leaf_shares: ``(leaf, share of ‖v‖² = 1)`` for every differentiated leaf, largest first.
      channel_shares: ``(channels,)``: share of ‖u‖² = 1 in each channel of the layer (its last axis).
      position_shares: ``activation_shape[:-1]``: share of ‖u‖² at each position (summed over channels).
    """

    example: int
    index: int
    value: float
    residual: float
    leaf_shares: tuple[tuple[str, float], ...]
    channel_shares: np.ndarray
    position_shares: np.ndarray

    def _summary(self):
        return [
            ("example", self.example),
            ("index", self.index),
            ("value", f"{self.value:.6g}"),
            ("leaves", tuple(f"{n}: {s:.3f}" for n, s in self.leaf_shares)),
            ("top_channels", tuple(f"{c}: {s:.3f}" for c, s in self.top_channels())),
        ]

    def top_channels(self, count: int = _TOP) -> tuple[tuple[int, float], ...]:
        order = np.argsort(-self.channel_shares, kind="stable")[:count]
        return tuple((int(c), float(self.channel_shares[c])) for c in order)

    def top_positions(self, count: int = _TOP) -> tuple[tuple[tuple[int, ...], float], ...]:
        flat = self.position_shares.reshape(-1)
        order = np.argsort(-flat, kind="stable")[:count]
        return tuple(
            (tuple(int(i) for i in np.unravel_index(at, self.position_shares.shape)), float(flat[at])) for at in order
        )

    def to_dict(self) -> dict:
        return {
            "example": self.example,
            "index": self.index,
            "value": self.value,
            "residual": self.residual,
            "leaf_shares": dict(self.leaf_shares),
            "top_channels": [[c, s] for c, s in self.top_channels()],
            "top_positions": [[list(p), s] for p, s in self.top_positions()],
        }


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Spectrum(Summarized):
    """The ``k`` largest singular values and vectors of J_n (M × P) for each example, with effective ranks.

    Attributes:
      layer, model, param_names, param_shapes, activation_shape: what was differentiated.
      values: ``(examples, k)`` float64, largest first.
      residuals: ``(examples, k)``: a posteriori bounds, sqrt((‖Jv − σu‖² + ‖Jᵀu − σv‖²) / 2): a singular value
        of J lies within each (Weyl's theorem on the augmented matrix [[0, J], [Jᵀ, 0]]).
      left: ``(examples, k, M)``: the left singular vectors u, over the activation's elements (row-major).
      right: ``(examples, k, P)``: the right singular vectors v (columns in ``param_names`` order).
      frobenius_sq, frobenius_sq_stderr, frobenius_exact: ``(examples,)``: ‖J_n‖²_F (exact, or estimated by the
        top-k-deflated Hutchinson estimator with its standard error), for the stable rank.
      method: ``"propack"`` (Golub–Kahan–Lanczos bidiagonalization, restarted), ``"arpack"`` (Lanczos on the smaller
        Gram matrix, where SciPy keeps PROPACK opt-in) or ``"dense"`` (J formed: min(M, P) is small).
      tol: the relative accuracy asked of the singular values (``None``: machine precision).
      passes: ``(examples,)`` products with J or Jᵀ spent.
      seconds: wall time.
    """

    layer: str
    model: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    activation_shape: tuple[int, ...]
    values: np.ndarray
    residuals: np.ndarray
    left: np.ndarray
    right: np.ndarray
    frobenius_sq: np.ndarray
    frobenius_sq_stderr: np.ndarray
    frobenius_exact: np.ndarray
    method: str
    tol: float | None
    passes: np.ndarray
    seconds: float = 0.0

    def _summary(self):
        return [
            ("layer", self.layer),
            ("k", self.k),
            ("values", self.values),
            ("method", self.method),
            ("sigma_1", [float(f"{v:.6g}") for v in self.values[:, 0]]),
            ("stable_rank", [float(f"{v:.4g}") for v in self.stable_rank]),
            ("entropy_rank_top_k", [float(f"{v:.4g}") for v in self.entropy_rank_top_k]),
        ]

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_examples(self) -> int:
        return int(self.values.shape[0])

    @property
    def stable_rank(self) -> np.ndarray:
        """``(examples,)``: ‖J‖²_F / σ₁², over the whole spectrum (‖J‖²_F exact or estimated, see
        ``stable_rank_stderr``)."""
        return self.frobenius_sq / np.square(self.values[:, 0])

    @property
    def stable_rank_stderr(self) -> np.ndarray:
        """``(examples,)``: the standard error of :attr:`stable_rank` from that of ‖J‖²_F (σ₁ taken as exact)."""
        return self.frobenius_sq_stderr / np.square(self.values[:, 0])

    @property
    def entropy_rank_top_k(self) -> np.ndarray:
        """``(examples,)``: exp(H(p)), p_i = σ_i² / Σ_{j≤k} σ_j², over the top k computed values only (at most k)."""
        sq = np.square(self.values)
        p = sq / sq.sum(axis=1, keepdims=True)
        h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        return np.exp(h)

    @property
    def condition_top_k(self) -> np.ndarray:
        """``(examples,)``: σ₁ / σ_k of the computed values: a lower bound on J's condition number."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.values[:, 0] / self.values[:, -1]

    @property
    def leaf_shares(self) -> np.ndarray:
        """``(examples, k, leaves)``: each right vector's squared mass per leaf (``param_names`` order)."""
        sq, out, start = np.square(self.right.astype(np.float64)), [], 0
        for shape in self.param_shapes:
            stop = start + int(np.prod(shape, dtype=np.int64))
            out.append(sq[..., start:stop].sum(axis=-1))
            start = stop
        return np.stack(out, axis=-1)

    def _left_grid(self) -> np.ndarray:
        shape = self.activation_shape or (1,)
        return np.square(self.left.astype(np.float64)).reshape(self.left.shape[:2] + tuple(shape))

    @property
    def channel_shares(self) -> np.ndarray:
        """``(examples, k, channels)``: each left vector's squared mass per channel (the activation's last axis)."""
        grid = self._left_grid()
        return grid.reshape(grid.shape[:2] + (-1, grid.shape[-1])).sum(axis=2)

    @property
    def position_shares(self) -> np.ndarray:
        """``(examples, k) + activation_shape[:-1]``: each left vector's squared mass per position."""
        return self._left_grid().sum(axis=-1)

    def direction(self, index: int = 0, example: int = 0) -> SingularDirection:
        """The ``index``-th singular direction (0: the largest) of ``example``, by names."""
        shares = self.leaf_shares[example, index]
        order = np.argsort(-shares, kind="stable")
        return SingularDirection(
            example=int(example),
            index=int(index),
            value=float(self.values[example, index]),
            residual=float(self.residuals[example, index]),
            leaf_shares=tuple((self.param_names[i], float(shares[i])) for i in order),
            channel_shares=self.channel_shares[example, index],
            position_shares=self.position_shares[example, index],
        )

    def directions(self, example: int = 0) -> tuple[SingularDirection, ...]:
        return tuple(self.direction(i, example) for i in range(self.k))

    def to_dict(self) -> dict:
        """JSON-able numbers: per example the values, residuals, ranks, condition estimate and directions."""
        examples = []
        for n in range(self.num_examples):
            examples.append(
                {
                    "values": [float(v) for v in self.values[n]],
                    "residuals": [float(r) for r in self.residuals[n]],
                    "frobenius_sq": float(self.frobenius_sq[n]),
                    "frobenius_sq_stderr": float(self.frobenius_sq_stderr[n]),
                    "frobenius_exact": bool(self.frobenius_exact[n]),
                    "stable_rank": float(self.stable_rank[n]),
                    "stable_rank_stderr": float(self.stable_rank_stderr[n]),
                    "entropy_rank_top_k": float(self.entropy_rank_top_k[n]),
                    "condition_top_k": float(self.condition_top_k[n]),
                    "passes": int(self.passes[n]),
                    "directions": [d.to_dict() for d in self.directions(n)],
                }
            )
        return {
            "format": NPZ_FORMAT,
            "layer": self.layer,
            "model": self.model,
            "k": self.k,
            "method": self.method,
            "tol": self.tol,
            "seconds": float(self.seconds),
            "examples": examples,
        }

    def save(self, path) -> Path:
        """Writes the values, vectors and norms with :meth:`to_dict` as metadata (format ``layersens-spectrum/1``)
        to ``path`` (``.npz``), atomically."""
        meta = self.to_dict()
        meta.update(
            param_names=list(self.param_names),
            param_shapes=[list(s) for s in self.param_shapes],
            activation_shape=list(self.activation_shape),
        )
        arrays = {
            name: getattr(self, name)
            for name in (
                "values",
                "residuals",
                "left",
                "right",
                "frobenius_sq",
                "frobenius_sq_stderr",
                "frobenius_exact",
                "passes",
            )
        }
        return write_npz(path, arrays, meta)
