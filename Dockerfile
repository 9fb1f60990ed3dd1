# The image helm/quota runs: `docker build -t quota:0.1.0 .` (the tag is the chart's appVersion).

# The web console's front-end libraries: exactly package-lock.json's versions and hashes, from the npm registry.
FROM node:20-slim AS console-assets
WORKDIR /assets
COPY quota_console/assets/package.json quota_console/assets/package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY quota_common ./quota_common
COPY quota_center ./quota_center
COPY region_agent ./region_agent
COPY quota_testing ./quota_testing
COPY loadtest ./loadtest
COPY quota_client ./quota_client
COPY quota_admin ./quota_admin
COPY quota_console ./quota_console
COPY --from=console-assets /assets/node_modules ./quota_console/assets/node_modules
COPY quota_cli ./quota_cli
# pip compiles the bytecode here, so the servers run on a read-only root filesystem.
RUN pip install '.[console]' && rm -rf /build

# A numeric user, so that Kubernetes can check runAsNonRoot; the chart's podSecurityContext names the same id.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin quota
USER 10001:10001
WORKDIR /

# center gRPC, agent gRPC, Prometheus metrics, the web console
EXPOSE 50051 50061 9464 8080
ENTRYPOINT ["quota"]
CMD ["--help"]
