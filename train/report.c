/* report.html (see report.h). */
#include "train/report.h"
#include "train/commands.h"
#include "train/config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "train/svg.h"

static void loss_and_accuracy(FILE *f, const report_run *runs, int n) {
    svg_series *ls = mx_calloc((size_t)n, sizeof *ls), *as = mx_calloc((size_t)n, sizeof *as);
    double **buf = mx_calloc((size_t)n * 4, sizeof *buf);
    for (int k = 0; k < n; k++) {
        const runlog *r = runs[k].log;
        double *lx = mx_malloc(sizeof(double) * (size_t)(r->n_m + 1)), *ly = mx_malloc(sizeof(double) * (size_t)(r->n_m + 1));
        double *ax = mx_malloc(sizeof(double) * (size_t)(r->n_m + 1)), *ay = mx_malloc(sizeof(double) * (size_t)(r->n_m + 1));
        int nl = 0, na = 0;
        for (int64_t i = 0; i < r->n_m; i++) {
            const metric_rec *m = &r->m[i];
            if (m->is_eval) ax[na] = (double)m->step, ay[na++] = 100.0 * m->eval_acc;
            else lx[nl] = (double)m->step, ly[nl++] = m->loss;
        }
        ls[k] = (svg_series){runs[k].name, lx, ly, nl};
        as[k] = (svg_series){runs[k].name, ax, ay, na};
        buf[4 * k] = lx, buf[4 * k + 1] = ly, buf[4 * k + 2] = ax, buf[4 * k + 3] = ay;
    }
    fputs("<h2>Training loss and evaluation accuracy</h2>\n<div class=\"row\">\n", f);
    svg_line_chart(f, "training loss", "step", "loss", ls, n, true);
    svg_line_chart(f, "evaluation top-1 accuracy", "step", "accuracy %", as, n, false);
    fputs("</div>\n", f);
    for (int i = 0; i < 4 * n; i++) free(buf[i]);
    free(buf);
    free(ls);
    free(as);
}

/* Each run's last evaluation accuracy as a bar, the first fp32 (else bf16) run's drawn across as the baseline. */
static void final_accuracy_bars(FILE *f, const report_run *runs, int n) {
    double *v = mx_malloc(sizeof(double) * (size_t)n), base = NAN;
    const char **labels = mx_malloc(sizeof(char *) * (size_t)n);
    const char *base_name = NULL;
    for (int pass = 0; pass < 2 && !base_name; pass++)
        for (int k = 0; k < n && !base_name; k++)
            if (!strncmp(runs[k].name, pass ? "bf16" : "fp32", 4)) base_name = runs[k].name;
    for (int k = 0; k < n; k++) {
        v[k] = NAN;
        for (int64_t i = runs[k].log->n_m - 1; i >= 0; i--)
            if (runs[k].log->m[i].is_eval) {
                v[k] = 100.0 * runs[k].log->m[i].eval_acc;
                break;
            }
        labels[k] = runs[k].name;
        if (runs[k].name == base_name) base = v[k];
    }
    char mark[200];
    snprintf(mark, sizeof mark, "%s baseline", base_name ? base_name : "");
    svg_marks m = {base_name ? base : NAN, mark, -1, NULL};
    fputs("<div class=\"row\">\n", f);
    svg_bar_chart_marked(f, "final evaluation top-1 accuracy %", "variant", labels, v, n, &m);
    fputs("</div>\n", f);
    free(v);
    free(labels);
}

static int find_str(char (*names)[96], int n, const char *s) {
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], s) == 0) return i;
    return -1;
}

static int find_step(const double *steps, int n, double s) {
    for (int i = 0; i < n; i++)
        if (steps[i] == s) return i;
    return -1;
}

/* What a heatmap shows: one statistic of a stats row. */
typedef enum { HM_UNDERFLOW, HM_SATURATION, HM_QSNR, HM_COUNT } hm_metric;
static const char *const hm_names[HM_COUNT] = {"underflow ratio", "saturation ratio", "QSNR dB"};
static double hm_value(const stat_rec *s, hm_metric m) {
    return m == HM_UNDERFLOW ? quant_stats_underflow_ratio(&s->st)
           : m == HM_SATURATION ? quant_stats_saturation_ratio(&s->st)
                                : s->qsnr_db;
}

/* Each role's range of metric m over all runs: one colour scale per (metric, role) for every run
 * (ratios from 0). */
static void role_range(const report_run *runs, int n, hm_metric m, double *lo, double *hi) {
    for (int role = 0; role < MM_ROLE_COUNT; role++) lo[role] = m == HM_QSNR ? INFINITY : 0, hi[role] = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int64_t i = 0; i < runs[k].log->n_s; i++) {
            const stat_rec *s = &runs[k].log->s[i];
            double u = hm_value(s, m);
            if (isfinite(u)) lo[s->role] = fmin(lo[s->role], u), hi[s->role] = fmax(hi[s->role], u);
        }
    for (int role = 0; role < MM_ROLE_COUNT; role++)
        if (!(hi[role] > lo[role])) hi[role] = lo[role] + (m == HM_QSNR ? 1 : isfinite(lo[role]) && lo[role] > 0 ? lo[role] : 1);
}

/* Heatmaps of one run: one per role present, on the scales [lo, hi]. */
static void heatmaps(FILE *f, const report_run *run, hm_metric metric, const double *lo, const double *hi) {
    const runlog *r = run->log;
    if (r->n_s == 0) return;
    int cap = 1024;
    char(*layers)[96] = mx_malloc(sizeof *layers * (size_t)cap);
    double *steps = mx_malloc(sizeof(double) * (size_t)(r->n_s + 1));
    int nl = 0, ns = 0;
    for (int64_t i = 0; i < r->n_s; i++) {
        if (find_str(layers, nl, r->s[i].layer) < 0 && nl < cap) snprintf(layers[nl++], 96, "%s", r->s[i].layer);
        if (find_step(steps, ns, (double)r->s[i].step) < 0) steps[ns++] = (double)r->s[i].step;
    }
    const char **names = mx_malloc(sizeof(char *) * (size_t)nl);
    for (int i = 0; i < nl; i++) names[i] = layers[i];
    double *v = mx_malloc(sizeof(double) * (size_t)nl * (size_t)ns);
    for (int role = 0; role < MM_ROLE_COUNT; role++) {
        bool any = false;
        for (size_t i = 0; i < (size_t)nl * (size_t)ns; i++) v[i] = NAN;
        for (int64_t i = 0; i < r->n_s; i++) {
            if ((int)r->s[i].role != role) continue;
            int li = find_str(layers, nl, r->s[i].layer), si = find_step(steps, ns, (double)r->s[i].step);
            v[(size_t)li * ns + si] = hm_value(&r->s[i], metric);
            any = true;
        }
        if (!any) continue;
        char title[200];
        snprintf(title, sizeof title, "%s: %s, %s", run->name, hm_names[metric], mm_role_name((mm_role)role));
        svg_heatmap(f, title, names, nl, steps, ns, v, lo[role], hi[role], hm_names[metric], "step");
    }
    free(v);
    free(names);
    free(steps);
    free(layers);
}

static void gap_histogram(FILE *f, const report_run *run) {
    const runlog *r = run->log;
    double h[QUANT_GAP_BINS] = {0}, tot = 0;
    for (int64_t i = 0; i < r->n_s; i++)
        if (r->s[i].role == MM_ROLE_BWD_GRAD_DX || r->s[i].role == MM_ROLE_BWD_GRAD_DW)
            for (int g = 0; g < QUANT_GAP_BINS; g++) h[g] += (double)r->s[i].st.gap_hist[g], tot += (double)r->s[i].st.gap_hist[g];
    if (tot == 0) return;
    for (int g = 0; g < QUANT_GAP_BINS; g++) h[g] /= tot;
    char lab[QUANT_GAP_BINS][8];
    const char *labels[QUANT_GAP_BINS];
    for (int g = 0; g < QUANT_GAP_BINS; g++) {
        snprintf(lab[g], sizeof lab[g], g == QUANT_GAP_BINS - 1 ? "%d+" : "%d", g);
        labels[g] = lab[g];
    }
    /* the gradients' format (the most frequent among their rows: keep rules leave a few layers in another) */
    int count[QUANT_FORMAT_COUNT] = {0}, fmt = 0;
    for (int64_t i = 0; i < r->n_s; i++)
        if (r->s[i].role == MM_ROLE_BWD_GRAD_DX || r->s[i].role == MM_ROLE_BWD_GRAD_DW) count[r->s[i].format]++;
    for (int k = 1; k < QUANT_FORMAT_COUNT; k++)
        if (count[k] > count[fmt]) fmt = k;
    int gap = quant_underflow_gap((quant_format)fmt);
    char title[200], mark[120];
    snprintf(title, sizeof title, "%s: gradients, fraction per exponent gap", run->name);
    snprintf(mark, sizeof mark, "%s underflows from gap %d", quant_format_get((quant_format)fmt)->name, gap);
    svg_marks m = {NAN, NULL, gap < QUANT_GAP_BINS ? gap : -1, mark};
    svg_bar_chart_marked(f, title, "exponent gap (block max exponent - element exponent)", labels, h, QUANT_GAP_BINS,
                         &m);
}

char *report_describe(const config *c, bool per_variant) {
    char *html = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&html, &n);
    const model_config *m = &c->v.model;
    fprintf(f, "<p>Model <code>%s</code> (%d classes, %d input channels); data <code>%s</code>", model_arch_name(m->arch),
            m->num_classes, m->in_chans, data_kind_name(c->v.data.kind));
    if (c->v.data.path[0]) {
        fputs(" from <code>", f);
        svg_text_escaped(f, c->v.data.path);
        fputs("</code>", f);
    }
    fprintf(f, ", batch %d; %d epochs", c->v.data.batch_size, c->v.train.epochs);
    if (c->v.train.max_steps > 0) fprintf(f, " (at most %lld steps)", (long long)c->v.train.max_steps);
    fprintf(f, ", seed %lld; device %s.</p>\n<p>", (long long)c->v.train.seed,
            c->v.train.device == CLI_DEVICE_CUDA ? "cuda" : "cpu");
    for (int k = 0; k < config_key_count(); k++) {
        const char *sec;
        const key_def *kd = config_key(k, &sec);
        if (strcmp(sec, "quant") != 0) continue;
        if (per_variant && (!strcmp(kd->name, "format") || !strcmp(kd->name, "tiling"))) continue;
        fprintf(f, "quant.%s = <code>", kd->name);
        svg_text_escaped(f, c->text[k][0] ? c->text[k] : "(none)");
        fputs("</code>; ", f);
    }
    fputs(per_variant ? "format and tiling per row.</p>\n" : "</p>\n", f);
    fclose(f);
    return html;
}

int report_open(report_file *r, const char *path, const char *title, mx_err *err) {
    snprintf(r->path, sizeof r->path, "%s", path);
    snprintf(r->tmp, sizeof r->tmp, "%s.tmp", path);
    FILE *f = r->f = fopen(r->tmp, "w");
    if (!f) return mx_err_set(err, "%s: cannot write", r->tmp);
    time_t now = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M", localtime(&now));
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>", f);
    svg_text_escaped(f, title);
    fputs("</title>\n<style>body{font-family:sans-serif;margin:20px;color:#222}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
          "th{background:#f3f3f3}.row{display:flex;flex-wrap:wrap;gap:12px}svg{margin:6px 0}</style>\n</head><body>\n<h1>",
          f);
    svg_text_escaped(f, title);
    fprintf(f, "</h1>\n<p>mxtrain %s report, written %s.</p>\n", MXTRAIN_VERSION, when);
    return 0;
}

int report_close(report_file *r, mx_err *err) {
    FILE *f = r->f;
    fputs("</body></html>\n", f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        unlink(r->tmp);
        return mx_err_set(err, "%s: write failed", r->tmp);
    }
    if (rename(r->tmp, r->path) != 0) return mx_err_set(err, "%s: cannot rename into place", r->path);
    return 0;
}

int report_write(const char *path, const char *title, const report_run *runs, int n, const char *summary_html,
                 mx_err *err) {
    report_file rf;
    if (report_open(&rf, path, title, err)) return -1;
    FILE *f = rf.f;
    if (summary_html) fputs(summary_html, f);
    loss_and_accuracy(f, runs, n);
    if (n > 1) final_accuracy_bars(f, runs, n);
    bool any_stats = false;
    for (int k = 0; k < n; k++) any_stats |= runs[k].log->n_s > 0;
    if (any_stats) {
        static const char *const what[HM_COUNT] = {
            "fraction of nonzero operand values that quantize to zero",
            "fraction of operand values clamped to the format's largest magnitude",
            "signal-to-quantization-noise ratio of each operand, 10 log10(sum x^2 / sum (x - q)^2)"};
        for (int m = 0; m < HM_COUNT; m++) {
            fprintf(f, "<h2>Per-layer %s over steps</h2>\n<p>The %s, per layer (rows) and statistics step (columns), "
                       "for each operand role; one colour scale per role, shared by every run on this page.</p>\n",
                    hm_names[m], what[m]);
            double lo[MM_ROLE_COUNT], hi[MM_ROLE_COUNT];
            role_range(runs, n, (hm_metric)m, lo, hi);
            for (int k = 0; k < n; k++) heatmaps(f, &runs[k], (hm_metric)m, lo, hi);
        }
        fputs("<h2>Exponent-gap histogram of gradients</h2>\n<div class=\"row\">\n", f);
        for (int k = 0; k < n; k++) gap_histogram(f, &runs[k]);
        fputs("</div>\n", f);
    } else {
        fputs("<p>No quantization statistics were collected (set <code>log.stats_every</code> and a quantized "
              "<code>quant.format</code>).</p>\n",
              f);
    }
    return report_close(&rf, err);
}
