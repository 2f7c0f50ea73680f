/* Shared helpers for the Check suites. */
#ifndef MX_TEST_UTIL_H
#define MX_TEST_UTIL_H

#include <check.h>
#include <stddef.h>

/* A fresh scratch directory under the test's working directory. */
const char *test_tmpdir(void);
/* Path of a file inside test_tmpdir() (static buffer rotated across 8 calls). */
const char *test_path(const char *name);
/* Writes bytes to a file; aborts the test on failure. */
void test_write_file(const char *path, const void *data, size_t n);
/* Runs `build/mxtrain ARGS` (MX_BUILD_DIR), stdout and stderr into out
 * (NUL-terminated, truncated to outsz); returns its exit status (-1: killed). */
int test_run_mxtrain(const char *args, char *out, size_t outsz);
/* Runs a suite, returns the process exit status. */
int test_run_suite(Suite *s);

#endif
