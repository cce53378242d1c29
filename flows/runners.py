"""Where a flow's tasks run: a thread pool in the flow's process, or a Dask cluster.

    task_runner("threads", home)              # default: tasks as threads of the flow run's process
    task_runner("dask", home)                 # a local Dask cluster started for the flow run
    task_runner("tcp://10.0.0.5:8786", home)  # an existing Dask scheduler, e.g. with one worker per GPU machine

The teacher members are independent tasks, so on Dask they spread over the cluster's workers.
Workers must see the same home folder (shared storage with working `flock`, see docker/README.md).
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from ccd.errors import BadInputError
from ccd.home import Home

# A local cluster of threads (no pickling, no extra processes): one worker, a thread per member
# that can train at once. Two threads suit a small CPU machine; a GPU machine trains several.
LOCAL_DASK = {"processes": False, "n_workers": 1, "threads_per_worker": 2}


def task_runner(spec: str, home: Home) -> TaskRunner:
    """The task runner named by `spec`: "threads", "dask", or a Dask scheduler address.

    A local Dask cluster keeps its scratch space (`dask-scratch-space/`, lock files) in
    `<home>/cache/dask` rather than the system's temporary folder: all state lives in the home.
    """
    if spec == "threads":
        return ThreadPoolTaskRunner()
    import dask  # imported on demand: starting Dask is not free
    from prefect_dask import DaskTaskRunner

    if spec == "dask":
        scratch = str(home.root / "cache" / "dask")
        # The workers take `local_directory`; the scheduler's lock files follow the process-wide
        # setting, which stays set for this flow-run process (one flow run, one home).
        dask.config.set({"temporary-directory": scratch})
        return DaskTaskRunner(cluster_kwargs={**LOCAL_DASK, "local_directory": scratch})
    if spec.startswith(("tcp://", "tls://")):
        return DaskTaskRunner(address=spec)
    raise BadInputError(f"unknown task runner {spec!r}: use 'threads', 'dask' or a Dask scheduler address (tcp://host:8786)")
