"""The admission webhook server: one FastAPI app for the three kinds.

    POST /mutate/{plural}     JSONPatch defaults (appRef.namespace, labels, queues)
    POST /validate/{plural}   every error of one object in one message; warnings
    GET  /healthz /readyz /metrics

A body that is not an AdmissionReview gets HTTP 400; anything else gets a well-formed
AdmissionReview, never a 5xx. When reading another object fails, the review is allowed
with a warning: the controllers run the same validators and report Ready=False.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from celery_operator.api.kinds import BY_PLURAL
from celery_operator.webhooks.admission import admit
from celery_operator.webhooks.lookup import ApiLookup, Lookup
from celery_operator.webhooks.review import BadReview, Verdict, parse_review, response

log = logging.getLogger("celery_operator.webhook")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = Counter(
            "celery_operator_webhook_reviews_total",
            "AdmissionReviews answered",
            ["webhook", "kind", "operation", "allowed"],
            registry=self.registry,
        )
        self.denials = Counter(
            "celery_operator_webhook_denials_total",
            "Denied reviews, by the first offending field",
            ["kind", "field"],
            registry=self.registry,
        )
        self.errors = Counter(
            "celery_operator_webhook_lookup_errors_total",
            "Reviews allowed because another object could not be read",
            ["kind"],
            registry=self.registry,
        )
        self.bad = Counter(
            "celery_operator_webhook_bad_requests_total",
            "Bodies that were not AdmissionReviews",
            registry=self.registry,
        )
        self.latency = Histogram(
            "celery_operator_webhook_review_seconds",
            "Time to answer one review",
            ["webhook"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )


def create_app(lookup: Lookup | None = None, ready: Callable[[], bool] = lambda: True) -> FastAPI:
    app = FastAPI(title="celery-operator admission webhooks", docs_url=None, redoc_url=None)
    metrics = Metrics()
    app.state.metrics = metrics
    lookups: list[Lookup] = [lookup] if lookup is not None else []

    def get_lookup() -> Lookup:
        if not lookups:
            lookups.append(ApiLookup())
        return lookups[0]

    async def review(webhook: str, plural: str, request: Request) -> Response:
        started = time.perf_counter()
        try:
            try:
                body = json.loads(await request.body())
                req = parse_review(body)
            except (ValueError, BadReview) as e:
                metrics.bad.inc()
                return JSONResponse({"error": f"not an AdmissionReview v1: {e}"}, status_code=400)
            kind = BY_PLURAL[plural].name
            try:
                verdict = await run_in_threadpool(
                    admit, plural, req, get_lookup(), mutate=webhook == "mutate"
                )
            except Exception as e:  # a lookup failed: allow, the controller checks again
                log.warning("%s %s %s/%s: %s", webhook, kind, req.namespace, req.name, e)
                metrics.errors.labels(kind).inc()
                verdict = Verdict(
                    warnings=[
                        f"celery-operator could not check this {kind} now ({type(e).__name__}); the controller will"
                    ]
                )
            metrics.reviews.labels(webhook, kind, req.operation, str(verdict.allowed).lower()).inc()
            if not verdict.allowed:
                field = verdict.message.split(" is invalid: ", 1)[-1].split(":", 1)[0]
                metrics.denials.labels(kind, field[:64]).inc()
            return JSONResponse(response(req.uid, verdict))
        finally:
            metrics.latency.labels(webhook).observe(time.perf_counter() - started)

    for plural in BY_PLURAL:
        for webhook in ("mutate", "validate"):

            async def endpoint(request: Request, _w: str = webhook, _p: str = plural) -> Response:
                return await review(_w, _p, request)

            app.add_api_route(
                f"/{webhook}/{plural}", endpoint, methods=["POST"], name=f"{webhook}-{plural}"
            )

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        if ready():
            return PlainTextResponse("ok")
        return PlainTextResponse("certificates not loaded yet", status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
