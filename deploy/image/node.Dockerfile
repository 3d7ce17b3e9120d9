# The node image, FROM scratch: deploy/image/build stages its context
# (target/image/node) and runs `docker build` on it. Nothing is pulled.
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 data/ /
USER 10001:10001
# RTMP, HTTP admin (/metrics, /readyz, /api), the media listener (HTTP-FLV,
# LL-HLS, RTMPT; off unless --media-listen), SRT (UDP; off unless
# --srt-listen).
EXPOSE 1935 8080 8081 8890/udp
# SIGTERM drains: see deploy/README.md for the stop timeout it needs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tributary", "--config", "/etc/tributary/tributary.toml"]
