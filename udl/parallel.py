"""The Dask cluster a run computes on: an existing scheduler, or a LocalCluster for the run."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import dask
from distributed import Client, LocalCluster, as_completed, default_client, get_worker, wait

from udl.config import RuntimeConfig
from udl.errors import ConfigError
from udl.redact import redact

__all__ = [
    "cluster_per_run",
    "compute",
    "dask_client",
    "iter_parts",
    "map_parts",
    "worker_threads",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _RunCluster:
    """The local cluster shared by the steps of one flow run (see `cluster_per_run`)."""

    lock = threading.Lock()  # two steps on two threads must not start two clusters
    scoped = False
    cluster: LocalCluster | None = None
    settings: tuple[int, str] | None = None


@contextmanager
def cluster_per_run() -> Iterator[None]:
    """Let every step of the block share one LocalCluster, started by the first step that
    needs one and closed when the block ends.

    A LocalCluster takes seconds to start and each worker imports torch and loads the
    checkpoint again, once per step otherwise. A step asking for other worker settings than
    the shared cluster's gets a cluster of its own.
    """
    if _RunCluster.scoped:
        yield
        return
    _RunCluster.scoped = True
    try:
        yield
    finally:
        cluster, _RunCluster.cluster, _RunCluster.settings = _RunCluster.cluster, None, None
        _RunCluster.scoped = False
        if cluster is not None:
            cluster.close()


def _local_cluster(runtime: RuntimeConfig) -> LocalCluster:
    cluster = LocalCluster(
        n_workers=runtime.dask_workers,
        threads_per_worker=1,
        processes=True,
        memory_limit=runtime.dask_memory_limit,
        dashboard_address=None,
    )
    log.info("started local Dask cluster with %d workers", runtime.dask_workers)
    return cluster


@contextmanager
def _connected(target: str | LocalCluster) -> Iterator[Client]:
    with Client(target, set_as_default=False) as client, client.as_current():
        yield client


@contextmanager
def dask_client(runtime: RuntimeConfig) -> Iterator[Client]:
    """Open a Dask client, made the default scheduler inside the block only.

    `Client.as_current` scopes it to the block (and this thread); `set_as_default` would
    make it the process's default, which outlives a block that fails partway and makes every
    later computation in the process wait on a closed cluster.

    With `runtime.dask_address` it connects to that scheduler (whose workers must reach the
    run's paths); otherwise it uses a LocalCluster of worker processes, one thread each, with
    the configured memory limit: the run's shared one inside `cluster_per_run`, else one
    started for the block and torn down after it.
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
    settings = (runtime.dask_workers, runtime.dask_memory_limit)
    with _RunCluster.lock:
        shared = _RunCluster.scoped and _RunCluster.settings in (None, settings)
        if shared and _RunCluster.cluster is None:
            _RunCluster.cluster, _RunCluster.settings = _local_cluster(runtime), settings
        cluster = _RunCluster.cluster if shared else None
    if cluster is not None:
        with _connected(cluster) as client:
            yield client
        return
    with _local_cluster(runtime) as cluster, _connected(cluster) as client:
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
    (`dask_client`), results in item order (see `iter_parts`)."""
    return list(iter_parts(func, items, name, **shared))


def iter_parts(func: Callable[..., R], items: Sequence[T], name: str, **shared: Any) -> Iterator[R]:
    """``func(item, **shared)`` for each item, one task per item on the active Dask client
    (`dask_client`), yielded in item order as they finish.

    The `shared` values (centroids, a checkpoint's path) are scattered once and reach each
    worker once, not once per task; only the results (small records) come back, and each is
    released once yielded, so the caller holds the results that finished ahead of their turn,
    not all of them. Dask runs a task whose worker was lost again on another, so `func` must
    be idempotent: it writes its own part under a fixed name (`udl.storage.write_part`). When
    a task fails, the others are waited for before its error is raised, so that none still
    writes into a folder the caller then removes.

    Args:
        name: the tasks' key prefix, as the Dask dashboard shows them.

    Raises:
        ValueError: no client is active.
    """
    client = default_client()
    handles = {key: client.scatter(value, broadcast=True) for key, value in shared.items()}
    token = uuid.uuid4().hex[:8]
    keys = [f"{name}-{token}-{index:05d}" for index in range(len(items))]
    # The shared values travel in one dict: as keywords of `Client.map` itself, a name such as
    # `batch_size` or `workers` would set the map's own option.
    futures = client.map(_apply, items, key=keys, task=func, shared=handles)
    position = {future.key: index for index, future in enumerate(futures)}
    pending = dict(zip(keys, futures, strict=True))
    done: dict[int, R] = {}
    following = 0
    try:
        for future in as_completed(futures):
            done[position[future.key]] = future.result()
            pending.pop(future.key).release()
            while following in done:
                yield done.pop(following)
                following += 1
    except BaseException:
        wait(futures)
        raise
    finally:
        client.cancel([*pending.values(), *handles.values()])


def _apply(item: Any, task: Callable[..., R], shared: dict[str, Any]) -> R:
    return task(item, **shared)


def worker_threads() -> int | None:
    """The thread count of the Dask worker running the caller, or None outside a worker."""
    try:
        return get_worker().state.nthreads
    except ValueError:
        return None
