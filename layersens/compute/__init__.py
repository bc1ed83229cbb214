"""Computing: compiled plans run over examples, their values placed into dense or compressed results."""

from ._prepare import DEVICE_DENSE_MAX_BYTES, PreparedJacobian, prepare, resolve_device
from ._jacobian import check_size, jacobian
from ._compressed import CompressedJacobian, compressed_jacobian
