# syntax=docker/dockerfile:1
# The inference service (`selfsup serve`): onnxruntime + tokenizers + FastAPI, and the MLflow client (mlflow-skinny)
# to serve and follow the registry's champion. No torch: the package goes in with --no-deps and only
# docker/serve-requirements.txt beside it (tests/deploy/test_serve_image.py installs the same into a clean venv and
# starts the service from it).
#   docker build -f docker/serve.Dockerfile -t selfsup-serve .
#   docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow.internal:5000 selfsup-serve
#   docker run -p 8000:8000 -v "$PWD/models/onnx/intent:/models/intent:ro" selfsup-serve \
#       selfsup serve --host 0.0.0.0 --model intent=/models/intent

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# dependencies first: this layer is rebuilt only when the pins change, not on every code change
COPY requirements.lock docker/serve-requirements.txt ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c requirements.lock -r serve-requirements.txt
COPY pyproject.toml README.md ./
COPY src/ src/
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM python:3.11.14-slim-bookworm
RUN useradd --create-home --uid 10001 selfsup
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# the service reads params.yaml (serve.*, route.*, the task list) and the preset it names
COPY params.yaml ./
COPY presets/ presets/
# serve.models_dir (serving/models): registry versions are downloaded here
RUN mkdir -p serving && chown selfsup:selfsup serving
USER selfsup
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true HF_HUB_OFFLINE=1
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# every registry task's `champion` (MLFLOW_TRACKING_URI names the server), followed when it moves
CMD ["selfsup", "serve", "--host", "0.0.0.0", "--port", "8000"]
