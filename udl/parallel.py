"""The Dask cluster a run computes on: an existing scheduler, or a LocalCluster for the run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask
from distributed import Client, LocalCluster, default_client

from udl.config import RuntimeConfig
from udl.errors import ConfigError
from udl.redact import redact

__all__ = ["compute", "dask_client"]

log = logging.getLogger(__name__)


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
