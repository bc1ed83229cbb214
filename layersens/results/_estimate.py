"""Estimates with a stated error: ‖J‖²_F, diag(JᵀJ) (per parameter) or diag(JJᵀ) (per unit) of a layer's Jacobian
J_n, per example, with standard errors, the samples spent and whether the value is exact.

Made by :func:`layersens.derivatives.estimate_frobenius`, ``estimate_parameter_diagonal`` and
``estimate_unit_diagonal``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._repr import Summarized
from ._storage import write_npz

NPZ_FORMAT = "layersens-estimate/1"
QUANTITIES = ("frobenius_sq", "parameter_diagonal", "unit_diagonal")


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Estimate(Summarized):
    """A quantity of each example's Jacobian J_n (M × P), estimated or computed exactly.

    Attributes:
      quantity: ``"frobenius_sq"``: ‖J_n‖²_F = tr(J_nᵀJ_n), ``value`` of shape ``(examples,)``;
        ``"parameter_diagonal"``: diag(J_nᵀJ_n) = Σ_i J[i, p]², ``(examples, P)`` in ``param_names`` order
        (:meth:`per_leaf` reshapes it); ``"unit_diagonal"``: diag(J_nJ_nᵀ) = ‖∂h_i/∂θ‖²,
        ``(examples,) + activation_shape``.
      value, stderr: float64 arrays of that shape; ``stderr`` is the standard error of each entry (0 where exact).
      samples: ``(examples,)``: random probe vectors drawn for each example.
      exact: ``(examples,)`` bool: computed exactly (the switch to exact was cheaper, or asked for).
      passes: ``(examples,)``: products with J_n or J_nᵀ spent (probes, sketch, and the exact computation's passes).
      method: the estimator (``"hutchinson"``, ``"hutch++"``), or ``"exact"`` when every example was exact.
      rtol, max_samples: the stopping rule: probes are drawn until the relative standard error is at most ``rtol``
        (for a vector, in the 2-norm over its entries), or ``max_samples`` are spent.
      layer, model, param_names, param_shapes, activation_shape: what was differentiated.
      seconds: wall time.
    """

    quantity: str
    value: np.ndarray
    stderr: np.ndarray
    samples: np.ndarray
    exact: np.ndarray
    passes: np.ndarray
    method: str
    rtol: float
    max_samples: int
    layer: str
    model: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    activation_shape: tuple[int, ...]
    seconds: float = 0.0

    def _summary(self):
        return [
            ("quantity", self.quantity),
            ("layer", self.layer),
            ("value", self.value),
            ("method", self.method),
            ("samples", [int(s) for s in self.samples]),
            ("exact", [bool(e) for e in self.exact]),
            ("relative_stderr", [float(f"{r:.3g}") for r in self.relative_stderr]),
        ]

    @property
    def num_examples(self) -> int:
        return int(self.value.shape[0])

    @property
    def relative_stderr(self) -> np.ndarray:
        """``(examples,)``: stderr / |value| (for a vector, ‖stderr‖₂ / ‖value‖₂); 0 where both are 0."""
        n = self.num_examples
        err = np.sqrt(np.square(self.stderr.reshape(n, -1)).sum(axis=1))
        size = np.sqrt(np.square(self.value.reshape(n, -1)).sum(axis=1))
        return np.divide(err, size, out=np.where(err > 0, np.inf, 0.0), where=size > 0)

    def per_leaf(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """For ``"parameter_diagonal"``: leaf → (value, stderr), each ``(examples,) + leaf_shape``."""
        if self.quantity != "parameter_diagonal":
            raise ValueError(f"per_leaf() is for parameter_diagonal estimates, not {self.quantity}.")
        out, start = {}, 0
        for name, shape in zip(self.param_names, self.param_shapes):
            stop = start + int(np.prod(shape, dtype=np.int64))
            view = (self.num_examples,) + tuple(shape)
            out[name] = (self.value[:, start:stop].reshape(view), self.stderr[:, start:stop].reshape(view))
            start = stop
        return out

    def to_dict(self) -> dict:
        """JSON-able numbers: per example the value (its sum for a diagonal), its relative standard error, the
        samples and passes spent, and whether it is exact."""
        n = self.num_examples
        totals = self.value.reshape(n, -1).sum(axis=1)
        return {
            "format": NPZ_FORMAT,
            "quantity": self.quantity,
            "layer": self.layer,
            "model": self.model,
            "method": self.method,
            "rtol": float(self.rtol),
            "max_samples": int(self.max_samples),
            "value" if self.quantity == "frobenius_sq" else "sum": [float(t) for t in totals],
            "relative_stderr": [float(r) for r in self.relative_stderr],
            "samples": [int(s) for s in self.samples],
            "passes": [int(p) for p in self.passes],
            "exact": [bool(e) for e in self.exact],
            "seconds": float(self.seconds),
        }

    def save(self, path) -> Path:
        """Writes the arrays and the metadata (format ``layersens-estimate/1``) to ``path`` (``.npz``),
        atomically."""
        meta = self.to_dict()
        meta.update(
            param_names=list(self.param_names),
            param_shapes=[list(s) for s in self.param_shapes],
            activation_shape=list(self.activation_shape),
        )
        return write_npz(
            path,
            {
                "value": self.value,
                "stderr": self.stderr,
                "samples": self.samples,
                "exact": self.exact,
                "passes": self.passes,
            },
            meta,
        )
