#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int mx_err_set(mx_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void mx_fatal(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "mxtrain: internal error at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void *mx_malloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) mx_fatal(file, line, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *mx_calloc_at(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) mx_fatal(file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *mx_aligned_alloc_at(size_t bytes, const char *file, int line) {
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (!p) mx_fatal(file, line, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *mx_grow_at(void *p, int64_t *cap, int64_t need, size_t size, int64_t first, const char *file, int line) {
    if (need <= *cap) return p;
    int64_t c = *cap > 0 ? *cap : first;
    while (c < need) {
        if (c > INT64_MAX / 2) mx_fatal(file, line, "array of %lld elements too large", (long long)need);
        c *= 2;
    }
    if ((uint64_t)c > SIZE_MAX / size) mx_fatal(file, line, "array of %lld x %zu bytes too large", (long long)c, size);
    void *q = realloc(p, (size_t)c * size);
    if (!q) mx_fatal(file, line, "out of memory growing an array to %lld x %zu bytes", (long long)c, size);
    *cap = c;
    return q;
}
