/* metrics.csv / metrics.jsonl / stats.csv / stats.h5 (spec/interfaces.md). */
#include "train/runlog.h"

#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void csv_header(FILE *f) { fprintf(f, "step,epoch,lr,loss,img_per_s,eval_loss,eval_acc\n"); }

static void stats_header(FILE *f) {
    fprintf(f, "step,layer,role,format,elements,nonzero,underflow_ratio,saturation_ratio,qsnr_db");
    for (int g = 0; g < QUANT_GAP_BINS; g++) fprintf(f, g == QUANT_GAP_BINS - 1 ? ",gap_%dplus" : ",gap_%d", g);
    fprintf(f, "\n");
}

static void write_metric(runlog *r, const metric_rec *m) {
    if (m->is_eval) {
        fprintf(r->csv, "%lld,%lld,,,,%.6g,%.6g\n", (long long)m->step, (long long)m->epoch, m->eval_loss, m->eval_acc);
        fprintf(r->jsonl, "{\"step\":%lld,\"epoch\":%lld,\"eval_loss\":%.6g,\"eval_acc\":%.6g}\n", (long long)m->step,
                (long long)m->epoch, m->eval_loss, m->eval_acc);
    } else {
        fprintf(r->csv, "%lld,%lld,%.6g,%.6g,%.1f,,\n", (long long)m->step, (long long)m->epoch, m->lr, m->loss,
                m->img_per_s);
        /* JSON has no NaN: a non-finite loss is written as null */
        char loss[32];
        if (isfinite(m->loss)) snprintf(loss, sizeof loss, "%.6g", m->loss);
        else snprintf(loss, sizeof loss, "null");
        fprintf(r->jsonl, "{\"step\":%lld,\"epoch\":%lld,\"lr\":%.6g,\"loss\":%s,\"img_per_s\":%.1f}\n",
                (long long)m->step, (long long)m->epoch, m->lr, loss, m->img_per_s);
    }
}

static void write_stat(FILE *f, const stat_rec *s) {
    const quant_stats *st = &s->st;
    fprintf(f, "%lld,%s,%s,%s,%lld,%lld,%.6g,%.6g,%.4f", (long long)s->step, s->layer, mm_role_name(s->role),
            quant_format_get(s->format)->name, (long long)st->elements, (long long)st->nonzero,
            quant_stats_underflow_ratio(st), quant_stats_saturation_ratio(st), quant_stats_qsnr_db(st));
    for (int g = 0; g < QUANT_GAP_BINS; g++) fprintf(f, ",%lld", (long long)st->gap_hist[g]);
    fprintf(f, "\n");
}

/* Reads back metrics.jsonl records (our own format) with step <= keep. */
static void load_metrics(runlog *r, const char *path, int64_t keep) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        metric_rec m;
        memset(&m, 0, sizeof m);
        long long step, epoch;
        if (sscanf(line, "{\"step\":%lld,\"epoch\":%lld,", &step, &epoch) != 2) continue;
        m.step = step, m.epoch = epoch;
        const char *p;
        if ((p = strstr(line, "\"eval_loss\":"))) {
            m.is_eval = true;
            m.eval_loss = strtod(p + 12, NULL);
            const char *q = strstr(line, "\"eval_acc\":");
            m.eval_acc = q ? strtod(q + 11, NULL) : NAN;
        } else {
            if ((p = strstr(line, "\"lr\":"))) m.lr = strtod(p + 5, NULL);
            p = strstr(line, "\"loss\":");
            m.loss = p && strncmp(p + 7, "null", 4) != 0 ? strtod(p + 7, NULL) : NAN;
            if ((p = strstr(line, "\"img_per_s\":"))) m.img_per_s = strtod(p + 12, NULL);
        }
        if (m.step > keep) continue;
        MX_GROW(r->m, r->cap_m, r->n_m + 1, 256);
        r->m[r->n_m++] = m;
    }
    fclose(f);
}

static void load_stats(runlog *r, const char *path, int64_t keep) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[2048];
    while (fgets(line, sizeof line, f)) {
        stat_rec s;
        memset(&s, 0, sizeof s);
        char *save = NULL, *tok = strtok_r(line, ",\n", &save);
        if (!tok || strcmp(tok, "step") == 0) continue;
        s.step = strtoll(tok, NULL, 10);
        char *layer = strtok_r(NULL, ",\n", &save), *role = strtok_r(NULL, ",\n", &save),
             *fmt = strtok_r(NULL, ",\n", &save);
        if (!layer || !role || !fmt) continue;
        snprintf(s.layer, sizeof s.layer, "%s", layer);
        int ri = -1;
        for (int k = 0; k < MM_ROLE_COUNT; k++)
            if (strcmp(mm_role_name((mm_role)k), role) == 0) ri = k;
        quant_format qf;
        if (ri < 0 || quant_format_parse(fmt, &qf, NULL)) continue;
        s.role = (mm_role)ri;
        s.format = qf;
        /* counts: elements, nonzero; ratios are recomputed from them, so rebuild the
           counts that produce the logged ratios */
        char *el = strtok_r(NULL, ",\n", &save), *nz = strtok_r(NULL, ",\n", &save),
             *uf = strtok_r(NULL, ",\n", &save), *sat = strtok_r(NULL, ",\n", &save),
             *q = strtok_r(NULL, ",\n", &save);
        if (!el || !nz || !uf || !sat || !q) continue;
        s.st.elements = strtoll(el, NULL, 10);
        s.st.nonzero = strtoll(nz, NULL, 10);
        s.st.underflow = llround(strtod(uf, NULL) * (double)s.st.nonzero);
        s.st.saturated = llround(strtod(sat, NULL) * (double)s.st.nonzero);
        double qsnr = strtod(q, NULL);
        s.st.sum_x2 = 1.0;
        s.st.sum_err2 = pow(10.0, -qsnr / 10.0);
        for (int g = 0; g < QUANT_GAP_BINS; g++) {
            char *t = strtok_r(NULL, ",\n", &save);
            s.st.gap_hist[g] = t ? strtoll(t, NULL, 10) : 0;
        }
        if (s.step > keep) continue;
        MX_GROW(r->s, r->cap_s, r->n_s + 1, 256);
        r->s[r->n_s++] = s;
    }
    fclose(f);
}

int runlog_open(runlog *r, const char *dir, bool resume, int64_t keep_step, mx_err *err) {
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    char p1[1100], p2[1100], p3[1100];
    snprintf(p1, sizeof p1, "%s/metrics.csv", dir);
    snprintf(p2, sizeof p2, "%s/metrics.jsonl", dir);
    snprintf(p3, sizeof p3, "%s/stats.csv", dir);
    if (resume) {
        load_metrics(r, p2, keep_step);
        load_stats(r, p3, keep_step);
    }
    r->csv = fopen(p1, "w");
    r->jsonl = fopen(p2, "w");
    r->stats_csv = fopen(p3, "w");
    if (!r->csv || !r->jsonl || !r->stats_csv) {
        runlog_close(r);
        return mx_err_set(err, "%s: cannot write the run's log files", dir);
    }
    csv_header(r->csv);
    stats_header(r->stats_csv);
    for (int64_t i = 0; i < r->n_m; i++) write_metric(r, &r->m[i]);
    for (int64_t i = 0; i < r->n_s; i++) write_stat(r->stats_csv, &r->s[i]);
    runlog_flush(r);
    return 0;
}

void runlog_load(runlog *r, const char *dir) {
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    char p[1100];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    load_metrics(r, p, INT64_MAX);
    snprintf(p, sizeof p, "%s/stats.csv", dir);
    load_stats(r, p, INT64_MAX);
}

void runlog_close(runlog *r) {
    if (r->csv) fclose(r->csv);
    if (r->jsonl) fclose(r->jsonl);
    if (r->stats_csv) fclose(r->stats_csv);
    free(r->m);
    free(r->s);
    memset(r, 0, sizeof *r);
}

void runlog_flush(runlog *r) {
    fflush(r->csv);
    fflush(r->jsonl);
    fflush(r->stats_csv);
}

void runlog_step(runlog *r, int64_t step, int64_t epoch, double lr, double loss, double img_per_s) {
    MX_GROW(r->m, r->cap_m, r->n_m + 1, 256);
    metric_rec *m = &r->m[r->n_m++];
    memset(m, 0, sizeof *m);
    m->step = step, m->epoch = epoch, m->lr = lr, m->loss = loss, m->img_per_s = img_per_s;
    write_metric(r, m);
}

void runlog_eval(runlog *r, int64_t step, int64_t epoch, double eval_loss, double eval_acc) {
    MX_GROW(r->m, r->cap_m, r->n_m + 1, 256);
    metric_rec *m = &r->m[r->n_m++];
    memset(m, 0, sizeof *m);
    m->step = step, m->epoch = epoch, m->is_eval = true, m->eval_loss = eval_loss, m->eval_acc = eval_acc;
    write_metric(r, m);
    runlog_flush(r);
}

void runlog_stats(runlog *r, int64_t step, const mm_plan *p) {
    for (int i = 0; i < p->sites->n; i++)
        for (int role = 0; role < MM_ROLE_COUNT; role++) {
            if (p->stats[i][role].elements == 0) continue;
            MX_GROW(r->s, r->cap_s, r->n_s + 1, 256);
            stat_rec *s = &r->s[r->n_s++];
            s->step = step;
            snprintf(s->layer, sizeof s->layer, "%s", p->sites->at[i]->name);
            s->role = (mm_role)role;
            s->format = p->format[i][role];
            s->st = p->stats[i][role];
            write_stat(r->stats_csv, s);
        }
    fflush(r->stats_csv);
}

double runlog_mean_grad_underflow(const runlog *r) {
    double sum = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < r->n_s; i++)
        if (r->s[i].role == MM_ROLE_BWD_GRAD_DX || r->s[i].role == MM_ROLE_BWD_GRAD_DW) {
            sum += quant_stats_underflow_ratio(&r->s[i].st);
            n++;
        }
    return n ? sum / (double)n : NAN;
}

/* stats.h5: one dataset per column (step, layer, role, format, elements,
 * nonzero, underflow_ratio, saturation_ratio, qsnr_db) and gap_hist [N, 32]. */
static int h5_col(hid_t f, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims, const void *d) {
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = ds >= 0 ? H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, d) : -1;
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(sp);
    return rc < 0 ? -1 : 0;
}

int runlog_write_stats_h5(const runlog *r, mx_err *err) {
    char path[1100], tmp[1110];
    snprintf(path, sizeof path, "%s/stats.h5", r->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return mx_err_set(err, "%s: cannot create", tmp);
    int64_t n = r->n_s;
    size_t nn = (size_t)(n ? n : 1);
    int64_t *i64 = mx_malloc(sizeof(int64_t) * nn * QUANT_GAP_BINS);
    double *f64 = mx_malloc(sizeof(double) * nn);
    char *str = mx_calloc(nn, 96);
    hsize_t dims[2] = {(hsize_t)n, QUANT_GAP_BINS};
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 96);
    int rc = 0;
#define COL_I(name, expr)                                                                                         \
    for (int64_t i = 0; i < n; i++) i64[i] = (expr);                                                              \
    rc |= h5_col(f, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, dims, i64)
#define COL_F(name, expr)                                                                                         \
    for (int64_t i = 0; i < n; i++) f64[i] = (expr);                                                              \
    rc |= h5_col(f, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, dims, f64)
#define COL_S(name, expr)                                                                                         \
    for (int64_t i = 0; i < n; i++) snprintf(str + 96 * i, 96, "%s", (expr));                                     \
    rc |= h5_col(f, name, st, st, 1, dims, str)
    COL_I("step", r->s[i].step);
    COL_S("layer", r->s[i].layer);
    COL_S("role", mm_role_name(r->s[i].role));
    COL_S("format", quant_format_get(r->s[i].format)->name);
    COL_I("elements", r->s[i].st.elements);
    COL_I("nonzero", r->s[i].st.nonzero);
    COL_F("underflow_ratio", quant_stats_underflow_ratio(&r->s[i].st));
    COL_F("saturation_ratio", quant_stats_saturation_ratio(&r->s[i].st));
    COL_F("qsnr_db", quant_stats_qsnr_db(&r->s[i].st));
#undef COL_I
#undef COL_F
#undef COL_S
    for (int64_t i = 0; i < n; i++)
        for (int g = 0; g < QUANT_GAP_BINS; g++) i64[i * QUANT_GAP_BINS + g] = r->s[i].st.gap_hist[g];
    rc |= h5_col(f, "gap_hist", H5T_STD_I64LE, H5T_NATIVE_INT64, 2, dims, i64);
    H5Tclose(st);
    free(i64);
    free(f64);
    free(str);
    if (H5Fclose(f) < 0) rc = -1;
    if (rc || rename(tmp, path) != 0) {
        unlink(tmp);
        return mx_err_set(err, "%s: writing failed", path);
    }
    return 0;
}
