/* The benchmark's command: stamps its start and end on CLOCK_MONOTONIC into a shared file, so
 * that the harness can measure the gap from one holder's end to the next holder's start.
 *
 *   stamp FILE ID                 start, end, exit 0
 *   stamp FILE ID --gate FIFO     start, block until a byte (or EOF) arrives on FIFO, end
 *   stamp FILE ID --until-signal  start, wait for SIGTERM/SIGINT/SIGHUP, stamp it, exit 0
 *   stamp FILE ID --hold-us N     start, sleep N microseconds, end
 *
 * Each line is "<ns> <S|E|G> <id> <pid> <ZKLOCK_NODE or ->", written with one write(2) on an
 * O_APPEND descriptor, so lines from concurrent holders never interleave. Built by bench/run
 * with gcc into bench/build/. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int out = -1;
static const char *id = "?";

static void stamp(char kind, const char *extra) {
    struct timespec ts;
    char line[512];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const char *node = getenv("ZKLOCK_NODE");
    int n = snprintf(line, sizeof line, "%lld %c %s %d %s%s%s\n",
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, kind, id, (int)getpid(),
                     node && *node ? node : "-", extra ? " " : "", extra ? extra : "");
    if (n > 0 && write(out, line, (size_t)n) < 0) _exit(3);
}

static void on_signal(int sig) {
    stamp('G', sig == SIGTERM ? "TERM" : sig == SIGINT ? "INT" : "HUP");
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: stamp FILE ID [--gate FIFO | --until-signal]\n");
        return 2;
    }
    id = argv[2];
    out = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (out < 0) { perror(argv[1]); return 2; }
    if (argc >= 4 && strcmp(argv[3], "--until-signal") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        stamp('S', NULL);
        for (;;) pause();
    }
    stamp('S', NULL);
    if (argc >= 5 && strcmp(argv[3], "--hold-us") == 0) {
        long us = atol(argv[4]);
        struct timespec d = {us / 1000000, (us % 1000000) * 1000};
        nanosleep(&d, NULL);
    }
    if (argc >= 5 && strcmp(argv[3], "--gate") == 0) {
        int g = open(argv[4], O_RDONLY);
        char c;
        if (g >= 0) { (void)!read(g, &c, 1); close(g); }
    }
    stamp('E', NULL);
    return 0;
}
