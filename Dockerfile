# The distill service image: API, dashboard, workers and Flower (see docker-compose.yml).
#   docker build -t distill .                                 # CUDA torch from PyPI (GPU workers)
#   docker build -t distill --build-arg TORCH_SPEC=torch==2.13.0 --build-arg \
#       TORCH_INDEX=https://download.pytorch.org/whl/cpu .    # a smaller CPU-only image
#   docker build -t distill --build-arg EXTRAS=trackers .     # with extras of pyproject.toml (trackers, vllm)
# The example specs (the dashboard's presets) are package data of core_distill: the wheel carries them.
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
ARG EXTRAS=""
# a regular (not editable) install: the image runs what a wheel carries; the sources are removed after
RUN pip install ".${EXTRAS:+[$EXTRAS]}" "flower>=2.0" && cd / && rm -rf /srv/distill \
    && python -c "from core_distill.presets import spec_presets; assert spec_presets(), 'no presets installed'"
WORKDIR /

# an unprivileged user owns /data (database files, runs, the Hugging Face cache)
RUN useradd --create-home --uid 1000 distill && mkdir -p /data && chown distill /data
USER distill
VOLUME /data
EXPOSE 8000
# the API's own check (database and Redis reachable); compose gives the worker and Flower checks of their own
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=30 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=3)"]
CMD ["distill", "api", "--host", "0.0.0.0", "--port", "8000"]
