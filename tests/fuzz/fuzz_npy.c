/* .npy reader (core/npy.c) and what `mxtrain quantize` does next with the
 * shape: every accepted array's shape must give a valid block count. */
#include <string.h>

#include "core/npy.h"
#include "fuzz_util.h"
#include "quant/quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_file(0, "x.npy", data, size);
    npy_array a;
    mx_err err;
    if (npy_read(p, &a, &err) == 0) npy_free(&a);
    if (npy_read_f32(p, &a, &err) == 0) {
        quant_spec s = quant_spec_default(QUANT_FORMAT_MXSF);
        int64_t nb = quant_num_blocks(&s, a.ndim, a.shape, &err);
        if (nb >= 0 && a.numel <= (1 << 16)) {
            float *y = malloc(sizeof(float) * (size_t)(a.numel ? a.numel : 1));
            uint8_t *sc = malloc((size_t)nb + 1);
            quant_fake(&s, a.data, y, a.ndim, a.shape, sc, NULL);
            free(y);
            free(sc);
        }
        npy_free(&a);
    }
    return 0;
}
