#include "core/keys.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int mx_enum_parse(const mx_enum *e, const char *s, int *out, mx_err *err) {
    if (e->parse) {
        int r = e->parse(s, out, err);
        if (r <= 0) return r;
    }
    for (int i = 0; i < e->count; i++) {
        const char *alias = e->alias ? e->alias(i) : NULL;
        if (strcmp(s, e->name(i)) == 0 || (alias && strcmp(s, alias) == 0)) {
            *out = i;
            return 0;
        }
    }
    char list[1024];
    mx_enum_list(e, false, list, sizeof list);
    return mx_err_set(err, "unknown %s '%s' (valid: %s)", e->what, s, list);
}

void mx_enum_list(const mx_enum *e, bool quote, char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    const char *q = quote ? "`" : "";
    for (int i = 0; i < e->count && len < n; i++) {
        const char *alias = e->alias ? e->alias(i) : NULL;
        len += (size_t)snprintf(buf + len, n - len, "%s%s%s%s", i ? ", " : "", q, e->name(i), q);
        if (alias && len < n) len += (size_t)snprintf(buf + len, n - len, " (alias %s%s%s)", q, alias, q);
    }
    if (e->family && len < n) snprintf(buf + len, n - len, ", %s%s%s", q, e->family, q);
}

int key_parse_list(const char *v, double *out, int lo, int hi, bool want_int, int *n, mx_err *err) {
    char buf[1024];
    if (strlen(v) >= sizeof buf) return mx_err_set(err, "list longer than %zu characters", sizeof buf - 1);
    snprintf(buf, sizeof buf, "%s", v);
    int k = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char *end;
        double d = strtod(tok, &end);
        while (*end == ' ') end++;
        if (end == tok || *end || !isfinite(d) || (want_int && (d != floor(d) || d < 1 || d > 65536)))
            return mx_err_set(err, "'%s' is not a list of %s", v, want_int ? "positive integers" : "numbers");
        if (k == hi) return mx_err_set(err, "'%s' has more than %d values", v, hi);
        out[k++] = d;
    }
    if (k < lo) return mx_err_set(err, "'%s' needs %d%s values", v, lo, lo == hi ? "" : " or more");
    *n = k;
    return 0;
}

int key_set(const key_def *k, void *cfg, const char *value, mx_err *err) {
    char *field = (char *)cfg + k->offset;
    char *end;
    switch (k->type) {
    case KEY_INT:
    case KEY_I64: {
        MX_ASSERT(k->size == (k->type == KEY_INT ? sizeof(int) : sizeof(int64_t)));
        errno = 0;
        long long x = strtoll(value, &end, 10);
        if (end == value || *end || errno) return mx_err_set(err, "'%s' is not an integer", value);
        if ((double)x < k->min || (double)x > k->max)
            return mx_err_set(err, "%lld is out of range [%.17g, %.17g]", x, k->min, k->max);
        if (k->type == KEY_INT) *(int *)field = (int)x;
        else *(int64_t *)field = x;
        return 0;
    }
    case KEY_FLOAT:
    case KEY_DOUBLE: {
        MX_ASSERT(k->size == (k->type == KEY_FLOAT ? sizeof(float) : sizeof(double)));
        double x = strtod(value, &end);
        if (end == value || *end || !isfinite(x)) return mx_err_set(err, "'%s' is not a number", value);
        if (x < k->min || x > k->max) return mx_err_set(err, "%g is out of range [%g, %g]", x, k->min, k->max);
        if (k->type == KEY_FLOAT) *(float *)field = (float)x;
        else *(double *)field = x;
        return 0;
    }
    case KEY_BOOL:
        MX_ASSERT(k->size == sizeof(bool));
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0 || strcmp(value, "yes") == 0) *(bool *)field = true;
        else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0 || strcmp(value, "no") == 0)
            *(bool *)field = false;
        else return mx_err_set(err, "'%s' is not true/false", value);
        return 0;
    case KEY_TEXT:
        if (strlen(value) >= k->size) return mx_err_set(err, "value longer than %zu characters", k->size - 1);
        if ((double)strlen(value) < k->min) return mx_err_set(err, "must not be empty");
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case KEY_ENUM: {
        MX_ASSERT(k->size == sizeof(int));
        int v;
        if (k->optional && !value[0]) v = -1;
        else if (mx_enum_parse(k->values, value, &v, err)) return -1;
        memcpy(field, &v, sizeof v);
        return 0;
    }
    case KEY_CUSTOM: return k->parse(value, cfg, err);
    default: MX_ASSERT(0);
    }
    return -1;
}

void key_type_text(const key_def *k, char *buf, size_t n) {
    switch (k->type) {
    case KEY_INT:
    case KEY_I64: snprintf(buf, n, "int in [%.17g, %.17g]", k->min, k->max); break;
    case KEY_FLOAT:
    case KEY_DOUBLE: snprintf(buf, n, "number in [%g, %g]", k->min, k->max); break;
    case KEY_BOOL: snprintf(buf, n, "bool"); break;
    case KEY_TEXT: snprintf(buf, n, k->min > 0 ? "text, not empty" : "text"); break;
    case KEY_ENUM: {
        int len = snprintf(buf, n, "%s", k->optional ? "empty or one of " : "one of ");
        if (len > 0 && (size_t)len < n) mx_enum_list(k->values, true, buf + len, n - (size_t)len);
        break;
    }
    case KEY_CUSTOM: snprintf(buf, n, "text (see meaning)"); break;
    default: MX_ASSERT(0);
    }
}
