"""Complex-valued layers and parameters: made a real problem at the split, under one of three stated conventions.

Every method, plan and analysis downstream works on real Jacobians. A complex layer ``h`` of parameters
``θ = x + iy`` is therefore cut as a real function of real leaves (``x`` and ``y`` for each complex leaf) whose
output is ``Re h``, or ``[Re h; Im h]`` stacked on a leading axis of 2. The conventions, as NetKet's
``jacobian(mode=...)`` defines them:

* ``real``: ``∂ Re h / ∂(x, y)``; complex leaf ``w`` becomes the real columns ``w.real`` and ``w.imag``. The
  real problem *is* the answer: every path (compressed, store, summaries) takes it.
* ``complex``: ``h`` itself, a complex Jacobian; a real leaf gives ``∂h/∂w``, a complex leaf its two Wirtinger
  parts, ``w`` (``∂h/∂θ = ½(∂h/∂x − i ∂h/∂y)``) and ``conj(w)`` (``∂h/∂θ̄ = ½(∂h/∂x + i ∂h/∂y)``), so that
  ``dh = ∂h/∂θ dθ + ∂h/∂θ̄ dθ̄``.
* ``holomorphic``: for ``h`` holomorphic in its complex leaves (checked, see :func:`check_holomorphic`), the one
  complex Jacobian ``∂h/∂θ = ∂h/∂x`` (``jax.jacrev(..., holomorphic=True)``).

:class:`ComplexParts` says how a real problem's Jacobian becomes the stated one (:meth:`~ComplexParts.combine`)
and back (:meth:`~ComplexParts.separate`, for spot checks against the real problem).
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

from .._errors import SelectionError

REAL_PART, IMAG_PART = ".real", ".imag"


class ComplexMode(enum.Enum):
    """How a complex layer's Jacobian is stated (see the module docstring)."""

    REAL = "real"
    COMPLEX = "complex"
    HOLOMORPHIC = "holomorphic"


COMPLEX_MODES = tuple(m.value for m in ComplexMode)


def as_complex_mode(value) -> ComplexMode | None:
    """``None`` (complex values refused), a :class:`ComplexMode` or its name."""
    if value is None or isinstance(value, ComplexMode):
        return value
    try:
        return ComplexMode(str(value).lower())
    except ValueError:
        raise SelectionError(
            f"complex_mode is {value!r}; choose one of {', '.join(COMPLEX_MODES)} (--complex real|complex|"
            "holomorphic): see the README's 'Complex-valued models'."
        ) from None


def is_complex(dtype) -> bool:
    return bool(jnp.issubdtype(np.dtype(dtype), jnp.complexfloating))


def conjugate_name(name: str) -> str:
    """The column label of the Wirtinger part ``∂h/∂θ̄`` of complex leaf ``name``."""
    return f"conj({name})"


@dataclasses.dataclass(frozen=True)
class ComplexParts:
    """How a split with complex values was made real, and how its real Jacobian becomes the stated one.

    Attributes:
      mode: the convention.
      leaves, shapes: the differentiated leaves as the model has them, in column order.
      complex_leaves: those of them that are complex.
      stacked: the real problem's rows are ``[Re h; Im h]`` (a leading axis of 2 on the layer's shape).
      dtype: the dtype of the stated Jacobian (complex unless ``mode`` is ``real``).
    """

    mode: ComplexMode
    leaves: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    complex_leaves: tuple[str, ...]
    stacked: bool
    dtype: str

    @property
    def combines(self) -> bool:
        """Whether the stated Jacobian differs from the real problem's (``complex`` and ``holomorphic``)."""
        return self.mode is not ComplexMode.REAL

    def real_leaves(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The real problem's leaves (its columns): ``w.real`` and ``w.imag`` for a complex leaf (only ``w.real``
        in holomorphic mode, the imaginary part held constant), a real leaf as it is."""
        out: list[tuple[str, tuple[int, ...]]] = []
        for name, shape in zip(self.leaves, self.shapes):
            if name not in self.complex_leaves:
                out.append((name, shape))
            elif self.mode is ComplexMode.HOLOMORPHIC:
                out.append((name + REAL_PART, shape))
            else:
                out += [(name + REAL_PART, shape), (name + IMAG_PART, shape)]
        return tuple(out)

    def stated_leaves(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The stated Jacobian's columns: ``w`` and ``conj(w)`` (Wirtinger parts) for a complex leaf in complex
        mode, ``w`` in holomorphic mode, the real problem's columns in real mode."""
        shapes = dict(self.real_leaves())
        return tuple((name, shapes[sources[0]]) for name, sources in self.sources().items())

    def sources(self) -> dict[str, tuple[str, ...]]:
        """Each stated leaf (in column order) → the real problem's leaves its columns are made of
        (:meth:`state_columns`): ``(w.real, w.imag)`` for both Wirtinger parts of a complex leaf, ``(w.real,)`` in
        holomorphic mode, the leaf itself otherwise."""
        out: dict[str, tuple[str, ...]] = {}
        for name in self.leaves:
            if name not in self.complex_leaves:
                out[name] = (name,)
            elif self.mode is ComplexMode.HOLOMORPHIC:
                out[name] = (name + REAL_PART,)
            elif self.mode is ComplexMode.COMPLEX:
                out[name] = out[conjugate_name(name)] = (name + REAL_PART, name + IMAG_PART)
            else:
                out[name + REAL_PART], out[name + IMAG_PART] = (name + REAL_PART,), (name + IMAG_PART,)
        return out

    def restricted(self, leaves) -> ComplexParts:
        """These parts over the model's leaves ``leaves`` only (in their order here): how a Jacobian over some of
        the columns is stated (the dense part of a compressed Jacobian)."""
        keep = set(leaves)
        at = [i for i, name in enumerate(self.leaves) if name in keep]
        return dataclasses.replace(
            self,
            leaves=tuple(self.leaves[i] for i in at),
            shapes=tuple(self.shapes[i] for i in at),
            complex_leaves=tuple(n for n in self.complex_leaves if n in keep),
        )

    def state_rows(self, real: np.ndarray, imag: np.ndarray | None = None) -> np.ndarray:
        """Stated rows from the real problem's: ``real + i imag`` from its rows ``Re h`` and ``Im h`` (``imag``
        given exactly when :attr:`stacked`), else ``real`` in the stated dtype."""
        assert (imag is not None) == self.stacked, "imaginary rows exactly when the rows are stacked"
        if imag is None:
            return real.astype(self.dtype)
        out = np.empty(real.shape, self.dtype)
        out.real, out.imag = real, imag
        return out

    def state_columns(self, stated: str, columns) -> np.ndarray:
        """Stated leaf ``stated``'s columns from the columns of its :meth:`sources` (rows already stated):
        ``w`` = ½(∂x − i ∂y) and ``conj(w)`` = ½(∂x + i ∂y) from ∂x and ∂y; otherwise the one source as it is."""
        if len(columns) == 1:
            return columns[0]
        dx, dy = columns
        sign = 1 if stated == conjugate_name(self.sources()[stated][0][: -len(REAL_PART)]) else -1
        return (0.5 * (dx + sign * 1j * dy)).astype(self.dtype, copy=False)

    def describe(self) -> dict:
        """These parts as JSON (a store's metadata; :meth:`from_description` reads them back)."""
        return {
            "mode": self.mode.value,
            "leaves": list(self.leaves),
            "shapes": [list(s) for s in self.shapes],
            "complex_leaves": list(self.complex_leaves),
            "stacked": self.stacked,
            "dtype": self.dtype,
        }

    @classmethod
    def from_description(cls, described: dict) -> ComplexParts:
        """The parts :meth:`describe` wrote (``ValueError``, ``KeyError`` or ``TypeError`` if they are not)."""
        parts = cls(
            mode=ComplexMode(described["mode"]),
            leaves=tuple(str(n) for n in described["leaves"]),
            shapes=tuple(tuple(int(d) for d in s) for s in described["shapes"]),
            complex_leaves=tuple(str(n) for n in described["complex_leaves"]),
            stacked=bool(described["stacked"]),
            dtype=str(np.dtype(described["dtype"])),
        )
        if len(parts.leaves) != len(parts.shapes) or not set(parts.complex_leaves) <= set(parts.leaves):
            raise ValueError(f"complex leaves {parts.complex_leaves} of leaves {parts.leaves}, shapes {parts.shapes}")
        if is_complex(parts.dtype) != parts.combines:
            raise ValueError(f"complex mode {parts.mode.value!r} with a stated dtype {parts.dtype}")
        return parts

    def convention(self) -> str:
        """One line for the result's notes and metadata."""
        if self.mode is ComplexMode.REAL:
            return (
                "complex mode 'real': the Jacobian of the layer's real part; complex leaf w is the real columns "
                "w.real and w.imag."
            )
        if self.mode is ComplexMode.COMPLEX:
            return (
                "complex mode 'complex': the complex Jacobian of the layer; complex leaf w gives the Wirtinger "
                "parts w = ∂h/∂θ = ½(∂h/∂x − i ∂h/∂y) and conj(w) = ∂h/∂θ̄ = ½(∂h/∂x + i ∂h/∂y)."
            )
        return "complex mode 'holomorphic': the complex Jacobian ∂h/∂θ of a layer holomorphic in its complex leaves."

    def combine(self, matrix: np.ndarray) -> np.ndarray:
        """The stated Jacobian ``(examples, M, P)`` from the real problem's ``(examples, M or 2M, P_real)``."""
        if not self.combines:
            return matrix
        m = matrix.shape[1] // 2 if self.stacked else matrix.shape[1]
        rows = self.state_rows(matrix[:, :m], matrix[:, m:] if self.stacked else None)
        at, real = 0, {}
        for name, shape in self.real_leaves():
            size = int(np.prod(shape, dtype=np.int64))
            real[name], at = slice(at, at + size), at + size
        sizes = [int(np.prod(s, dtype=np.int64)) for _, s in self.stated_leaves()]
        out = np.empty(rows.shape[:2] + (sum(sizes),), self.dtype)
        at = 0
        for (stated, sources), size in zip(self.sources().items(), sizes):
            out[:, :, at : at + size] = self.state_columns(stated, [rows[:, :, real[s]] for s in sources])
            at += size
        return out

    def separate(self, matrix: np.ndarray) -> np.ndarray:
        """The real problem's Jacobian from the stated one (the inverse of :meth:`combine`)."""
        if not self.combines:
            return matrix
        columns = []
        at = 0
        for name, shape in zip(self.leaves, self.shapes):
            size = int(np.prod(shape, dtype=np.int64))
            d = matrix[:, :, at : at + size]
            if name in self.complex_leaves and self.mode is ComplexMode.COMPLEX:
                dbar = matrix[:, :, at + size : at + 2 * size]
                columns += [d + dbar, 1j * (d - dbar)]  # ∂h/∂x and ∂h/∂y
                at += 2 * size
            else:
                columns.append(d)
                at += size
        c = np.concatenate(columns, axis=2)
        real = np.finfo(self.dtype).dtype
        return np.concatenate([c.real, c.imag], axis=1).astype(real) if self.stacked else c.real.astype(real)

    def activation(self, values: np.ndarray) -> np.ndarray:
        """The layer's values ``(examples,) + shape`` from the real problem's (stacked on axis 1)."""
        if not self.combines or not self.stacked:
            return values
        return (values[:, 0] + 1j * values[:, 1]).astype(self.dtype)


def real_layer(jaxpr: jcore.ClosedJaxpr, inputs: tuple[str, ...], parts: ComplexParts):
    """The real problem's jaxpr and input names: ``jaxpr`` (``(*inputs) -> (h,)``) with each complex leaf read as
    its real and imaginary parts, and its output made real as ``parts`` says."""
    layer = jcore.jaxpr_as_fun(jaxpr)
    names: list[str] = []
    avals = []
    for name, aval in zip(inputs, jaxpr.in_avals):
        if name in parts.complex_leaves:
            real = jax.ShapeDtypeStruct(aval.shape, np.finfo(aval.dtype).dtype)
            names += [name + REAL_PART, name + IMAG_PART]
            avals += [real, real]
        else:
            names.append(name)
            avals.append(jax.ShapeDtypeStruct(aval.shape, aval.dtype))

    def real_valued(*args):
        it = iter(args)
        values = [lax.complex(next(it), next(it)) if n in parts.complex_leaves else next(it) for n in inputs]
        (h,) = layer(*values)
        if not is_complex(h.dtype):
            return h
        if parts.mode is ComplexMode.REAL:
            return jnp.real(h)
        return jnp.stack([jnp.real(h), jnp.imag(h)])

    return jax.make_jaxpr(real_valued)(*avals), tuple(names)


def _at_example(apply, x, params):
    return apply(params, x)


def check_holomorphic(apply, params: dict, complex_leaves, examples, layer: str, num_directions: int = 3) -> str:
    """Checks the Cauchy–Riemann equations of ``apply(params, x)`` in the leaves ``complex_leaves`` along
    ``num_directions`` random complex directions ``v`` at each example: the derivative along ``i v`` must be
    ``i`` times the one along ``v``. Raises where it is not (beyond √eps of the derivative's size); returns a note
    saying what was checked. Cost: 2 JVPs per direction and example."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for x in examples:
        for _ in range(num_directions):
            v = {
                n: (
                    (rng.standard_normal(np.shape(p)) + 1j * rng.standard_normal(np.shape(p))).astype(p.dtype)
                    if n in complex_leaves
                    else np.zeros(np.shape(p), p.dtype)
                )
                for n, p in params.items()
            }
            at_example = functools.partial(_at_example, apply, x)
            along = jax.jvp(at_example, (params,), (v,))[1]
            rotated = jax.jvp(at_example, (params,), ({n: 1j * t for n, t in v.items()},))[1]
            scale = float(jnp.max(jnp.abs(along))) or 1.0
            worst = max(worst, float(jnp.max(jnp.abs(rotated - 1j * along))) / scale)
    dtype = next(iter(params.values())).dtype
    tolerance = 10 * float(np.sqrt(np.finfo(dtype).eps))
    if not worst <= tolerance:
        raise SelectionError(
            f"layer {layer!r} is not holomorphic in its complex parameters ({', '.join(complex_leaves)}): along i·v "
            f"its derivative is not i times the one along v (Cauchy–Riemann fails by {worst:.2g} of its size; "
            "abs, conj, real or imag on the way break it). Use complex_mode='complex' (--complex complex) for the "
            "Jacobian and the conjugate Jacobian (Wirtinger parts), or 'real' for the real part's."
        )
    return (
        f"holomorphic: Cauchy–Riemann checked along {num_directions} random directions at {len(examples)} "
        f"example(s), largest deviation {worst:.2g} of the derivative's size."
    )


def require_real(split, what: str) -> None:
    """Refuses ``split`` where ``what`` (a path that takes real Jacobians only) would state a complex one."""
    parts = split.complex
    if parts is not None and parts.combines:
        raise SelectionError(
            f"{what} takes real Jacobians, and complex_mode={parts.mode.value!r} states a complex one. Compute it in "
            "memory (layersens.jacobian; extract --out FILE.npz) and summarize that (layersens.summarize; "
            "layersens summarize FILE.npz), or split with complex_mode='real' (--complex real), the real part's "
            "Jacobian, which every path takes."
        )
