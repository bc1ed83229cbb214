"""layersens: Jacobians of a trained network's layer with respect to the parameters that feed it.

The stages, in the order data flows: ``models`` (checkpoints and adapters → Model), ``tracing`` (one trace, cut
at a layer → LayerSplit), ``analysis`` (dependence, channel structure, cost, autodiff limits of that trace),
``planning`` (methods, strategies, chunks → Plan), ``compute`` (compiled plans → blocks → sinks), ``results``
(LayerJacobian, CompressedJacobian, storage, summaries), ``derivatives`` (the Jacobian as an operator, readout
gradients and Hessians), ``summaries`` (a layer's sensitivity, spectrum and NTK in one result; a model's
profile against depth). ``layersens.bench`` (the benchmark harness) and ``layersens.report`` (figures and
reports; matplotlib) are imported on their own.

Importing the package is cheap: each name below is imported from its stage on first use (JAX with it), so the
command line answers ``--help`` without loading JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._errors import (
    BudgetError,
    CheckpointError,
    DeviceError,
    InputShapeError,
    InputValueError,
    InputWarning,
    JacobianTooLargeError,
    LayersensError,
    MemoryBudgetError,
    ModeError,
    OutputError,
    SelectionError,
    SpecError,
    TrainModeError,
    UnknownLayerError,
    UntrustedModuleError,
    format_bytes,
)
from ._jax_versions import warn_if_broken
from ._modes import MODE_ALIASES, MODE_NAMES

__version__ = "0.1.0"

warn_if_broken()  # a JAX release known to compute wrong values (reads installed metadata; JAX is not imported)

# name → the module that defines it (relative to this package); one entry per public name.
_LAZY = {
    **dict.fromkeys(
        (
            "Model",
            "ModelSpec",
            "capture",
            "from_function",
            "from_linen",
            "from_nnx",
            "load_model",
            "read_model_spec",
            "save_model",
            "unbox",
        ),
        ".models",
    ),
    **dict.fromkeys(
        (
            "INPUT",
            "Differentiated",
            "LayerInfo",
            "LayerSplit",
            "PrecisionWarning",
            "Wrt",
            "WrtKind",
            "list_layers",
            "split",
        ),
        ".tracing",
    ),
    **dict.fromkeys(("ChannelStructure", "channel_structure"), ".analysis"),
    **dict.fromkeys(
        (
            "STRATEGIES",
            "Strategy",
            "Auto",
            "Forward",
            "PerLeaf",
            "Plan",
            "PlannedBlock",
            "Reverse",
            "Structured",
            "available_memory",
            "parse_bytes",
            "plan",
        ),
        ".planning",
    ),
    **dict.fromkeys(
        (
            "CompressedSink",
            "DenseSink",
            "PreparedJacobian",
            "SensitivitySink",
            "Sink",
            "compressed_jacobian",
            "jacobian",
            "join_processes",
            "prepare",
            "sensitivity",
            "stream_jacobian",
            "use_compile_cache",
        ),
        ".compute",
    ),
    **dict.fromkeys(
        (
            "JacobianProducts",
            "LinearizedLayer",
            "ReadoutDerivative",
            "Verification",
            "hessian",
            "hvp",
            "linearize",
            "products",
            "readout_gradient",
            "verify",
        ),
        ".derivatives",
    ),
    **dict.fromkeys(
        ("estimate_frobenius", "estimate_parameter_diagonal", "estimate_unit_diagonal", "layer_ntk", "spectrum"),
        ".derivatives",
    ),
    **dict.fromkeys(
        (
            "CompressedJacobian",
            "JacobianSummary",
            "LayerJacobian",
            "LeafSummary",
            "Sensitivity",
            "StoredJacobian",
            "load_jacobian",
            "summarize",
        ),
        ".results",
    ),
    **dict.fromkeys(("Estimate", "LayerNTK", "SingularDirection", "Spectrum"), ".results"),
    **dict.fromkeys(("LayerSummary", "ProfileRow", "SensitivityProfile"), ".results"),
    **dict.fromkeys(("profile", "summarize_layer"), ".summaries"),
    **dict.fromkeys(("extract", "extract_products", "extract_readout", "read_inputs"), "._extract"),
}
_SUBPACKAGES = (
    "models",
    "tracing",
    "analysis",
    "planning",
    "compute",
    "derivatives",
    "results",
    "summaries",
    "examples",
)

__all__ = sorted(
    [
        "BudgetError",
        "CheckpointError",
        "DeviceError",
        "InputShapeError",
        "InputValueError",
        "InputWarning",
        "JacobianTooLargeError",
        "LayersensError",
        "MemoryBudgetError",
        "ModeError",
        "OutputError",
        "SelectionError",
        "SpecError",
        "TrainModeError",
        "UnknownLayerError",
        "UntrustedModuleError",
        "format_bytes",
        "MODE_ALIASES",
        "MODE_NAMES",
        *_LAZY,
    ]
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'layersens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
