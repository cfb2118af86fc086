/*
 * A stand-in for ffmpeg that reports who it runs as, or fills its output directory from many
 * threads. Mode from the tenant-controlled argument `-metadata comment=MODE:ARGS`; the output
 * path is the last argument.
 *   whoami:SECONDS         sleep, then write "uid=U gid=G pid=P" to the output
 *   fill:THREADS:FILES:MB  every thread writes FILES files of MB MiB next to the output, until a
 *                          write fails; then waits 3 s (so the test can look) and exits 1 with
 *                          the error if any write failed
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[4096];
static int files_per_thread, mb_per_file;
static int first_error;

static void *filler(void *arg) {
    long t = (long)arg;
    static char chunk[64 * 1024];
    for (int i = 0; i < files_per_thread; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/f-%ld-%d.bin", dir, t, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) { __sync_val_compare_and_swap(&first_error, 0, errno); return NULL; }
        for (int k = 0; k < mb_per_file * 16; k++) {
            if (write(fd, chunk, sizeof chunk) != (ssize_t)sizeof chunk) {
                __sync_val_compare_and_swap(&first_error, 0, errno ? errno : ENOSPC);
                close(fd);
                return NULL;
            }
        }
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv) {
    /* The worker registers its FFmpeg's fingerprint: answer as the installed release would. */
    if (argc == 2 && !strcmp(argv[1], "-version")) { puts("ffmpeg version 5.1-identity stand-in"); return 0; }
    if (argc == 2 && !strcmp(argv[1], "-buildconf")) { puts("  configuration:\n    --identity"); return 0; }
    const char *mode = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "-metadata") && !strncmp(argv[i + 1], "comment=", 8)) mode = argv[i + 1] + 8;
    if (!mode || argc < 2) { fprintf(stderr, "no mode given\n"); return 2; }
    const char *out = argv[argc - 1];
    if (!strncmp(mode, "whoami:", 7)) {
        sleep(atoi(mode + 7));
        FILE *f = fopen(out, "w");
        if (!f) { fprintf(stderr, "cannot write %s: %s\n", out, strerror(errno)); return 3; }
        fprintf(f, "uid=%u gid=%u pid=%d\n", getuid(), getgid(), getpid());
        fclose(f);
        return 0;
    }
    int threads = 0;
    if (sscanf(mode, "fill:%d:%d:%d", &threads, &files_per_thread, &mb_per_file) == 3) {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", out);
        snprintf(dir, sizeof dir, "%s", dirname(copy));
        pthread_t tid[256];
        if (threads > 256) threads = 256;
        for (long t = 0; t < threads; t++) pthread_create(&tid[t], NULL, filler, (void *)t);
        for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
        sleep(3);
        if (first_error) { fprintf(stderr, "write: %s\n", strerror(first_error)); return 1; }
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
