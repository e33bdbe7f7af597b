# foundry-gateway: slim image, non-root, uvicorn with uvloop/httptools.
# Managed mode (the default) starts Foundry Local inside the container from foundry-local-sdk;
# set GATEWAY_UPSTREAM_MODE=external and GATEWAY_UPSTREAM_URL to front a runtime elsewhere.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_FOUNDRY_CACHE_DIR=/home/gateway/.foundry \
    GATEWAY_STATE_DIR=/home/gateway/.state

WORKDIR /srv/gateway
COPY pyproject.toml README.md ./
COPY app ./app
# the project itself, whose dependencies are pinned in pyproject.toml
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[foundry,otel]'
COPY models.json ./
COPY models ./models
COPY config ./config

RUN useradd --create-home --uid 10001 gateway
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["foundry-gateway"]
CMD ["serve"]
