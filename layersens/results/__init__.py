"""Results: the dense and compressed Jacobians, their storage and their summaries."""

from ._compressed import CompressedJacobian
from ._estimate import Estimate
from ._layer_summary import LayerSummary
from ._ntk import LayerNTK
from ._profile import ProfileRow, SensitivityProfile
from ._result import LayerJacobian, load_jacobian_npz
from ._sensitivity import Entry, Sensitivity, load_sensitivity
from ._spectral import SingularDirection, Spectrum
from ._storage import check_output, check_store_output, is_store_path, npz_path, read_npz, write_npz
from ._store_format import STATED_STORE_FORMAT, STORE_FORMAT, StoredArray, slabs_along
from ._stored import StoredJacobian, StoredLeaf, is_store, load_jacobian, open_store
from ._summary import JacobianSummary, LeafSummary, summarize
