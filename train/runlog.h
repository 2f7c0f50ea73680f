/* What a run records: per-step and per-epoch metrics (metrics.csv and
 * metrics.jsonl) and per-layer quantization statistics (stats.csv and
 * stats.h5), kept in memory for the report and written as they arrive. */
#ifndef MX_TRAIN_RUNLOG_H
#define MX_TRAIN_RUNLOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/mm.h"
#include "core/error.h"

typedef struct metric_rec {
    int64_t step, epoch;
    bool is_eval;
    double lr, loss, img_per_s;   /* step records */
    double eval_loss, eval_acc;   /* eval records (eval_acc: top-1) */
    double eval_top5, wall_s;     /* eval records: top-5, and the run's wall seconds so far (NAN in older logs) */
} metric_rec;

typedef struct stat_rec {
    int64_t step;
    char layer[96];
    mm_role role;
    quant_format format;
    quant_stats st;   /* counts exact; the error sums only as far as qsnr_db needs */
    double qsnr_db;   /* as measured (kept, not recomputed, so a resumed run writes the same value) */
} stat_rec;

typedef struct runlog {
    char dir[1024];
    metric_rec *m;
    int64_t n_m, cap_m;
    stat_rec *s;
    int64_t n_s, cap_s;
    FILE *csv, *jsonl, *stats_csv;
    bool write_failed; /* a write to the log files failed (disk full): the run stops */
} runlog;

/* Opens the files in dir. Fresh run: truncates them. Resume: reads the
 * earlier records back (metrics.jsonl, skipping torn lines; statistics from
 * stats.h5, exact, or stats.csv when there is none), keeps those up to
 * keep_step and rewrites the files, so they equal an uninterrupted run's. */
int runlog_open(runlog *r, const char *dir, bool resume, int64_t keep_step, mx_err *err);
void runlog_close(runlog *r);
/* Reads a finished run's records (no files are opened for writing). */
void runlog_load(runlog *r, const char *dir);
void runlog_step(runlog *r, int64_t step, int64_t epoch, double lr, double loss, double img_per_s);
void runlog_eval(runlog *r, int64_t step, int64_t epoch, double eval_loss, double eval_acc, double eval_top5,
                 double wall_s);
/* summary.csv, one row per evaluation, rewritten (atomically) from the records:
 * epoch, step, train_loss (mean over the epoch's steps), eval_loss, eval_top1,
 * eval_top5, lr (the epoch's last), img_per_s (mean), wall_s. */
int runlog_write_summary(const runlog *r, mx_err *err);
/* wall_s of the last evaluation record (0 when none): a resumed run's start. */
double runlog_last_wall(const runlog *r);
/* Appends the policy's statistics as rows for `step` (and to stats.csv when
 * the log has its files open; a zeroed runlog just collects them). */
void runlog_stats(runlog *r, int64_t step, const mm_plan *p);
/* Writes stats.h5 (atomically) from the rows in memory. */
int runlog_write_stats_h5(const runlog *r, mx_err *err);
/* Pushes buffered records to the files; -1 with a message when a write
 * failed (the disk is full, say). */
int runlog_flush(runlog *r, mx_err *err);
/* Mean underflow ratio of the gradient roles over all rows (NAN when none). */
double runlog_mean_grad_underflow(const runlog *r);

#endif
