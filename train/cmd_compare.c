/* mxtrain compare: one config, trained once per (format, tiling) variant;
 * summary.md, summary.csv and a report with one line per variant. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/cli.h"
#include "train/commands.h"
#include "train/config.h"
#include "train/report.h"
#include "train/runlog.h"
#include "train/trainer.h"

typedef struct compare_args {
    const char *formats, *tilings, *out;
    bool resume;
} compare_args;

static int compare_extra(int argc, char **argv, int *i, void *user) {
    compare_args *a = user;
    if (!strcmp(argv[*i], "--resume")) {
        a->resume = true;
        return 1;
    }
    const char *const names[] = {"--formats", "--tilings", "--out"};
    const char **const dst[] = {&a->formats, &a->tilings, &a->out};
    return cli_take_values(argc, argv, i, names, dst, 3);
}

static void num(char *b, size_t n, const char *fmt, double v) {
    if (isfinite(v)) snprintf(b, n, fmt, v);
    else snprintf(b, n, "-");
}

static void pct(char *b, size_t n, double v) {
    if (isfinite(v) && v >= 0) snprintf(b, n, "%.2f", 100 * v);
    else snprintf(b, n, "-");
}

int cmd_compare(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (cli_is_help(argv[i])) {
            printf("usage: mxtrain compare CONFIG --formats F1,F2,... [--tilings 1d,2d] [--out DIR] [--resume]\n"
                   "                      [--set section.key=value ...]\n"
                   "\nTrains CONFIG once per format x tiling (run directories DIR/<format>_<tiling>), then writes\n"
                   "DIR/summary.md, DIR/summary.csv and DIR/report.html (default DIR: log.dir).\n"
                   "--resume: a variant with a checkpoint continues from it (a finished one is only\n"
                   "reported), the others start; so an interrupted comparison goes on where it stopped.\n");
            return 0;
        }
    config *base = mx_malloc(sizeof *base), *c = mx_malloc(sizeof *c);
    compare_args a = {0};
    int rc = cmd_parse_config("compare", argc, argv, base, compare_extra, &a);
    if (rc) goto done;
    if (!a.formats) {
        rc = cli_usage_error("compare", "missing --formats (e.g. --formats bf16,mxint8,mxfp8_e4m3,boost,mxsf)");
        goto done;
    }
    config_variants vs;
    bool usage;
    mx_err err = {0};
    if (config_variants_parse(base, a.formats, a.tilings, &vs, &usage, &err)) {
        if (usage) rc = cli_usage_error("compare", "%s", err.msg);
        else fprintf(stderr, "mxtrain compare: %s\n", err.msg), rc = 1;
        goto done;
    }
    char out[1024];
    snprintf(out, sizeof out, "%s", a.out ? a.out : base->v.log.dir);
    if (make_dirs(out, &err)) {
        fprintf(stderr, "mxtrain compare: %s\n", err.msg);
        rc = 1;
        goto done;
    }
    int nv = config_variant_count(&vs);
    train_result *res = mx_calloc((size_t)nv, sizeof *res);
    char (*names)[160] = mx_calloc((size_t)nv, 160);
    char (*dirs)[1200] = mx_calloc((size_t)nv, 1200);
    rc = 0;
    for (int v = 0; v < nv && !rc; v++) {
        snprintf(dirs[v], 1200, "%s/%s_%s", out, vs.format[v / vs.nt], vs.tiling[v % vs.nt]);
        char set[1300];
        snprintf(set, sizeof set, "log.dir=%s", dirs[v]);
        if (config_variant(base, &vs, v, c, names[v], 160, &err) || config_set(c, set, &err)) {
            fprintf(stderr, "mxtrain compare: %s\n", err.msg);
            rc = 1;
            break;
        }
        fprintf(stderr, "== variant %d/%d: %s -> %s\n", v + 1, nv, names[v], dirs[v]);
        train_opts o = {0};
        char last[1300];
        snprintf(last, sizeof last, "%s/ckpt/last.h5", dirs[v]);
        if (a.resume && access(last, R_OK) == 0) o.resume_dir = dirs[v];
        int r = trainer_run(c, &o, &res[v], &err);
        if (r < 0) {
            /* a variant that diverges is a result, not a failure of the comparison */
            fprintf(stderr, "mxtrain compare: %s: %s\n", names[v], err.msg);
            res[v].final_acc = res[v].best_acc = res[v].final_loss = NAN;
            res[v].mean_grad_underflow = res[v].median_step_s = res[v].wall_s = NAN;
        } else if (r == TRAIN_EXIT_INTERRUPTED) {
            rc = r;
        }
    }
    /* summary.csv / summary.md */
    char p[1200];
    snprintf(p, sizeof p, "%s/summary.csv", out);
    FILE *fc = fopen(p, "w");
    snprintf(p, sizeof p, "%s/summary.md", out);
    FILE *fm = fopen(p, "w");
    char *html = NULL;
    size_t hl = 0;
    FILE *fh = open_memstream(&html, &hl);
    char *what = report_describe(base, true);
    fputs(what, fh);
    free(what);
    if (!fc || !fm) {
        fprintf(stderr, "mxtrain compare: %s: cannot write the summary\n", out);
        rc = 1;
    } else {
        fprintf(fc, "format,tiling,final_acc,best_acc,final_loss,mean_grad_underflow,step_s,passes_per_step,wall_s\n");
        fprintf(fm, "| format | tiling | final acc %% | best acc %% | final loss | mean grad underflow | step s | "
                    "passes/step | wall s |\n|---|---|---|---|---|---|---|---|---|\n");
        fprintf(fh, "<table><tr><th>format</th><th>tiling</th><th>final acc %%</th><th>best acc %%</th><th>final "
                    "loss</th><th>mean grad underflow</th><th>step s</th><th>passes/step</th><th>wall s</th></tr>\n");
        for (int v = 0; v < nv; v++) {
            train_result *r = &res[v];
                const char *fmt = vs.format[v / vs.nt], *til = vs.tiling[v % vs.nt];
                char fa[16], ba[16], st[16], wall[16];
                pct(fa, sizeof fa, r->final_acc);
                pct(ba, sizeof ba, r->best_acc);
                num(st, sizeof st, "%.3f", r->median_step_s);
                num(wall, sizeof wall, "%.0f", r->wall_s);
                fprintf(fc, "%s,%s,%.6g,%.6g,%.6g,%.6g,%.4f,%lld,%.1f\n", fmt, til, r->final_acc,
                        r->best_acc, r->final_loss, r->mean_grad_underflow, r->median_step_s,
                        (long long)r->passes_per_step, r->wall_s);
                fprintf(fm, "| %s | %s | %s | %s | %.4f | %.3g | %s | %lld | %s |\n", fmt, til, fa, ba,
                        r->final_loss, r->mean_grad_underflow, st, (long long)r->passes_per_step, wall);
                fprintf(fh, "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%.4f</td><td>%.3g</td><td>%s</td>"
                            "<td>%lld</td><td>%s</td></tr>\n",
                        fmt, til, fa, ba, r->final_loss, r->mean_grad_underflow, st,
                        (long long)r->passes_per_step, wall);
        }
        fprintf(fh, "</table>\n");
    }
    if (fc) fclose(fc);
    if (fm) fclose(fm);
    fclose(fh);
    runlog *logs = mx_calloc((size_t)nv, sizeof *logs);
    report_run *runs = mx_calloc((size_t)nv, sizeof *runs);
    for (int v = 0; v < nv; v++) {
        runlog_load(&logs[v], dirs[v]);
        runs[v] = (report_run){names[v], &logs[v]};
    }
    snprintf(p, sizeof p, "%s/report.html", out);
    if (report_write(p, "mxtrain format comparison", runs, nv, html, &err)) {
        fprintf(stderr, "mxtrain compare: %s\n", err.msg);
        rc = 1;
    } else {
        fprintf(stderr, "compare: %s/summary.md, %s/summary.csv, %s\n", out, out, p);
    }
    for (int v = 0; v < nv; v++) runlog_close(&logs[v]);
    free(logs);
    free(runs);
    free(html);
    free(res);
    free(names);
    free(dirs);
done:
    free(base);
    free(c);
    return rc;
}
