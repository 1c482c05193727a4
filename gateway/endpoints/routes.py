"""The route table: paths to handlers, no logic.

Every route authenticates inside its handler; the routes below `OPEN` are
the explicit allowlist that does not (tests check every other route
refuses a missing key).
"""

from __future__ import annotations

from starlette.routing import Route

from gateway.endpoints import balance, chat, embeddings, health, models

OPEN = frozenset({"/healthz", "/readyz"})

ROUTES = [
    Route("/v1/chat/completions", chat.completions, methods=["POST"]),
    Route("/v1/chat/completions/preview", chat.preview, methods=["POST"]),
    Route("/v1/models", models.list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", models.get_model, methods=["GET"]),
    Route("/v1/embeddings", embeddings.create, methods=["POST"]),
    Route("/v1/balance", balance.show, methods=["GET"]),
    Route("/healthz", health.healthz, methods=["GET"]),
    Route("/readyz", health.readyz, methods=["GET"]),
]
