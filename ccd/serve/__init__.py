"""Serving: the registry's production student answering recommendation requests.

`service` holds the model-side logic (load a verified snapshot, recommend, hot swap on
promotion) and imports no web framework; `app` is the FastAPI layer of `ccd serve`.
"""

from ccd.serve.service import MODEL_NAME, NoModelError, Recommendation, RecommendService, Snapshot

__all__ = ["MODEL_NAME", "NoModelError", "Recommendation", "RecommendService", "Snapshot"]
