/* LD_PRELOAD shim for disk.rs: while the file named by $DYNAMO_FAIL_FSYNC_FLAG exists, every
 * fsync and fdatasync of the process fails with EIO (what a dying disk or a lost network
 * volume reports), and each failure is counted in $DYNAMO_FAIL_FSYNC_FLAG.count. Otherwise
 * the calls go to libc unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("DYNAMO_FAIL_FSYNC_FLAG");
    if (flag == NULL || access(flag, F_OK) != 0) return 0;
    char count[4096];
    if (snprintf(count, sizeof count, "%s.count", flag) < (int)sizeof count) {
        /* One byte per failure: the test reads the file's size. */
        int fd = open(count, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            (void)write(fd, "x", 1);
            close(fd);
        }
    }
    return 1;
}

int fsync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (failing()) { errno = EIO; return -1; }
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
