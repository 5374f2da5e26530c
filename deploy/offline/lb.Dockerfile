# HAProxy in front of the funnel nodes, from a root filesystem assembled by
# build-images.sh (no base image: nothing is pulled).
FROM scratch
COPY rootfs/ /
USER 10002:10002
# http, grpc
EXPOSE 8080 50051
ENTRYPOINT ["/usr/sbin/haproxy", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
