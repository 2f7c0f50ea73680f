#include "train/cli.h"

#include "core/keys.h"
#include "cuda/cuda.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_take_value(int argc, char **argv, int *i, const char *name, const char **value) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        return 1;
    }
    if (a[n] != 0) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "mxtrain: option %s needs a value\n", name);
        return -1;
    }
    *value = argv[++*i];
    return 1;
}

int cli_take_values(int argc, char **argv, int *i, const char *const *names, const char **const *dst, int n) {
    for (int k = 0; k < n; k++) {
        int r = cli_take_value(argc, argv, i, names[k], dst[k]);
        if (r) return r;
    }
    return 0;
}

bool cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    if (!s || !*s) return false;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "mxtrain %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'mxtrain %s --help')\n", cmd);
    return CLI_EXIT_USAGE;
}

bool cli_is_help(const char *arg) { return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0; }

static const char *const cli_device_names[] = {"cpu", "cuda"};
_Static_assert(sizeof cli_device_names / sizeof cli_device_names[0] == CLI_DEVICE_COUNT, "device names");
MX_ENUM_OF_NAMES(cli_device_enum, "device", cli_device_names);

int cli_device_open(const char *name, cli_device *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&cli_device_enum, name, &v, err)) return -1;
    *out = (cli_device)v;
    if (*out != CLI_DEVICE_CUDA) return 0;
    return cu_init(err) ? -2 : 0;
}
