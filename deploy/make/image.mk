# Container image targets; included from the top-level Makefile.
# Paths are relative to the repository root (where make runs).

PYTHON ?= .venv/bin/python

.PHONY: image-check image-check-host image-base image-wheels image-pins image-pins-check image-agent

# Build the coordinator image with podman (chroot isolation) and wait for its
# entrypoint to answer /readyz with 200 (embedded SQLite/fakeredis backends).
image-check:
	deploy/podman/build-and-check.sh

# The same, against the host's Postgres (127.0.0.1:5432/test) and Redis (127.0.0.1:6379/15).
image-check-host:
	FEDFACE_CHECK_BACKENDS=host deploy/podman/build-and-check.sh

# Base image from Debian packages (debootstrap; cached in /var/cache/fedface/base).
image-base:
	deploy/podman/build-base.sh

# Pinned wheels into .build/wheelhouse (cached in /var/cache/fedface/wheels).
image-wheels:
	deploy/podman/prepare-wheels.sh

# The device-agent image (torch CPU).
image-agent: image-base image-wheels
	podman build --isolation=chroot --format docker --target agent -t localhost/fedface-agent:dev .

# Regenerate deploy/requirements-*.txt from the venv, or check they are current.
image-pins:
	$(PYTHON) deploy/pin_requirements.py

image-pins-check:
	$(PYTHON) deploy/pin_requirements.py --check
