"""Connecting to Ray for `--engine ray`: a local Ray on this machine's cores, or a running cluster.

`--address local` (the default) starts a private Ray with `num_cpus` = the cores this
process may use, and stops it afterwards; `auto` joins the cluster `ray start` runs on this
machine; `ray://HOST:PORT` joins a remote cluster through Ray Client. Ray is imported only
here and only when asked for (`pip install "fastslow[ray]"`); it is never needed by the
local engine.

Ray prints its own logs and Ray Data its own progress bars; both are turned off so that
stderr carries fastslow's progress and stdout stays clean JSON Lines. Usage statistics
are off (this tool makes no network calls of its own).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastslow_cli.errors import FastslowError, UsageError, one_line

LOCAL = "local"
INSTALL_HINT = 'install Ray with `pip install "fastslow[ray]"`'
# Actors claim a fraction of a CPU so that Ray Data's read and split tasks still get
# scheduled beside them on a 2-core machine (DESIGN.md, Known traps: an actor pool that
# claims every CPU never progresses there).
ACTOR_CPUS = 0.5


def import_ray() -> Any:
    """The `ray` module, or a one-line error naming the install command."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not only the core
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Data ({exc.name or 'ray'} is not installed): {INSTALL_HINT}") from exc
    return ray


def check_address(address: str | None) -> str:
    """`local`, `auto` or `ray://HOST:PORT` (or a bare HOST:PORT of a cluster's GCS)."""
    value = (address or LOCAL).strip()
    if not value:
        raise UsageError("--address is empty: use local, auto or ray://HOST:PORT")
    return value


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray connected for the duration of one command; yields the `ray` module.

    A session this call started (`local`) is shut down on exit, as is a connection it
    made; a Ray already initialised in this process (a notebook, a test) is reused and left
    running.
    """
    ray = import_ray()
    target = check_address(address)
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "configure_logging": True,
    }
    if target == LOCAL:
        kwargs["num_cpus"] = num_cpus or len(os.sched_getaffinity(0))
    else:
        kwargs["address"] = target
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        where = "start a local Ray" if target == LOCAL else f"reach the Ray cluster at {target!r}"
        hint = "" if target == LOCAL else " (is `ray start --head` running there? is the address right?)"
        raise FastslowError(f"could not {where}: {one_line(exc)}{hint}") from exc
    quiet_ray_data()
    try:
        yield ray
    finally:
        ray.shutdown()


def quiet_ray_data() -> None:
    """No Ray Data progress bars or per-operator log lines on our stderr."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    for attr in ("enable_operator_progress_bars", "print_on_execution_start", "verbose_stats_logs"):
        if hasattr(context, attr):
            setattr(context, attr, False)
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def map_on_actors(dataset: Any, actor: type, *, workers: int, gpus_per_worker: float, **kwargs: Any) -> Any:
    """`dataset.map_batches(actor, **kwargs)` on a pool of `workers` actors (ACTOR_CPUS CPUs
    and `gpus_per_worker` GPUs each) that Ray never restarts or retries: the actors keep the
    failures they can survive to themselves (a decoder crash stays in its process, an
    encoder error comes back as a row), so a failure Ray sees is one to report, not repeat."""
    import ray.data

    with warnings.catch_warnings():
        # Ray 2.60 deprecates `ray_remote_args` but names no other way to turn off actor
        # restarts and task retries: keep its warning off our stderr.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        warnings.simplefilter("ignore", DeprecationWarning)
        mapped = dataset.map_batches(
            actor,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=ACTOR_CPUS,
            num_gpus=gpus_per_worker or None,
            max_restarts=0,
            max_task_retries=0,
            **kwargs,
        )
    context = mapped.context  # this job's, not the session's: a reused Ray keeps its own settings
    for name, value in (("actor_task_retry_on_errors", False), ("actor_init_retry_on_errors", False),
                        ("max_consecutive_actor_init_deaths", 0), ("max_errored_blocks", 0)):
        if hasattr(context, name):
            setattr(context, name, value)
    return mapped
