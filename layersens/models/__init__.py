"""Model intake: checkpoints and specs in, a framework-free :class:`Model` out."""

from ._model import OUTPUT, Model, flatten_captured, flatten_params, unflatten_params
from ._linen import from_linen, unbox
from ._function import capture, from_function
from ._nnx import from_nnx
from ._spec import ModelSpec
from ._checkpoint import load_model, read_model_spec, save_model
