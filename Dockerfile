# syntax=docker/dockerfile:1
#
# A static sluice image: docker build -t sluice .
#
# The final stage is scratch: two static binaries and nothing else (no shell,
# no libc, no CA certificates; sluice makes no TLS connections). It runs as
# the unprivileged user 65532 unless the orchestrator says otherwise; see
# docs/production.md for the capabilities that ports below 1024 and the XDP
# firewall need, and deploy/kubernetes/ for a DaemonSet.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO_ENABLED=0: no libc, a static binary. -trimpath: no build paths in it.
# -s -w: no symbol table or DWARF (panics still print file:line).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/sluice ./cmd/sluice && \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/sluice-bench ./cmd/sluice-bench

FROM scratch
COPY --from=build /out/sluice /out/sluice-bench /usr/local/bin/
# A numeric user needs no /etc/passwd. 65532 is the "nonroot" user of the
# distroless images, so volumes prepared for those fit this one too.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]
