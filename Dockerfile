# capsule server image. The VMMs run inside the container too; pass /dev/kvm for KVM,
# without it QEMU falls back to TCG.
#
# BASE: a Debian bookworm image that has Node.js (>=20.10 <21 || >=22) with npm on PATH. The
# default is the official Node image; any other (a locally made Debian base with Node copied in,
# as scripts/docker-test-base.sh makes for the tests) works too. A base without Node is refused
# with a message: Debian bookworm's own nodejs is 18, too old for capsule.
ARG BASE=node:20-bookworm-slim
FROM ${BASE}
RUN command -v node >/dev/null && command -v npm >/dev/null || { \
      echo "capsule: the base image has no node/npm; use a base with Node.js 20.10+ or 22+ (BASE=node:20-bookworm-slim)" >&2; exit 1; }
# qemu-system-x86: the QEMU backend. linux-image-amd64, busybox-static, cpio, kmod, xz-utils,
# zstd, file, gcc/libc6-dev (from g++): the default guest image, built below. python3, make,
# g++: native modules (better-sqlite3) when no prebuilt binary can be downloaded.
# util-linux (setpriv, unshare, prlimit, nsenter, mount): the VMM jail. INITRD=No: the kernel
# is only the guests', no initrd of its own is needed (saves a minute of update-initramfs).
RUN apt-get update -qq \
 && INITRD=No DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-system-x86 linux-image-amd64 busybox-static cpio kmod xz-utils zstd file python3 make g++ util-linux \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/capsule
# npm ci runs the preinstall script: it must be in the image first.
COPY package.json package-lock.json ./
COPY scripts/check-node.mjs scripts/
# node-gyp uses the headers that came with node when there are some (official Node images and
# the test base have them), instead of downloading them.
RUN nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")") \
 && if [ -f "$nodedir/include/node/common.gypi" ]; then export npm_config_nodedir="$nodedir"; fi \
 && npm ci --no-audit --no-fund
COPY . .
RUN npm run build
# The default guest image is built into the image (the kernel is this image's); the sandbox
# image is not built here (it needs mmdebstrap and a Debian mirror at build time).
RUN bash scripts/build-image.sh /opt/capsule/images/default
ENV HOST=0.0.0.0 PORT=8080 CAPSULE_DATA_DIR=/var/lib/capsule CAPSULE_IMAGES_DIR=/opt/capsule/images CAPSULE_BUILD_IMAGE=0
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:8080/v1/health/ready').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"
CMD ["node", "dist/server/main.js"]
