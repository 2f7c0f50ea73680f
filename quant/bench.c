/* `mxtrain bench quantize`: fake-quant and pack throughput against memcpy of
 * the same size, measured alternately in one run (the machine is shared and
 * noisy, so only side-by-side medians mean anything). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/timer.h"
#include "quant/quant.h"
#include "core/json.h"

/* memcpy split over the same threads as the quantizer: the real ceiling. */
static void bench_memcpy(float *dst, const float *src, int64_t n) {
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t b = n * t / nt, e = n * (t + 1) / nt;
        memcpy(dst + b, src + b, (size_t)(e - b) * sizeof(float));
    }
}

int quant_bench(const quant_format *formats, int nformats, int64_t n, int reps) {
    float *x = aligned_alloc(64, (size_t)n * 4 + 64), *y = aligned_alloc(64, (size_t)n * 4 + 64);
    uint8_t *codes = aligned_alloc(64, (size_t)n * 2 + 64) /* BDR: + a microexponent per run */, *scales = aligned_alloc(64, (size_t)n / 4 + 64);
    if (!x || !y || !codes || !scales) {
        fprintf(stderr, "mxtrain bench quantize: cannot allocate %lld elements\n", (long long)n);
        free(x); free(y); free(codes); free(scales);
        return 1;
    }
    /* Gaussian values with a spread of per-block magnitudes, like activations. */
    rng r;
    rng_init(&r, 1234, 0);
    for (int64_t i = 0; i < n; i++) x[i] = rng_normal(&r) * (float)(1 << ((i >> 5) % 16));
    double *t_fake = mx_malloc(sizeof(double) * (size_t)reps), *t_pack = mx_malloc(sizeof(double) * (size_t)reps),
           *t_copy = mx_malloc(sizeof(double) * (size_t)reps);
    int64_t shape[1] = {n};
    for (int f = 0; f < nformats; f++) {
        quant_spec s = quant_spec_default(formats[f]);
        bool mx = quant_format_get(formats[f])->is_mx;
        MX_ASSERT(!mx || quant_codes_bytes(&s, 1, shape) <= 2 * n);
        /* warm-up: page faults and caches */
        bench_memcpy(y, x, n);
        quant_fake(&s, x, y, 1, shape, mx ? scales : NULL, NULL);
        if (mx) quant_pack(&s, x, codes, 1, shape, scales, NULL);
        for (int i = 0; i < reps; i++) {
            double t0 = timer_now();
            bench_memcpy(y, x, n);
            double t1 = timer_now();
            quant_fake(&s, x, y, 1, shape, mx ? scales : NULL, NULL);
            double t2 = timer_now();
            if (mx) quant_pack(&s, x, codes, 1, shape, scales, NULL);
            double t3 = timer_now();
            t_copy[i] = t1 - t0;
            t_fake[i] = t2 - t1;
            t_pack[i] = t3 - t2;
        }
        double copy_gbps = 8.0 * (double)n / timer_median(t_copy, reps) / 1e9;
        double fake_gbps = 8.0 * (double)n / timer_median(t_fake, reps) / 1e9;
        /* pack reads 4 bytes and writes 1 code byte (+ scales) per element */
        double pack_gbps = mx ? (5.0 + 1.0 / 32) * (double)n / timer_median(t_pack, reps) / 1e9 : 0.0;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "bench", "quantize");
        cJSON_AddStringToObject(j, "format", quant_format_get(formats[f])->name);
        cJSON_AddNumberToObject(j, "n", (double)n);
        cJSON_AddNumberToObject(j, "threads", omp_get_max_threads());
        cJSON_AddNumberToObject(j, "reps", reps);
        mx_json_number(j, "fake_gbps", fake_gbps, 2);
        mx_json_number(j, "pack_gbps", pack_gbps, 2);
        mx_json_number(j, "memcpy_gbps", copy_gbps, 2);
        mx_json_number(j, "fake_vs_memcpy", fake_gbps / copy_gbps, 3);
        mx_json_number(j, "pack_vs_memcpy", mx ? pack_gbps / copy_gbps : 0.0, 3);
        mx_json_print(j);
    }
    free(t_fake); free(t_pack); free(t_copy);
    free(x); free(y); free(codes); free(scales);
    return 0;
}
