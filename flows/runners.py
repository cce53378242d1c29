"""Where a flow's tasks run: a thread pool in the flow's process, or a Dask cluster.

    task_runner("threads")              # default: tasks as threads of the flow run's process
    task_runner("dask")                 # a local Dask cluster started for the flow run
    task_runner("tcp://10.0.0.5:8786")  # an existing Dask scheduler, e.g. with one worker per GPU machine

The teacher members are independent tasks, so on Dask they spread over the cluster's workers.
Workers must see the same home folder (shared storage with working `flock`, see docker/README.md).
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ccd.errors import BadInputError

# A local cluster of threads (no pickling, no extra processes): one worker, a thread per member
# that can train at once. Two threads suit a small CPU machine; a GPU machine trains several.
LOCAL_DASK = {"processes": False, "n_workers": 1, "threads_per_worker": 2}


def task_runner(spec: str = "threads") -> TaskRunner:
    """The task runner named by `spec`: "threads", "dask", or a Dask scheduler address."""
    if spec == "threads":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner  # imported on demand: starting Dask is not free

    if spec == "dask":
        return DaskTaskRunner(cluster_kwargs=LOCAL_DASK)
    if spec.startswith(("tcp://", "tls://")):
        return DaskTaskRunner(address=spec)
    raise BadInputError(f"unknown task runner {spec!r}: use 'threads', 'dask' or a Dask scheduler address (tcp://host:8786)")
