"""`prefect deploy --all` for real: Prefect ignores misspelled keys of prefect.yaml silently, so
the only check that counts is what the server holds afterwards."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.prefect

EXPECTED = {
    # name: (work pool, schedule interval in seconds or None, parameters)
    "stream-ingest/lake": ("cpu", 300, {"landing_folder": "data/landing", "until": "ingest"}),
    "stream-ingest/pipeline": ("gpu", 3600, {"landing_folder": "data/landing", "config": {"registry": {"keep_copies": 48}}}),
    "backfill/backfill": ("gpu", None, {"folder": "data/sample"}),
    "retrain/retrain": ("gpu", None, {}),
}


def test_prefect_deploy_all_registers_every_deployment(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.testing.cli import invoke_and_assert
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        for pool in ("cpu", "gpu"):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))

    invoke_and_assert(["--no-prompt", "deploy", "--all"], temp_dir=str(REPO), echo=False)

    with get_client(sync_client=True) as client:
        deployments = {}
        for deployment in client.read_deployments():
            flow = client.read_flow(deployment.flow_id)
            deployments[f"{flow.name}/{deployment.name}"] = deployment
    assert set(deployments) == set(EXPECTED)
    for name, (pool, interval, parameters) in EXPECTED.items():
        deployment = deployments[name]
        assert deployment.work_pool_name == pool, name
        assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == ([interval] if interval else []), name
        assert deployment.parameters == parameters, name
        assert deployment.job_variables == {"working_dir": "."}, name  # workers run flows where they start
        assert deployment.pull_steps == [], name
    for name in ("stream-ingest/lake", "stream-ingest/pipeline"):
        assert deployments[name].global_concurrency_limit.limit == 1
        assert deployments[name].concurrency_options.collision_strategy == "CANCEL_NEW"
