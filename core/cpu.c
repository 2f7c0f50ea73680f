#include "core/cpu.h"

#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t cpu_xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

void cpu_detect(cpu_features *f) {
    memset(f, 0, sizeof *f);
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    bool osxsave = (c >> 27) & 1;
    bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    uint64_t xcr0 = osxsave ? cpu_xgetbv0() : 0;
    bool os_avx = (xcr0 & 0x6) == 0x6;             /* XMM and YMM state */
    bool os_avx512 = os_avx && (xcr0 & 0xE0) == 0xE0; /* opmask, ZMM state */
    f->fma = os_avx && fma;
    f->f16c = os_avx && f16c;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        f->avx2 = os_avx && ((b >> 5) & 1);
        f->avx512f = os_avx512 && ((b >> 16) & 1);
        f->avx512dq = os_avx512 && ((b >> 17) & 1);
        f->avx512cd = os_avx512 && ((b >> 28) & 1);
        f->avx512bw = os_avx512 && ((b >> 30) & 1);
        f->avx512vl = os_avx512 && ((b >> 31) & 1);
        f->avx512_vnni = os_avx512 && ((c >> 11) & 1);
        __cpuid_count(7, 1, a, b, c, d);
        f->avx512_bf16 = os_avx512 && ((a >> 5) & 1);
        f->avx_vnni = os_avx && ((a >> 4) & 1);
    }
    unsigned brand[12];
    if (__get_cpuid_max(0x80000000, NULL) >= 0x80000004) {
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002 + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2], &brand[4 * i + 3]);
        memcpy(f->brand, brand, 48);
        f->brand[48] = 0;
        /* trim leading/trailing blanks */
        char *s = f->brand;
        while (*s == ' ') s++;
        memmove(f->brand, s, strlen(s) + 1);
        size_t n = strlen(f->brand);
        while (n && f->brand[n - 1] == ' ') f->brand[--n] = 0;
    }
}

#define CPU_REEXEC_GUARD "MXTRAIN_BLAS_REEXEC"

void cpu_select_blas_kernels(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv(CPU_REEXEC_GUARD)) return;
    cpu_features f;
    cpu_detect(&f);
    if (!(f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx512cd)) return;
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
    setenv(CPU_REEXEC_GUARD, "SkylakeX", 1);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): carry on with the library's own choice. */
    unsetenv("OPENBLAS_CORETYPE");
}

const char *cpu_blas_kernel_choice(void) {
    const char *guard = getenv(CPU_REEXEC_GUARD);
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (guard && user && strcmp(guard, user) == 0) return "auto: SkylakeX (AVX-512 detected)";
    if (user) return "user: OPENBLAS_CORETYPE set in the environment";
    return "auto: OpenBLAS default (no AVX-512 on this CPU)";
}
