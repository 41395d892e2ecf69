# ci-runner container image: the CLI and its dependencies, nothing else.
# Used by the GitLab component (input `image`) and Jenkins docker agents. Not a GitHub container action
# (GitHub runs those as root; this image's user is 10001): GitHub uses the composite action.
#   docker build -t ghcr.io/OWNER/ci-runner:0.1.0 .
# Pin the base by tag (and, for reproducible builds, by digest: python:3.12-slim@sha256:...).
FROM python:3.12-slim

LABEL org.opencontainers.image.title="ci-runner" \
      org.opencontainers.image.description="Run CI tests as Slurm jobs through FirecREST" \
      org.opencontainers.image.licenses="BSD-3-Clause"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: `checkout: upload` runs `git archive` in the CI's checkout (the image runs inside it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/ci-runner-src
COPY pyproject.toml README.md ./
COPY ci_runner ./ci_runner
RUN pip install --no-cache-dir . \
    && rm -rf /opt/ci-runner-src

# Non-root; CI systems mount their checkout and may run with another uid, which works too.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ci-runner
USER ci-runner
WORKDIR /work

ENTRYPOINT ["ci-runner"]
CMD ["--help"]
