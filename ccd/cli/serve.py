"""Serving commands: `ccd recommend` (one answer) and `ccd serve` (the HTTP API)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket

from ccd.cli.common import add_command, config_of, emit, home_of, table
from ccd.config import ServingConfig
from ccd.errors import BadInputError
from ccd.serve.service import MAX_USER_ID, Snapshot, check_config


def register(commands: argparse._SubParsersAction) -> None:
    recommend = add_command(commands, "recommend", run_recommend, "top-k items for one user from the production student")
    recommend.add_argument("--user", required=True, help="external user id, as in the ingested files")
    recommend.add_argument("-k", type=int, default=None, help="list length, 1..serving.max_k (default serving.default_k)")

    serve = add_command(commands, "serve", run_serve, "serve recommendations over HTTP (GET /recommend, /health, /model)", reports=False)
    serve.add_argument("--host", default=None, help="interface to bind (default serving.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default serving.port, 8000)")
    serve.add_argument("--access-log", action="store_true", help="log every request to stderr")


def run_recommend(args: argparse.Namespace) -> int:
    config = config_of(args).serving
    check_config(config)
    k = config.default_k if args.k is None else args.k
    if not 1 <= k <= config.max_k:
        raise BadInputError(f"-k must be in [1, serving.max_k={config.max_k}], got {k}")
    if not 1 <= len(args.user) <= MAX_USER_ID:
        raise BadInputError(f"--user must be 1..{MAX_USER_ID} characters, got {len(args.user)}")
    answer = Snapshot.load(home_of(args), config).recommend(args.user, k)
    rows = [{"rank": r, "item": i, "score": s} for r, (i, s) in enumerate(zip(answer.items, answer.scores), 1)]
    head = f"student v{answer.version} (block {answer.block}), user {answer.user}"
    head += ": unknown user, most popular items (score = training interactions)" if answer.fallback else ""
    emit(args, answer.to_dict(), lambda: head + "\n" + table(rows))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    config = _with_address(config_of(args).serving, args.host, args.port)
    check_config(config)
    _check_address(config.host, config.port)
    import uvicorn  # only the server needs it; `ccd recommend` stays quick to start

    from ccd.serve.app import create_app

    logging.getLogger("ccd.serve").setLevel(logging.INFO)  # model loads and swaps are worth seeing
    uvicorn.run(create_app(home_of(args), config), host=config.host, port=config.port, access_log=args.access_log)
    return 0


def _with_address(config: ServingConfig, host: str | None, port: int | None) -> ServingConfig:
    changes = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    return dataclasses.replace(config, **changes)


def _check_address(host: str, port: int) -> None:
    """Bind once and let go, so a port in use or a bad host is one line before uvicorn starts
    (uvicorn reports it in several log lines)."""
    try:
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except (OSError, OverflowError) as exc:
        raise BadInputError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
