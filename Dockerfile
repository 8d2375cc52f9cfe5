# capsule server image. The VMMs run inside the container too; pass /dev/kvm for KVM,
# without it QEMU falls back to TCG.
FROM node:20-bookworm-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 linux-image-amd64 busybox-static cpio kmod xz-utils zstd file python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/capsule
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build
ENV HOST=0.0.0.0 PORT=8080 CAPSULE_DATA_DIR=/var/lib/capsule
EXPOSE 8080
CMD ["sh", "-c", "bash scripts/build-image.sh \"$CAPSULE_DATA_DIR/images/default\" && exec node dist/server/main.js"]
