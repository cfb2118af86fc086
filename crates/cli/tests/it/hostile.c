/*
 * A hostile stand-in for ffmpeg, run by the real worker in ffmpeg's place. It performs one
 * attack, named by the tenant-controlled argument `-metadata comment=attack:NAME[:ARG]`, and
 * writes its verdict ("ESCAPED ..." or "BLOCKED ...") to its output file, the last argument.
 * Attacks the jail answers by killing the process leave no verdict: the job's error code is it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *out_path;

static void verdict(const char *fmt, ...) {
    char buf[20480];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    FILE *f = fopen(out_path, "w");
    if (!f) { fprintf(stderr, "cannot write verdict: %s\n", strerror(errno)); exit(3); }
    fprintf(f, "%s\n", buf);
    fclose(f);
}

static int read_file(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -errno;
    char b[64];
    ssize_t n = read(fd, b, sizeof b);
    close(fd);
    return n < 0 ? -errno : 0;
}

static void try_read(const char *name, const char *path) {
    int r = read_file(path);
    if (r == 0) verdict("ESCAPED %s: read %s", name, path);
    else verdict("BLOCKED %s: %s", name, strerror(-r));
}

static void tcp(const char *name, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { verdict("BLOCKED %s: socket: %s", name, strerror(errno)); return; }
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001) };
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) verdict("ESCAPED %s: connected to 127.0.0.1:%d", name, port);
    else verdict("BLOCKED %s: connect: %s", name, strerror(errno));
    close(s);
}


/* ---- signals: every route a process has to signal another one ---- */

static char report[16384];
static size_t report_len;
static int escaped;

static void note(const char *route, long target, int sig, long rc) {
    int e = errno;
    if (rc >= 0) escaped++;
    if (report_len < sizeof report - 128)
        report_len += snprintf(report + report_len, sizeof report - report_len, "%s %ld sig %d: %s\n",
                               route, target, sig, rc >= 0 ? "SUCCEEDED" : strerror(e));
}

/* Tries every route at `t` with `sig`. Routes through fd 1 (our stdout pipe) set its owner. */
static void signal_routes(long t, int sig) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_signo = sig;
    info.si_code = SI_QUEUE;
    note("kill", t, sig, syscall(SYS_kill, t, sig));
    if (t <= 0) return; /* process groups and "everyone": kill(2) is the only route */
    note("tgkill", t, sig, syscall(SYS_tgkill, t, t, sig));
    note("tgkill_hibits", t, sig, syscall(SYS_tgkill, t | (1L << 32), t, sig));
    note("tkill", t, sig, syscall(SYS_tkill, t, sig));
    note("rt_sigqueueinfo", t, sig, syscall(SYS_rt_sigqueueinfo, t, sig, &info));
    note("rt_tgsigqueueinfo", t, sig, syscall(SYS_rt_tgsigqueueinfo, t, t, sig, &info));
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/%ld", t);
    int pfd = open(proc, O_RDONLY | O_DIRECTORY);
    note("open_proc_pidfd", t, sig, pfd);
    note("pidfd_send_signal", t, sig, syscall(SYS_pidfd_send_signal, pfd >= 0 ? pfd : 0, sig, NULL, 0));
    if (pfd >= 0) close(pfd);
    /* SIGIO (or F_SETSIG's signal) to an owner of our choosing when I/O is possible on fd 1. */
    struct f_owner_ex owner = { .type = F_OWNER_PID, .pid = (pid_t)t };
    note("fcntl_F_SETSIG", t, sig, fcntl(1, F_SETSIG, sig));
    note("fcntl_F_SETOWN", t, sig, fcntl(1, F_SETOWN, (int)t));
    note("fcntl_F_SETOWN_EX", t, sig, fcntl(1, F_SETOWN_EX, &owner));
    int fl = fcntl(1, F_GETFL);
    note("fcntl_O_ASYNC", t, sig, fcntl(1, F_SETFL, (fl < 0 ? 0 : fl) | O_ASYNC));
    int pid = (int)t, on = 1;
    note("ioctl_FIOSETOWN", t, sig, ioctl(1, FIOSETOWN, &pid));
    note("ioctl_SIOCSPGRP", t, sig, ioctl(1, SIOCSPGRP, &pid));
    note("ioctl_FIOASYNC", t, sig, ioctl(1, FIOASYNC, &on));
    /* Give any armed owner a reason to be signalled. */
    (void)!write(1, "\n", 1);
    fcntl(1, F_SETFL, fl < 0 ? 0 : fl);
}

/* ARG: comma-separated signal numbers. The targets (pids, space-separated) arrive in
 * in/targets once the test has looked at this process; wait for it. */
static void signal_matrix(const char *name, const char *arg) {
    char buf[512] = {0};
    for (int i = 0; i < 1200; i++) {
        int fd = open("in/targets", O_RDONLY);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0 && buf[n - 1] == '\n') break;
            memset(buf, 0, sizeof buf);
        }
        usleep(50000);
    }
    if (!buf[0]) { verdict("ERROR %s: no targets", name); return; }
    char sigs[128];
    snprintf(sigs, sizeof sigs, "%s", arg);
    int tried = 0;
    for (char *s = strtok(sigs, ","); s; s = strtok(NULL, ",")) {
        int sig = atoi(s);
        char targets[512];
        snprintf(targets, sizeof targets, "%s", buf);
        char *save = NULL;
        for (char *t = strtok_r(targets, " \n", &save); t; t = strtok_r(NULL, " \n", &save)) {
            signal_routes(atol(t), sig);
            tried++;
        }
    }
    /* Signals to ourselves (what raise/abort/pthread_kill do) still work. */
    signal(SIGWINCH, SIG_IGN);
    int self_ok = raise(SIGWINCH) == 0;
    verdict("%s %s: %d route(s) succeeded, %d target/signal pairs, own raise %s\n%s",
            escaped ? "ESCAPED" : "BLOCKED", name, escaped, tried, self_ok ? "works" : "FAILED", report);
}

/* ---- many threads writing many files ---- */

static char flood_dir[512];
static int flood_files;
static size_t flood_kib;

static void *flood_thread(void *arg) {
    long t = (long)arg;
    char *b = calloc(1, 1 << 20);
    char path[600];
    for (int i = 0; i < flood_files; i++) {
        snprintf(path, sizeof path, "%s/flood_%ld_%d.bin", flood_dir, t, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) continue;
        for (size_t left = flood_kib << 10; left > 0;) {
            size_t n = left < (1 << 20) ? left : (1 << 20);
            ssize_t w = write(fd, b, n);
            if (w <= 0) break;
            left -= (size_t)w;
        }
        close(fd);
    }
    return NULL;
}

/* ARG: THREADS:FILES:KIB — each thread writes FILES files of KIB KiB next to the output. */
static void disk_flood(const char *name, const char *arg) {
    int threads = 1;
    sscanf(arg, "%d:%d:%zu", &threads, &flood_files, &flood_kib);
    snprintf(flood_dir, sizeof flood_dir, "%s", out_path);
    char *slash = strrchr(flood_dir, '/');
    if (slash) *slash = 0; else strcpy(flood_dir, ".");
    pthread_t th[64];
    if (threads > 64) threads = 64;
    for (long i = 0; i < threads; i++) pthread_create(&th[i], NULL, flood_thread, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    /* Linger, so that everything written is still there for anyone looking. */
    sleep(3);
    verdict("ESCAPED %s: wrote everything", name);
}

/* ARG: THREADS:FILES:KIB — disk_flood, but into a directory it made writable and not
   readable (mode 0300): nothing running as its uid can list what it writes there. */
static void hidden_flood(const char *name, const char *arg) {
    char out_dir[512];
    snprintf(out_dir, sizeof out_dir, "%s", out_path);
    char *slash = strrchr(out_dir, '/');
    if (slash) *slash = 0; else strcpy(out_dir, ".");
    char hidden[600];
    snprintf(hidden, sizeof hidden, "%s/hidden", out_dir);
    if (mkdir(hidden, 0300) != 0) { verdict("BLOCKED %s: mkdir: %s", name, strerror(errno)); return; }
    int threads = 1;
    sscanf(arg, "%d:%d:%zu", &threads, &flood_files, &flood_kib);
    snprintf(flood_dir, sizeof flood_dir, "%s", hidden);
    pthread_t th[64];
    if (threads > 64) threads = 64;
    for (long i = 0; i < threads; i++) pthread_create(&th[i], NULL, flood_thread, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    sleep(3);
    verdict("ESCAPED %s: wrote everything unseen", name);
}

/* ARG: MiB — that many MiB on a stream without a single newline, then a verdict. */
static void flood_fd(int fd, const char *name, const char *arg) {
    size_t mib = (size_t)atol(arg);
    char *b = malloc(1 << 20);
    memset(b, 'x', 1 << 20);
    for (size_t i = 0; i < mib; i++)
        for (size_t off = 0; off < (1 << 20);) {
            ssize_t w = write(fd, b + off, (1 << 20) - off);
            if (w <= 0) { verdict("ERROR %s: write: %s", name, strerror(errno)); return; }
            off += (size_t)w;
        }
    verdict("OK %s: wrote %zu MiB", name, mib);
}

int main(int argc, char **argv) {
    /* The worker fingerprints its FFmpeg at start: pass as the release the grammar targets. */
    if (argc == 2 && !strcmp(argv[1], "-version")) { puts("ffmpeg version 5.1-hostile stand-in"); return 0; }
    if (argc == 2 && !strcmp(argv[1], "-buildconf")) { puts("  configuration:\n    --hostile"); return 0; }
    const char *attack = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "-metadata") && !strncmp(argv[i + 1], "comment=attack:", 15)) attack = argv[i + 1] + 15;
    out_path = argv[argc - 1];
    if (!attack) { fprintf(stderr, "no attack given\n"); return 2; }
    char name[64] = {0};
    const char *arg = strchr(attack, ':');
    snprintf(name, sizeof name, "%.*s", arg ? (int)(arg - attack) : (int)strlen(attack), attack);
    arg = arg ? arg + 1 : "";
    char path[256];

    if (!strcmp(name, "none")) verdict("OK none");
    else if (!strcmp(name, "read_file")) try_read(name, arg);
    else if (!strcmp(name, "read_ppid_environ")) { snprintf(path, sizeof path, "/proc/%d/environ", getppid()); try_read(name, path); }
    else if (!strcmp(name, "read_ppid_mem")) {
        snprintf(path, sizeof path, "/proc/%d/mem", getppid());
        int fd = open(path, O_RDONLY);
        if (fd < 0) verdict("BLOCKED %s: %s", name, strerror(errno));
        else { verdict("ESCAPED %s: opened %s", name, path); close(fd); }
    }
    else if (!strcmp(name, "list_parent")) {
        int fd = open("..", O_RDONLY | O_DIRECTORY);
        if (fd < 0) { verdict("BLOCKED %s: %s", name, strerror(errno)); return 0; }
        char b[4096];
        long n = syscall(SYS_getdents64, fd, b, sizeof b);
        if (n > 0) verdict("ESCAPED %s: listed ..", name); else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "write_file")) {
        int fd = open(arg, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) verdict("BLOCKED %s: %s", name, strerror(errno));
        else { verdict("ESCAPED %s: created %s", name, arg); close(fd); }
    }
    else if (!strcmp(name, "write_input")) {
        int fd = open(arg, O_WRONLY | O_APPEND);
        if (fd < 0) verdict("BLOCKED %s: %s", name, strerror(errno));
        else { verdict("ESCAPED %s: opened input for writing", name); close(fd); }
    }
    else if (!strcmp(name, "symlink_out")) {
        char link[300];
        snprintf(link, sizeof link, "%s.link", out_path);
        if (symlink("/etc/passwd", link) == 0) { unlink(link); verdict("ESCAPED %s: made a symlink", name); }
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "exec_sh")) {
        char *args[] = { "/bin/sh", "-c", "echo \"ESCAPED exec_sh: ran /bin/sh\" > \"$0\"", (char *)out_path, NULL };
        execv("/bin/sh", args);
        verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "signal_parent")) {
        if (kill(getppid(), 0) == 0) verdict("ESCAPED %s: may signal the worker", name);
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "tcp")) tcp(name, atoi(arg));
    else if (!strcmp(name, "tcp_scan")) {
        /* ARG: comma-separated ports; try every one. */
        char ports[1024];
        snprintf(ports, sizeof ports, "%s", arg);
        int reached = 0, tried = 0;
        for (char *p = strtok(ports, ","); p; p = strtok(NULL, ",")) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) { verdict("BLOCKED %s: socket: %s", name, strerror(errno)); return 0; }
            struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(p)), .sin_addr.s_addr = htonl(0x7f000001) };
            tried++;
            if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) reached++;
            close(s);
        }
        if (reached) verdict("ESCAPED %s: reached %d of %d loopback ports", name, reached, tried);
        else verdict("BLOCKED %s: none of %d reachable", name, tried);
    }
    else if (!strcmp(name, "ptrace_parent")) {
        if (ptrace(PTRACE_ATTACH, getppid(), 0, 0) == 0) verdict("ESCAPED %s: attached to the worker", name);
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "udp")) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s < 0) { verdict("BLOCKED %s: %s", name, strerror(errno)); return 0; }
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(arg)), .sin_addr.s_addr = htonl(0x7f000001) };
        if (sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof a) == 1) verdict("ESCAPED %s: sent a datagram", name);
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "unix_abstract")) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0) verdict("BLOCKED %s: %s", name, strerror(errno)); else verdict("ESCAPED %s: made a unix socket", name);
    }
    else if (!strcmp(name, "ptrace")) {
        if (ptrace(PTRACE_TRACEME, 0, 0, 0) == 0) verdict("ESCAPED %s: ptrace works", name);
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "process_vm_readv")) {
        char local[8], remote[8] = "secret";
        struct iovec l = { local, 8 }, r = { remote, 8 };
        if (syscall(SYS_process_vm_readv, getpid(), &l, 1, &r, 1, 0) > 0) verdict("ESCAPED %s: read process memory", name);
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "userns")) {
        if (unshare(CLONE_NEWUSER) == 0) verdict("ESCAPED %s: new user namespace", name);
        else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "io_uring")) {
        char params[120] = {0};
        long fd = syscall(425 /* io_uring_setup */, 4, params);
        if (fd >= 0) verdict("ESCAPED %s: io_uring ring", name); else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "memfd")) {
        long fd = syscall(SYS_memfd_create, "x", 0);
        if (fd >= 0) verdict("ESCAPED %s: memfd", name); else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "fork_bomb")) {
        int made = 0;
        for (int i = 0; i < 20; i++) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            if (p > 0) made++;
        }
        while (wait(NULL) > 0) {}
        if (made) verdict("ESCAPED %s: forked %d processes", name, made); else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "alloc")) {
        size_t n = (size_t)atol(arg) << 20;
        char *p = malloc(n);
        if (!p) { fprintf(stderr, "alloc: Cannot allocate memory\n"); return 1; }
        memset(p, 1, n);
        verdict("ESCAPED %s: allocated %zu MiB", name, n >> 20);
    }
    else if (!strcmp(name, "big_file")) {
        size_t mb = (size_t)atol(arg);
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        char *b = calloc(1, 1 << 20);
        for (size_t i = 0; i < mb; i++)
            if (write(fd, b, 1 << 20) != 1 << 20) { fprintf(stderr, "write: %s\n", strerror(errno)); return 1; }
        close(fd);
        return 0; /* the oversized file is the "verdict" */
    }
    else if (!strcmp(name, "signal_matrix")) signal_matrix(name, arg);
    else if (!strcmp(name, "pidfd_open")) {
        long fd = syscall(SYS_pidfd_open, atol(arg), 0);
        if (fd >= 0) verdict("ESCAPED %s: pidfd for %s", name, arg); else verdict("BLOCKED %s: %s", name, strerror(errno));
    }
    else if (!strcmp(name, "disk_flood")) disk_flood(name, arg);
    else if (!strcmp(name, "hidden_flood")) hidden_flood(name, arg);
    else if (!strcmp(name, "stdout_flood")) flood_fd(1, name, arg);
    else if (!strcmp(name, "stderr_flood")) flood_fd(2, name, arg);
    else if (!strcmp(name, "stderr_nul")) {
        /* NUL and invalid UTF-8 on stderr; exit status `arg` (0: the encode "succeeded"). */
        if (write(2, "before\0after \xff\xfe\n", 16) != 16) return 1;
        verdict("OK stderr_nul");
        return atoi(arg);
    }
    else if (!strcmp(name, "self_kill")) {
        /* Code run inside FFmpeg by a crafted input SIGKILLs its own process (tgkill to
         * itself: seccomp allows it), optionally after `arg` seconds of work. */
        if (*arg) sleep(atoi(arg));
        raise(SIGKILL);
        verdict("ESCAPED %s: still alive", name);
    }
    else if (!strcmp(name, "many_files")) {
        /* `arg` small files with 127-character names beside the output (a directory output). */
        int n = atoi(arg);
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", out_path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        for (int i = 0; i < n; i++) {
            char p[1400];
            snprintf(p, sizeof p, "%s/%0124d.ts", dir, i);
            int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || write(fd, "x", 1) != 1) { fprintf(stderr, "many_files %d: %s\n", i, strerror(errno)); return 1; }
            close(fd);
        }
        verdict("OK %s: %d files", name, n);
    }
    else if (!strcmp(name, "sigsys_before")) {
        /* Code run inside FFmpeg by a crafted input kills its process with SIGSYS (what the
         * seccomp tripwire's kill looks like) while the clock is before `arg` (a Unix time
         * the tenant chose), and encodes normally after it: the first worker blames the
         * tenant, a later one succeeds. */
        if (time(NULL) < atol(arg)) raise(SIGSYS);
        verdict("OK %s: encoded", name);
    }
    else if (!strcmp(name, "sleep")) { sleep(atoi(arg)); verdict("ESCAPED %s: slept", name); }
    else { fprintf(stderr, "unknown attack %s\n", name); return 2; }
    return 0;
}
