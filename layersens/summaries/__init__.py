"""Answers without the matrix: a layer's exact sensitivity, spectrum and NTK in one summary
(:func:`summarize_layer`), a model's sensitivity against depth (:func:`profile`), and every result file read back
for display (:func:`read_result`). Reports and figures are ``layersens.report``'s."""

from ._files import OtherResult, read_result
from ._layer import summarize_layer
from ._profile import NO_PARAMETERS, profile
from ._run import profile_model, summarize_model
