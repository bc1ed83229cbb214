"""The empirical neural tangent kernel of one layer across examples: Θ[n, m] = Σ_i ⟨∂h_i(x_n)/∂θ, ∂h_i(x_m)/∂θ⟩
= tr(J_n J_mᵀ) with the activation axes traced, or the full block Θ[n, i, m, j] = (J_n J_mᵀ)[i, j].

Made by :func:`layersens.derivatives.layer_ntk`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._repr import Summarized
from ._storage import write_npz

NPZ_FORMAT = "layersens-ntk/1"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LayerNTK(Summarized):
    """The layer's empirical NTK with respect to its upstream parameters.

    Attributes:
      values: float64, ``(examples, examples)`` when ``trace_axes`` (tr(J_n J_mᵀ)), else
        ``(examples, M, examples, M)`` ((J_n J_mᵀ)[i, j], the activation's elements row-major).
      trace_axes: whether the activation axes were traced.
      method: ``"contraction"`` (the dense Jacobian from the structured plan, contracted) or ``"products"``
        (chunks of the identity pushed through each example's linearization and contracted as they come).
      passes: products with J or Jᵀ per example (the plan's passes for a contraction).
      layer, model, param_names, activation_shape: what was differentiated.
      seconds: wall time.
    """

    values: np.ndarray
    trace_axes: bool
    method: str
    passes: int
    layer: str
    model: str
    param_names: tuple[str, ...]
    activation_shape: tuple[int, ...]
    seconds: float = 0.0

    def _summary(self):
        return [
            ("layer", self.layer),
            ("values", self.values),
            ("trace_axes", self.trace_axes),
            ("method", self.method),
            ("passes", self.passes),
            ("seconds", f"{self.seconds:.3g}"),
        ]

    @property
    def num_examples(self) -> int:
        return int(self.values.shape[0])

    @property
    def matrix(self) -> np.ndarray:
        """The kernel as a square matrix: ``(examples, examples)``, or ``(examples·M, examples·M)`` untraced."""
        n = self.num_examples
        return self.values.reshape(n, n) if self.trace_axes else self.values.reshape(n * self.values.shape[1], -1)

    def to_dict(self) -> dict:
        """JSON-able numbers: the traced kernel itself (the full block is summarized by its shape, trace and
        Frobenius norm)."""
        out = {
            "format": NPZ_FORMAT,
            "layer": self.layer,
            "model": self.model,
            "trace_axes": self.trace_axes,
            "method": self.method,
            "passes": int(self.passes),
            "shape": list(self.values.shape),
            "trace": float(np.trace(self.matrix)),
            "frobenius": float(np.linalg.norm(self.matrix)),
            "seconds": float(self.seconds),
        }
        if self.trace_axes:
            out["values"] = [[float(v) for v in row] for row in self.values]
        return out

    def save(self, path) -> Path:
        """Writes the kernel with :meth:`to_dict` as metadata (format ``layersens-ntk/1``) to ``path`` (``.npz``),
        atomically."""
        meta = self.to_dict()
        meta.update(param_names=list(self.param_names), activation_shape=list(self.activation_shape))
        return write_npz(path, {"values": self.values}, meta)
