/* metrics.csv / metrics.jsonl / stats.csv / stats.h5 (spec/interfaces.md). */
#include "train/runlog.h"

#include <cJSON.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void csv_header(FILE *f) { fprintf(f, "step,epoch,lr,loss,img_per_s,eval_loss,eval_acc,eval_top5,wall_s\n"); }

static void stats_header(FILE *f) {
    fprintf(f, "step,layer,role,format,elements,nonzero,underflow_ratio,saturation_ratio,qsnr_db");
    for (int g = 0; g < QUANT_GAP_BINS; g++) fprintf(f, g == QUANT_GAP_BINS - 1 ? ",gap_%dplus" : ",gap_%d", g);
    fprintf(f, "\n");
}

/* A metrics.jsonl record (cJSON: exact numbers, null for a non-finite loss,
 * which JSON cannot hold). */
static void write_metric_json(FILE *jsonl, const metric_rec *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", (double)m->step);
    cJSON_AddNumberToObject(o, "epoch", (double)m->epoch);
    if (m->is_eval) {
        cJSON_AddNumberToObject(o, "eval_loss", m->eval_loss);
        cJSON_AddNumberToObject(o, "eval_acc", m->eval_acc);
        if (isfinite(m->eval_top5)) cJSON_AddNumberToObject(o, "eval_top5", m->eval_top5);
        if (isfinite(m->wall_s)) cJSON_AddNumberToObject(o, "wall_s", round(m->wall_s * 1000.0) / 1000.0);
    } else {
        cJSON_AddNumberToObject(o, "lr", m->lr);
        if (isfinite(m->loss)) cJSON_AddNumberToObject(o, "loss", m->loss);
        else cJSON_AddNullToObject(o, "loss");
        cJSON_AddNumberToObject(o, "img_per_s", round(m->img_per_s * 10.0) / 10.0);
    }
    char *line = cJSON_PrintUnformatted(o);
    fprintf(jsonl, "%s\n", line);
    cJSON_free(line);
    cJSON_Delete(o);
}

static void write_metric_to(FILE *csv, FILE *jsonl, const metric_rec *m) {
    if (m->is_eval)
        fprintf(csv, "%lld,%lld,,,,%.6g,%.6g,%.6g,%.3f\n", (long long)m->step, (long long)m->epoch, m->eval_loss,
                m->eval_acc, m->eval_top5, m->wall_s);
    else
        fprintf(csv, "%lld,%lld,%.6g,%.6g,%.1f,,,,\n", (long long)m->step, (long long)m->epoch, m->lr, m->loss,
                m->img_per_s);
    write_metric_json(jsonl, m);
}

/* a log without files (zeroed: probe, data-parallel ranks other than 0) only collects */
static void write_metric(runlog *r, const metric_rec *m) {
    if (r->csv && r->jsonl) write_metric_to(r->csv, r->jsonl, m);
}

static void write_stat(FILE *f, const stat_rec *s) {
    const quant_stats *st = &s->st;
    fprintf(f, "%lld,%s,%s,%s,%lld,%lld,%.6g,%.6g,%.4f", (long long)s->step, s->layer, mm_role_name(s->role),
            quant_format_get(s->format)->name, (long long)st->elements, (long long)st->nonzero,
            quant_stats_underflow_ratio(st), quant_stats_saturation_ratio(st), s->qsnr_db);
    for (int g = 0; g < QUANT_GAP_BINS; g++) fprintf(f, ",%lld", (long long)st->gap_hist[g]);
    fprintf(f, "\n");
}

/* A JSON number that is an integer in [0, 2^53]. */
static bool json_count(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0) ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

static bool json_number(const cJSON *o, const char *key, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return false;
    *out = v->valuedouble;
    return true;
}

/* One metrics.jsonl line, whole (a line torn by a kill has no newline) and
 * of one of the two record shapes; anything else is rejected. */
static bool parse_metric(const char *line, metric_rec *m) {
    memset(m, 0, sizeof *m);
    size_t len = strlen(line);
    if (len < 2 || line[len - 1] != '\n') return false;
    cJSON *o = cJSON_ParseWithLength(line, len - 1);
    bool ok = cJSON_IsObject(o) && json_count(cJSON_GetObjectItemCaseSensitive(o, "step"), &m->step) &&
              json_count(cJSON_GetObjectItemCaseSensitive(o, "epoch"), &m->epoch);
    if (ok && cJSON_GetObjectItemCaseSensitive(o, "eval_loss")) {
        m->is_eval = true;
        ok = json_number(o, "eval_loss", &m->eval_loss) && json_number(o, "eval_acc", &m->eval_acc);
        if (!json_number(o, "eval_top5", &m->eval_top5)) m->eval_top5 = NAN; /* older logs lack these */
        if (!json_number(o, "wall_s", &m->wall_s)) m->wall_s = NAN;
    } else if (ok) {
        const cJSON *loss = cJSON_GetObjectItemCaseSensitive(o, "loss");
        ok = json_number(o, "lr", &m->lr) && json_number(o, "img_per_s", &m->img_per_s) &&
             (cJSON_IsNull(loss) || cJSON_IsNumber(loss));
        if (ok) m->loss = cJSON_IsNull(loss) ? NAN : loss->valuedouble;
    }
    cJSON_Delete(o);
    return ok;
}

/* Reads back metrics.jsonl records with step <= keep. */
static void load_metrics(runlog *r, const char *path, int64_t keep) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        metric_rec m;
        if (!parse_metric(line, &m) || m.step > keep) continue;
        MX_GROW(r->m, r->cap_m, r->n_m + 1, 256);
        r->m[r->n_m++] = m;
    }
    fclose(f);
}

/* A row's statistics from its logged ratios: the counts are exact when the
 * ratios are (stats.h5's doubles); qsnr_db is kept as logged. */
static void stat_from_ratios(stat_rec *s, double underflow_ratio, double saturation_ratio, double qsnr_db) {
    s->st.underflow = llround(underflow_ratio * (double)s->st.nonzero);
    s->st.saturated = llround(saturation_ratio * (double)s->st.elements); /* saturation is per element */
    s->qsnr_db = qsnr_db;
    s->st.sum_x2 = 1.0;
    s->st.sum_err2 = isfinite(qsnr_db) ? pow(10.0, -qsnr_db / 10.0) : 0.0;
}

static bool stat_names(stat_rec *s, const char *layer, const char *role, const char *fmt) {
    if (strlen(layer) >= sizeof s->layer) return false;
    snprintf(s->layer, sizeof s->layer, "%s", layer);
    int ri = -1;
    for (int k = 0; k < MM_ROLE_COUNT; k++)
        if (strcmp(mm_role_name((mm_role)k), role) == 0) ri = k;
    quant_format qf;
    mx_err e;
    if (ri < 0 || quant_format_parse(fmt, &qf, &e)) return false;
    s->role = (mm_role)ri;
    s->format = qf;
    return true;
}

/* stats.h5 rows with step <= keep; false when the file is missing or not one
 * this program wrote (the caller then reads stats.csv). */
static bool load_stats_h5(runlog *r, const char *path, int64_t keep) {
    if (access(path, R_OK) != 0) return false;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return false;
    static const char *const i64_cols[] = {"step", "elements", "nonzero"};
    static const char *const f64_cols[] = {"underflow_ratio", "saturation_ratio", "qsnr_db"};
    static const char *const str_cols[] = {"layer", "role", "format"};
    int64_t n = -1;
    bool ok = true;
    int64_t *iv[3] = {NULL}, *gap = NULL;
    double *fv[3] = {NULL};
    char *sv[3] = {NULL};
    /* every column: rank 1 (gap_hist: [n, 32]) of the same n, the expected class */
    const char *all[10] = {"step", "elements", "nonzero", "underflow_ratio", "saturation_ratio", "qsnr_db",
                           "layer", "role", "format", "gap_hist"};
    for (int c = 0; c < 10 && ok; c++) {
        hid_t d = H5Dopen2(f, all[c], H5P_DEFAULT);
        if (d < 0) {
            ok = false;
            break;
        }
        hid_t sp = H5Dget_space(d);
        hsize_t dims[2] = {0, 0};
        int rank = H5Sget_simple_extent_ndims(sp);
        if (rank != (c == 9 ? 2 : 1) || H5Sget_simple_extent_dims(sp, dims, NULL) < 0 ||
            (c == 9 && dims[1] != QUANT_GAP_BINS) || dims[0] > ((hsize_t)1 << 26) || (n >= 0 && (int64_t)dims[0] != n))
            ok = false;
        n = (int64_t)dims[0];
        H5Sclose(sp);
        H5Dclose(d);
    }
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 96);
    size_t nn = ok && n > 0 ? (size_t)n : 1;
    for (int c = 0; c < 3 && ok; c++) {
        iv[c] = mx_malloc(sizeof(int64_t) * nn);
        fv[c] = mx_malloc(sizeof(double) * nn);
        sv[c] = mx_calloc(nn, 96);
        hid_t d1 = H5Dopen2(f, i64_cols[c], H5P_DEFAULT), d2 = H5Dopen2(f, f64_cols[c], H5P_DEFAULT),
              d3 = H5Dopen2(f, str_cols[c], H5P_DEFAULT);
        ok = n == 0 || (H5Dread(d1, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, iv[c]) >= 0 &&
                        H5Dread(d2, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, fv[c]) >= 0 &&
                        H5Dread(d3, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, sv[c]) >= 0);
        H5Dclose(d1), H5Dclose(d2), H5Dclose(d3);
    }
    if (ok) {
        gap = mx_malloc(sizeof(int64_t) * nn * QUANT_GAP_BINS);
        hid_t d = H5Dopen2(f, "gap_hist", H5P_DEFAULT);
        ok = n == 0 || H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, gap) >= 0;
        H5Dclose(d);
    }
    H5Tclose(st);
    H5Fclose(f);
    int64_t first = r->n_s;
    for (int64_t i = 0; ok && i < n; i++) {
        stat_rec s;
        memset(&s, 0, sizeof s);
        for (int c = 0; c < 3; c++) sv[c][96 * i + 95] = 0;
        s.step = iv[0][i];
        s.st.elements = iv[1][i];
        s.st.nonzero = iv[2][i];
        if (s.step < 0 || s.st.elements < 0 || s.st.nonzero < 0 || s.st.nonzero > s.st.elements ||
            !stat_names(&s, sv[0] + 96 * i, sv[1] + 96 * i, sv[2] + 96 * i)) {
            ok = false;
            break;
        }
        stat_from_ratios(&s, fv[0][i], fv[1][i], fv[2][i]);
        for (int g = 0; g < QUANT_GAP_BINS; g++) s.st.gap_hist[g] = gap[i * QUANT_GAP_BINS + g];
        if (s.step > keep) continue;
        MX_GROW(r->s, r->cap_s, r->n_s + 1, 256);
        r->s[r->n_s++] = s;
    }
    if (!ok) r->n_s = first; /* none of a file that does not check out */
    for (int c = 0; c < 3; c++) free(iv[c]), free(fv[c]), free(sv[c]);
    free(gap);
    return ok;
}

/* stats.csv rows with step <= keep (when there is no stats.h5: its ratios
 * have 6 digits, so counts above 10^6 may come back off by one). */
static void load_stats_csv(runlog *r, const char *path, int64_t keep) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[2048];
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (!len || line[len - 1] != '\n') continue; /* torn by a kill, or too long */
        stat_rec s;
        memset(&s, 0, sizeof s);
        char *save = NULL, *tok[9 + QUANT_GAP_BINS];
        int nt = 0;
        for (char *t = strtok_r(line, ",\n", &save); t && nt < 9 + QUANT_GAP_BINS; t = strtok_r(NULL, ",\n", &save))
            tok[nt++] = t;
        if (nt != 9 + QUANT_GAP_BINS || strcmp(tok[0], "step") == 0) continue;
        s.step = strtoll(tok[0], NULL, 10);
        if (!stat_names(&s, tok[1], tok[2], tok[3])) continue;
        s.st.elements = strtoll(tok[4], NULL, 10);
        s.st.nonzero = strtoll(tok[5], NULL, 10);
        stat_from_ratios(&s, strtod(tok[6], NULL), strtod(tok[7], NULL), strtod(tok[8], NULL));
        for (int g = 0; g < QUANT_GAP_BINS; g++) s.st.gap_hist[g] = strtoll(tok[9 + g], NULL, 10);
        if (s.step > keep || s.step < 0) continue;
        MX_GROW(r->s, r->cap_s, r->n_s + 1, 256);
        r->s[r->n_s++] = s;
    }
    fclose(f);
}

static void load_stats(runlog *r, const char *dir, int64_t keep) {
    char p[1100];
    snprintf(p, sizeof p, "%s/stats.h5", dir);
    if (load_stats_h5(r, p, keep)) return;
    snprintf(p, sizeof p, "%s/stats.csv", dir);
    load_stats_csv(r, p, keep);
}

/* Resume: the kept records go to PATH.tmp files renamed over the logs, so a
 * kill at any moment leaves either the old files or the new ones, never a
 * truncated one; the run then appends. */
static int runlog_rewrite(runlog *r, const char *const *paths, mx_err *err) {
    char tmp[3][1110];
    FILE *f[3];
    for (int i = 0; i < 3; i++) {
        snprintf(tmp[i], sizeof tmp[i], "%s.tmp", paths[i]);
        f[i] = fopen(tmp[i], "w");
    }
    int rc = 0;
    if (f[0] && f[1] && f[2]) {
        csv_header(f[0]);
        stats_header(f[2]);
        for (int64_t i = 0; i < r->n_m; i++) write_metric_to(f[0], f[1], &r->m[i]);
        for (int64_t i = 0; i < r->n_s; i++) write_stat(f[2], &r->s[i]);
    } else {
        rc = -1;
    }
    for (int i = 0; i < 3; i++)
        if (f[i] && (fflush(f[i]) != 0 || ferror(f[i]) || fsync(fileno(f[i])) != 0)) rc = -1;
    for (int i = 0; i < 3; i++)
        if (f[i] && fclose(f[i]) != 0) rc = -1;
    for (int i = 0; i < 3 && !rc; i++)
        if (rename(tmp[i], paths[i]) != 0) rc = -1;
    if (rc) {
        for (int i = 0; i < 3; i++) unlink(tmp[i]);
        return mx_err_set(err, "%s: cannot rewrite the run's logs (disk full?)", r->dir);
    }
    return 0;
}

int runlog_open(runlog *r, const char *dir, bool resume, int64_t keep_step, mx_err *err) {
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    char p1[1100], p2[1100], p3[1100];
    snprintf(p1, sizeof p1, "%s/metrics.csv", dir);
    snprintf(p2, sizeof p2, "%s/metrics.jsonl", dir);
    snprintf(p3, sizeof p3, "%s/stats.csv", dir);
    const char *paths[3] = {p1, p2, p3};
    if (resume) {
        load_metrics(r, p2, keep_step);
        load_stats(r, dir, keep_step);
        if (runlog_rewrite(r, paths, err)) {
            runlog_close(r);
            return -1;
        }
    }
    const char *mode = resume ? "a" : "w";
    r->csv = fopen(p1, mode);
    r->jsonl = fopen(p2, mode);
    r->stats_csv = fopen(p3, mode);
    if (!r->csv || !r->jsonl || !r->stats_csv) {
        runlog_close(r);
        return mx_err_set(err, "%s: cannot write the run's log files", dir);
    }
    if (!resume) {
        csv_header(r->csv);
        stats_header(r->stats_csv);
    }
    if (runlog_flush(r, err)) {
        runlog_close(r);
        return -1;
    }
    return 0;
}

void runlog_load(runlog *r, const char *dir) {
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s", dir);
    char p[1100];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    load_metrics(r, p, INT64_MAX);
    load_stats(r, dir, INT64_MAX);
}

void runlog_close(runlog *r) {
    if (r->csv) fclose(r->csv);
    if (r->jsonl) fclose(r->jsonl);
    if (r->stats_csv) fclose(r->stats_csv);
    free(r->m);
    free(r->s);
    memset(r, 0, sizeof *r);
}

int runlog_flush(runlog *r, mx_err *err) {
    FILE *fs[3] = {r->csv, r->jsonl, r->stats_csv};
    static const char *const names[3] = {"metrics.csv", "metrics.jsonl", "stats.csv"};
    for (int i = 0; i < 3; i++)
        if (fs[i] && (fflush(fs[i]) != 0 || ferror(fs[i]))) {
            r->write_failed = true;
            return mx_err_set(err, "%s/%s: write failed (disk full?)", r->dir, names[i]);
        }
    return 0;
}

void runlog_step(runlog *r, int64_t step, int64_t epoch, double lr, double loss, double img_per_s) {
    MX_GROW(r->m, r->cap_m, r->n_m + 1, 256);
    metric_rec *m = &r->m[r->n_m++];
    memset(m, 0, sizeof *m);
    m->step = step, m->epoch = epoch, m->lr = lr, m->loss = loss, m->img_per_s = img_per_s;
    write_metric(r, m);
    /* on disk at once: a kill loses no step before the checkpoint it resumes from */
    mx_err e;
    runlog_flush(r, &e);
}

void runlog_eval(runlog *r, int64_t step, int64_t epoch, double eval_loss, double eval_acc, double eval_top5,
                 double wall_s) {
    MX_GROW(r->m, r->cap_m, r->n_m + 1, 256);
    metric_rec *m = &r->m[r->n_m++];
    memset(m, 0, sizeof *m);
    m->step = step, m->epoch = epoch, m->is_eval = true, m->eval_loss = eval_loss, m->eval_acc = eval_acc;
    m->eval_top5 = eval_top5, m->wall_s = wall_s;
    write_metric(r, m);
    mx_err e;
    runlog_flush(r, &e);
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
            s->qsnr_db = quant_stats_qsnr_db(&s->st);
            if (r->stats_csv) write_stat(r->stats_csv, s);
        }
    mx_err e;
    runlog_flush(r, &e);
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
    COL_F("qsnr_db", r->s[i].qsnr_db);
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

double runlog_last_wall(const runlog *r) {
    for (int64_t i = r->n_m - 1; i >= 0; i--)
        if (r->m[i].is_eval && isfinite(r->m[i].wall_s)) return r->m[i].wall_s;
    return 0.0;
}

int runlog_write_summary(const runlog *r, mx_err *err) {
    char path[1100], tmp[1110];
    snprintf(path, sizeof path, "%s/summary.csv", r->dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return mx_err_set(err, "%s: cannot write", tmp);
    fprintf(f, "epoch,step,train_loss,eval_loss,eval_top1,eval_top5,lr,img_per_s,wall_s\n");
    int64_t from = 0; /* the step records since the previous evaluation */
    for (int64_t i = 0; i < r->n_m; i++) {
        const metric_rec *e = &r->m[i];
        if (!e->is_eval) continue;
        double sum = 0, ips = 0, lr = NAN;
        int64_t n = 0;
        for (int64_t k = from; k < i; k++)
            if (!r->m[k].is_eval && isfinite(r->m[k].loss)) sum += r->m[k].loss, ips += r->m[k].img_per_s, lr = r->m[k].lr, n++;
        from = i + 1;
        fprintf(f, "%lld,%lld,%.6g,%.6g,%.6g,%.6g,%.6g,%.1f,%.3f\n", (long long)e->epoch + 1, (long long)e->step,
                n ? sum / (double)n : NAN, e->eval_loss, e->eval_acc, e->eval_top5, lr, n ? ips / (double)n : NAN,
                e->wall_s);
    }
    if (fclose(f) != 0 || rename(tmp, path) != 0) return mx_err_set(err, "%s: write failed (disk full?)", path);
    return 0;
}
