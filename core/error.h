/* Error convention (docs/conventions.md):
 *  - user-facing failures (bad file, bad config, bad CLI value) return int:
 *    0 on success, -1 on failure with a one-line message in an mx_err that
 *    names the file and, where there is one, the line ("cfg.ini:12: ...").
 *  - programmer errors (broken invariants) abort with file:line through
 *    MX_ASSERT, which is always on, also in Release builds. */
#ifndef MX_CORE_ERROR_H
#define MX_CORE_ERROR_H

#include <stddef.h>
#include <stdint.h>

typedef struct mx_err {
    char msg[512];
} mx_err;

/* Formats the message into err (if not NULL) and returns -1, so callers can
 * write `return mx_err_set(err, "%s: truncated", path);`. */
int mx_err_set(mx_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
#define MX_NORETURN [[noreturn]]
#else
#define MX_NORETURN _Noreturn
#endif
MX_NORETURN void mx_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define MX_ASSERT(cond) \
    do { if (!(cond)) mx_fatal(__FILE__, __LINE__, "assertion failed: %s", #cond); } while (0)
#define MX_ASSERTF(cond, ...) \
    do { if (!(cond)) mx_fatal(__FILE__, __LINE__, __VA_ARGS__); } while (0)

/* Allocation failures are fatal (file:line); memory is never silently short. */
void *mx_malloc_at(size_t bytes, const char *file, int line);
void *mx_calloc_at(size_t n, size_t size, const char *file, int line);
void *mx_aligned_alloc_at(size_t bytes, const char *file, int line); /* 64-byte aligned */
#define mx_malloc(b) mx_malloc_at((b), __FILE__, __LINE__)
#define mx_calloc(n, s) mx_calloc_at((n), (s), __FILE__, __LINE__)
#define mx_aligned_alloc(b) mx_aligned_alloc_at((b), __FILE__, __LINE__)

/* The one growth rule of every growing array: returns p resized so that it
 * holds at least `need` elements of `size` bytes, doubling *cap (from
 * `first`); p itself when it already does. */
void *mx_grow_at(void *p, int64_t *cap, int64_t need, size_t size, int64_t first, const char *file, int line);
#define MX_GROW(ptr, cap, need, first) \
    ((ptr) = mx_grow_at((ptr), &(cap), (need), sizeof *(ptr), (first), __FILE__, __LINE__))

#endif
