/* The config parser (train/config.c over inih and the key tables): any file
 * is a config or one error, and an accepted config writes back and checks. */
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "train/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_file(0, "c.ini", data, size);
    config *c = malloc(sizeof *c);
    config_init(c);
    mx_err err;
    if (config_load_file(c, p, &err) == 0) {
        config_check(c, &err);
        FILE *devnull = fopen("/dev/null", "w");
        config_write(c, devnull);
        fclose(devnull);
        mm_policy pol;
        config_policy(c, &pol);
        model_config mc = config_model(c);
        (void)mc;
    }
    /* one line as a --set assignment */
    char line[256];
    size_t n = size < sizeof line - 1 ? size : sizeof line - 1;
    memcpy(line, data, n);
    line[n] = 0;
    config_init(c);
    config_set(c, line, &err);
    free(c);
    return 0;
}
