/* safetensors reader (core/safetensors.c): any accepted file's tensors can
 * be read whole (their offsets and sizes were checked against the data). */
#include <stdlib.h>

#include "core/safetensors.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_file(0, "x.safetensors", data, size);
    st_file f;
    mx_err err;
    if (st_open(p, &f, &err) == 0) {
        for (int i = 0; i < f.n; i++) {
            if (f.t[i].numel > (1 << 20)) continue;
            float *v = malloc(sizeof(float) * (size_t)(f.t[i].numel ? f.t[i].numel : 1));
            st_read_f32(&f, i, v);
            free(v);
        }
        st_close(&f);
    }
    return 0;
}
