/* CPU features detected at run time (cpuid + xgetbv), and the choice of
 * OpenBLAS kernels that follows from them. */
#ifndef MX_CORE_CPU_H
#define MX_CORE_CPU_H

#include <stdbool.h>

typedef struct cpu_features {
    bool avx2, fma, f16c;
    bool avx512f, avx512bw, avx512dq, avx512vl, avx512cd;
    bool avx512_bf16, avx512_vnni, avx_vnni;
    char brand[64];
} cpu_features;

void cpu_detect(cpu_features *f);

/* OpenBLAS 0.3.21 reads OPENBLAS_CORETYPE once, when the library loads, and
 * takes some AVX-512 CPUs for Haswell. Call first thing in main(): where the
 * CPU has the AVX-512 subset of SkylakeX and the user has not chosen a core
 * type, it sets OPENBLAS_CORETYPE=SkylakeX and re-executes the program so the
 * library loads with it. Returns only when no re-exec happened. */
void cpu_select_blas_kernels(char **argv);

/* How the BLAS core type was chosen, for `mxtrain version`. */
const char *cpu_blas_kernel_choice(void);

#endif
