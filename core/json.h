/* JSON lines on stdout (bench, eval, quantize results), written through cJSON:
 * strings escaped, numbers JSON can hold (null when not finite). */
#ifndef MX_CORE_JSON_H
#define MX_CORE_JSON_H

#include <cJSON.h>

/* A number rounded to `decimals` places (-1: exact), or null when not finite. */
void mx_json_number(cJSON *o, const char *key, double v, int decimals);
/* o as one line on stdout, flushed; then freed. */
void mx_json_print(cJSON *o);

#endif
