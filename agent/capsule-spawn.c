// capsule-spawn: the guest agent's process starter (docs/agent.md, "Spawning").
//
// Why it exists: the agent is a Node.js process of ~50 MiB, and libuv starts a child with
// fork(), which copies the page tables of all of it; this helper is a small static program that
// starts children with vfork() and reaps them. Measured in a sandbox guest under QEMU/TCG: Node's
// spawn of `true` ~80-120 ms, vfork+exec from here ~40 ms.
//
// The agent starts one helper and keeps it; the helper dies with its stdin (the agent).
//
// Requests (agent -> helper, on stdin): u32 little-endian length N (<= MAX_REQUEST), then N
// bytes: NUL-terminated strings
//   "spawn" id uid gid cwd stdin-path stdout-path stderr-path argc argv... envc env...
//   "mkfifo" id path...                      (mode 0600)
// Replies (helper -> agent, on stdout), one line each (shorter than PIPE_BUF: written whole):
//   S <id> <pid>                             started (the child has exec'd)
//   F <id> <errno> <step>                    failed (nothing running); step: what failed
//   X <pid> <exit code> <signal number>      a child ended (code -1 when a signal ended it)
// A child leads a new session (setsid), opens its stdio from the three paths (FIFOs the agent
// holds the other ends of), drops to uid/gid (no supplementary groups), changes to cwd, and
// runs argv[0] looked up on the PATH of its own environment.
//
// Built by agent/build.mjs (gcc -static) beside the agent's bundle.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_REQUEST (4u << 20)
#define MAX_STRINGS 65536

static char *req;                // the current request (grown as needed, up to MAX_REQUEST)
static char *strs[MAX_STRINGS];  // its strings

static void die(const char *why) {
  fprintf(stderr, "capsule-spawn: %s\n", why);
  _exit(1);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) die("the agent is gone (stdout)");
    p += w;
    n -= (size_t)w;
  }
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof line) die("reply too long");
  write_all(1, line, (size_t)n);
}

/** Reads exactly n bytes; 0 at a clean end of input before any byte, 1 when read. */
static int read_exact(int fd, char *p, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, p + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("read failed");
    if (r == 0) {
      if (got == 0) return 0;
      die("the agent closed mid-request");
    }
    got += (size_t)r;
  }
  return 1;
}

/** Splits the request into strings; returns how many, or -1 when it is not NUL-terminated. */
static int split(char *p, size_t n) {
  if (n == 0 || p[n - 1] != '\0') return -1;
  int k = 0;
  for (size_t i = 0; i < n && k < MAX_STRINGS; k++) {
    strs[k] = p + i;
    i += strlen(p + i) + 1;
  }
  return k;
}

static int parse_int(const char *s, long min, long max, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v < min || v > max) return -1;
  *out = v;
  return 0;
}

// ---- the child (after vfork: only syscalls, no allocation, no return) ----

static int err_fd = -1;  // the child's end of the error pipe (close-on-exec)

static void child_fail(int step) {
  int e[2] = {errno, step};
  (void)!write(err_fd, e, sizeof e);
  _exit(127);
}

enum { STEP_SETSID = 1, STEP_STDIN, STEP_STDOUT, STEP_STDERR, STEP_CWD, STEP_GROUPS, STEP_GID, STEP_UID, STEP_EXEC };
static const char *const STEP_NAMES[] = {"", "setsid", "stdin", "stdout", "stderr", "cwd", "setgroups", "setgid", "setuid", "exec"};

static void open_as(const char *path, int flags, int target, int step) {
  // Non-blocking to open, so that a FIFO without its other end is an error (ENXIO) or an
  // immediate end of input instead of a hang; then blocking, as a child expects its stdio.
  int fd = open(path, flags | O_NOCTTY | O_NONBLOCK);
  if (fd < 0 || fcntl(fd, F_SETFL, flags) < 0) child_fail(step);
  if (fd != target) {
    if (dup2(fd, target) < 0) child_fail(step);
    close(fd);
  }
}

/** execve argv[0], looked up on PATH (from envp) when it has no slash, as execvp does. */
static void exec_path(char *const argv[], char *const envp[]) {
  const char *file = argv[0];
  if (strchr(file, '/')) {
    execve(file, argv, envp);
    child_fail(STEP_EXEC);
  }
  const char *path = "/usr/local/bin:/usr/bin:/bin";
  for (char *const *e = envp; *e; e++) if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  char buf[PATH_MAX];
  int seen_eacces = 0;
  size_t flen = strlen(file);
  for (const char *p = path;; p++) {
    const char *end = strchrnul(p, ':');
    size_t dlen = (size_t)(end - p);
    if (dlen + 1 + flen + 1 <= sizeof buf) {
      memcpy(buf, p, dlen);
      size_t at = dlen;
      if (dlen > 0) buf[at++] = '/';
      memcpy(buf + at, file, flen + 1);
      execve(buf, argv, envp);
      if (errno == EACCES) seen_eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR) child_fail(STEP_EXEC);
    }
    if (*end == '\0') break;
    p = end;
  }
  errno = seen_eacces ? EACCES : ENOENT;
  child_fail(STEP_EXEC);
}

// ---- requests ----

static void do_spawn(int n) {
  // spawn id uid gid cwd in out err argc argv... envc env...
  if (n < 9) die("spawn: too few fields");
  const char *id = strs[1];
  long uid, gid, argc, envc;
  if (parse_int(strs[2], 0, INT32_MAX, &uid) || parse_int(strs[3], 0, INT32_MAX, &gid) || parse_int(strs[8], 1, MAX_STRINGS, &argc)) die("spawn: bad numbers");
  if (9 + argc + 1 > n || parse_int(strs[9 + argc], 0, MAX_STRINGS, &envc) || 10 + argc + envc != n) die("spawn: bad counts");
  // argv and envp need a NULL after them: copy the pointers (the strings stay in place).
  char **argv = calloc((size_t)argc + 1, sizeof *argv);
  char **envp = calloc((size_t)envc + 1, sizeof *envp);
  if (!argv || !envp) die("out of memory");
  memcpy(argv, strs + 9, (size_t)argc * sizeof *argv);
  memcpy(envp, strs + 10 + argc, (size_t)envc * sizeof *envp);
  const char *cwd = strs[4], *in = strs[5], *out = strs[6], *errp = strs[7];

  int ep[2];
  if (pipe2(ep, O_CLOEXEC) < 0) { reply("F %s %d pipe\n", id, errno); goto done; }
  err_fd = ep[1];
  pid_t pid = vfork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);  // the helper blocks SIGCHLD for its signalfd
    if (setsid() < 0) child_fail(STEP_SETSID);
    open_as(in, O_RDONLY, 0, STEP_STDIN);
    open_as(out, O_WRONLY, 1, STEP_STDOUT);
    open_as(errp, O_WRONLY, 2, STEP_STDERR);
    // Raw syscalls: glibc's wrappers may coordinate threads, which a vfork child must not do.
    // The directory first, then another user (no supplementary groups, its group, its uid): the
    // order of Node's spawn (libuv), so that both ways of starting a process agree.
    if (chdir(cwd) < 0) child_fail(STEP_CWD);
    if ((uid_t)uid != getuid() || (gid_t)gid != getgid()) {
      if (syscall(SYS_setgroups, 0, NULL) < 0 && errno != EPERM) child_fail(STEP_GROUPS);
      if (syscall(SYS_setgid, (gid_t)gid) < 0) child_fail(STEP_GID);
      if (syscall(SYS_setuid, (uid_t)uid) < 0) child_fail(STEP_UID);
    }
    exec_path(argv, envp);
  }
  int saved = errno;
  close(ep[1]);
  err_fd = -1;
  if (pid < 0) {
    close(ep[0]);
    reply("F %s %d fork\n", id, saved);
    goto done;
  }
  // The child has exec'd (the pipe closed: 0 bytes) or failed (its errno and step).
  int e[2];
  ssize_t r;
  do r = read(ep[0], e, sizeof e); while (r < 0 && errno == EINTR);
  close(ep[0]);
  if (r == (ssize_t)sizeof e) {
    int step = e[1] > 0 && e[1] <= STEP_EXEC ? e[1] : 0;
    waitpid(pid, NULL, 0);
    reply("F %s %d %s\n", id, e[0], STEP_NAMES[step]);
  } else {
    reply("S %s %d\n", id, (int)pid);
  }
done:
  free(argv);
  free(envp);
}

static void do_mkfifo(int n) {
  if (n < 2) die("mkfifo: too few fields");
  for (int i = 2; i < n; i++) {
    if (mkfifo(strs[i], 0600) < 0) { reply("F %s %d mkfifo\n", strs[1], errno); return; }
  }
  reply("S %s 0\n", strs[1]);
}

static void reap(void) {
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    if (WIFEXITED(st)) reply("X %d %d 0\n", (int)pid, WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) reply("X %d -1 %d\n", (int)pid, WTERMSIG(st));
  }
}

int main(void) {
  // The helper goes with the agent (its parent), whatever ends the agent.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) return 1;
  fcntl(0, F_SETFD, FD_CLOEXEC);
  fcntl(1, F_SETFD, FD_CLOEXEC);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &chld, NULL) < 0) die("sigprocmask");
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) die("signalfd");
  size_t cap = 0;
  for (;;) {
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (p[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) { /* drained: reap() looks at every child */ }
      reap();
    }
    if (!p[0].revents) continue;
    uint32_t len;
    if (!read_exact(0, (char *)&len, sizeof len)) return 0;  // the agent closed: done
    if (len == 0 || len > MAX_REQUEST) die("request length out of range");
    if (len > cap) {
      free(req);
      if (!(req = malloc(len))) die("out of memory");
      cap = len;
    }
    read_exact(0, req, len);
    int n = split(req, len);
    if (n < 2) die("malformed request");
    if (strcmp(strs[0], "spawn") == 0) do_spawn(n);
    else if (strcmp(strs[0], "mkfifo") == 0) do_mkfifo(n);
    else die("unknown request");
    reap();
  }
}
