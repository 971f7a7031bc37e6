r"""Multi-host runs: one process per host (or per accelerator), joined by `jax.distributed`.

How to launch (every process runs the same script; only ``process_id`` differs)::

    # host 0 (also the coordinator), host 1, ... host K-1:
    python train.py --coordinator host0:12345 --num-processes K --process-id $I

    # train.py
    from eoslab import parallel
    parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    obj = ...                                     # the same full objective on every host
    obj = parallel.shard_objective(obj)           # examples over all K hosts' devices
    # ... then train / probe exactly as on one host

Under SLURM, Open MPI or Cloud TPU the three arguments can be left out (``initialize()``):
``jax.distributed.initialize`` reads them from the environment. ``initialize`` must run before
anything touches ``jax.devices()`` or creates an array. After it, ``jax.devices()`` lists the
devices of all processes and ``jax.local_devices()`` this process's.

On CPU, cross-process collectives use Gloo (``jax_cpu_collectives_implementation="gloo"``,
set here unless ``cpu_collectives=None``); several CPU devices per process come from
``XLA_FLAGS=--xla_force_host_platform_device_count=N``. On localhost, for tests::

    for i in 0 1; do python script.py --coordinator localhost:12345 \
        --num-processes 2 --process-id $i & done
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import jax

from ..errors import ConfigError

__all__ = ["free_port", "initialize", "shutdown"]


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    timeout_s: int = 300,
) -> None:
    """Join (or start, for process 0) a multi-process JAX job.

    Args:
        coordinator: ``"host:port"`` of process 0, reachable from every process.
        num_processes: $K$, the number of processes.
        process_id: this process's rank in ``[0, K)``.
        local_device_ids: restrict this process to some of its local accelerators.
        cpu_collectives: CPU cross-process collectives backend (``"gloo"``, ``"mpi"``, or None to
            leave JAX's default).
        timeout_s: how long to wait for the other processes.

    Raises:
        ConfigError: only some of the three coordinates given, or out of range.
    """
    given = [a is not None for a in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError(
            "coordinator/num_processes/process_id",
            (coordinator, num_processes, process_id),
            "all three, or none (taken from SLURM/MPI/TPU environment)",
        )
    if all(given):
        if not isinstance(coordinator, str) or ":" not in coordinator:
            raise ConfigError("coordinator", coordinator, "'host:port'")
        if (
            isinstance(num_processes, bool)
            or not isinstance(num_processes, int)
            or num_processes < 1
        ):
            raise ConfigError("num_processes", num_processes, "an int >= 1")
        if (
            isinstance(process_id, bool)
            or not isinstance(process_id, int)
            or not 0 <= process_id < num_processes
        ):
            raise ConfigError("process_id", process_id, f"an int in [0, {num_processes})")
    if cpu_collectives is not None:
        if cpu_collectives not in ("gloo", "mpi"):
            raise ConfigError("cpu_collectives", cpu_collectives, "'gloo', 'mpi' or None")
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )


def shutdown() -> None:
    """Leave the multi-process job (optional at exit)."""
    jax.distributed.shutdown()


def free_port() -> int:
    """A TCP port free on localhost now (for single-machine multi-process tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
