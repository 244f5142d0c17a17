# syntax=docker/dockerfile:1
# FedFace images: the coordinator (default target) and the device agent.
#
#   deploy/podman/build-base.sh        # localhost/fedface-base:bookworm (debootstrap, no registry)
#   deploy/podman/prepare-wheels.sh    # pinned wheels -> .build/wheelhouse/{server,agent}
#   podman build --isolation=chroot --format docker --target coordinator -t fedface-coordinator .
#   podman build --isolation=chroot --format docker --target agent -t fedface-agent .
#
# Every Python package comes from the pinned wheelhouse (pip --no-index), so a
# build is offline and installs exactly deploy/requirements-*.txt. With a
# registry at hand, BASE can be any bookworm image with python3 + python3-venv.
ARG BASE=localhost/fedface-base:bookworm

# ---------------------------------------------------------------- builder ----
FROM ${BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# pip may use the mounted wheelhouse and nothing else.
ENV PIP_NO_INDEX=1 \
    PIP_FIND_LINKS=/wheels \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# A pip that lives outside the runtime venvs (Debian's bundled ensurepip
# wheel), so the runtime images carry no pip or setuptools at all.
RUN python3 -m venv /opt/pip-tool

# The fedface wheel. Sources only: tests, docs, the lab and deploy files stay out.
FROM builder AS wheel
COPY deploy/requirements-build.txt /tmp/requirements-build.txt
COPY pyproject.toml README.md /src/
COPY fedface_common/ /src/fedface_common/
COPY fedface_cli/ /src/fedface_cli/
COPY device_agent/ /src/device_agent/
COPY coordinator/ /src/coordinator/
COPY storage/ /src/storage/
COPY migrations/ /src/migrations/
# The build backend comes from the wheelhouse too (pinned in requirements-build.txt).
RUN --mount=type=bind,source=.build/wheelhouse/server,target=/wheels \
    /opt/pip-tool/bin/pip wheel --no-deps --constraint /tmp/requirements-build.txt \
        --wheel-dir /dist /src

# Per image: the dependencies (a layer that only changes with the pins), then
# fedface itself, staged under /staging (DESTDIR-style: its console script keeps
# /opt/venv/bin/python in the shebang), so the runtime image takes it as a small
# layer over the cached dependency layer. It is also installed in place for
# `pip check`: with --no-deps everywhere the pins must be the complete closure.
FROM builder AS server-deps
COPY deploy/requirements-server.txt /tmp/requirements.txt
RUN --mount=type=bind,source=.build/wheelhouse/server,target=/wheels \
    python3 -m venv --without-pip /opt/venv \
    && /opt/pip-tool/bin/pip --python /opt/venv/bin/python install --no-deps -r /tmp/requirements.txt

FROM server-deps AS server-app
COPY --from=wheel /dist/ /tmp/dist/
RUN /opt/pip-tool/bin/pip --python /opt/venv/bin/python install --no-deps --root /staging /tmp/dist/*.whl \
    && cp -a /staging/. / \
    && /opt/pip-tool/bin/pip --python /opt/venv/bin/python check

FROM builder AS agent-deps
COPY deploy/requirements-agent.txt /tmp/requirements.txt
RUN --mount=type=bind,source=.build/wheelhouse/agent,target=/wheels \
    python3 -m venv --without-pip /opt/venv \
    && /opt/pip-tool/bin/pip --python /opt/venv/bin/python install --no-deps -r /tmp/requirements.txt

FROM agent-deps AS agent-app
COPY --from=wheel /dist/ /tmp/dist/
RUN /opt/pip-tool/bin/pip --python /opt/venv/bin/python install --no-deps --root /staging /tmp/dist/*.whl \
    && cp -a /staging/. / \
    && /opt/pip-tool/bin/pip --python /opt/venv/bin/python check

# ---------------------------------------------------------------- runtime ----
FROM ${BASE} AS runtime
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and
# volumes can be chowned to it ahead of time.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fedface --create-home \
        --shell /usr/sbin/nologin fedface \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/fedface/data
# Bytecode was compiled at install time; the root filesystem may be read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEDFACE_DATA_DIR=/var/lib/fedface/data
WORKDIR /var/lib/fedface
LABEL org.opencontainers.image.title="FedFace" \
      org.opencontainers.image.licenses="Apache-2.0"

# The device agent: `fedface agent run --server URL --photos DIR --enroll-token T`.
FROM runtime AS agent
COPY --from=agent-deps /opt/venv /opt/venv
COPY --from=agent-app /staging/ /
USER 10001:10001
ENTRYPOINT ["fedface", "agent", "run"]
CMD ["--help"]

# The coordinator (default target). `fedface serve` applies migrations before
# serving; with several replicas run `fedface migrate` once and pass --no-migrate.
FROM runtime AS coordinator
COPY --from=server-deps /opt/venv /opt/venv
COPY --from=server-app /staging/ /
USER 10001:10001
EXPOSE 8000
# Liveness, not readiness: a coordinator whose database is down is alive and
# must not be restarted for it. Python's urllib, so the image needs no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["fedface"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
