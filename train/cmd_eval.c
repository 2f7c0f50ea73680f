/* mxtrain eval: a checkpoint on the config's evaluation split, under the
 * config's quantization (direct-cast inference), or under each of --formats x
 * --tilings: the direct-cast table (summary.csv, summary.md, report.html and
 * a JSON line per variant), with each variant's agreement with the first and
 * its operands' quantization error per role. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "core/npy.h"
#include "train/checkpoint.h"
#include "core/json.h"
#include "train/cli.h"
#include "train/commands.h"
#include "train/config.h"
#include "train/report.h"
#include "train/svg.h"
#include "train/trainer.h"

typedef struct eval_args {
    const char *ckpt, *logits, *formats, *tilings, *out;
} eval_args;

static int eval_extra(int argc, char **argv, int *i, void *user) {
    eval_args *a = user;
    const char *const names[] = {"--checkpoint", "--init-from", "--save-logits", "--formats", "--tilings", "--out"};
    /* --init-from is --checkpoint's other name (weights under PyTorch names) */
    const char **const dst[] = {&a->ckpt, &a->ckpt, &a->logits, &a->formats, &a->tilings, &a->out};
    return cli_take_values(argc, argv, i, names, dst, (int)(sizeof names / sizeof names[0]));
}

/* One evaluation: the result, and with statistics each role's mean over the
 * sites that quantized it, plus the per-site QSNR of the forward's operands. */
typedef struct eval_out {
    eval_result ev;
    int32_t *pred;                      /* top-1 class per sample */
    double agreement;                   /* of pred with the first variant's (NAN: the first) */
    double qsnr[MM_ROLE_COUNT], underflow[MM_ROLE_COUNT], saturation[MM_ROLE_COUNT]; /* NAN: not quantized */
    int nsites;
    char (*site)[96];
    double *site_qsnr[2]; /* [nsites] each: fwd_act, fwd_weight (NAN: not quantized there) */
} eval_out;

_Static_assert(MM_ROLE_FWD_ACT == 0 && MM_ROLE_FWD_WEIGHT == 1, "site_qsnr is indexed by the forward roles");

static void eval_out_free(eval_out *o) {
    free(o->ev.logits);
    free(o->pred);
    free(o->site);
    free(o->site_qsnr[0]);
    free(o->site_qsnr[1]);
}

static void eval_collect(const session *s, eval_out *o) {
    for (int r = 0; r < MM_ROLE_COUNT; r++) o->qsnr[r] = o->underflow[r] = o->saturation[r] = NAN;
    const mm_sites *sites = &s->m.params.sites;
    o->nsites = sites->n;
    o->site = mx_calloc((size_t)(sites->n + 1), sizeof *o->site);
    for (int k = 0; k < 2; k++) o->site_qsnr[k] = mx_calloc((size_t)(sites->n + 1), sizeof(double));
    for (int i = 0; i < sites->n; i++) {
        snprintf(o->site[i], sizeof o->site[i], "%s", sites->at[i]->name);
        o->site_qsnr[0][i] = o->site_qsnr[1][i] = NAN;
    }
    if (!s->has_plan) return;
    for (int r = 0; r < MM_ROLE_COUNT; r++) {
        double q = 0, u = 0, sat = 0;
        int n = 0, nq = 0;
        for (int i = 0; i < sites->n; i++) {
            const quant_stats *st = &s->plan.stats[i][r];
            if (st->elements == 0) continue;
            double qi = quant_stats_qsnr_db(st);
            if (r < 2) o->site_qsnr[r][i] = qi;
            if (isfinite(qi)) q += qi, nq++;
            u += quant_stats_underflow_ratio(st);
            sat += quant_stats_saturation_ratio(st);
            n++;
        }
        if (n) o->underflow[r] = u / n, o->saturation[r] = sat / n;
        if (nq) o->qsnr[r] = q / nq;
    }
}

/* c's evaluation of the weights in ckpt. */
static int eval_run(const config *c, const char *ckpt, bool stats, bool logits, eval_out *o, mx_err *err) {
    memset(o, 0, sizeof *o);
    o->agreement = NAN;
    int ebs = c->v.data.eval_batch_size ? c->v.data.eval_batch_size : c->v.data.batch_size;
    ckpt_session cs;
    int rc = -1;
    if (ckpt_session_open(&cs, c, ckpt, ebs, err)) goto out;
    int64_t classes = c->v.model.num_classes;
    if (logits) o->ev.logits = mx_malloc(sizeof(float) * (size_t)(cs.ds.n * classes + 1));
    o->ev.stats = stats;
    if (session_evaluate(&cs.s, cs.l, &o->ev, err)) goto out;
    if (logits) { /* the first maximum, as the accuracy counts it */
        o->pred = mx_malloc(sizeof(int32_t) * (size_t)(o->ev.samples + 1));
        for (int64_t i = 0; i < o->ev.samples; i++) {
            const float *row = o->ev.logits + i * classes;
            int32_t best = 0;
            for (int32_t k = 1; k < classes; k++)
                if (row[k] > row[best]) best = k;
            o->pred[i] = best;
        }
    }
    if (stats) eval_collect(&cs.s, o);
    rc = 0;
out:
    ckpt_session_close(&cs);
    return rc;
}

/* One JSON line: the checkpoint, every quant.* setting as the config resolved it, the result. */
static void eval_print_json(const config *c, const char *ckpt, const eval_out *o, bool study) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "checkpoint", ckpt);
    for (int k = 0; k < config_key_count(); k++) {
        const char *sec;
        const key_def *kd = config_key(k, &sec);
        if (strcmp(sec, "quant") == 0) cJSON_AddStringToObject(j, kd->name, c->text[k]);
    }
    cJSON_AddStringToObject(j, "device", c->v.train.device == CLI_DEVICE_CUDA ? "cuda" : "cpu");
    cJSON_AddNumberToObject(j, "samples", (double)o->ev.samples);
    mx_json_number(j, "eval_loss", o->ev.loss, -1);
    mx_json_number(j, "eval_acc", o->ev.top1, -1);
    mx_json_number(j, "eval_top5", o->ev.top5, -1);
    if (study) {
        mx_json_number(j, "agreement", o->agreement, -1);
        cJSON *roles = cJSON_AddObjectToObject(j, "roles");
        for (int r = 0; r < MM_ROLE_COUNT; r++) {
            if (!isfinite(o->underflow[r])) continue;
            cJSON *x = cJSON_AddObjectToObject(roles, mm_role_name((mm_role)r));
            mx_json_number(x, "mean_qsnr_db", o->qsnr[r], 3);
            mx_json_number(x, "mean_underflow", o->underflow[r], -1);
            mx_json_number(x, "mean_saturation", o->saturation[r], -1);
        }
    }
    mx_json_print(j);
}

static void fmt_num(char *b, size_t n, const char *fmt, double v, double scale) {
    if (isfinite(v)) snprintf(b, n, fmt, v * scale);
    else snprintf(b, n, "-");
}

/* summary.csv, summary.md and report.html of a study. */
static int eval_study_write(const char *dir, const config *base, const char *ckpt, const config_variants *vs,
                            const eval_out *o, mx_err *err) {
    int nv = config_variant_count(vs);
    char p[1200];
    snprintf(p, sizeof p, "%s/summary.csv", dir);
    FILE *fc = fopen(p, "w");
    if (!fc) return mx_err_set(err, "%s: cannot write", p);
    snprintf(p, sizeof p, "%s/summary.md", dir);
    FILE *fm = fopen(p, "w");
    if (!fm) {
        fclose(fc);
        return mx_err_set(err, "%s: cannot write", p);
    }
    fprintf(fc, "format,tiling,top1,top5,loss,agreement,fwd_act_qsnr_db,fwd_act_underflow,fwd_weight_qsnr_db,"
                "fwd_weight_underflow\n");
    fprintf(fm, "| format | tiling | top-1 %% | top-5 %% | loss | top-1 agreement %% | act QSNR dB | act underflow | "
                "weight QSNR dB | weight underflow |\n|---|---|---|---|---|---|---|---|---|---|\n");
    char *table = NULL;
    size_t tl = 0;
    FILE *ft = open_memstream(&table, &tl);
    fprintf(ft, "<table><tr><th>format</th><th>tiling</th><th>top-1 %%</th><th>top-5 %%</th><th>loss</th><th>top-1 "
                "agreement %%</th><th>act QSNR dB</th><th>act underflow</th><th>weight QSNR dB</th><th>weight "
                "underflow</th></tr>\n");
    for (int v = 0; v < nv; v++) {
        const eval_out *e = &o[v];
        const char *f = vs->format[v / vs->nt], *t = vs->tiling[v % vs->nt];
        char c[8][32];
        fmt_num(c[0], 32, "%.2f", e->ev.top1, 100);
        fmt_num(c[1], 32, "%.2f", e->ev.top5, 100);
        fmt_num(c[2], 32, "%.4f", e->ev.loss, 1);
        fmt_num(c[3], 32, "%.2f", e->agreement, 100);
        fmt_num(c[4], 32, "%.2f", e->qsnr[MM_ROLE_FWD_ACT], 1);
        fmt_num(c[5], 32, "%.3g", e->underflow[MM_ROLE_FWD_ACT], 1);
        fmt_num(c[6], 32, "%.2f", e->qsnr[MM_ROLE_FWD_WEIGHT], 1);
        fmt_num(c[7], 32, "%.3g", e->underflow[MM_ROLE_FWD_WEIGHT], 1);
        fprintf(fc, "%s,%s,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g\n", f, t, e->ev.top1, e->ev.top5, e->ev.loss,
                e->agreement, e->qsnr[MM_ROLE_FWD_ACT], e->underflow[MM_ROLE_FWD_ACT], e->qsnr[MM_ROLE_FWD_WEIGHT],
                e->underflow[MM_ROLE_FWD_WEIGHT]);
        fprintf(fm, "| %s | %s |", f, t);
        fprintf(ft, "<tr><td>%s</td><td>%s</td>", f, t);
        for (int k = 0; k < 8; k++) fprintf(fm, " %s |", c[k]), fprintf(ft, "<td>%s</td>", c[k]);
        fprintf(fm, "\n");
        fprintf(ft, "</tr>\n");
    }
    fprintf(ft, "</table>\n");
    fclose(ft);
    int bad = ferror(fc) | ferror(fm);
    bad |= fclose(fc) != 0;
    bad |= fclose(fm) != 0;
    if (bad) {
        free(table);
        return mx_err_set(err, "%s: writing the summary failed", dir);
    }

    snprintf(p, sizeof p, "%s/report.html", dir);
    report_file rf;
    if (report_open(&rf, p, "mxtrain direct-cast evaluation", err)) {
        free(table);
        return -1;
    }
    FILE *f = rf.f;
    /* what was evaluated: the checkpoint, the data and every quantization setting the variants share */
    fputs("<p>Checkpoint <code>", f);
    svg_text_escaped(f, ckpt);
    fprintf(f, "</code>, evaluated on %lld samples of the evaluation split (no training: the epochs and seed below "
               "are the config's).</p>\n",
            (long long)o[0].ev.samples);
    char *what = report_describe(base, true);
    fputs(what, f);
    free(what);
    fputs(table, f);
    free(table);
    /* bars: accuracy, and each forward operand's mean QSNR */
    const char **labels = mx_calloc((size_t)nv, sizeof *labels);
    char (*lab)[160] = mx_calloc((size_t)nv, 160);
    double *bars = mx_calloc((size_t)nv, sizeof(double));
    for (int v = 0; v < nv; v++) {
        snprintf(lab[v], 160, "%s %s", vs->format[v / vs->nt], vs->tiling[v % vs->nt]);
        labels[v] = lab[v];
    }
    fputs("<div class=\"row\">\n", f);
    for (int k = 0; k < 3; k++) {
        for (int v = 0; v < nv; v++)
            bars[v] = k == 0 ? 100 * o[v].ev.top1 : o[v].qsnr[k == 1 ? MM_ROLE_FWD_ACT : MM_ROLE_FWD_WEIGHT];
        static const char *const titles[] = {"top-1 accuracy %", "activations: mean QSNR dB over layers",
                                             "weights: mean QSNR dB over layers"};
        char mark[200]; /* the first variant (put the baseline first) across the accuracy bars */
        snprintf(mark, sizeof mark, "%s (first variant)", labels[0]);
        svg_marks m = {k == 0 ? bars[0] : NAN, mark, -1, NULL};
        svg_bar_chart_marked(f, titles[k], "variant", labels, bars, nv, &m);
    }
    fputs("</div>\n", f);
    /* per-layer QSNR, variants side by side on one colour scale */
    int ns = o[0].nsites;
    double *hv = mx_calloc((size_t)(ns * nv + 1), sizeof(double)), *cx = mx_calloc((size_t)nv, sizeof(double));
    const char **rows = mx_calloc((size_t)(ns + 1), sizeof *rows);
    for (int i = 0; i < ns; i++) rows[i] = o[0].site[i];
    for (int v = 0; v < nv; v++) cx[v] = v + 1;
    fputs("<h2>Per-layer QSNR (dB) of the forward's operands</h2>\n<p>Rows: layers; columns: the variants in the "
          "table's order (1 = first). One colour scale for all variants; a blank cell: not quantized there.</p>\n"
          "<div class=\"row\">\n",
          f);
    for (int k = 0; k < 2 && ns > 0; k++) {
        double lo = INFINITY, hi = -INFINITY;
        for (int i = 0; i < ns; i++)
            for (int v = 0; v < nv; v++) {
                double q = o[v].site_qsnr[k] ? o[v].site_qsnr[k][i] : NAN;
                hv[i * nv + v] = isfinite(q) ? q : NAN;
                if (isfinite(q)) lo = fmin(lo, q), hi = fmax(hi, q);
            }
        if (!isfinite(lo)) continue;
        svg_heatmap(f, k == 0 ? "activations (fwd_act)" : "weights (fwd_weight)", rows, ns, cx, nv, hv, lo,
                    hi > lo ? hi : lo + 1, "QSNR dB", "variant");
    }
    fputs("</div>\n", f);
    free(hv), free(cx), free(rows), free(labels), free(lab), free(bars);
    return report_close(&rf, err);
}

static int eval_study(const config *base, const eval_args *a) {
    config_variants vs;
    bool usage;
    mx_err err = {0};
    if (config_variants_parse(base, a->formats, a->tilings, &vs, &usage, &err)) {
        if (usage) return cli_usage_error("eval", "%s", err.msg);
        fprintf(stderr, "mxtrain eval: %s\n", err.msg);
        return 1;
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", a->out ? a->out : base->v.log.dir);
    if (make_dirs(dir, &err)) {
        fprintf(stderr, "mxtrain eval: %s\n", err.msg);
        return 1;
    }
    int nv = config_variant_count(&vs), rc = 0;
    eval_out *o = mx_calloc((size_t)nv, sizeof *o);
    config *c = mx_malloc(sizeof *c);
    for (int v = 0; v < nv && !rc; v++) {
        char name[160];
        if (config_variant(base, &vs, v, c, name, sizeof name, &err) || eval_run(c, a->ckpt, true, true, &o[v], &err)) {
            rc = 1;
            break;
        }
        if (v > 0) {
            int64_t same = 0, n = o[v].ev.samples < o[0].ev.samples ? o[v].ev.samples : o[0].ev.samples;
            for (int64_t i = 0; i < n; i++) same += o[v].pred[i] == o[0].pred[i];
            o[v].agreement = n ? (double)same / (double)n : NAN;
        }
        fprintf(stderr, "== %d/%d %s: top-1 %.2f%%, loss %.4f\n", v + 1, nv, name, 100 * o[v].ev.top1, o[v].ev.loss);
        eval_print_json(c, a->ckpt, &o[v], true);
    }
    if (!rc && eval_study_write(dir, base, a->ckpt, &vs, o, &err)) rc = 1;
    if (rc) fprintf(stderr, "mxtrain eval: %s\n", err.msg);
    else fprintf(stderr, "eval: %s/summary.md, %s/summary.csv, %s/report.html\n", dir, dir, dir);
    for (int v = 0; v < nv; v++) eval_out_free(&o[v]);
    free(o);
    free(c);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (cli_is_help(argv[i])) {
            printf("usage: mxtrain eval CONFIG --checkpoint FILE [--save-logits LOGITS.npy] [--set section.key=value ...]\n"
                   "       mxtrain eval CONFIG --checkpoint FILE --formats F1,F2,... [--tilings 1d,2d] [--out DIR]\n"
                   "\nEvaluates the weights in FILE (an mxtrain checkpoint, PyTorch weights saved with h5py under\n"
                   "state_dict names, or a .safetensors file; --init-from FILE is the same) on the config's\n"
                   "evaluation split, under the config's quantization: direct-cast inference, e.g.\n"
                   "--set quant.format=mxfp8_e4m3. Prints one JSON line; --save-logits writes the logits\n"
                   "[samples, classes] in the split's order as float32 .npy.\n"
                   "\nWith --formats: one evaluation per format x tiling (default tiling: the config's), a JSON line\n"
                   "each (plus top-1 agreement with the first variant and each role's mean QSNR, underflow and\n"
                   "saturation over the layers), and DIR/summary.csv, DIR/summary.md, DIR/report.html (default\n"
                   "DIR: log.dir).\n");
            return 0;
        }
    config *c = mx_malloc(sizeof *c);
    eval_args ea = {0};
    int rc = cmd_parse_config("eval", argc, argv, c, eval_extra, &ea);
    if (rc) goto done;
    if (!ea.ckpt) {
        rc = cli_usage_error("eval", "missing --checkpoint FILE.h5");
        goto done;
    }
    if (!ea.formats && (ea.tilings || ea.out)) {
        rc = cli_usage_error("eval", "--tilings and --out go with --formats");
        goto done;
    }
    if (ea.formats) {
        rc = ea.logits ? cli_usage_error("eval", "--save-logits takes one evaluation, not --formats")
                       : eval_study(c, &ea);
        goto done;
    }
    mx_err err = {0};
    eval_out o;
    if (eval_run(c, ea.ckpt, false, ea.logits != NULL, &o, &err)) {
        rc = 1;
    } else {
        if (ea.logits) {
            npy_array la = npy_wrap(NPY_DTYPE_F32, 2, (int64_t[]){o.ev.samples, c->v.model.num_classes}, o.ev.logits);
            if (npy_write(ea.logits, &la, &err)) rc = 1;
        }
        if (!rc) eval_print_json(c, ea.ckpt, &o, false);
    }
    if (rc) fprintf(stderr, "mxtrain eval: %s\n", err.msg);
    eval_out_free(&o);
done:
    free(c);
    return rc;
}
