/* mxtrain probe: the quantization error of every GEMM operand of every
 * layer, per format, without training under each: N batches forward and
 * backward (no update) of a checkpoint under each listed format, with the
 * plan's statistics. probe.csv and probe.h5 (a run's stats.h5 columns) hold
 * one row per (format, layer, role); report.html draws them side by side. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/checkpoint.h"
#include "train/cli.h"
#include "train/commands.h"
#include "train/config.h"
#include "train/report.h"
#include "train/runlog.h"
#include "train/svg.h"
#include "train/trainer.h"

typedef struct probe_args {
    const char *ckpt, *formats, *tilings, *batches, *out;
} probe_args;

static int probe_extra(int argc, char **argv, int *i, void *user) {
    probe_args *a = user;
    const char *const names[] = {"--checkpoint", "--init-from", "--formats", "--tilings", "--batches", "--out"};
    /* --init-from is --checkpoint's other name */
    const char **const dst[] = {&a->ckpt, &a->ckpt, &a->formats, &a->tilings, &a->batches, &a->out};
    return cli_take_values(argc, argv, i, names, dst, (int)(sizeof names / sizeof names[0]));
}

/* One variant's statistics over `batches` forward and backward passes of the evaluation split, appended to log
 * (step = the variant's index). */
static int probe_run(const config *c, const char *ckpt, int64_t batches, int variant, runlog *log, mx_err *err) {
    ckpt_session cs;
    int rc = -1;
    if (ckpt_session_open(&cs, c, ckpt, c->v.data.batch_size, err)) goto out;
    session *s = &cs.s;
    if (s->has_plan) s->plan.collect_stats = true;
    loader_start_epoch(cs.l, 0, 0);
    data_batch b;
    int r = 1, side = loader_out_size(cs.l);
    for (int64_t k = 0; k < batches && (r = loader_next(cs.l, &b, err)) == 1; k++) {
        double loss = session_forward_backward(s, b.images, b.labels, b.count, side, s->mc.in_chans, (uint64_t)k);
        if (!isfinite(loss)) {
            mx_err_set(err, "%s: non-finite loss at batch %lld", ckpt, (long long)k);
            goto out;
        }
    }
    if (r < 0) goto out;
    if (s->has_plan) runlog_stats(log, variant, &s->plan);
    rc = 0;
out:
    ckpt_session_close(&cs);
    return rc;
}

static int probe_write_csv(const char *dir, const config_variants *vs, const runlog *log, mx_err *err) {
    char p[1200];
    snprintf(p, sizeof p, "%s/probe.csv", dir);
    FILE *f = fopen(p, "w");
    if (!f) return mx_err_set(err, "%s: cannot write", p);
    fprintf(f, "variant,tiling,layer,role,format,elements,nonzero,qsnr_db,rel_err,underflow_ratio,saturation_ratio");
    for (int g = 0; g < QUANT_GAP_BINS; g++) fprintf(f, ",gap_%d", g);
    fprintf(f, "\n");
    for (int64_t i = 0; i < log->n_s; i++) {
        const stat_rec *s = &log->s[i];
        int v = (int)s->step;
        /* rel_err: the error's norm over the values' (QSNR = -20 log10 of it) */
        double rel = s->st.sum_x2 > 0 ? sqrt(s->st.sum_err2 / s->st.sum_x2) : NAN;
        fprintf(f, "%s,%s,%s,%s,%s,%lld,%lld,%.6g,%.6g,%.6g,%.6g", vs->format[v / vs->nt], vs->tiling[v % vs->nt],
                s->layer, mm_role_name(s->role), quant_format_get(s->format)->name, (long long)s->st.elements,
                (long long)s->st.nonzero, s->qsnr_db, rel, quant_stats_underflow_ratio(&s->st),
                quant_stats_saturation_ratio(&s->st));
        for (int g = 0; g < QUANT_GAP_BINS; g++) fprintf(f, ",%lld", (long long)s->st.gap_hist[g]);
        fprintf(f, "\n");
    }
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) return mx_err_set(err, "%s: write failed", p);
    return 0;
}

/* The layers in first-seen order, and v[layer * nv + variant] of one role's metric (NAN: not quantized). */
static int probe_grid(const runlog *log, int nv, mm_role role, int metric, const char ***names, double **v) {
    int nl = 0;
    const char **ln = mx_calloc((size_t)log->n_s + 1, sizeof *ln);
    for (int64_t i = 0; i < log->n_s; i++) {
        int k = 0;
        while (k < nl && strcmp(ln[k], log->s[i].layer)) k++;
        if (k == nl) ln[nl++] = log->s[i].layer;
    }
    double *g = mx_malloc(sizeof(double) * (size_t)(nl * nv + 1));
    for (int k = 0; k < nl * nv; k++) g[k] = NAN;
    for (int64_t i = 0; i < log->n_s; i++) {
        const stat_rec *s = &log->s[i];
        if (s->role != role) continue;
        int k = 0;
        while (strcmp(ln[k], s->layer)) k++;
        g[k * nv + (int)s->step] = metric == 0 ? s->qsnr_db : metric == 1 ? quant_stats_underflow_ratio(&s->st)
                                                                          : quant_stats_saturation_ratio(&s->st);
    }
    *names = ln;
    *v = g;
    return nl;
}

static int probe_write_report(const char *dir, const config *base, const char *ckpt, int64_t batches,
                              const config_variants *vs, const runlog *log, mx_err *err) {
    int nv = config_variant_count(vs);
    char p[1200];
    snprintf(p, sizeof p, "%s/report.html", dir);
    report_file rf;
    if (report_open(&rf, p, "mxtrain probe: quantization error per layer, role and format", err)) return -1;
    FILE *f = rf.f;
    fputs("<p>Checkpoint <code>", f);
    svg_text_escaped(f, ckpt);
    fprintf(f, "</code>: %lld batches of the evaluation split, forward and backward without an update, under each "
               "variant. Columns of every heatmap: the variants in this order: ",
            (long long)batches);
    for (int v = 0; v < nv; v++) fprintf(f, "%s%d = %s %s", v ? ", " : "", v + 1, vs->format[v / vs->nt], vs->tiling[v % vs->nt]);
    fputs(". One colour scale per metric for all roles and variants; a blank cell: not quantized there (fp32 or a "
          "keep rule).</p>\n",
          f);
    char *what = report_describe(base, true);
    fputs(what, f);
    free(what);
    double *cx = mx_malloc(sizeof(double) * (size_t)nv);
    for (int v = 0; v < nv; v++) cx[v] = v + 1;
    static const char *const metric_names[] = {"QSNR dB", "underflow ratio", "saturation ratio"};
    for (int metric = 0; metric < 3; metric++) {
        double lo = INFINITY, hi = -INFINITY;
        for (int64_t i = 0; i < log->n_s; i++) {
            const stat_rec *s = &log->s[i];
            double x = metric == 0 ? s->qsnr_db : metric == 1 ? quant_stats_underflow_ratio(&s->st)
                                                              : quant_stats_saturation_ratio(&s->st);
            if (isfinite(x)) lo = fmin(lo, x), hi = fmax(hi, x);
        }
        if (!isfinite(lo)) continue;
        if (metric > 0) lo = 0; /* ratios from zero */
        fprintf(f, "<h2>%s per layer (rows) and variant (columns)</h2>\n<div class=\"row\">\n", metric_names[metric]);
        for (int role = 0; role < MM_ROLE_COUNT; role++) {
            const char **names;
            double *g;
            int nl = probe_grid(log, nv, (mm_role)role, metric, &names, &g);
            bool any = false;
            for (int k = 0; k < nl * nv; k++) any |= isfinite(g[k]);
            if (any) svg_heatmap(f, mm_role_name((mm_role)role), names, nl, cx, nv, g, lo, hi > lo ? hi : lo + 1,
                                 metric_names[metric], "variant");
            free(names);
            free(g);
        }
        fputs("</div>\n", f);
    }
    /* the gradients' exponent gaps (element exponent below its block's maximum), per variant over all layers */
    fputs("<h2>Exponent-gap histogram of the gradients (bwd_grad_dx, all layers)</h2>\n<div class=\"row\">\n", f);
    const char *labels[QUANT_GAP_BINS];
    char lab[QUANT_GAP_BINS][8];
    for (int g = 0; g < QUANT_GAP_BINS; g++) snprintf(lab[g], 8, "%d", g), labels[g] = lab[g];
    for (int v = 0; v < nv; v++) {
        double h[QUANT_GAP_BINS] = {0}, tot = 0;
        for (int64_t i = 0; i < log->n_s; i++)
            if (log->s[i].step == v && log->s[i].role == MM_ROLE_BWD_GRAD_DX)
                for (int g = 0; g < QUANT_GAP_BINS; g++) h[g] += (double)log->s[i].st.gap_hist[g];
        for (int g = 0; g < QUANT_GAP_BINS; g++) tot += h[g];
        if (tot <= 0) continue;
        for (int g = 0; g < QUANT_GAP_BINS; g++) h[g] /= tot;
        char title[200];
        snprintf(title, sizeof title, "%s %s: fraction of gradient values", vs->format[v / vs->nt], vs->tiling[v % vs->nt]);
        svg_bar_chart(f, title, "exponent gap", labels, h, QUANT_GAP_BINS);
    }
    fputs("</div>\n", f);
    free(cx);
    return report_close(&rf, err);
}

int cmd_probe(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (cli_is_help(argv[i])) {
            printf("usage: mxtrain probe CONFIG --checkpoint FILE --formats F1,F2,... [--tilings 1d,2d] [--batches N]\n"
                   "                    [--out DIR] [--set section.key=value ...]\n"
                   "\nRuns N batches (default 4) of the evaluation split forward and backward through the weights in\n"
                   "FILE, without an update, once per format x tiling, and records every GEMM operand's\n"
                   "quantization error per layer and role: DIR/probe.csv (QSNR, relative error, underflow,\n"
                   "saturation, exponent-gap histogram), DIR/probe.h5 (stats.h5's columns; step = the variant's\n"
                   "index) and DIR/report.html (default DIR: log.dir).\n");
            return 0;
        }
    config *base = mx_malloc(sizeof *base), *c = mx_malloc(sizeof *c);
    probe_args a = {0};
    runlog log;
    memset(&log, 0, sizeof log);
    int rc = cmd_parse_config("probe", argc, argv, base, probe_extra, &a);
    if (rc) goto done;
    int64_t batches = 4;
    if (!a.ckpt || !a.formats) {
        rc = cli_usage_error("probe", "missing %s", !a.ckpt ? "--checkpoint FILE" : "--formats F1,F2,...");
        goto done;
    }
    if (a.batches && !cli_parse_i64(a.batches, 1, 1 << 20, &batches)) {
        rc = cli_usage_error("probe", "--batches: '%s' is not a whole number in [1, 1048576]", a.batches);
        goto done;
    }
    config_variants vs;
    bool usage;
    mx_err err = {0};
    if (config_variants_parse(base, a.formats, a.tilings, &vs, &usage, &err)) {
        rc = usage ? cli_usage_error("probe", "%s", err.msg) : (fprintf(stderr, "mxtrain probe: %s\n", err.msg), 1);
        goto done;
    }
    snprintf(log.dir, sizeof log.dir, "%s", a.out ? a.out : base->v.log.dir);
    rc = 1;
    if (make_dirs(log.dir, &err)) goto fail;
    int nv = config_variant_count(&vs);
    for (int v = 0; v < nv; v++) {
        char name[160];
        if (config_variant(base, &vs, v, c, name, sizeof name, &err) ||
            probe_run(c, a.ckpt, batches, v, &log, &err))
            goto fail;
        fprintf(stderr, "== %d/%d %s: %lld batches\n", v + 1, nv, name, (long long)batches);
    }
    char from[1200], to[1200];
    snprintf(from, sizeof from, "%s/stats.h5", log.dir);
    snprintf(to, sizeof to, "%s/probe.h5", log.dir);
    if (probe_write_csv(log.dir, &vs, &log, &err) || runlog_write_stats_h5(&log, &err)) goto fail;
    if (rename(from, to) != 0) {
        mx_err_set(&err, "%s: cannot rename to %s", from, to);
        goto fail;
    }
    if (probe_write_report(log.dir, base, a.ckpt, batches, &vs, &log, &err)) goto fail;
    fprintf(stderr, "probe: %s/probe.csv, %s/probe.h5, %s/report.html\n", log.dir, log.dir, log.dir);
    rc = 0;
fail:
    if (rc) fprintf(stderr, "mxtrain probe: %s\n", err.msg);
done:
    free(log.s);
    free(base);
    free(c);
    return rc;
}
