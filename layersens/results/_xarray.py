"""Named dimensions for results as xarray objects: one helper for every result type's ``to_xarray``."""

from __future__ import annotations

from .._errors import LayersensError


def xarray_module(what: str):
    """The xarray module, or an error saying how to install it."""
    try:
        import xarray
    except ImportError:
        raise LayersensError(f"{what} needs xarray: pip install xarray (or 'layersens[xarray]')") from None
    return xarray


def activation_dims(shape) -> tuple[str, ...]:
    """Names of a layer's per-example axes: ``(height, width, channel)`` for a 3-axis activation, else
    ``unit_axis0, ...``."""
    return ("height", "width", "channel") if len(shape) == 3 else tuple(f"unit_axis{k}" for k in range(len(shape)))


def leaf_dims(name: str, ndim: int) -> tuple[str, ...]:
    """Names of a parameter leaf's axes: ``<leaf>_axis0, ...``."""
    return tuple(f"{name}_axis{k}" for k in range(ndim))
