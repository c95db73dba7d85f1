"""One job over several JAX processes (hosts of a TPU pod slice, GPU nodes), via jax.distributed.

Every process runs the same program: it loads the models, builds the global mesh (every
process's devices: the data axis across hosts, the model axis within one), and runs the
same compiled steps; XLA's collectives carry the data (gloo on CPUs). Process 0 alone
reads and writes the workdir and prints; what the others need of it (which records exist,
whether the workdir was refused) reaches them through :func:`broadcast_json`.

Starting: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` on each
process (:func:`define_flags`), or nothing where JAX finds the cluster itself (TPU pod
slices, SLURM, Open MPI; :func:`detected`). Failures end in one line: a coordinator port
already in use (checked before JAX would crash on it), a peer that died (the next
collective fails, or the heartbeat times out after ``--heartbeat_timeout`` seconds).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable

import numpy as np

_FLAGS = {}


class DistributedError(RuntimeError):
    """The processes could not start together, or one of them stopped (one line)."""


def define_flags() -> None:
    """Defines the multi-process flags in absl's flags (once per program)."""
    from absl import flags

    if _FLAGS:
        return
    _FLAGS["address"] = flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0 (several processes; see docs)."
    )
    _FLAGS["count"] = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
    _FLAGS["index"] = flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
    _FLAGS["heartbeat"] = flags.DEFINE_integer(
        "heartbeat_timeout", 60, "Seconds without a peer's heartbeat before the run stops."
    )
    _FLAGS["init"] = flags.DEFINE_integer(
        "initialization_timeout", 300, "Seconds to wait for every process to join."
    )


def initialize_from_flags() -> bool:
    """:func:`initialize` with the flags of :func:`define_flags`."""
    f = {k: v.value for k, v in _FLAGS.items()}
    return initialize(f["address"], f["count"], f["index"], f["heartbeat"], f["init"])


def detected() -> str | None:
    """The cluster JAX can join without flags, named from the environment (None: none)."""
    env = os.environ
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "TPU pod slice"
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return "SLURM"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "Open MPI"
    return None


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None,
    process_id: int | None = None, heartbeat_timeout: int = 60,
    initialization_timeout: int = 300,
) -> bool:  # fmt: skip
    """Joins this process to the run (``jax.distributed.initialize``) before any device is
    used; returns whether it did (False: one process, nothing to join).

    Raises:
      DistributedError: flags given only in part, a process id out of range, or process
        0's coordinator port already in use.
    """
    given = [x is not None for x in (coordinator_address, num_processes, process_id)]
    if not any(given) and detected() is None:
        return False
    if any(given) and not all(given):
        raise DistributedError(
            "give all of --coordinator_address, --num_processes and --process_id, or none "
            "(where JAX finds the cluster itself: TPU pod slices, SLURM, Open MPI)"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(
                f"--process_id must be in [0, {num_processes}), got {process_id}"
            )
        if process_id == 0:
            _check_port(coordinator_address)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs only
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id,
            heartbeat_timeout_seconds=heartbeat_timeout,
            initialization_timeout=initialization_timeout,
        )  # fmt: skip
    except Exception as e:  # JAX reports a failed join as several exception types
        raise DistributedError(f"could not join the run at {coordinator_address}: {e}") from e
    return True


def _check_port(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise DistributedError(f"--coordinator_address must be HOST:PORT, got {address!r}")
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        try:
            s.bind(("", int(port)))
        except OSError as e:
            raise DistributedError(
                f"port {port} of --coordinator_address={address} is in use ({e.strerror}); "
                "pick a free port for process 0"
            ) from None


def process_index() -> int:
    import jax

    return jax.process_index()


def is_main() -> bool:
    """Whether this is process 0, the one that reads and writes files and prints."""
    return process_index() == 0


def broadcast_json(value) -> object:
    """Process 0's ``value`` (JSON-able), on every process; ``value`` itself with one
    process."""
    import jax

    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main() else None
    size = multihost_utils.broadcast_one_to_all(np.int64(0 if data is None else data.size))
    buffer = data if is_main() else np.zeros(int(size), np.uint8)
    out = multihost_utils.broadcast_one_to_all(buffer)
    return json.loads(np.asarray(out, np.uint8).tobytes().decode())


PEER_FAILURE = ("Connection closed by peer", "Connection reset", "heartbeat", "Gloo", "gloo")


def exit_on_peer_failure(fn: Callable[[], object]) -> object:
    """Runs ``fn``; when a collective fails because another process stopped, prints one
    line and leaves at once (``os._exit``: JAX's own shutdown would wait for the missing
    process and then abort with a stack dump)."""
    import jax

    if jax.process_count() == 1:
        return fn()
    try:
        return fn()
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if not any(s in text for s in PEER_FAILURE):
            raise
        first = text.splitlines()[0][:300]
        print(
            f"error: process {jax.process_index()}: another process of this run stopped "
            f"({first}); exiting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
