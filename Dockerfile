# The distill service image: API, dashboard, workers and Flower (see docker-compose.yml).
#   docker build -t distill .                                 # CUDA torch from PyPI (GPU workers)
#   docker build -t distill --build-arg TORCH_SPEC=torch==2.13.0 --build-arg \
#       TORCH_INDEX=https://download.pytorch.org/whl/cpu .    # a smaller CPU-only image
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DISTILL_HOME=/data HF_HOME=/data/hf

# torch first, in its own layer: the largest download, and the one GPU and CPU images differ in
ARG TORCH_SPEC="torch>=2.4,<3"
ARG TORCH_INDEX=""
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"

WORKDIR /srv/distill
COPY pyproject.toml README.md ./
COPY core_distill core_distill
COPY app app
COPY worker worker
COPY ui ui
COPY examples examples
RUN pip install . "flower>=2.0"

# an unprivileged user owns /data (database files, runs, the Hugging Face cache)
RUN useradd --create-home --uid 1000 distill && mkdir -p /data && chown distill /data
USER distill
VOLUME /data
EXPOSE 8000
CMD ["distill", "api", "--host", "0.0.0.0", "--port", "8000"]
