"""The Dask cluster a run computes on: an existing scheduler, or a LocalCluster for the run."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import dask
from distributed import Client, LocalCluster, default_client, get_worker

from udl.config import RuntimeConfig
from udl.errors import ConfigError
from udl.redact import redact

__all__ = ["compute", "dask_client", "map_parts", "worker_threads"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@contextmanager
def dask_client(runtime: RuntimeConfig) -> Iterator[Client]:
    """Open a Dask client, made the default scheduler inside the block only.

    `Client.as_current` scopes it to the block (and this thread); `set_as_default` would
    make it the process's default, which outlives a block that fails partway and makes every
    later computation in the process wait on a closed cluster.

    With `runtime.dask_address` it connects to that scheduler (whose workers must reach the
    run's paths); otherwise it starts a LocalCluster of worker processes, one thread each,
    with the configured memory limit, and tears it down afterwards.
    """
    if runtime.dask_address:
        # Logs and errors show the address without any password it carries.
        shown = redact(runtime.dask_address)
        log.info("connecting to Dask scheduler %s", shown)
        try:
            client = Client(runtime.dask_address, set_as_default=False)
        except ValueError:
            raise ConfigError(
                f"runtime.dask_address={shown!r} is not a Dask scheduler address "
                "(tcp://host:port or tls://host:port; credentials go in Dask's TLS settings)"
            ) from None
        with client, client.as_current():
            yield client
        return
    with (
        LocalCluster(
            n_workers=runtime.dask_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=runtime.dask_memory_limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
        client.as_current(),
    ):
        log.info("started local Dask cluster with %d workers", runtime.dask_workers)
        yield client


def compute(collection: Any) -> Any:
    """Compute a Dask collection on the active scheduler, or in this process if none is set.

    Inside `dask_client` (or under any client or `dask.config` scheduler the caller chose) the
    work goes there. Without one, Dask would pick a bag's default, a multiprocessing pool
    spawned for the call, which cannot see `memory://` files; udl runs in-process instead.
    """
    if dask.config.get("scheduler", None) is None:
        try:
            default_client()
        except ValueError:
            return collection.compute(scheduler="synchronous")
    return collection.compute()


def map_parts(func: Callable[..., R], items: Sequence[T], name: str, **shared: Any) -> list[R]:
    """``func(item, **shared)`` for each item, one task per item on the active Dask client
    (`dask_client`), results in item order.

    The `shared` values (centroids, a checkpoint's path) are scattered once and reach each
    worker once, not once per task; only the results (small records) come back. Dask runs a
    task whose worker was lost again on another, so `func` must be idempotent: it writes its
    own part under a fixed name (`udl.storage.write_part`), never appends.

    Args:
        name: the tasks' key prefix, as the Dask dashboard shows them.

    Raises:
        ValueError: no client is active.
    """
    client = default_client()
    handles = {key: client.scatter(value, broadcast=True) for key, value in shared.items()}
    token = uuid.uuid4().hex[:8]
    keys = [f"{name}-{token}-{index:05d}" for index in range(len(items))]
    futures = client.map(func, items, key=keys, **handles)
    try:
        return client.gather(futures)
    finally:
        client.cancel([*futures, *handles.values()])


def worker_threads() -> int | None:
    """The thread count of the Dask worker running the caller, or None outside a worker."""
    try:
        return get_worker().state.nthreads
    except ValueError:
        return None
