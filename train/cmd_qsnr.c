/* mxtrain qsnr: the statistical study of "With Shared Microexponents" as a
 * command (quant/qsnr.h does the measuring): formats x distributions (or the
 * rows of an .npy), a markdown table on stdout, CSV and an SVG chart. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/npy.h"
#include "quant/qsnr.h"
#include "train/cli.h"
#include "train/commands.h"
#include "train/svg.h"

#define QSNR_MAX_FORMATS 256

static const char qsnr_default_formats[] =
    "mx9,mx6,mx4,mxint8,mxint4,mxfp8_e4m3,mxfp8_e5m2,mxfp6_e3m2,mxfp6_e2m3,mxfp4_e2m1,"
    "bdr_m7_k16_s16_d0,bdr_m7_k16_s2_d2,bdr_m7_k16_s8_d1";

static const char qsnr_usage[] =
    "usage: mxtrain qsnr [--formats LIST] [--dist D,...|all] [--length N] [--count C] [--seed S]\n"
    "                    [--block K] [--npy FILE.npy] [--out PREFIX]\n"
    "\n"
    "Draws C vectors of N values from each distribution (or takes the rows of FILE.npy along its\n"
    "last axis), quantizes them with every format (1D blocks along each vector) and prints a\n"
    "markdown table: bits per element, mean and minimum QSNR over the vectors, the QSNR of all of\n"
    "them as one tensor, and the Theorem 1 lower bound of the shared-microexponents paper where it\n"
    "applies. Writes PREFIX.csv and PREFIX.svg (QSNR against bits per element).\n"
    "\n"
    "  --formats LIST  comma-separated formats (default: the presets, MXINT, MXFP and three BDR\n"
    "                  points); braces sweep: 'bdr_m{3..7}_k16_s{2,8}_d1' (quote it from the shell)\n"
    "  --dist D        paper (N(0, s^2), s ~ |N(0,1)| per vector; default), normal, laplace,\n"
    "                  student_t3, or all\n"
    "  --length N      values per vector (default 1024)\n"
    "  --count C       vectors per distribution (default 3000)\n"
    "  --seed S        seed of the draws (default 0)\n"
    "  --block K       1D block of the one-level MX formats (default 32; BDR formats use their k1)\n"
    "  --round R       even (default), away, floor, stochastic\n"
    "  --npy FILE      measure the rows of a float32 .npy instead of drawing\n"
    "  --out PREFIX    output files PREFIX.csv and PREFIX.svg (default qsnr)\n";

/* Appends the expansion of pattern (brace groups {a,b} and {lo..hi}) to out. */
static int qsnr_expand(const char *pat, char (*out)[64], int *n, int max, mx_err *err) {
    const char *open = strchr(pat, '{');
    if (!open) {
        if (*n == max) return mx_err_set(err, "more than %d formats", max);
        if (strlen(pat) >= 64) return mx_err_set(err, "format name '%s' too long", pat);
        snprintf(out[(*n)++], 64, "%s", pat);
        return 0;
    }
    const char *close = strchr(open, '}');
    if (!close) return mx_err_set(err, "'%s': '{' without '}'", pat);
    char head[256], tail[256], items[256];
    if ((size_t)(open - pat) >= sizeof head || strlen(close + 1) >= sizeof tail || (size_t)(close - open) >= sizeof items)
        return mx_err_set(err, "'%s' too long", pat);
    snprintf(head, sizeof head, "%.*s", (int)(open - pat), pat);
    snprintf(tail, sizeof tail, "%s", close + 1);
    snprintf(items, sizeof items, "%.*s", (int)(close - open - 1), open + 1);
    for (char *save = NULL, *tok = strtok_r(items, "|", &save); tok; tok = strtok_r(NULL, "|", &save)) {
        char next[600];
        int lo, hi, used = 0;
        if (sscanf(tok, "%d..%d%n", &lo, &hi, &used) == 2 && !tok[used]) {
            if (hi < lo || hi - lo > 64) return mx_err_set(err, "'{%s}': bad range", tok);
            for (int v = lo; v <= hi; v++) {
                snprintf(next, sizeof next, "%s%d%s", head, v, tail);
                if (qsnr_expand(next, out, n, max, err)) return -1;
            }
        } else {
            snprintf(next, sizeof next, "%s%s%s", head, tok, tail);
            if (qsnr_expand(next, out, n, max, err)) return -1;
        }
    }
    return 0;
}

/* Splits LIST at commas outside braces (whose commas become '|') and expands each item. */
static int qsnr_parse_formats(const char *list, quant_format *fmts, int *nf, mx_err *err) {
    char buf[2048], names[QSNR_MAX_FORMATS][64];
    if (strlen(list) >= sizeof buf) return mx_err_set(err, "--formats longer than %zu characters", sizeof buf - 1);
    snprintf(buf, sizeof buf, "%s", list);
    int depth = 0;
    for (char *c = buf; *c; c++) {
        if (*c == '{') depth++;
        else if (*c == '}') depth--;
        else if (*c == ',' && depth > 0) *c = '|';
        if (depth < 0 || depth > 1) return mx_err_set(err, "--formats '%s': unbalanced or nested braces", list);
    }
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (*tok && qsnr_expand(tok, names, &n, QSNR_MAX_FORMATS, err)) return -1;
    }
    if (!n) return mx_err_set(err, "--formats names no format");
    for (int i = 0; i < n; i++)
        if (quant_format_parse(names[i], &fmts[i], err)) return -1;
    *nf = n;
    return 0;
}

static void qsnr_cell(FILE *f, double v, const char *fmt) {
    if (isfinite(v)) fprintf(f, fmt, v);
    else fputs(isnan(v) ? "" : "inf", f);
}

/* A result's four dB columns (mean, min, tensor, bound), sep between them. */
static void qsnr_db_cells(FILE *f, const qsnr_result *r, const char *sep, const char *fmt) {
    const double v[4] = {r->mean_db, r->min_db, r->tensor_db, r->bound_db};
    for (int i = 0; i < 4; i++) {
        if (i) fputs(sep, f);
        qsnr_cell(f, v[i], fmt);
    }
}

int cmd_qsnr(int argc, char **argv) {
    const char *formats_s = qsnr_default_formats, *dist_s = "paper", *length_s = "1024", *count_s = "3000",
               *seed_s = "0", *block_s = "32", *round_s = "even", *npy_s = NULL, *out_s = "qsnr";
    static const char *const names[] = {"--formats", "--dist", "--length", "--count", "--seed",
                                        "--block",   "--round", "--npy",   "--out"};
    const char **slots[] = {&formats_s, &dist_s, &length_s, &count_s, &seed_s, &block_s, &round_s, &npy_s, &out_s};
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(qsnr_usage, stdout);
            return 0;
        }
        bool taken = false;
        for (int k = 0; k < 9 && !taken; k++) {
            const char *v;
            int r = cli_take_value(argc, argv, &i, names[k], &v);
            if (r < 0) return CLI_EXIT_USAGE;
            if (r == 1) *slots[k] = v, taken = true;
        }
        if (!taken) return cli_usage_error("qsnr", "unexpected argument '%s'", argv[i]);
    }
    mx_err err;
    quant_format fmts[QSNR_MAX_FORMATS];
    int nf = 0;
    if (qsnr_parse_formats(formats_s, fmts, &nf, &err)) return cli_usage_error("qsnr", "%s", err.msg);
    int64_t length, count, seed, block;
    if (!cli_parse_i64(length_s, 1, 1 << 24, &length)) return cli_usage_error("qsnr", "malformed --length '%s'", length_s);
    if (!cli_parse_i64(count_s, 1, 1 << 24, &count)) return cli_usage_error("qsnr", "malformed --count '%s'", count_s);
    if (length * count > ((int64_t)1 << 28))
        return cli_usage_error("qsnr", "--length x --count is %lld values, more than 2^28", (long long)(length * count));
    if (!cli_parse_i64(seed_s, 0, INT64_MAX, &seed)) return cli_usage_error("qsnr", "malformed --seed '%s'", seed_s);
    if (!cli_parse_i64(block_s, 1, 4096, &block)) return cli_usage_error("qsnr", "malformed --block '%s'", block_s);
    quant_round round;
    if (quant_round_parse(round_s, &round, &err)) return cli_usage_error("qsnr", "%s", err.msg);
    bool dists[QSNR_DIST_COUNT] = {false};
    int nd = 0;
    if (!npy_s) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", dist_s);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int d;
            if (strcmp(tok, "all") == 0) {
                for (d = 0; d < QSNR_DIST_COUNT; d++) dists[d] = true;
                continue;
            }
            if (mx_enum_parse(&qsnr_dist_enum, tok, &d, &err)) return cli_usage_error("qsnr", "%s", err.msg);
            dists[d] = true;
        }
        for (int d = 0; d < QSNR_DIST_COUNT; d++) nd += dists[d];
        if (!nd) return cli_usage_error("qsnr", "--dist names no distribution");
    }

    /* the data: one set per distribution, or the file's rows */
    npy_array in = {0};
    const char *set_names[QSNR_DIST_COUNT];
    int nsets = 0;
    if (npy_s) {
        if (npy_read_f32(npy_s, &in, &err)) {
            fprintf(stderr, "mxtrain qsnr: %s\n", err.msg);
            return 1;
        }
        if (in.ndim < 1 || in.numel == 0) {
            fprintf(stderr, "mxtrain qsnr: %s: an empty array has no vectors\n", npy_s);
            npy_free(&in);
            return 1;
        }
        length = in.shape[in.ndim - 1];
        count = in.numel / length;
        set_names[nsets++] = npy_s;
    } else {
        for (int d = 0; d < QSNR_DIST_COUNT; d++)
            if (dists[d]) set_names[nsets++] = qsnr_dist_enum.name(d);
    }
    size_t n = (size_t)(length * count);
    float *x = mx_malloc(sizeof(float) * n), *scratch = mx_malloc(sizeof(float) * n);
    qsnr_result *res = mx_calloc((size_t)(nsets * nf), sizeof *res);
    quant_spec *specs = mx_calloc((size_t)nf, sizeof *specs);
    for (int f = 0; f < nf; f++) {
        specs[f] = quant_spec_default(fmts[f]);
        specs[f].round = round;
        specs[f].seed = (uint64_t)seed;
        if (quant_format_get(fmts[f])->is_mx && !quant_format_is_bdr(fmts[f])) specs[f].block_cols = (int)block;
    }
    for (int si = 0, d = 0; si < nsets; si++, d++) {
        if (npy_s) {
            memcpy(x, in.data, sizeof(float) * n);
        } else {
            while (!dists[d]) d++;
            qsnr_draw((qsnr_dist)d, (uint64_t)seed, count, length, x);
        }
        for (int f = 0; f < nf; f++) qsnr_measure(&specs[f], x, count, length, scratch, &res[si * nf + f]);
    }

    /* markdown on stdout */
    printf("QSNR of %lld vectors of %lld values, %s rounding (seed %lld)\n", (long long)count, (long long)length,
           quant_round_name(round), (long long)seed);
    for (int si = 0; si < nsets; si++) {
        printf("\n### %s\n\n| format | block | bits/element | mean QSNR (dB) | min QSNR (dB) | tensor QSNR (dB) | "
               "Theorem 1 bound (dB) |\n|---|---|---|---|---|---|---|\n",
               set_names[si]);
        for (int f = 0; f < nf; f++) {
            const qsnr_result *r = &res[si * nf + f];
            const quant_format_info *fi = quant_format_get(fmts[f]);
            printf("| %s | ", fi->name);
            if (fi->is_mx) printf("1x%d", specs[f].block_cols);
            else printf("-");
            printf(" | %.3g | ", r->bits);
            qsnr_db_cells(stdout, r, " | ", "%.2f");
            puts(" |");
        }
    }

    int rc = 0;
    char path[1024];
    snprintf(path, sizeof path, "%s.csv", out_s);
    FILE *csv = fopen(path, "w");
    if (!csv) {
        fprintf(stderr, "mxtrain qsnr: %s: cannot write\n", path);
        rc = 1;
        goto done;
    }
    fputs("set,format,block,bits_per_element,mean_qsnr_db,min_qsnr_db,tensor_qsnr_db,theorem1_db,vectors,length,"
          "exact_vectors\n",
          csv);
    for (int si = 0; si < nsets; si++)
        for (int f = 0; f < nf; f++) {
            const qsnr_result *r = &res[si * nf + f];
            fprintf(csv, "%s,%s,", set_names[si], quant_format_get(fmts[f])->name);
            if (quant_format_get(fmts[f])->is_mx) fprintf(csv, "1x%d", specs[f].block_cols);
            fprintf(csv, ",%.6g,", r->bits);
            qsnr_db_cells(csv, r, ",", "%.4f");
            fprintf(csv, ",%lld,%lld,%lld\n", (long long)r->vectors, (long long)length, (long long)r->exact);
        }
    if (fclose(csv)) {
        fprintf(stderr, "mxtrain qsnr: %s: write failed (disk full?)\n", path);
        rc = 1;
        goto done;
    }
    snprintf(path, sizeof path, "%s.svg", out_s);
    FILE *svg = fopen(path, "w");
    if (!svg) {
        fprintf(stderr, "mxtrain qsnr: %s: cannot write\n", path);
        rc = 1;
        goto done;
    }
    {
        double *bx = mx_malloc(sizeof(double) * (size_t)(nsets * nf)), *by = mx_malloc(sizeof(double) * (size_t)(nsets * nf));
        svg_series series[QSNR_DIST_COUNT];
        const char **labels = mx_malloc(sizeof(char *) * (size_t)nf);
        const char *const *lab[QSNR_DIST_COUNT] = {NULL};
        for (int f = 0; f < nf; f++) labels[f] = quant_format_get(fmts[f])->name;
        for (int si = 0; si < nsets; si++) {
            for (int f = 0; f < nf; f++) bx[si * nf + f] = res[si * nf + f].bits, by[si * nf + f] = res[si * nf + f].mean_db;
            series[si] = (svg_series){set_names[si], bx + si * nf, by + si * nf, nf};
            lab[si] = si == 0 ? labels : NULL; /* the first set's points carry the names */
        }
        char title[160];
        snprintf(title, sizeof title, "QSNR vs bits per element (%lld vectors of %lld)", (long long)count,
                 (long long)length);
        svg_scatter(svg, title, "bits per element", "mean QSNR (dB)", series, nsets, lab);
        free(bx);
        free(by);
        free(labels);
    }
    if (fclose(svg)) {
        fprintf(stderr, "mxtrain qsnr: %s: write failed (disk full?)\n", path);
        rc = 1;
    }
done:
    free(x);
    free(scratch);
    free(res);
    free(specs);
    npy_free(&in);
    return rc;
}
