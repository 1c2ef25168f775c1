# syntax=docker/dockerfile:1
# The team's MLflow tracking server (docker/compose.yaml): runs and registry in PostgreSQL, artifacts in S3 (MinIO),
# served to clients through the server (--serve-artifacts), so clients need only MLFLOW_TRACKING_URI. The command
# line is in compose.yaml.

FROM python:3.11.14-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock docker/mlflow-requirements.txt /tmp/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c /tmp/requirements.lock -r /tmp/mlflow-requirements.txt \
 && useradd --create-home --uid 10001 mlflow
USER mlflow
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
