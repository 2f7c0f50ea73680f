/* optim/: AdamW and SGD against 10 PyTorch steps (tests/fixtures/optim_*,
 * written by gen_torch_fixtures.py), schedules at chosen steps, clipping. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/npy.h"
#include "optim/optim.h"
#include "test_util.h"

static npy_array fixture(const char *cas, const char *name) {
    char p[1024];
    const char *src = getenv("MX_SOURCE_DIR");
    snprintf(p, sizeof p, "%s/tests/fixtures/%s/%s.npy", src ? src : "../..", cas, name);
    npy_array a;
    mx_err err = {0};
    ck_assert_msg(npy_read_f32(p, &a, &err) == 0, "%s", err.msg);
    return a;
}

/* Runs the fixture's 10 updates and compares w and b with PyTorch's. */
static void check_optim_case(const char *cas, const optim_config *cfg) {
    npy_array w0 = fixture(cas, "w0"), b0 = fixture(cas, "b0"), gw = fixture(cas, "gw"), gb = fixture(cas, "gb"),
              lrs = fixture(cas, "lrs"), clip = fixture(cas, "clip"), w = fixture(cas, "w"), b = fixture(cas, "b");
    param_store ps;
    param_store_init(&ps);
    int iw = param_add(&ps, "fc.weight", 2, (int64_t[]){6, 5}, PARAM_KIND_WEIGHT, PARAM_LAYOUT_SAME,
                       PARAM_INIT_ZEROS, 0);
    int ib = param_add(&ps, "fc.bias", 1, (int64_t[]){5}, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME,
                       PARAM_INIT_ZEROS, 0);
    param_finalize(&ps, 0);
    memcpy(param_data(&ps, iw), w0.data, sizeof(float) * 30);
    memcpy(param_data(&ps, ib), b0.data, sizeof(float) * 5);
    optimizer o;
    optim_init(&o, cfg, &ps);
    const float *lr = lrs.data, *cl = clip.data;
    for (int t = 0; t < 10; t++) {
        memcpy(param_var(&ps, iw)->grad, (float *)gw.data + t * 30, sizeof(float) * 30);
        memcpy(param_var(&ps, ib)->grad, (float *)gb.data + t * 5, sizeof(float) * 5);
        if (cl[0] > 0) optim_clip_grad_norm(&ps, optim_grad_norm(&ps), cl[0]);
        optim_step(&o, lr[t]);
    }
    const float *got[2] = {param_data(&ps, iw), param_data(&ps, ib)}, *want[2] = {w.data, b.data};
    int n[2] = {30, 5};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < n[k]; i++) {
            float tol = 2e-6f + 2e-5f * fabsf(want[k][i]);
            ck_assert_msg(fabsf(got[k][i] - want[k][i]) <= tol, "%s %s[%d]: %.9g vs PyTorch %.9g", cas,
                          k ? "b" : "w", i, (double)got[k][i], (double)want[k][i]);
        }
    optim_free(&o);
    param_store_free(&ps);
    npy_array *all[] = {&w0, &b0, &gw, &gb, &lrs, &clip, &w, &b};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) npy_free(all[i]);
}

START_TEST(test_adamw_matches_pytorch) {
    optim_config c = optim_config_default(OPTIM_KIND_ADAMW);
    c.beta2 = 0.95;
    c.weight_decay = 0.05;
    check_optim_case("optim_adamw", &c);
}
END_TEST

START_TEST(test_sgd_matches_pytorch) {
    optim_config c = optim_config_default(OPTIM_KIND_SGD);
    c.momentum = 0.9;
    c.nesterov = true;
    c.weight_decay = 1e-3;
    check_optim_case("optim_sgd_nesterov", &c);
    c.momentum = 0.8;
    c.nesterov = false;
    c.weight_decay = 1e-2;
    check_optim_case("optim_sgd_momentum", &c);
}
END_TEST

/* A wrong update rule must not pass: Adam with L2 (coupled) decay instead of
 * decoupled differs from PyTorch's AdamW beyond the tolerance. */
START_TEST(test_fixture_detects_wrong_decay) {
    optim_config c = optim_config_default(OPTIM_KIND_ADAMW);
    c.beta2 = 0.95;
    c.weight_decay = 0.5; /* ten times PyTorch's 0.05 */
    npy_array w0 = fixture("optim_adamw", "w0"), b0 = fixture("optim_adamw", "b0"), gw = fixture("optim_adamw", "gw"),
              gb = fixture("optim_adamw", "gb"), w = fixture("optim_adamw", "w");
    param_store ps;
    param_store_init(&ps);
    int iw = param_add(&ps, "w", 2, (int64_t[]){6, 5}, PARAM_KIND_WEIGHT, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    int ib = param_add(&ps, "b", 1, (int64_t[]){5}, PARAM_KIND_NO_DECAY, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    param_finalize(&ps, 0);
    memcpy(param_data(&ps, iw), w0.data, sizeof(float) * 30);
    memcpy(param_data(&ps, ib), b0.data, sizeof(float) * 5);
    optimizer o;
    optim_init(&o, &c, &ps);
    for (int t = 0; t < 10; t++) {
        memcpy(param_var(&ps, iw)->grad, (float *)gw.data + t * 30, sizeof(float) * 30);
        memcpy(param_var(&ps, ib)->grad, (float *)gb.data + t * 5, sizeof(float) * 5);
        optim_clip_grad_norm(&ps, optim_grad_norm(&ps), 2.0);
        optim_step(&o, 1e-2);
    }
    float worst = 0;
    for (int i = 0; i < 30; i++) worst = fmaxf(worst, fabsf(param_data(&ps, iw)[i] - ((float *)w.data)[i]));
    ck_assert_msg(worst > 1e-3f, "a wrong optimizer matched the fixture (diff %g)", (double)worst);
    optim_free(&o);
    param_store_free(&ps);
    npy_free(&w0), npy_free(&b0), npy_free(&gw), npy_free(&gb), npy_free(&w);
}
END_TEST

START_TEST(test_schedules) {
    optim_config c = optim_config_default(OPTIM_KIND_ADAMW);
    c.lr = 1.0;
    c.warmup_steps = 4;
    c.schedule = OPTIM_SCHEDULE_COSINE;
    c.total_steps = 104;
    c.min_lr = 0.1;
    ck_assert_double_eq_tol(optim_lr_at(&c, 0), 0.25, 1e-12);
    ck_assert_double_eq_tol(optim_lr_at(&c, 3), 1.0, 1e-12);
    ck_assert_double_eq_tol(optim_lr_at(&c, 4), 1.0, 1e-12);
    ck_assert_double_eq_tol(optim_lr_at(&c, 54), 0.55, 1e-12); /* half way: (1 + 0.1) / 2 */
    ck_assert_double_eq_tol(optim_lr_at(&c, 104), 0.1, 1e-12);
    ck_assert_double_eq_tol(optim_lr_at(&c, 500), 0.1, 1e-12);
    c.schedule = OPTIM_SCHEDULE_STEP;
    c.warmup_steps = 0;
    c.step_size = 10;
    c.gamma = 0.5;
    ck_assert_double_eq_tol(optim_lr_at(&c, 9), 1.0, 1e-12);
    ck_assert_double_eq_tol(optim_lr_at(&c, 10), 0.5, 1e-12);
    ck_assert_double_eq_tol(optim_lr_at(&c, 35), 0.125, 1e-12);
    c.schedule = OPTIM_SCHEDULE_CONSTANT;
    ck_assert_double_eq_tol(optim_lr_at(&c, 12345), 1.0, 1e-12);
    optim_kind k;
    mx_err err = {0};
    int sv;
    ck_assert_int_eq(mx_enum_parse(&optim_schedule_enum, "linear", &sv, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "cosine"));
    ck_assert_int_eq(optim_kind_parse("sgd", &k, &err), 0);
    ck_assert_int_eq(k, OPTIM_KIND_SGD);
}
END_TEST

START_TEST(test_clip_grad_norm) {
    param_store ps;
    param_store_init(&ps);
    int i = param_add(&ps, "w", 2, (int64_t[]){2, 2}, PARAM_KIND_WEIGHT, PARAM_LAYOUT_SAME, PARAM_INIT_ZEROS, 0);
    param_finalize(&ps, 0);
    float *g = param_var(&ps, i)->grad;
    g[0] = 3, g[1] = 4, g[2] = 0, g[3] = 0;
    double n = optim_grad_norm(&ps);
    ck_assert_double_eq_tol(n, 5.0, 1e-12);
    optim_clip_grad_norm(&ps, n, 10.0); /* below the limit: untouched */
    ck_assert_float_eq(g[0], 3.0f);
    optim_clip_grad_norm(&ps, n, 1.0);
    ck_assert_double_eq_tol(optim_grad_norm(&ps), 1.0, 1e-5);
    param_store_free(&ps);
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, test_adamw_matches_pytorch);
    tcase_add_test(tc, test_sgd_matches_pytorch);
    tcase_add_test(tc, test_fixture_detects_wrong_decay);
    tcase_add_test(tc, test_schedules);
    tcase_add_test(tc, test_clip_grad_norm);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
