# syntax=docker/dockerfile:1
# Multi-stage build.
#   docker build --target serve -t recsys-serve .   # gRPC server, serving dependencies only
#   docker build --target train -t recsys-train .   # adds the `train` extra (MLflow, ...) and the CLI
# The bundle is mounted read-only at /models/bundle:
#   docker run -p 50051:50051 -v $PWD/runs/demo/bundle:/models/bundle:ro recsys-serve

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
# from a shared tracking server): no MLflow server, no training stack, no dev tools.
RUN pip install "$(ls /wheels/*.whl)[registry]" && rm -rf /wheels
RUN useradd --system --create-home --uid 10001 recsys
USER recsys
WORKDIR /home/recsys
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "serving.api.healthcheck", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["python", "-m", "serving"]
CMD ["--bundle", "/models/bundle", "--host", "0.0.0.0", "--port", "50051"]

FROM serve AS train
USER root
# The project's `train` extra (MLflow, Optuna, implicit, matplotlib, ...), from the same wheel.
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[train]" && rm -rf /wheels
USER recsys
ENTRYPOINT ["recsys"]
CMD ["--help"]
