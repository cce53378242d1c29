"""The HTTP API of `ccd serve`: a small FastAPI app over one `RecommendService`.

    GET /recommend?user=<external id>&k=20   top-k unseen items, or popular ones (flagged)
    GET /health                              200 when a model is loaded, else 503
    GET /model                               the production version being served

Parameters are validated by FastAPI (422 with the reason: k outside [1, serving.max_k], a
missing or over-long user id). Without a production student every model endpoint answers 503
with the reason and a Retry-After of one refresh period. The registry is re-checked every
`serving.refresh_seconds` in a background thread, so a promotion or rollback goes live without
a restart.
"""

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

from ccd.config import ServingConfig
from ccd.home import Home
from ccd.serve.service import MAX_USER_ID, NoModelError, RecommendService, Snapshot



def create_app(home: Home, config: ServingConfig) -> FastAPI:
    """The app serving `home`'s production student with the `serving` settings `config`.

    The first registry check runs at startup (the lifespan), so a server with a production
    model is ready to answer when it starts accepting connections.
    """
    service = RecommendService(home, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.refresh()
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="ccd", summary="recommendations from the production student", lifespan=lifespan)
    app.state.service = service
    retry_after = {"Retry-After": str(math.ceil(config.refresh_seconds))}

    def current() -> Snapshot:
        try:
            return service.require()
        except NoModelError as exc:
            raise HTTPException(503, detail=str(exc), headers=retry_after) from None

    # `async def` on purpose: one answer is well under a millisecond of torch work for a compact
    # student, less than the thread-pool hand-off a plain `def` endpoint costs (about 40% more
    # server CPU per request, measured). The answer goes out as a JSONResponse, skipping
    # FastAPI's response-model encoding of a dict it has nothing to check.
    @app.get("/recommend")
    async def recommend(
        user: str = Query(min_length=1, max_length=MAX_USER_ID, description="external user id"),
        k: int = Query(config.default_k, ge=1, le=config.max_k, description=f"list length, 1..{config.max_k}"),
    ) -> JSONResponse:
        return JSONResponse(current().recommend(user, k).to_dict())

    @app.get("/model")
    async def model() -> dict[str, Any]:
        return current().describe()

    @app.get("/health")
    async def health() -> JSONResponse:
        state = service.health()
        if state["status"] == "ok":
            return JSONResponse(state)
        return JSONResponse(state, status_code=503, headers=retry_after)

    return app
