# The otf2d engine (and every other otf2d command) in a container; deploy/compose.yaml builds it:
#   docker build -t otf2d .                                   # CPU torch
#   docker build -t otf2d:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Runs as the unprivileged user otf2d; state in the volume /var/lib/otf2d; settings in
# /etc/otf2d/engine.toml (the example is built in; mount your own over it).
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/otf2d --create-home otf2d

# torch in its own layer (the largest, changes least): the version of the Makefile.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

WORKDIR /opt/otf2d
COPY pyproject.toml README.md ./
COPY core core
COPY streamer streamer
COPY engine engine
COPY monitoring monitoring
COPY simulator simulator
COPY selection selection
COPY control control
COPY demo demo
RUN pip install ".[engine]" && otf2d --version

COPY deploy/config/engine.example.toml /etc/otf2d/engine.toml

USER otf2d
WORKDIR /var/lib/otf2d
VOLUME ["/var/lib/otf2d"]
# ZeroMQ (streamers) and the status page with /metrics.
EXPOSE 5555 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=3)"]
ENTRYPOINT ["otf2d"]
CMD ["engine", "--listen", "tcp://*:5555", "--data", "/var/lib/otf2d", "--config", "/etc/otf2d/engine.toml", \
     "--http-port", "8001", "--http-addr", "0.0.0.0"]
