"""What one layer's Jacobian J_n (M × P per example) does, without J: its exact sensitivity (‖J‖_F, diag(JᵀJ) per
parameter, ‖∂h_i/∂θ‖ per unit), the top of its spectrum and the traced empirical NTK across examples.

Made by :func:`layersens.summarize_layer`; drawn and written up by ``layersens.report``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from .._repr import Summarized
from ._sensitivity import Sensitivity

if TYPE_CHECKING:
    from ._ntk import LayerNTK
    from ._spectral import Spectrum

FORMAT = "layersens-layer-summary/1"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class LayerSummary(Summarized):
    """A layer's sensitivity, spectrum and NTK, per example, every number exact or with a stated bound.

    Attributes:
      sensitivity: the exact :class:`Sensitivity` (diag(JᵀJ), unit norms, ‖J‖_F), from every chunk of J.
      spectrum: the top ``k`` singular values and directions (a ``Spectrum``), its ‖J‖²_F replaced by the exact
        value, so that its stable rank is exact too; ``None`` only when ``k=0`` was asked.
      ntk: the traced empirical NTK tr(J_n J_mᵀ) across examples (a ``LayerNTK``), or ``None`` (``ntk=False``).
      seconds: wall time of the whole summary.
      notes: what the user must know about the spectrum or the NTK (the sensitivity's are its own).
    """

    sensitivity: Sensitivity
    spectrum: Spectrum | None = None
    ntk: LayerNTK | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    def _summary(self):
        return [
            ("layer", self.layer),
            ("model", self.model),
            ("examples", self.num_examples),
            ("activation_shape", self.activation_shape),
            ("params", self.sensitivity.param_names),
            ("frobenius", tuple(float(f"{v:.4g}") for v in self.frobenius)),
            (
                "sigma",
                None
                if self.singular_values is None
                else tuple(tuple(float(f"{v:.4g}") for v in row) for row in self.singular_values),
            ),
            ("stable_rank", None if self.stable_rank is None else tuple(float(f"{v:.4g}") for v in self.stable_rank)),
            ("ntk", self.ntk is not None),
            ("seconds", f"{self.seconds:.3g}"),
        ]

    layer = property(lambda self: self.sensitivity.layer)
    model = property(lambda self: self.sensitivity.model)
    activation_shape = property(lambda self: self.sensitivity.activation_shape)
    num_examples = property(lambda self: self.sensitivity.num_examples)

    @property
    def frobenius(self) -> np.ndarray:
        """``(examples,)``: ‖J_n‖_F, exact."""
        return self.sensitivity.frobenius

    @property
    def singular_values(self) -> np.ndarray | None:
        """``(examples, k)``: the largest singular values of each J_n, largest first."""
        return None if self.spectrum is None else self.spectrum.values

    @property
    def stable_rank(self) -> np.ndarray | None:
        """``(examples,)``: the effective (stable) rank ‖J‖²_F / σ₁², exact (the whole spectrum counted)."""
        if self.spectrum is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.square(self.frobenius) / np.square(self.spectrum.values[:, 0])

    @property
    def entropy_rank(self) -> np.ndarray | None:
        """``(examples,)``: exp(entropy of σ_i² / Σ σ_j²) over the top ``k`` values only (at most ``k``)."""
        return None if self.spectrum is None else self.spectrum.entropy_rank_top_k

    @property
    def condition_top_k(self) -> np.ndarray | None:
        """``(examples,)``: σ₁ / σ_k, a lower bound on each J_n's condition number."""
        return None if self.spectrum is None else self.spectrum.condition_top_k

    def leaf_shares(self) -> dict[str, float]:
        """Leaf → its share of Σ_n ‖J_n‖²_F (the shares add up to 1), in ``param_names`` order."""
        totals = self.sensitivity.leaf_totals()
        whole = sum(totals.values())
        return {name: (value / whole if whole > 0 else 0.0) for name, value in totals.items()}

    def channel_shares(self, leaf: str) -> np.ndarray:
        """``(C,)``: the share of Σ_n ‖J_n‖²_F within ``leaf`` of each index on its last axis: a Flax kernel's
        output channels (an ``(out, in)`` or ``OIHW`` kernel's are its first axis: sum ``sensitivity.parameter``
        over the axes you want)."""
        whole = float(np.sum(np.square(self.frobenius)))
        per = self.sensitivity.per_channel(leaf).sum(axis=0)
        return per / whole if whole > 0 else per * 0.0

    def unit_map(self) -> np.ndarray:
        """``activation_shape``: ‖∂h_i/∂θ‖ averaged over examples (the per-unit sensitivity map)."""
        return self.sensitivity.unit.mean(axis=0)

    def top_units(self, count: int = 5) -> list[tuple[tuple[int, ...], float]]:
        """The ``count`` units with the largest share of Σ_n ‖J_n‖²_F: ``(index, share)``, largest first."""
        whole = float(np.sum(np.square(self.frobenius))) or 1.0
        return [(e.index, e.value / whole) for e in self.sensitivity.top_units(count)]

    def top_parameters(self, count: int = 5) -> list[tuple[str, tuple[int, ...], float]]:
        """The ``count`` single parameters with the largest share of Σ_n ‖J_n‖²_F: ``(leaf, index, share)``."""
        whole = float(np.sum(np.square(self.frobenius))) or 1.0
        return [(e.leaf, e.index, e.value / whole) for e in self.sensitivity.top_parameters(count)]

    def to_dict(self) -> dict:
        """Every number a report shows, JSON-able: per example ‖J‖_F, the top singular values (with residual
        bounds), effective ranks, the condition estimate and the top directions by leaf and channel; per leaf its
        share and its channels' shares; the top units and parameters; the traced NTK."""
        s = self.sensitivity
        examples, sp = [], self.spectrum
        with np.errstate(divide="ignore", invalid="ignore"):  # J = 0: NaN
            stable = np.square(self.frobenius) / np.square(sp.values[:, 0]) if sp is not None else None
        for n in range(self.num_examples):
            row: dict = {"frobenius": float(self.frobenius[n])}
            if sp is not None and stable is not None:
                row.update(
                    singular_values=[float(v) for v in sp.values[n]],
                    residuals=[float(v) for v in sp.residuals[n]],
                    stable_rank=float(stable[n]),
                    entropy_rank_top_k=float(sp.entropy_rank_top_k[n]),
                    condition_top_k=float(sp.condition_top_k[n]),
                    passes=int(sp.passes[n]),
                    directions=[d.to_dict() for d in sp.directions(n)],
                )
            examples.append(row)
        shares = self.leaf_shares()
        leaves = []
        for name, shape in zip(s.param_names, s.param_shapes):
            channels = self.channel_shares(name)
            leaves.append(
                {
                    "name": name,
                    "shape": list(shape),
                    "share": shares[name],
                    "frobenius_sq": [float(v) for v in s.parameter[name].reshape(self.num_examples, -1).sum(axis=1)],
                    "channel_shares": [float(v) for v in channels],
                    "top_channel": int(np.argmax(channels)) if channels.size else None,
                }
            )
        whole = float(np.sum(np.square(self.frobenius))) or 1.0
        return {
            "format": FORMAT,
            "layer": self.layer,
            "model": self.model,
            "examples": self.num_examples,
            "activation_shape": list(self.activation_shape),
            "num_outputs": int(np.prod(self.activation_shape)),
            "num_params": int(sum(np.prod(shape) for shape in s.param_shapes)),
            "wrt": s.wrt,
            "mode": s.mode,
            "device": s.device,
            "k": None if self.spectrum is None else self.spectrum.k,
            "spectrum_method": None if self.spectrum is None else self.spectrum.method,
            "seconds": float(self.seconds),
            "notes": list(s.notes) + list(self.notes),
            "per_example": examples,
            "leaves": leaves,
            "unit_channel_shares": [float(v) for v in s.unit_channels().sum(axis=0) / whole],
            "top_units": [{"index": list(i), "share": v} for i, v in self.top_units(10)],
            "top_parameters": [{"leaf": leaf, "index": list(i), "share": v} for leaf, i, v in self.top_parameters(10)],
            "ntk": None if self.ntk is None else self.ntk.to_dict(),
        }

    def to_xarray(self):
        """An ``xarray.Dataset``: the sensitivity's variables (:meth:`Sensitivity.to_xarray`), with
        ``singular_values`` over ``(example, singular_index)`` and ``ntk`` over ``(example, example_other)``."""
        data = self.sensitivity.to_xarray()
        if self.spectrum is not None:
            data["singular_values"] = (("example", "singular_index"), self.spectrum.values)
            data["stable_rank"] = (("example",), self.stable_rank)
        if self.ntk is not None and self.ntk.trace_axes:
            data["ntk"] = (("example", "example_other"), self.ntk.values)
        return data

    def plot(self, kind: str = "overview"):
        """A matplotlib ``Figure`` (no pyplot state): ``"overview"`` (leaf shares, spectrum, channel sensitivity),
        ``"parameters"``, ``"units"`` or ``"spectrum"``. Needs matplotlib."""
        from ..report import summary_figure

        return summary_figure(self, kind)
