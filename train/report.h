/* report.html: a self-contained page (inline SVG, no scripts) with loss and
 * accuracy curves (one line per run), per-layer underflow heatmaps (layers x
 * steps) for each operand role, and the exponent-gap histogram of gradients. */
#ifndef MX_TRAIN_REPORT_H
#define MX_TRAIN_REPORT_H

#include <stdbool.h>
#include <stdio.h>

#include "core/error.h"
#include "train/runlog.h"

typedef struct report_run {
    const char *name;    /* legend label (format/tiling in a comparison) */
    const runlog *log;
} report_run;

/* A report page of one's own: report_open writes the head (title, date,
 * mxtrain version) to PATH.tmp, the caller the body to r->f, report_close
 * the tail, and renames it into place (atomic). */
typedef struct report_file {
    FILE *f;
    char path[1100], tmp[1100];
} report_file;
int report_open(report_file *r, const char *path, const char *title, mx_err *err);
int report_close(report_file *r, mx_err *err);

/* HTML naming what a run was: model, data, optimizer steps, device and every
 * quant.* setting (format and tiling too unless per_variant: a table's rows
 * give those). Caller frees. */
struct config;
char *report_describe(const struct config *c, bool per_variant);

/* summary_html: optional HTML (a table) placed under the title. Atomic write. */
int report_write(const char *path, const char *title, const report_run *runs, int n, const char *summary_html,
                 mx_err *err);

#endif
