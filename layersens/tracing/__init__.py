"""Cutting a model at a layer: one trace of the model, the layer's jaxpr, its upstream parameters."""

from ._complex import COMPLEX_MODES, ComplexMode, ComplexParts, as_complex_mode, require_real
from ._select import INPUT, Differentiated, Wrt, WrtKind, as_wrt
from ._split import LayerInfo, LayerSplit, PrecisionWarning, draws_random, list_layers, split
from ._trace import ModelTrace, cast_floating, check_dtype, trace_model
