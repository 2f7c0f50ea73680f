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
