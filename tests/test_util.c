#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *test_tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "tmp_%d", (int)getpid());
        mkdir(dir, 0755);
    }
    return dir;
}

const char *test_path(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 512, "%s/%s", test_tmpdir(), name);
    return b;
}

void test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

int test_run_suite(Suite *s) {
    test_tmpdir(); /* create it in the parent so forked tests share it */
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", test_tmpdir());
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", test_tmpdir());
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

int test_run_mxtrain(const char *args, char *out, size_t outsz) {
    const char *bd = getenv("MX_BUILD_DIR");
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s/mxtrain %s > %s 2>&1", bd ? bd : "..", args, test_path("cli.out"));
    int st = system(cmd);
    FILE *f = fopen(test_path("cli.out"), "r");
    size_t n = f ? fread(out, 1, outsz - 1, f) : 0;
    out[n] = 0;
    if (f) fclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
