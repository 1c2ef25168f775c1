# syntax=docker/dockerfile:1
# A Prefect worker with the flows: it polls a `process` work pool on the Prefect server (PREFECT_API_URL) and runs
# each flow run it picks up as a subprocess in this container. The training flow runs the pipeline on the CPU here
# (torch from the CPU wheel index keeps the image ~2 GB smaller); GPU training runs in docker/train.Dockerfile.
#   docker build -f docker/flows.Dockerfile -t selfsup-flows .
#   docker run -e PREFECT_API_URL=http://prefect.internal:4200/api -e MLFLOW_TRACKING_URI=http://mlflow.internal:5000 \
#       selfsup-flows

FROM python:3.11.14-slim-bookworm
# git: DVC needs the repository's history, and deployments pull their code with git
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system safe.directory '*'
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
COPY requirements.lock docker/dvc-s3-requirements.txt ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY src/ src/
# the package with every pinned dependency, and the S3 plugin for the MinIO DVC remote
RUN /opt/venv/bin/pip install -c requirements.lock . -r dvc-s3-requirements.txt
COPY flows/ flows/
COPY params.yaml dvc.yaml ./
COPY presets/ presets/
RUN useradd --create-home --uid 1000 selfsup && chown selfsup:selfsup /app
USER selfsup
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 \
    DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    SELFSUP_PROJECT_DIR=/app
# the worker of a `process` work pool (created with that type if it does not exist yet); deployments sent to the
# pool `selfsup-process` run here
CMD ["prefect", "worker", "start", "--pool", "selfsup-process", "--type", "process"]
