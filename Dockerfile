# PoseLoop CPU image (default). A GPU variant (CUDA torch, onnxruntime-gpu) arrives with the deployment issue.
# Build: docker build -t poseloop .        Run: docker run --rm -p 8000:8000 poseloop
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU-only torch wheel: keeps the image free of multi-GB CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --index-url ${TORCH_INDEX_URL} torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY poseloop ./poseloop
COPY models ./models
COPY training ./training
COPY serving ./serving
COPY configs ./configs
RUN /opt/venv/bin/pip install . && /opt/venv/bin/poseloop weights fetch --quiet

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 poseloop
COPY --from=build /opt/venv /opt/venv
COPY --from=build /root/.cache/poseloop /home/poseloop/.cache/poseloop
COPY --from=build /src/configs /app/configs
RUN chown -R poseloop /home/poseloop/.cache
USER poseloop
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
ENTRYPOINT ["poseloop"]
CMD ["up"]
