# ci-runner container image: the CLI, its sandbox (to try it without a cluster) and git, nothing else.
# Used by the GitLab component (input `image`) and Jenkins docker agents. Not a GitHub container action
# (GitHub runs those as root; this image's user is 10001): GitHub uses the composite action.
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/ci-runner/ci-runner:0.1.0 .
# Pin the base by tag (and, for reproducible builds, by digest: python:3.12-slim@sha256:...).
FROM python:3.12-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ci-runner" \
      org.opencontainers.image.description="Run CI tests as Slurm jobs through FirecREST" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.source="https://github.com/ci-runner/ci-runner" \
      org.opencontainers.image.version="${VERSION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# git: `checkout: upload` runs `git archive` in the CI's checkout (the image runs inside it), and jobs of
# the sandbox clone it. The checkout belongs to the CI's uid, not to this image's: trust it system-wide.
# Debian's git is the one of the base's release (security updates come with a rebuild, not a pin).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory '*'

# Dependencies at the exact versions of constraints.txt (kept current by the test suite).
WORKDIR /opt/ci-runner-src
COPY constraints.txt pyproject.toml README.md LICENSE ./
COPY ci_runner ./ci_runner
RUN pip install --no-cache-dir --constraint constraints.txt '.[sandbox]' \
    && rm -rf /opt/ci-runner-src

# Non-root, numeric (Kubernetes' runAsNonRoot can check it); CI systems that mount their checkout
# and run with another uid work too.
RUN groupadd --gid 10001 ci-runner \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin ci-runner
USER 10001:10001
WORKDIR /work

ENTRYPOINT ["ci-runner"]
CMD ["--help"]
