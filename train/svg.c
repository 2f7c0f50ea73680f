/* SVG charts (see svg.h). */
#include "train/svg.h"

#include <math.h>
#include <string.h>

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

void svg_text_escaped(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* A "nice" tick step (1, 2, 5 x 10^k) for about n ticks over span. */
static double nice_step(double span, int n) {
    if (!(span > 0)) return 1;
    double raw = span / n, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static void fmt_num(char *b, size_t n, double v) {
    if (v != 0 && (fabs(v) >= 1e5 || fabs(v) < 1e-3)) snprintf(b, n, "%.0e", v);
    else snprintf(b, n, "%g", v);
}

static void svg_title(FILE *f, int w, const char *title) {
    fprintf(f, "<text x=\"%d\" y=\"18\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">", w / 2);
    svg_text_escaped(f, title);
    fputs("</text>\n", f);
}

/* The plot area of a chart and its data ranges (log_y: y holds log10). */
typedef struct svg_box {
    int W, H, L, R, T, B, pw, ph;
    double x0, x1, y0, y1;
    bool log_y;
} svg_box;

static double svg_px(const svg_box *b, double x) { return b->L + (x - b->x0) / (b->x1 - b->x0) * b->pw; }
static double svg_py(const svg_box *b, double y) { return b->T + b->ph - (y - b->y0) / (b->y1 - b->y0) * b->ph; }

/* Opens the SVG and draws title, frame, grid, ticks and axis labels for the
 * finite points of s; false (a closed "no data" SVG) when there are none. */
static bool svg_frame(FILE *f, const char *title, const char *xlabel, const char *ylabel, const svg_series *s, int ns,
                      bool log_y, bool x_from_zero, svg_box *bx) {
    *bx = (svg_box){.W = 640, .H = 360, .L = 64, .R = 150, .T = 30, .B = 46, .log_y = log_y};
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) {
            double x = s[k].x[i], y = s[k].y[i];
            if (!isfinite(x) || !isfinite(y) || (log_y && y <= 0)) continue;
            if (log_y) y = log10(y);
            x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, y);
        }
    int W = bx->W, H = bx->H, L = bx->L, T = bx->T;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n", W,
            H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    svg_title(f, W, title);
    if (!isfinite(x0)) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#888\">no data</text></svg>\n", W / 2, H / 2);
        return false;
    }
    if (x_from_zero && x0 > 0) x0 = 0;
    if (!x_from_zero) { /* points, not a curve from 0: a margin on both sides */
        double px = (x1 - x0) * 0.06 + (x1 == x0);
        x0 -= px, x1 += px;
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + (fabs(y0) > 0 ? fabs(y0) * 0.1 : 1), y0 -= (y1 - y0) * 0.5;
    double pad = (y1 - y0) * 0.05;
    y0 -= pad, y1 += pad;
    bx->x0 = x0, bx->x1 = x1, bx->y0 = y0, bx->y1 = y1;
    bx->pw = W - L - bx->R;
    bx->ph = H - T - bx->B;
    int pw = bx->pw, ph = bx->ph;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n", L, T, pw, ph);
    char b[32];
    double xs = nice_step(x1 - x0, 6);
    for (double t = ceil(x0 / xs) * xs; t <= x1 + 1e-9 * xs; t += xs) {
        fmt_num(b, sizeof b, t);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>", svg_px(bx, t), T,
                svg_px(bx, t), T + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n", svg_px(bx, t),
                T + ph + 15, b);
    }
    if (log_y) { /* 1, 2, 5 per decade when the range is short, else decades */
        static const double mult[3] = {1, 2, 5};
        int per = y1 - y0 < 2.5 ? 3 : 1;
        for (double d = floor(y0); d <= y1; d += 1)
            for (int m = 0; m < per; m++) {
                double t = d + log10(mult[m]);
                if (t < y0 || t > y1) continue;
                fmt_num(b, sizeof b, pow(10, t));
                fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>", L, svg_py(bx, t),
                        L + pw, svg_py(bx, t));
                fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n", L - 4,
                        svg_py(bx, t) + 4, b);
            }
    } else {
        double ys = nice_step(y1 - y0, 5);
        for (double t = ceil(y0 / ys) * ys; t <= y1 + 1e-9 * ys; t += ys) {
            fmt_num(b, sizeof b, fabs(t) < 1e-12 * ys ? 0 : t);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>", L, svg_py(bx, t), L + pw,
                    svg_py(bx, t));
            fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n", L - 4,
                    svg_py(bx, t) + 4, b);
        }
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\">", L + pw / 2, H - 8);
    svg_text_escaped(f, xlabel);
    fprintf(f, "</text><text transform=\"translate(14,%d) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">",
            T + ph / 2);
    svg_text_escaped(f, ylabel);
    fputs(log_y ? " (log)</text>\n" : "</text>\n", f);
    return true;
}

/* Legend entry k of a chart. */
static void svg_legend(FILE *f, const svg_box *bx, int k, const char *name) {
    int ly = bx->T + 10 + 18 * k, lx = bx->L + bx->pw + 10;
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"3\"/>", lx, ly, lx + 18, ly,
            palette[k % 10]);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"11\">", lx + 22, ly + 4);
    svg_text_escaped(f, name);
    fputs("</text>\n", f);
}

/* A point's y in chart space, or false when it is not drawn. */
static bool svg_point(const svg_box *bx, const svg_series *s, int i, double *px, double *py) {
    double x = s->x[i], y = s->y[i];
    if (!isfinite(x) || !isfinite(y) || (bx->log_y && y <= 0)) return false;
    *px = svg_px(bx, x);
    *py = svg_py(bx, bx->log_y ? log10(y) : y);
    return true;
}

void svg_line_chart(FILE *f, const char *title, const char *xlabel, const char *ylabel, const svg_series *s, int ns,
                    bool log_y) {
    svg_box bx;
    if (!svg_frame(f, title, xlabel, ylabel, s, ns, log_y, true, &bx)) return; /* x is a step count: from 0 */
    for (int k = 0; k < ns; k++) {
        const char *col = palette[k % 10];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.6\" points=\"", col);
        int pts = 0;
        double px, py;
        for (int i = 0; i < s[k].n; i++)
            if (svg_point(&bx, &s[k], i, &px, &py)) fprintf(f, "%.1f,%.1f ", px, py), pts++;
        fputs("\"/>\n", f);
        if (pts == 1 || s[k].n <= 30) /* few points (per-epoch accuracy): mark them */
            for (int i = 0; i < s[k].n; i++)
                if (svg_point(&bx, &s[k], i, &px, &py))
                    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px, py, col);
        svg_legend(f, &bx, k, s[k].name);
    }
    fputs("</svg>\n", f);
}

void svg_scatter(FILE *f, const char *title, const char *xlabel, const char *ylabel, const svg_series *s, int ns,
                 const char *const *const *labels) {
    svg_box bx;
    if (!svg_frame(f, title, xlabel, ylabel, s, ns, false, false, &bx)) return;
    for (int k = 0; k < ns; k++) {
        double px, py;
        for (int i = 0; i < s[k].n; i++)
            if (svg_point(&bx, &s[k], i, &px, &py))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\" fill-opacity=\"0.75\"/>\n", px, py,
                        palette[k % 10]);
        svg_legend(f, &bx, k, s[k].name);
    }
    for (int k = 0; k < ns; k++) /* labels over every point */
        for (int i = 0; labels && labels[k] && i < s[k].n; i++) {
            double px, py;
            if (!labels[k][i] || !svg_point(&bx, &s[k], i, &px, &py)) continue;
            fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" fill=\"#333\">", px + 5, py - 4);
            svg_text_escaped(f, labels[k][i]);
            fputs("</text>\n", f);
        }
    fputs("</svg>\n", f);
}

/* white -> yellow -> red -> dark red */
static void heat_color(double t, char *out) {
    if (!isfinite(t)) {
        snprintf(out, 16, "#eeeeee");
        return;
    }
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double r, g, b;
    if (t < 0.5) r = 1, g = 1 - 0.2 * (t / 0.5), b = 0.85 * (1 - t / 0.5);
    else r = 1 - 0.45 * ((t - 0.5) / 0.5), g = 0.8 * (1 - (t - 0.5) / 0.5), b = 0;
    snprintf(out, 16, "#%02x%02x%02x", (int)(r * 255), (int)(g * 255), (int)(b * 255));
}

void svg_heatmap(FILE *f, const char *title, const char *const *row_names, int rows, const double *col_x, int cols,
                 const double *v, double vmin, double vmax, const char *value_label, const char *xlabel) {
    const int L = 190, T = 30, B = 40, R = 110;
    int cw = cols > 0 ? (600 / cols > 24 ? 24 : 600 / cols > 2 ? 600 / cols : 2) : 10;
    int ch = rows > 60 ? 8 : 12;
    int W = L + cw * cols + R, H = T + ch * rows + B;
    if (W < 420) W = 420;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n", W,
            H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    svg_title(f, W, title);
    char col[16];
    for (int r = 0; r < rows; r++) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" font-size=\"%d\">", L - 4, T + ch * r + ch - 2,
                ch - 2);
        svg_text_escaped(f, row_names[r]);
        fputs("</text>\n", f);
        for (int c = 0; c < cols; c++) {
            double x = v[(size_t)r * cols + c];
            heat_color(vmax > vmin ? (x - vmin) / (vmax - vmin) : 0, col);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>%.4g</title></rect>\n",
                    L + cw * c, T + ch * r, cw, ch, col, x);
        }
    }
    /* step labels: first, middle, last */
    int picks[3] = {0, cols / 2, cols - 1};
    for (int i = 0; i < 3 && cols > 0; i++) {
        if (i > 0 && picks[i] == picks[i - 1]) continue;
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"11\">%g</text>\n",
                L + cw * picks[i] + cw / 2, T + ch * rows + 14, col_x[picks[i]]);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\">", L + cw * cols / 2, T + ch * rows + 32);
    svg_text_escaped(f, xlabel);
    fputs("</text>\n", f);
    /* colour scale */
    int sx = L + cw * cols + 20;
    for (int i = 0; i < 50; i++) {
        heat_color(1 - i / 49.0, col);
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"3\" fill=\"%s\"/>", sx, T + 10 + 3 * i, col);
    }
    fprintf(f, "\n<text x=\"%d\" y=\"%d\" font-size=\"10\">%.3g</text>", sx + 18, T + 16, vmax);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">%.3g</text>", sx + 18, T + 160, vmin);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">", sx, T + 176);
    svg_text_escaped(f, value_label);
    fputs("</text>\n</svg>\n", f);
}

void svg_bar_chart(FILE *f, const char *title, const char *xlabel, const char *const *labels, const double *v, int n) {
    svg_bar_chart_marked(f, title, xlabel, labels, v, n, NULL);
}

void svg_bar_chart_marked(FILE *f, const char *title, const char *xlabel, const char *const *labels, const double *v,
                          int n, const svg_marks *m) {
    const int W = 640, H = 300, L = 56, R = 20, T = 30, B = 46;
    double mx = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) mx = fmax(mx, v[i]);
    if (m && isfinite(m->hline)) mx = fmax(mx, m->hline);
    if (mx <= 0) mx = 1;
    int pw = W - L - R, ph = H - T - B;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\">\n", W,
            H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    svg_title(f, W, title);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#444\"/>\n", L, T, pw, ph);
    double ys = nice_step(mx, 4);
    char b[32];
    for (double t = 0; t <= mx * 1.0001; t += ys) {
        double y = T + ph - t / mx * ph;
        fmt_num(b, sizeof b, t);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>", L, y, L + pw, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n", L - 4, y + 4, b);
    }
    double bw = (double)pw / (n > 0 ? n : 1);
    for (int i = 0; i < n; i++) {
        double h = isfinite(v[i]) ? v[i] / mx * ph : 0;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#1f77b4\"><title>", L + bw * i + 1,
                T + ph - h, bw - 2 > 1 ? bw - 2 : 1, h);
        svg_text_escaped(f, labels[i]);
        fprintf(f, ": %.4g</title></rect>\n", v[i]);
        if (n <= 40 && (i % (n > 16 ? 4 : 1) == 0 || i == n - 1)) {
            fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" font-size=\"10\">", L + bw * i + bw / 2,
                    T + ph + 14);
            svg_text_escaped(f, labels[i]);
            fputs("</text>\n", f);
        }
    }
    if (m && isfinite(m->hline)) {
        double y = T + ph - m->hline / mx * ph;
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#d62728\" stroke-dasharray=\"5,3\"/>", L, y,
                L + pw, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" fill=\"#d62728\" stroke=\"white\" stroke-width=\"3\" "
                   "paint-order=\"stroke\">",
                L + 4, y - 4);
        svg_text_escaped(f, m->hline_label ? m->hline_label : "");
        fputs("</text>\n", f);
    }
    if (m && m->vbar >= 0 && m->vbar <= n) {
        double x = L + bw * m->vbar;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#d62728\" stroke-dasharray=\"5,3\"/>", x, T, x,
                T + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"11\" fill=\"#d62728\" stroke=\"white\" stroke-width=\"3\" "
                   "paint-order=\"stroke\">",
                x + 3, T + 14);
        svg_text_escaped(f, m->vbar_label ? m->vbar_label : "");
        fputs("</text>\n", f);
    }
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\">", L + pw / 2, H - 8);
    svg_text_escaped(f, xlabel);
    fputs("</text>\n</svg>\n", f);
}
