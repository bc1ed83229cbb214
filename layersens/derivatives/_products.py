"""Products with each example's Jacobian, J V and Jᵀ U, from one linearization: the matrix is never formed."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .._errors import InputShapeError
from .._repr import Summarized
from ..results import write_npz
from ._operator import linearize

if TYPE_CHECKING:
    from ..tracing import LayerSplit

PRODUCTS_FORMAT = "layersens-products/1"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class JacobianProducts(Summarized):
    """J_n V and J_nᵀ U_n of every example n.

    Attributes:
      layer: the layer.
      param_names, param_shapes: the differentiated leaves, the order of the P axis.
      frozen_params: upstream leaves held constant.
      jvp: ``(examples, M, k)``, or ``None`` when no tangents were given.
      vjp: ``(examples, P, k)``, or ``None`` when no cotangents were given.
    """

    layer: str
    param_names: tuple[str, ...]
    param_shapes: tuple[tuple[int, ...], ...]
    frozen_params: tuple[str, ...]
    jvp: np.ndarray | None = None
    vjp: np.ndarray | None = None

    def _summary(self):
        return [("layer", self.layer), ("params", self.param_names), ("jvp", self.jvp), ("vjp", self.vjp)]

    def arrays(self) -> dict[str, np.ndarray]:
        """The products computed, by name (``"jvp"``, ``"vjp"``)."""
        return {name: value for name, value in (("jvp", self.jvp), ("vjp", self.vjp)) if value is not None}

    def save(self, path):
        """Writes the products and the leaf names to ``path`` (``.npz``), atomically."""
        return write_npz(
            path,
            self.arrays(),
            {
                "format": PRODUCTS_FORMAT,
                "layer": self.layer,
                "param_names": list(self.param_names),
                "param_shapes": [list(s) for s in self.param_shapes],
                "frozen_params": list(self.frozen_params),
            },
        )


def products(split: LayerSplit, inputs, tangents=None, cotangents=None) -> JacobianProducts:
    """J V for ``tangents`` (``(P,)``, ``(P, k)`` or ``(examples, P, k)``) and Jᵀ U for ``cotangents``
    (``(examples, M)``, shaped like the activation, or ``(examples, M, k)``), per example.

    Cost: one linearization per example, then k JVPs or pullbacks. Use instead of the Jacobian when only its
    action on a few vectors is needed."""
    if tangents is None and cotangents is None:
        raise InputShapeError("give tangents (--tangents V.npy) or cotangents (--cotangents U.npy), or both.")
    op = linearize(split, inputs)
    return JacobianProducts(
        layer=split.layer,
        param_names=split.param_names,
        param_shapes=split.param_shapes,
        frozen_params=split.frozen,
        jvp=None if tangents is None else op.matmat(np.asarray(tangents)),
        vjp=None if cotangents is None else op.rmatmat(np.asarray(cotangents)),
    )
