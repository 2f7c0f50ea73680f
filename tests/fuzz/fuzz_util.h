/* Shared by the libFuzzer harnesses: the readers under test take paths, so
 * each input is written to a per-process scratch file first. */
#ifndef MX_FUZZ_UTIL_H
#define MX_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Writes data to /tmp/mxfuzz_<pid>_<tag>; returns the path (static per tag slot). */
static inline const char *fuzz_file(int slot, const char *tag, const uint8_t *data, size_t n) {
    static char paths[4][128];
    snprintf(paths[slot], sizeof paths[slot], "/tmp/mxfuzz_%d_%s", (int)getpid(), tag);
    FILE *f = fopen(paths[slot], "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
    return paths[slot];
}

#endif
