"""layersens: Jacobians of a trained network's layer with respect to the parameters that feed it."""

from ._adapters import Model, from_linen, from_nnx
from ._checkpoint import load_model, read_model_spec, save_model
from ._bench import BenchmarkReport, run_benchmark, write_report
from ._bench_methods import available_methods as benchmark_methods
from ._compressed import CompressedJacobian, compressed_jacobian
from ._errors import (
    CheckpointError,
    InputShapeError,
    JacobianTooLargeError,
    LayersensError,
    SpecError,
    TrainModeError,
    UnknownLayerError,
    UntrustedModuleError,
)
from ._extract import extract, read_inputs
from ._jacobian import PlannedBlock, jacobian, plan
from ._result import LayerJacobian, load_jacobian
from ._spec import ModelSpec
from ._split import LayerInfo, LayerSplit, list_layers, split
from ._strategies import Auto, Forward, PerLeaf, Reverse, Structured
from ._structure import ChannelStructure, channel_structure
from ._summary import JacobianSummary, LeafSummary, summarize

__version__ = "0.1.0"
