"""Computing: compiled plans run over examples, their blocks handed to a sink (dense, compressed, ...)."""

from ._blocks import JacobianBlock, Layout
from ._cache import PREPARED_KEPT, kept_plans, prepared_for
from ._compile_cache import cache_directory, compile_cache_counts, use_compile_cache
from ._jacobian import check_size, compressed_jacobian, dense_bytes, jacobian, run, stream_jacobian
from ._kernels import KERNELS, Kernel, dense_program, fused_kernel, kernel, one_hot_rows
from ._platform import ACCELERATOR, POLICIES, ExecutionPolicy, execution_policy
from ._prepare import (
    PreparedJacobian,
    compile_plan,
    prepare,
    program_memory,
    resolve_device,
    resolve_devices,
)
from ._processes import join_processes
from ._sensitivity import SensitivitySink, sensitivity
from ._sinks import CompressedSink, DenseSink, Done, Job, Sink, place_diagonal
from ._store_sink import StoreSink, fingerprint
