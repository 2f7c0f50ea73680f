#include "core/json.h"

#include <math.h>
#include <stdio.h>

void mx_json_number(cJSON *o, const char *key, double v, int decimals) {
    if (!isfinite(v)) {
        cJSON_AddNullToObject(o, key);
        return;
    }
    if (decimals >= 0) {
        double s = pow(10.0, decimals);
        v = round(v * s) / s;
    }
    cJSON_AddNumberToObject(o, key, v);
}

void mx_json_print(cJSON *o) {
    char *line = cJSON_PrintUnformatted(o);
    printf("%s\n", line);
    fflush(stdout);
    cJSON_free(line);
    cJSON_Delete(o);
}
