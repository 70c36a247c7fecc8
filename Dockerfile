# syntax=docker/dockerfile:1
# One image for both components:
#   celery-operator run       the controllers
#   celery-operator webhook   the admission webhooks
# Non-root (65532), and it writes nothing outside /tmp, so it runs with
# readOnlyRootFilesystem: true and an emptyDir at /tmp (as the Helm chart mounts it).
#
# BASE_IMAGE is the official Python image unless a build says otherwise (the project's
# own tests build it with buildah from a Debian base made here: testenv/images.py).
ARG PYTHON_VERSION=3.11
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --upgrade pip \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="celery-operator" \
      org.opencontainers.image.description="A Kubernetes operator for Celery" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-compile /wheels/*.whl \
 && { python -m pip uninstall -y pip setuptools wheel 2>/dev/null || true; } \
 && celery-operator --help >/dev/null
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 9090 9443
ENTRYPOINT ["celery-operator"]
CMD ["run"]
