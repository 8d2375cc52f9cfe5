// capsule-recv: the guest agent's bulk receiver for uploads (docs/agent.md, "Uploads").
//
// Why it exists: the agent is Node.js, which reads an accepted socket 64 KiB at a time with a
// JavaScript callback per read; in a sandbox guest under QEMU/TCG that caps an upload at ~35 MB/s
// where a plain C reader of the same socket gets ~100 MB/s (measured: a Node sink vs `dd` vs a
// Python reader in one guest). For a large upload the agent stops reading the connection itself
// and hands it to this helper, which copies exactly SIZE bytes from stdin (the connection) to
// stdout (the temporary file the agent opened), then exits. The agent renames the file into place
// and answers on the same connection.
//
//   capsule-recv SIZE [IDLE_SECONDS]
//
// Exit status: 0 all SIZE bytes written; 2 usage; 3 the connection ended early or failed;
// 4 nothing came for IDLE_SECONDS (default 120); 5 a write to the file failed. On 3-5 one line
// on stderr: "<step>: <errno name or 'eof'> <bytes copied>" (the agent turns it into its error).
//
// Built by agent/build.mjs (gcc -static) beside the agent's bundle.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static char buf[CHUNK];

static const char *errno_name(int e) {
  switch (e) {
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EFBIG: return "EFBIG";
    case EIO: return "EIO";
    case EROFS: return "EROFS";
    case ECONNRESET: return "ECONNRESET";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EPIPE: return "EPIPE";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOTCONN: return "ENOTCONN";
    case EBADF: return "EBADF";
    default: return "EIO";
  }
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end = NULL;
  if (*s < '0' || *s > '9') return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0') return -1;
  *out = v;
  return 0;
}

static int write_all(const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(STDOUT_FILENO, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char **argv) {
  uint64_t size = 0, idle = 120;
  if (argc < 2 || argc > 3 || parse_u64(argv[1], &size) != 0 || (argc == 3 && (parse_u64(argv[2], &idle) != 0 || idle == 0 || idle > 86400))) {
    fprintf(stderr, "usage: capsule-recv SIZE [IDLE_SECONDS 1..86400]\n");
    return 2;
  }
  // The connection's open file description is shared with the agent, and the spawn made it
  // blocking (libuv clears O_NONBLOCK on a child's stdio): set it back, so that the agent's own
  // reads never block its event loop once the connection is its again. poll() paces ours.
  int flags = fcntl(STDIN_FILENO, F_GETFL);
  if (flags >= 0) (void)fcntl(STDIN_FILENO, F_SETFL, flags | O_NONBLOCK);
  uint64_t copied = 0;
  struct pollfd in = { .fd = STDIN_FILENO, .events = POLLIN };
  while (copied < size) {
    // A sender that stalls is given up on (the agent then removes the temporary file).
    int r = poll(&in, 1, (int)(idle * 1000));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      fprintf(stderr, "read: %s %llu\n", errno_name(errno), (unsigned long long)copied);
      return 3;
    }
    if (r == 0) {
      fprintf(stderr, "read: ETIMEDOUT %llu\n", (unsigned long long)copied);
      return 4;
    }
    uint64_t want = size - copied < CHUNK ? size - copied : CHUNK;
    ssize_t n = read(STDIN_FILENO, buf, (size_t)want);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      fprintf(stderr, "read: %s %llu\n", errno_name(errno), (unsigned long long)copied);
      return 3;
    }
    if (n == 0) {
      fprintf(stderr, "read: eof %llu\n", (unsigned long long)copied);
      return 3;
    }
    if (write_all(buf, (size_t)n) != 0) {
      fprintf(stderr, "write: %s %llu\n", errno_name(errno), (unsigned long long)copied);
      return 5;
    }
    copied += (uint64_t)n;
  }
  return 0;
}
