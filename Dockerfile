# syntax=docker/dockerfile:1
# PoseLoop image. One image runs every role by command (ENTRYPOINT ["poseloop"]):
#   serve --host 0.0.0.0 --port 8080    the HTTP API
#   worker                              Celery `train` queue (solo pool, one job at a time)
#   worker --queue ingest               Celery `ingest` queue
#   beat                                the retrain scheduler (run exactly one)
#   triton-sync                         follows the registry, loads every servable version into Triton
# Targets:
#   cpu (default, the last stage)   docker build -t poseloop .              every role, CPU torch
#   gpu (CUDA torch, onnxruntime-gpu; for the training worker)
#                                   docker build --target gpu -t poseloop-gpu .
#   api (no torch: `serve` and `triton-sync` need only the base install)
#                                   docker build --target api -t poseloop-api .
# Build args: TORCH_VERSION, TORCH_CPU_INDEX_URL, TORCH_CUDA_INDEX_URL (pick the cuXYZ index your driver supports),
# ORT_GPU_SPEC. deploy/docker-compose.yml and deploy/k8s/ use both targets; see docs/deploy.md.
ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- the source tree the image needs
# The whole (.dockerignore-filtered) context is copied here and only the needed subset goes on, so a missing
# optional directory (artifacts/, the bundled default model) does not fail the build.
FROM ${PYTHON_IMAGE} AS source
COPY . /context
RUN mkdir -p /app/artifacts \
    && cd /context \
    && cp -a pyproject.toml README.md poseloop core models training continual serving configs deploy /app/ \
    && if [ -d artifacts ]; then cp -a artifacts/. /app/artifacts/; fi

# ---------------------------------------------------------------- a venv with pip settings
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH POSELOOP_CACHE=/opt/poseloop-cache
RUN python -m venv /opt/venv

# ---------------------------------------------------------------- CPU build: CPU torch wheel (no CUDA libraries)
FROM venv AS build-cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_CPU_INDEX_URL} torch==${TORCH_VERSION}
COPY --from=source /app /app
# Editable install at the final path (/app): the repo-relative defaults (configs/ for POSELOOP_RETRAIN_CONFIG,
# artifacts/ for the bundled model) resolve inside /app exactly as in a checkout.
RUN pip install -e "/app[train]" \
    && poseloop weights fetch --quiet \
    && python -m compileall -q /app/poseloop /app/core /app/models /app/training /app/continual /app/serving

# ---------------------------------------------------------------- GPU build: CUDA torch + onnxruntime-gpu
FROM venv AS build-gpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG ORT_GPU_SPEC=onnxruntime-gpu>=1.20
RUN pip install --index-url ${TORCH_CUDA_INDEX_URL} torch==${TORCH_VERSION}
COPY --from=source /app /app
# The project depends on `onnxruntime` (CPU); both wheels install the same `onnxruntime` package, so the CPU
# one is removed before the GPU one goes in (`pip check` then reports the swapped name; that is expected).
RUN pip install -e "/app[train]" \
    && pip uninstall -y onnxruntime \
    && pip install "${ORT_GPU_SPEC}" \
    && poseloop weights fetch --quiet \
    && python -m compileall -q /app/poseloop /app/core /app/models /app/training /app/continual /app/serving

# ---------------------------------------------------------------- API build: the base install only (no torch)
FROM venv AS build-api
COPY --from=source /app /app
RUN pip install -e /app \
    && python -m compileall -q /app/poseloop /app/core /app/models /app/continual /app/serving

# ---------------------------------------------------------------- runtime base: non-root user 1000
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 poseloop && useradd --create-home --uid 1000 --gid 1000 poseloop \
    && mkdir -p /data/registry /models /datasets && chown -R 1000:1000 /data /models
# /data: uploads, job table, checkpoints, beat schedule (POSELOOP_DATA_DIR); /data/registry: the model registry;
# /models: the Triton model repository (triton-sync only); /datasets: labeled data for retraining (POSELOOP_DATA).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    POSELOOP_CACHE=/opt/poseloop-cache POSELOOP_DATA_DIR=/data POSELOOP_REGISTRY_DIR=/data/registry \
    POSELOOP_DATA=/datasets
WORKDIR /app
EXPOSE 8080
# Probes /healthz when this container runs `poseloop serve`; passes for the other roles (see the script).
HEALTHCHECK --interval=30s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python", "/app/deploy/docker/healthcheck.py"]
ENTRYPOINT ["poseloop"]

FROM runtime AS gpu
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build-gpu /opt/venv /opt/venv
COPY --from=build-gpu /opt/poseloop-cache /opt/poseloop-cache
COPY --from=build-gpu /app /app
USER 1000:1000
CMD ["worker"]

FROM runtime AS api
COPY --from=build-api /opt/venv /opt/venv
COPY --from=build-api /app /app
USER 1000:1000
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

# Last stage = the default target (`docker build .` gives the CPU image).
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
COPY --from=build-cpu /opt/poseloop-cache /opt/poseloop-cache
COPY --from=build-cpu /app /app
USER 1000:1000
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
