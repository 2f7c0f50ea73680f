/* A small SVG chart writer for reports: line charts, scatter plots, heatmaps, bar charts.
 * Output is plain inline SVG (no scripts, no external resources). */
#ifndef MX_TRAIN_SVG_H
#define MX_TRAIN_SVG_H

#include <stdbool.h>
#include <stdio.h>

typedef struct svg_series {
    const char *name;
    const double *x, *y; /* non-finite points are skipped */
    int n;
} svg_series;

/* Escapes &, <, >, " for XML text. */
void svg_text_escaped(FILE *f, const char *s);
void svg_line_chart(FILE *f, const char *title, const char *xlabel, const char *ylabel, const svg_series *s, int ns,
                    bool log_y);
/* Points without lines; labels[k][i] (any may be NULL) is written beside point i of series k. */
void svg_scatter(FILE *f, const char *title, const char *xlabel, const char *ylabel, const svg_series *s, int ns,
                 const char *const *const *labels);
/* rows x cols values (row-major; NAN = no data) coloured from vmin to vmax. */
void svg_heatmap(FILE *f, const char *title, const char *const *row_names, int rows, const double *col_x, int cols,
                 const double *v, double vmin, double vmax, const char *value_label, const char *xlabel);
void svg_bar_chart(FILE *f, const char *title, const char *xlabel, const char *const *labels, const double *v, int n);
/* The same with reference marks: a dashed horizontal line at value `hline` (a baseline; NAN: none)
 * and a dashed vertical line at the left edge of bar `vbar` (a threshold; -1: none), each labelled. */
typedef struct svg_marks {
    double hline;
    const char *hline_label;
    int vbar;
    const char *vbar_label;
} svg_marks;
void svg_bar_chart_marked(FILE *f, const char *title, const char *xlabel, const char *const *labels, const double *v,
                          int n, const svg_marks *m);

#endif
