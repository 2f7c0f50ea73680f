#include <omp.h>
#include <stdio.h>

#include "dist/dist.h"
#include "core/cpu.h"
#include "core/threads.h"
#include "cuda/cuda.h"
#include "train/cli.h"
#include "core/gemm.h"
#include "train/commands.h"

extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);


int cmd_version(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            printf("usage: mxtrain version\n\nPrints the version, compiler, OpenBLAS build and kernels, threads and the\n"
                   "CPU features detected at run time, and the CUDA runtime, driver and GPUs.\n");
            return 0;
        }
        return cli_usage_error("version", "unexpected argument '%s'", argv[i]);
    }
    cpu_features f;
    cpu_detect(&f);
    printf("mxtrain %s\n", MXTRAIN_VERSION);
    printf("compiler: gcc %s, C%ld\n", __VERSION__, (long)(__STDC_VERSION__ / 100 % 100));
    printf("openblas: %s\n", openblas_get_config());
    printf("openblas kernels: %s (%s)\n", openblas_get_corename(), cpu_blas_kernel_choice());
    /* which engine multiplies what on the CPU (train.cpu_gemm) */
    printf("cpu gemm: fp32 operands %s; quantized pairs %s\n",
           gemm_dnnl_f32_preferred() ? gemm_dnnl_f32_engine() : "OpenBLAS sgemm",
           gemm_bf16_available() ? gemm_bf16_engine() : "OpenBLAS sgemm");
    if (!gemm_bf16_available()) printf("cpu bf16 engine: %s\n", gemm_bf16_engine());
    printf("threads: %d (OpenMP and OpenBLAS; %d cores available)\n", threads_get(), threads_available());
    printf("openmp: %d\n", _OPENMP);
    printf("ranks: %s\n", dist_describe());
    printf("cpu: %s\n", f.brand[0] ? f.brand : "unknown");
    printf("cpu features:%s%s%s%s%s%s%s%s%s%s\n", f.avx2 ? " avx2" : "", f.fma ? " fma" : "", f.f16c ? " f16c" : "",
           f.avx512f ? " avx512f" : "", f.avx512bw ? " avx512bw" : "", f.avx512vl ? " avx512vl" : "",
           f.avx512_vnni ? " avx512_vnni" : "", f.avx512_bf16 ? " avx512_bf16" : "", f.avx_vnni ? " avx_vnni" : "",
           (!f.avx512f) ? " (no AVX-512)" : "");
    cu_describe(stdout);
    return 0;
}
