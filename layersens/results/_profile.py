"""A sensitivity profile: for every addressable layer of a model, in depth order, how strongly its activation moves
with the parameters upstream of it (‖J‖_F), along how many directions (σ₁, stable rank) and through which leaves.

Made by :func:`layersens.profile`; drawn and written up by ``layersens.report``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._repr import Summarized

FORMAT = "layersens-profile/1"


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ProfileRow(Summarized):
    """One layer of a :class:`SensitivityProfile`.

    Attributes:
      layer, depth: the layer's name and its position in ``layersens.list_layers(model)`` (0 = first).
      shape, num_params: its per-example shape, and the number of upstream parameters (J's columns).
      frobenius: ``(examples,)``: ‖J_n‖_F, exact.
      singular_values: ``(examples, k)``: the largest singular values of each J_n.
      leaf_shares: ``(leaf, share of Σ_n ‖J_n‖²_F)`` for every upstream leaf, largest first.
      seconds: wall time spent on this layer.
    """

    layer: str
    depth: int
    shape: tuple[int, ...]
    num_params: int
    frobenius: np.ndarray
    singular_values: np.ndarray
    leaf_shares: tuple[tuple[str, float], ...]
    seconds: float = 0.0

    def _summary(self):
        return [
            ("layer", self.layer),
            ("depth", self.depth),
            ("shape", self.shape),
            ("params", self.num_params),
            ("frobenius_mean", f"{self.frobenius_mean:.4g}"),
            ("sigma_1_mean", f"{self.sigma_1_mean:.4g}"),
            ("stable_rank_mean", f"{self.stable_rank_mean:.4g}"),
            ("top_leaves", self.top_leaves()),
        ]

    @property
    def frobenius_mean(self) -> float:
        """‖J_n‖_F averaged over examples."""
        return float(np.mean(self.frobenius))

    @property
    def sigma_1(self) -> np.ndarray:
        """``(examples,)``: the top singular value σ₁ of each J_n."""
        return self.singular_values[:, 0]

    @property
    def sigma_1_mean(self) -> float:
        return float(np.mean(self.sigma_1))

    @property
    def stable_rank(self) -> np.ndarray:
        """``(examples,)``: the effective (stable) rank ‖J_n‖²_F / σ₁², exact."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.square(self.frobenius) / np.square(self.sigma_1)

    @property
    def stable_rank_mean(self) -> float:
        return float(np.mean(self.stable_rank))

    def top_leaves(self, count: int = 3) -> tuple[tuple[str, float], ...]:
        """The ``count`` leaves with the largest share of ‖J‖²_F, largest first."""
        return self.leaf_shares[:count]

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "depth": self.depth,
            "shape": list(self.shape),
            "num_params": self.num_params,
            "frobenius": [float(v) for v in self.frobenius],
            "frobenius_mean": self.frobenius_mean,
            "singular_values": [[float(v) for v in row] for row in self.singular_values],
            "sigma_1_mean": self.sigma_1_mean,
            "stable_rank": [float(v) for v in self.stable_rank],
            "stable_rank_mean": self.stable_rank_mean,
            "leaf_shares": [{"leaf": name, "share": share} for name, share in self.leaf_shares],
            "seconds": float(self.seconds),
        }


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class SensitivityProfile(Summarized):
    """Per-layer sensitivity of one model, in depth order.

    Attributes:
      model: the model's name.
      rows: one :class:`ProfileRow` per layer that has upstream parameters, in ``list_layers`` order.
      skipped: ``(layer, why)`` for the layers left out (no parameter reaches them: they depend on the input
        alone).
      num_examples, k: examples per layer, and singular values computed per example.
      seconds: wall time.
    """

    model: str
    rows: tuple[ProfileRow, ...]
    skipped: tuple[tuple[str, str], ...]
    num_examples: int
    k: int
    seconds: float = 0.0

    def _summary(self):
        return [
            ("model", self.model),
            ("layers", tuple(r.layer for r in self.rows)),
            ("skipped", tuple(name for name, _ in self.skipped)),
            ("examples", self.num_examples),
            ("k", self.k),
            ("seconds", f"{self.seconds:.3g}"),
        ]

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(row.layer for row in self.rows)

    def __getitem__(self, layer: str) -> ProfileRow:
        for row in self.rows:
            if row.layer == layer:
                return row
        raise KeyError(f"{layer!r} is not in the profile; its layers are {list(self.layers)}.")

    def to_dict(self) -> dict:
        """Every number a report shows, JSON-able."""
        return {
            "format": FORMAT,
            "model": self.model,
            "examples": self.num_examples,
            "k": self.k,
            "seconds": float(self.seconds),
            "rows": [row.to_dict() for row in self.rows],
            "skipped": [{"layer": name, "why": why} for name, why in self.skipped],
        }

    def to_xarray(self):
        """An ``xarray.Dataset`` over ``(layer, example)``: ``frobenius``, ``sigma_1``, ``stable_rank``, with the
        layers' ``depth`` as a coordinate. Needs xarray."""
        from ._xarray import xarray_module as _xarray

        xr = _xarray("SensitivityProfile.to_xarray")
        stack = lambda values: np.stack(values) if values else np.zeros((0, self.num_examples))  # noqa: E731
        return xr.Dataset(
            {
                "frobenius": (("layer", "example"), stack([r.frobenius for r in self.rows])),
                "sigma_1": (("layer", "example"), stack([r.sigma_1 for r in self.rows])),
                "stable_rank": (("layer", "example"), stack([r.stable_rank for r in self.rows])),
            },
            coords={
                "layer": list(self.layers),
                "depth": ("layer", [r.depth for r in self.rows]),
                "example": np.arange(self.num_examples),
            },
            attrs={"model": self.model},
        )

    def plot(self):
        """‖J‖_F, σ₁ and the stable rank against depth: a matplotlib ``Figure`` (no pyplot state). Needs
        matplotlib."""
        from ..report import profile_figure

        return profile_figure(self)
