"""Several processes (hosts) on one job, with ``jax.distributed``: each computes its share of (example, plan block)
pairs, on its own local devices, and writes what it computed into one store on a shared disk. Writes never
overlap: a store's slabs belong to one (example, leaf) each, and each leaf to one plan block; the ledger entries
of all processes together make the record of what is done.

Only sinks marked ``shared`` are split this way (the store); any other sink gets the whole computation in every
process, so a multi-process run is never silently partial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax

from .._errors import DeviceError

if TYPE_CHECKING:
    from ._sinks import Sink


def join_processes(coordinator: str, num_processes: int, process_id: int) -> None:
    """Joins a run of ``num_processes`` processes coordinated at ``coordinator`` (``host:port``, the address of
    process 0) as process ``process_id``. Call it before anything else uses JAX. On CPU, the processes meet through
    gloo collectives (a barrier after each process has written its share)."""
    if not 0 <= process_id < num_processes:
        raise DeviceError(f"process id {process_id} is outside 0 to {num_processes - 1} (--num-processes).")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(
            f"cannot join the run at {coordinator} as process {process_id} of {num_processes} ({e}); start every "
            "process with the same --coordinator and --num-processes, each with its own --process-id."
        ) from None


def process_share(sink: Sink) -> tuple[int, int]:
    """(processes, this process's index) among which ``sink``'s blocks are shared: a multi-process run
    (``jax.distributed``) splits the work of a shared sink; every other sink gets all of it in each process."""
    if not sink.shared or jax.process_count() == 1:
        return 1, 0
    return jax.process_count(), jax.process_index()


def finish_share(processes: int) -> None:
    """Waits for every process of a shared run to finish its share (a barrier over the processes)."""
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("layersens: every share written")
