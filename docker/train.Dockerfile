# syntax=docker/dockerfile:1
# Training on an NVIDIA GPU: the package with every training dependency (torch 2.14.1 with its CUDA 13 wheels, as
# pinned in requirements.lock) and onnxruntime-gpu, on NVIDIA's CUDA 13.0 + cuDNN runtime image (the libraries
# onnxruntime-gpu loads). Python 3.11 (the project's version; Ubuntu 24.04 ships 3.12) is uv's standalone build.
#   docker build -f docker/train.Dockerfile -t selfsup-train .
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD:/work" -e MLFLOW_TRACKING_URI=http://mlflow.internal:5000 \
#       selfsup-train dvc exp run -S preset=base
# The checkout is mounted at /work (DVC needs its git history); docs/scaling.md has the whole recipe.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system safe.directory '*'
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_NO_CACHE=1 VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv venv --python 3.11.14 /opt/venv
WORKDIR /opt/selfsup
COPY requirements.lock pyproject.toml README.md docker/dvc-s3-requirements.txt ./
COPY src/ src/
# the package with every pinned dependency and DVC's S3 plugin (the team's MinIO remote); then onnxruntime-gpu
# replaces onnxruntime (both install the `onnxruntime` module, so only one may be present): 1.31.1 is its newest
# release and is built for CUDA 13, like torch's wheels
RUN uv pip install -c requirements.lock . -r dvc-s3-requirements.txt \
 && uv pip uninstall onnxruntime \
 && uv pip install --no-deps onnxruntime-gpu==1.31.1
RUN useradd --create-home --uid 10001 selfsup
USER selfsup
ENV PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /work
CMD ["dvc", "repro"]
