"""Serving side of the recommendation service.

Everything that both training and serving need (feature encoding, the model's towers,
the bundle format, the FAISS index) lives here, so that ``serving`` never imports
``training`` and the serving image carries no training-only dependencies.

Packages, in the order a request meets them (each may import only those after it):

* :mod:`serving.api` — the gRPC layer: server, servicers, wire mapping, interceptors, batcher;
* :mod:`serving.lifecycle` — which model serves: registry access, bundle cache, live models,
  model references, experiments and routing;
* :mod:`serving.recommend` — the engine over one bundle: plans, retrieval, filters, diversity,
  explanations, cold start, batch lists;
* :mod:`serving.audiences`, :mod:`serving.profiles`, :mod:`serving.events` — lookalike audiences,
  member profiles, the feedback event log;
* :mod:`serving.bundle` — the bundle format, its storage and the item index;
* :mod:`serving.model` — the contract training shares: towers, feature encoders, histories, inputs;
* helpers used everywhere: :mod:`serving.errors`, :mod:`serving.storage`, :mod:`serving.metrics`,
  :mod:`serving.observability` (OpenTelemetry spans, off unless ``OTEL_*`` asks; text or JSON log
  lines; I/O faults recorded once per episode), :mod:`serving.pseudonym`; entry points
  :mod:`serving.cli`, :mod:`serving.client`.
"""

__all__ = [
    "api",
    "audiences",
    "bundle",
    "cli",
    "client",
    "errors",
    "events",
    "lifecycle",
    "metrics",
    "model",
    "observability",
    "profiles",
    "pseudonym",
    "recommend",
    "storage",
]
