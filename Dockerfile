# The greeter service's image: `microweave run service.py` as PID 1, in a virtualenv, non-root.
#
#   podman build --format docker -t localhost/microweave-greeter:latest .     (--format docker keeps the HEALTHCHECK)
#   docker build -t localhost/microweave-greeter:latest .
#
# Build arguments:
#   PYTHON_BASE  the base image of both stages (the virtualenv's interpreter lives in it), e.g.
#                a Debian image with python3 and python3-venv made by mmdebstrap + podman import
#   EXTRAS       microweave's extras to install: the registry and broker drivers (etcd, consul,
#                nats, rabbitmq, redis, otel, uvloop, ...); empty: none
#   PIP_ARGS     more pip install arguments, e.g. --index-url https://pypi.example/simple
# Wheels put in ./wheels/ are installed before any index is asked (a microweave not on your
# package index: `pip wheel --no-deps -w wheels /path/to/microweave`).
ARG PYTHON_BASE=docker.io/library/python:3.12-slim

FROM ${PYTHON_BASE} AS build
ARG EXTRAS=etcd,consul,nats
ARG PIP_ARGS=
# python3, not python: a Debian base names the interpreter python3 only
RUN python3 -m venv /opt/venv
COPY . /src
# the pip cache lives in a build cache mount, never in a layer; pip itself is left out of the
# image (nothing installs at run time)
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ -d /src/wheels ]; then set -- --find-links /src/wheels; fi \
 && PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install "$@" $PIP_ARGS \
      /src "microweave${EXTRAS:+[$EXTRAS]}" \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${PYTHON_BASE}
LABEL org.opencontainers.image.title="greeter" org.opencontainers.image.version="1.0.0"
# a fixed numeric uid, so Kubernetes' runAsNonRoot can check it; no home, no login; no
# set-user-id programs (su, mount, passwd, ...): nothing in the image can become root again
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin app \
 && find / -xdev -type f -perm /6000 -exec chmod a-s {} +
COPY --from=build /opt/venv /opt/venv
COPY examples/greeter /app
WORKDIR /app
# byte-compiled now: a read-only root filesystem cannot take __pycache__ at start
RUN /opt/venv/bin/python -m compileall -q /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MICRO_SERVER_ADDRESS=0.0.0.0:8080 \
    MICRO_TCP_ADDRESS=0.0.0.0:8081 \
    MICRO_ADMIN_ADDRESS=0.0.0.0:9100 \
    MICRO_LOG_FORMAT=json
# gRPC, microweave's tcp transport, the admin endpoint (/metrics, /health/live, /health/ready)
EXPOSE 8080 8081 9100
USER 10001:10001
# /health/live where MICRO_ADMIN_ADDRESS listens (a wildcard host: the loopback); python, since
# a slim image has no curl. A failure says why in one line (`podman inspect`'s health log); with
# the admin endpoint off (or on port 0) there is nothing to ask, and the check passes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; \
    a = os.environ.get('MICRO_ADMIN_ADDRESS', ':9100').strip(); h, _, p = a.rpartition(':'); \
    h = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '::': '::1', '[::]': '::1'}.get(h, h.strip('[]')); \
    u = f'http://[{h}]:{p}/health/live' if ':' in h else f'http://{h}:{p}/health/live'; \
    off = a.lower() in ('off', 'false', 'none', 'no', '0', '') or p == '0'; \
    sys.excepthook = lambda t, e, tb: print(f'unhealthy: {u}: {e}', file=sys.stderr); \
    print(f'MICRO_ADMIN_ADDRESS={a}: no admin port to check') if off else urllib.request.urlopen(u, timeout=2)"]
# microweave is PID 1: SIGTERM (docker/podman stop, Kubernetes) deregisters the node, drains
# in-flight calls (MICRO_GRACE seconds) and exits 0
ENTRYPOINT ["microweave", "run"]
CMD ["service.py"]
