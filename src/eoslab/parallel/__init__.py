"""Scale-out: sharded full-batch objectives, multi-host setup, micro-batching.

* `shard_objective(obj, devices=N)`: examples sharded over N devices; every eoslab function runs
  unchanged with XLA collectives.
* `shard_params(obj, devices=N)`: the flat parameter vector split over the same N devices
  (FSDP: all-gathered inside the loss; gradients, HVPs and eigenvectors stay in shards).
* `microbatched(obj, batch_size=B)` / ``memory_budget_bytes=...``: the full-batch loss and its
  derivatives accumulated over blocks inside one compiled loop.
* `initialize(coordinator, num_processes, process_id)`: multi-host via ``jax.distributed``.
"""

from ..mean_objective import batch_size_of as batch_size_of
from .distributed import free_port as free_port
from .distributed import initialize as initialize
from .distributed import shutdown as shutdown
from .microbatch import MicrobatchPlan as MicrobatchPlan
from .microbatch import microbatched as microbatched
from .microbatch import plan_microbatch as plan_microbatch
from .sharding import compiled_collectives as compiled_collectives
from .sharding import data_mesh as data_mesh
from .sharding import is_sharded as is_sharded
from .sharding import params_sharded as params_sharded
from .sharding import shard_objective as shard_objective
from .sharding import shard_params as shard_params

__all__ = [
    "MicrobatchPlan",
    "batch_size_of",
    "compiled_collectives",
    "data_mesh",
    "free_port",
    "initialize",
    "is_sharded",
    "microbatched",
    "params_sharded",
    "plan_microbatch",
    "shard_objective",
    "shard_params",
    "shutdown",
]
