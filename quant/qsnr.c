/* The QSNR study (see qsnr.h). */
#include "quant/qsnr.h"

#include <math.h>
#include <omp.h>

#include "core/rng.h"

static const char *const qsnr_dist_names[] = {"paper", "normal", "laplace", "student_t3"};
_Static_assert(sizeof qsnr_dist_names / sizeof qsnr_dist_names[0] == QSNR_DIST_COUNT, "distribution names");
MX_ENUM_OF_NAMES(qsnr_dist_enum, "distribution", qsnr_dist_names);

static double qsnr_normal(rng *r) {
    double u1 = rng_uniform_f64(r), u2 = rng_uniform_f64(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

void qsnr_draw(qsnr_dist d, uint64_t seed, int64_t count, int64_t length, float *x) {
#pragma omp parallel for schedule(static)
    for (int64_t v = 0; v < count; v++) {
        rng r;
        rng_init(&r, seed, (uint64_t)v);
        float *row = x + v * length;
        double sigma = d == QSNR_DIST_PAPER ? fabs(qsnr_normal(&r)) : 1.0;
        for (int64_t i = 0; i < length; i++) {
            double val;
            switch (d) {
            case QSNR_DIST_LAPLACE: {
                double u = rng_uniform_f64(&r) - 0.5; /* inverse CDF; |u| < 1/2 */
                val = (u < 0 ? 1.0 : -1.0) * log(1.0 - 2.0 * fabs(u));
                break;
            }
            case QSNR_DIST_STUDENT_T3: {
                double z = qsnr_normal(&r), c = 0;
                for (int k = 0; k < 3; k++) {
                    double g = qsnr_normal(&r);
                    c += g * g;
                }
                val = z / sqrt(c / 3.0);
                break;
            }
            default: val = sigma * qsnr_normal(&r); break;
            }
            row[i] = (float)val;
        }
    }
}

void qsnr_measure(const quant_spec *s, const float *x, int64_t count, int64_t length, float *scratch,
                  qsnr_result *r) {
    int64_t shape[2] = {count, length};
    quant_fake(s, x, scratch, 2, shape, NULL, NULL);
    double sum_db = 0, min_db = INFINITY, all_x2 = 0, all_e2 = 0;
    int64_t finite = 0, exact = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum_db, all_x2, all_e2, finite, exact) reduction(min : min_db)
    for (int64_t v = 0; v < count; v++) {
        double x2 = 0, e2 = 0;
        for (int64_t i = 0; i < length; i++) {
            double a = x[v * length + i], e = a - (double)scratch[v * length + i];
            x2 += a * a;
            e2 += e * e;
        }
        all_x2 += x2;
        all_e2 += e2;
        if (e2 == 0) {
            exact++;
            continue;
        }
        double db = 10.0 * log10(x2 / e2);
        sum_db += db;
        finite++;
        min_db = db < min_db ? db : min_db;
    }
    r->bits = quant_spec_bits_per_element(s);
    r->vectors = count;
    r->exact = exact;
    r->mean_db = finite ? sum_db / (double)finite : INFINITY;
    r->min_db = min_db;
    r->tensor_db = all_e2 > 0 ? 10.0 * log10(all_x2 / all_e2) : INFINITY;
    r->bound_db = qsnr_theorem1_db(s, length);
}

double qsnr_theorem1_db(const quant_spec *s, int64_t n) {
    const quant_format_info *fi = quant_format_get(s->format);
    if (!fi->is_mx || !fi->is_int || quant_spec_is_2d(s) ||
        (s->round != QUANT_ROUND_EVEN && s->round != QUANT_ROUND_AWAY))
        return NAN;
    int m = fi->k1 ? fi->p + 1 : fi->bits - 1;
    int k1 = fi->k1 ? fi->k1 : s->block_cols, k2 = fi->k1 ? fi->k2 : k1, d2 = fi->k1 ? fi->d2 : 0;
    double b = (double)((1 << d2) - 1), p2b = pow(2.0, 2.0 * b);
    double nk = (double)(n < k1 ? n : k1);
    return 6.02 * m + 10.0 * log10(p2b / (nk + (p2b - 1.0) * k2));
}
