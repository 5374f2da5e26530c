# funnel from a root filesystem assembled by build-images.sh (no base image:
# nothing is pulled). Same layout and entry point as deploy/Dockerfile.
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 owned/ /
USER 10001:10001
WORKDIR /var/lib/funnel
# http, grpc, internal (raft + shard data)
EXPOSE 8080 50051 7001
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT ["/usr/local/bin/funnel"]
CMD ["--help"]
