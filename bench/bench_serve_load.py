"""Load test of `ccd serve`: 10,000 requests on loopback from a second process, p50/p99 and errors.

The server runs as `ccd serve` in a subprocess; this process is the client: an asyncio loop with
one httpx connection pool and `--concurrency` workers (the bound on requests in flight) sending
`GET /recommend?user=...&k=20`. Users are drawn from the lake's known users, with a share of
unknown ids that take the popular-items fallback. With `--swap`, a second student version is
promoted halfway through: the server must pick it up without errors or a restart.

Without `--home`, a fresh home is built in a temporary folder from `data/sample`: blocks 0 and 1
ingested, one BPR student per block (block 0's promoted; block 1's registered for `--swap`).

    .venv/bin/python bench/bench_serve_load.py                       # 10,000 requests, 16 in flight
    .venv/bin/python bench/bench_serve_load.py --requests 10000 --concurrency 16 --swap --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from ccd import registry
from ccd.config import RunConfig, TrainConfig
from ccd.home import Home
from ccd.lake import catalog
from ccd.lake.ingest import ingest_block
from ccd.lake.store import load_block_data
from ccd.models import BPRConfig, build_model, io
from ccd.train import train

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
STARTUP_SECONDS = 180.0


def prepare_home(home: Home, epochs: int, dim: int) -> None:
    """Ingest sample blocks 0-1 and register a BPR student per block; promote block 0's."""
    for block in (0, 1):
        ingest_block(home, SAMPLE / f"block_{block}.parquet", block, RunConfig().lake)
        data = load_block_data(home, block)
        model = build_model(BPRConfig(dim=dim, seed=block), data.n_users, data.n_items)
        train(model, data, TrainConfig(max_epochs=epochs, device="cpu"), progress=False)
        folder = io.save(model, home.model_dir(block, "student"))
        version = registry.register(home, "student", folder, block, "bench", {"h_recall@20": 0.0}, model.parameter_count())
        if block == 0:
            registry.promote(home, "student", version.version, "bench_serve_load: initial")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), None elsewhere.

    On a shared machine, latency percentiles include waiting for a core; the server's CPU time
    per request is the steadier measure of its own cost.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Home, port: int, log_path: Path) -> subprocess.Popen:
    """`ccd serve` in a subprocess; returns once `/health` answers 200."""
    command = [sys.executable, "-m", "ccd", "serve", "--home", str(home.root), "--port", str(port),
               "--set", "serving.refresh_seconds=0.5"]
    server = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"ccd serve exited with {server.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"ccd serve did not become healthy within {STARTUP_SECONDS:.0f} s; see {log_path}")


async def load(base: str, users: list[str], concurrency: int, on_half=None) -> dict:
    """Send one request per entry of `users`, at most `concurrency` in flight; time each."""
    latencies = np.zeros(len(users))
    statuses: list[int] = [0] * len(users)
    versions: dict[int, int] = {}
    fallbacks = 0
    queue = iter(range(len(users)))
    half = len(users) // 2
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        async def worker() -> None:
            nonlocal fallbacks
            for i in queue:
                if i == half and on_half is not None:
                    await asyncio.to_thread(on_half)
                start = time.perf_counter()
                try:
                    response = await client.get("/recommend", params={"user": users[i], "k": 20})
                    statuses[i] = response.status_code
                except httpx.HTTPError:
                    statuses[i] = -1
                latencies[i] = time.perf_counter() - start
                if statuses[i] == 200:
                    body = response.json()
                    fallbacks += body["fallback"] is not None
                    versions[body["model"]["version"]] = versions.get(body["model"]["version"], 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start

    ms = latencies * 1000
    return {
        "requests": len(users), "concurrency": concurrency, "seconds": round(wall, 2),
        "requests_per_s": round(len(users) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2), "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2),
        "errors": sum(s != 200 for s in statuses), "fallback_answers": fallbacks,
        "answers_by_version": {str(k): v for k, v in sorted(versions.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="home with a production student (default: build one from data/sample)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--unknown-share", type=float, default=0.1, help="share of requests for unknown users")
    parser.add_argument("--swap", action="store_true", help="promote the next student version halfway through")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the built students")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ccd-bench-serve-") as scratch:
        home = Home.resolve(args.home or Path(scratch) / "home")
        if args.home is None:
            prepare_home(home, args.epochs, args.dim)
        known = catalog.id_map(home, "user")
        known = known.loc[known["first_block"] <= registry.get(home, "student").block, "external_id"].to_numpy(object)
        rng = np.random.default_rng(0)
        users = [f"nobody-{i}" if rng.random() < args.unknown_share else str(rng.choice(known)) for i in range(args.requests)]

        swap = None
        if args.swap:
            current = registry.get(home, "student").version
            later = [v.version for v in registry.list_versions(home, "student") if v.version > current]
            if not later:
                raise SystemExit("--swap needs a registered student version newer than production")
            swap = lambda: registry.promote(home, "student", later[0], "bench_serve_load: swap under load")

        port = free_port()
        server = start_server(home, port, Path(scratch) / "serve.log")
        try:
            before, client_before = cpu_seconds(server.pid), time.process_time()
            result = asyncio.run(load(f"http://127.0.0.1:{port}", users, args.concurrency, swap))
            after, client_cpu = cpu_seconds(server.pid), time.process_time() - client_before
            if before is not None and after is not None:
                result["server_cpu_ms_per_request"] = round(1000 * (after - before) / args.requests, 3)
            result["client_cpu_ms_per_request"] = round(1000 * client_cpu / args.requests, 3)
        finally:
            server.terminate()
            server.wait(timeout=30)
    result.update({"cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "swap": args.swap})
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}  {value}")


if __name__ == "__main__":
    main()
