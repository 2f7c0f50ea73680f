/* The MNIST / Fashion-MNIST IDX readers (datasets/sources.c; gzip or plain):
 * the input is an images file and a labels file, split at a length prefix. */
#include <string.h>
#include <sys/stat.h>

#include "datasets/datasets.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t cut = ((size_t)data[0] | (size_t)data[1] << 8) % (size - 1);
    static char dir[128];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/mxfuzz_%d_idx", (int)getpid());
        mkdir(dir, 0755);
    }
    char p[256];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
    FILE *f = fopen(p, "wb");
    fwrite(data + 2, 1, cut, f);
    fclose(f);
    snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte", dir);
    f = fopen(p, "wb");
    fwrite(data + 2 + cut, 1, size - 2 - cut, f);
    fclose(f);
    data_config dc;
    memset(&dc, 0, sizeof dc);
    dc.kind = DATA_KIND_MNIST;
    snprintf(dc.path, sizeof dc.path, "%s", dir);
    dataset ds;
    mx_err err;
    if (dataset_open(&ds, &dc, DATA_SPLIT_TRAIN, &err) == 0) dataset_free(&ds);
    return 0;
}
