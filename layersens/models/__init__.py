"""Model intake: checkpoints and specs in, a framework-free :class:`Model` out."""

from ._function import capture, from_function
from ._linen import from_linen, unbox
from ._load import load_model, read_model_spec
from ._model import OUTPUT, Model, flatten_captured, flatten_params, ravel_leaves, unflatten_params
from ._nnx import from_nnx
from ._save import save_model
from ._spec import ModelSpec
