"""layersens: Jacobians of a trained network's layer with respect to the parameters that feed it.

The stages, in the order data flows: ``models`` (checkpoints and adapters → Model), ``tracing`` (one trace, cut
at a layer → LayerSplit), ``analysis`` (dependence, channel structure, cost, autodiff limits of that trace),
``planning`` (methods, strategies, chunks → Plan), ``compute`` (compiled plans → results), ``derivatives``
(the Jacobian as an operator, readout gradients and Hessians), ``results`` (LayerJacobian, storage, summaries). ``layersens.bench`` (the benchmark harness) is imported on its own.
"""

from ._errors import (
    CheckpointError,
    InputShapeError,
    InputValueError,
    InputWarning,
    JacobianTooLargeError,
    LayersensError,
    MemoryBudgetError,
    OutputError,
    SpecError,
    TrainModeError,
    UnknownLayerError,
    UntrustedModuleError,
    format_bytes,
)
from .models import (Model, ModelSpec, capture, from_function, from_linen, from_nnx, load_model, read_model_spec,
                     save_model, unbox)
from .tracing import INPUT, LayerInfo, LayerSplit, PrecisionWarning, list_layers, split
from .analysis import ChannelStructure, channel_structure
from .planning import (STRATEGIES, Auto, Forward, PerLeaf, Plan, PlannedBlock, Reverse, Structured,
                       available_memory, parse_bytes, plan)
from .compute import CompressedJacobian, PreparedJacobian, compressed_jacobian, jacobian, prepare
from .derivatives import (LinearizedLayer, ReadoutDerivative, Verification, hessian, hvp, linearize,
                          readout_gradient, verify)
from .results import JacobianSummary, LayerJacobian, LeafSummary, load_jacobian, summarize
from ._extract import extract, extract_products, extract_readout, read_inputs

__version__ = "0.1.0"
