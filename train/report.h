/* report.html: a self-contained page (inline SVG, no scripts) with loss and
 * accuracy curves (one line per run), per-layer underflow heatmaps (layers x
 * steps) for each operand role, and the exponent-gap histogram of gradients. */
#ifndef MX_TRAIN_REPORT_H
#define MX_TRAIN_REPORT_H

#include "core/error.h"
#include "train/runlog.h"

typedef struct report_run {
    const char *name;    /* legend label (format/tiling in a comparison) */
    const runlog *log;
} report_run;

/* summary_html: optional HTML (a table) placed under the title. Atomic write. */
int report_write(const char *path, const char *title, const report_run *runs, int n, const char *summary_html,
                 mx_err *err);

#endif
