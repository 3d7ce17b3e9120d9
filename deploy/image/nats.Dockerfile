# A NATS server image, FROM scratch, with Debian's nats-server:
# deploy/image/build stages its context (target/image/nats). The config is
# mounted at /etc/nats/nats.conf (deploy/compose/compose.yaml).
FROM scratch
COPY rootfs/ /
COPY --chown=10002:10002 data/ /
USER 10002:10002
EXPOSE 4222 6222 8222
ENTRYPOINT ["/usr/local/bin/nats-server", "--config", "/etc/nats/nats.conf"]
