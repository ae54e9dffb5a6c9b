/* Run the commands read on stdin, one per line, arguments separated by
 * \x1f; answer "STATUS NANOSECONDS MAXRSS_KIB" for each.
 *
 * bench.py cannot start the commands itself: a child of a Python process
 * (fork or vfork) starts with the interpreter's resident size as its
 * high-water mark, which exec keeps in ru_maxrss (fs/exec.c, exec_mmap ->
 * setmax_mm_hiwater_rss), so every command would show >= 15 MiB. Forked from
 * this small program, a command's ru_maxrss is its own. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    static char line[1 << 16];
    int devnull = open("/dev/null", O_RDWR);
    while (fgets(line, sizeof line, stdin)) {
        char *argv[256];
        int argc = 0;
        line[strcspn(line, "\n")] = 0;
        for (char *arg = strtok(line, "\x1f"); arg && argc < 255; arg = strtok(NULL, "\x1f"))
            argv[argc++] = arg;
        argv[argc] = NULL;
        struct timespec start, end;
        struct rusage usage;
        int status;
        clock_gettime(CLOCK_MONOTONIC, &start);
        pid_t pid = fork();
        if (pid == 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
            execvp(argv[0], argv);
            _exit(127);
        }
        wait4(pid, &status, 0, &usage);
        clock_gettime(CLOCK_MONOTONIC, &end);
        printf("%d %lld %ld\n", status, (end.tv_sec - start.tv_sec) * 1000000000LL +
               (end.tv_nsec - start.tv_nsec), usage.ru_maxrss);
        fflush(stdout);
    }
    return 0;
}
