/*
 * vsock-tool: a small netcat for AF_VSOCK, built static into capsule's guest images
 * (busybox has no vsock support).
 *
 *   vsock-tool listen [-k] [-e] PORT   accept a connection on PORT (any CID); relay it with
 *                                      stdin/stdout. -e: echo what arrives back to the peer
 *                                      instead. -k: keep accepting, one connection at a time.
 *   vsock-tool connect CID PORT        connect to CID:PORT; stdin -> socket, socket -> stdout
 *   vsock-tool cid                     print this machine's CID
 *
 * At end of stdin the write side of the socket is shut down (the peer sees EOF); the tool
 * exits when the peer closes. Exit status: 0 done, 1 a socket error, 2 usage.
 * CIDs: 2 is the host, 1 is the local machine (vsock_loopback), 0xFFFFFFFF (-1) any.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what) {
  fprintf(stderr, "vsock-tool: %s: %s\n", what, strerror(errno));
  exit(1);
}

static int usage(void) {
  fputs("usage: vsock-tool listen [-k] [-e] PORT | connect CID PORT | cid\n", stderr);
  return 2;
}

static int parse_u32(const char *s, unsigned int *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 0);
  if (errno || *s == '\0' || *end != '\0' || v < -1 || v > 0xFFFFFFFFLL) return -1;
  *out = (unsigned int)v; /* -1 -> VMADDR_CID_ANY / VMADDR_PORT_ANY */
  return 0;
}

static int write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Relays stdin -> sock and sock -> stdout (or sock -> sock with echo) until the peer closes. */
static int relay(int sock, int echo) {
  char buf[65536];
  int in_open = !echo;
  for (;;) {
    struct pollfd p[2] = {{.fd = sock, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
    int n = poll(p, in_open ? 2 : 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = read(sock, buf, sizeof buf);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == ECONNRESET) return 0;
        die("read socket");
      }
      if (r == 0) return 0;
      if (write_all(echo ? sock : 1, buf, (size_t)r) < 0) die(echo ? "write socket" : "write stdout");
    }
    if (in_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t r = read(0, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        in_open = 0;
        shutdown(sock, SHUT_WR);
      } else if (write_all(sock, buf, (size_t)r) < 0) {
        die("write socket");
      }
    }
  }
}

static int cmd_listen(int argc, char **argv) {
  int keep = 0, echo = 0, i = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "-k") == 0) keep = 1;
    else if (strcmp(argv[i], "-e") == 0) echo = 1;
    else return usage();
  }
  unsigned int port;
  if (argc - i != 1 || parse_u32(argv[i], &port) < 0) return usage();
  int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket");
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(s, keep ? 16 : 1) < 0) die("listen");
  do {
    struct sockaddr_vm peer;
    socklen_t len = sizeof peer;
    int c = accept4(s, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR) continue;
      die("accept");
    }
    relay(c, echo);
    close(c);
  } while (keep);
  close(s);
  return 0;
}

static int cmd_connect(int argc, char **argv) {
  unsigned int cid, port;
  if (argc != 2 || parse_u32(argv[0], &cid) < 0 || parse_u32(argv[1], &port) < 0) return usage();
  int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) die("socket");
  struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
  while (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
    if (errno != EINTR) die("connect");
  }
  relay(s, 0);
  close(s);
  return 0;
}

static int cmd_cid(void) {
  unsigned int cid;
  int fd = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("/dev/vsock");
  if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0) die("IOCTL_VM_SOCKETS_GET_LOCAL_CID");
  printf("%u\n", cid);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) return usage();
  if (strcmp(argv[1], "listen") == 0) return cmd_listen(argc - 2, argv + 2);
  if (strcmp(argv[1], "connect") == 0) return cmd_connect(argc - 2, argv + 2);
  if (strcmp(argv[1], "cid") == 0 && argc == 2) return cmd_cid();
  return usage();
}
