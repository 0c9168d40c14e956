# syntax=docker/dockerfile:1
# Multi-stage build.
#   docker build --target serve -t recsys-serve .   # gRPC server, serving dependencies only
#   docker build --target train -t recsys-train .   # adds the `train` extra (MLflow, ...) and the CLI
# The bundle is mounted read-only at /models/bundle; the service port is TLS + bearer tokens by
# default (secure by default: a non-loopback listener needs both), from files mounted at
# /etc/recsys/security (tls.crt, tls.key, tokens.toml: the layout of deploy/kubernetes' Secret):
#   docker run -p 50051:50051 -v $PWD/runs/demo/bundle:/models/bundle:ro \
#       -v $PWD/security:/etc/recsys/security:ro recsys-serve
# Behind a mesh that terminates mTLS, override the command with --insecure explicitly.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serving ./serving
COPY training ./training
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# CPU-only torch from PyTorch's CPU index: the default index resolves CUDA wheels (several GB).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY --from=build /wheels /wheels
# Base dependencies plus the `registry` extra (the MLflow client only, for models:/NAME@ALIAS
# from a shared tracking server) and the `tracing` extra (OpenTelemetry SDK + OTLP exporter, off
# unless OTEL_* asks): no MLflow server, no training stack, no dev tools.
RUN pip install "$(ls /wheels/*.whl)[registry,tracing]" && rm -rf /wheels
RUN useradd --system --create-home --uid 10001 recsys
USER recsys
WORKDIR /home/recsys
EXPOSE 50051
# The probe asks the plaintext health-only port (--health-port: grpc.health.v1 and nothing else),
# so it needs neither the CA nor a token.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "serving.api.healthcheck", "--address", "127.0.0.1:8081"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--bundle", "/models/bundle", "--host", "0.0.0.0", "--port", "50051", "--health-port", "8081", \
     "--tls-cert", "/etc/recsys/security/tls.crt", "--tls-key", "/etc/recsys/security/tls.key", \
     "--auth-tokens", "/etc/recsys/security/tokens.toml"]

FROM serve AS train
USER root
# The project's `train` extra (MLflow, Optuna, implicit, Plotly, ...), from the same wheel.
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[train]" && rm -rf /wheels
USER recsys
ENTRYPOINT ["recsys"]
CMD ["--help"]
