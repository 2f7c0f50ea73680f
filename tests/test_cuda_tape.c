/* The tape on the GPU against the tape on the CPU: every op's forward and
 * backward through ag_* (ctx->gpu), every product under fp32 and MX plans
 * (quantization statistics equal: the same operands were quantized),
 * ResNet-18 and DeiT-Tiny training steps, and whole runs (trainer_run) that
 * resume bit-identically on the GPU and across devices. Without a GPU the
 * suite prints one line and exits 77 (ctest: skipped). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops.h"
#include "core/rng.h"
#include "cuda/cuda.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/ddp.h"
#include "train/runlog.h"
#include "train/trainer.h"

/* max |g - c| / max |c|: the normwise relative difference */
static double norm_err(const float *g, const float *c, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)g[i] - c[i]);
        if (!(e <= num)) num = e; /* NaN counts as worst */
        den = fmax(den, fabs((double)c[i]));
    }
    return den > 0 ? num / den : num;
}

/* ---------------- one op (or a few) as a program over its inputs ---------------- */

#define MAX_IN 4

typedef struct prog_env {
    ag_ctx *ctx;
    mm_site *site;          /* two sites: [0] and [1] */
    float *run_mean, *run_var; /* BatchNorm's buffers in the context's memory */
    const int32_t *labels;
} prog_env;

typedef ag_var *(*prog_fn)(prog_env *e, ag_var **in);

typedef struct prog {
    const char *name;
    prog_fn fn;
    int n_in;
    int ndim[MAX_IN];
    int64_t shape[MAX_IN][4];
    bool eval;      /* ctx->run.training = false */
    bool bf16;      /* quant.elementwise = bf16 */
} prog;

static ag_var *p_linear(prog_env *e, ag_var **in) { return ag_linear(e->ctx, &e->site[0], in[0], in[1], in[2]); }
static ag_var *p_matmul(prog_env *e, ag_var **in) { return ag_matmul(e->ctx, &e->site[0], in[0], in[1], false); }
static ag_var *p_matmul_t(prog_env *e, ag_var **in) { return ag_matmul(e->ctx, &e->site[0], in[0], in[1], true); }
static ag_var *p_conv_s1(prog_env *e, ag_var **in) { return ag_conv2d(e->ctx, &e->site[0], in[0], in[1], NULL, 1, 1); }
static ag_var *p_conv_s2b(prog_env *e, ag_var **in) { return ag_conv2d(e->ctx, &e->site[0], in[0], in[1], in[2], 2, 1); }
static ag_var *p_conv_1x1s2(prog_env *e, ag_var **in) { return ag_conv2d(e->ctx, &e->site[0], in[0], in[1], NULL, 2, 0); }
static ag_var *p_conv_1x1(prog_env *e, ag_var **in) { return ag_conv2d(e->ctx, &e->site[0], in[0], in[1], NULL, 1, 0); }
static ag_var *p_conv_7x7(prog_env *e, ag_var **in) { return ag_conv2d(e->ctx, &e->site[0], in[0], in[1], NULL, 2, 3); }
static ag_var *p_bn(prog_env *e, ag_var **in) {
    return ag_batchnorm2d(e->ctx, in[0], in[1], in[2], e->run_mean, e->run_var, 0.1f, 1e-5f);
}
static ag_var *p_bn_res_relu(prog_env *e, ag_var **in) {
    return ag_batchnorm2d_act(e->ctx, in[0], in[1], in[2], e->run_mean, e->run_var, 0.1f, 1e-5f, in[3], true);
}
static ag_var *p_layernorm(prog_env *e, ag_var **in) { return ag_layernorm(e->ctx, in[0], in[1], in[2], 1e-6f); }
static ag_var *p_relu(prog_env *e, ag_var **in) { return ag_relu(e->ctx, in[0]); }
static ag_var *p_gelu(prog_env *e, ag_var **in) { return ag_gelu(e->ctx, in[0]); }
static ag_var *p_gelu_tanh(prog_env *e, ag_var **in) { return ag_gelu_tanh(e->ctx, in[0]); }
static ag_var *p_softmax(prog_env *e, ag_var **in) { return ag_softmax(e->ctx, in[0]); }
static ag_var *p_attention(prog_env *e, ag_var **in) { return ag_attention(e->ctx, &e->site[0], &e->site[1], in[0], 3); }
static ag_var *p_maxpool(prog_env *e, ag_var **in) { return ag_maxpool2d(e->ctx, in[0], 3, 2, 1); }
static ag_var *p_avgpool(prog_env *e, ag_var **in) { return ag_avgpool_global(e->ctx, in[0]); }
static ag_var *p_add(prog_env *e, ag_var **in) { return ag_add(e->ctx, in[0], in[1]); }
static ag_var *p_reshape_permute(prog_env *e, ag_var **in) {
    ag_var *r = ag_reshape(e->ctx, in[0], 4, (int64_t[]){2, 3, 4, 5});
    return ag_permute(e->ctx, r, (int[]){2, 0, 3, 1});
}
static ag_var *p_concat(prog_env *e, ag_var **in) { return ag_concat(e->ctx, in[0], in[1], 1); }
static ag_var *p_slice(prog_env *e, ag_var **in) { return ag_slice(e->ctx, in[0], 1, 1, 3); }
static ag_var *p_dropout(prog_env *e, ag_var **in) { return ag_dropout(e->ctx, in[0], 0.3f); }
static ag_var *p_drop_path(prog_env *e, ag_var **in) { return ag_drop_path(e->ctx, in[0], 0.3f); }
static ag_var *p_xent(prog_env *e, ag_var **in) { return ag_cross_entropy(e->ctx, in[0], e->labels, 0.1f); }
static ag_var *p_mean(prog_env *e, ag_var **in) { return ag_mean(e->ctx, in[0]); }
static ag_var *p_sum(prog_env *e, ag_var **in) { return ag_sum(e->ctx, in[0]); }

#define S1(a) 1, {1}, {{a}}
static const prog progs[] = {
    {"linear", p_linear, 3, {3, 2, 1}, {{6, 5, 40}, {24, 40}, {24}}, false, false},
    {"matmul", p_matmul, 2, {3, 3}, {{3, 17, 40}, {3, 40, 24}}, false, false},
    {"matmul_trans_b", p_matmul_t, 2, {3, 3}, {{3, 17, 40}, {3, 24, 40}}, false, false},
    {"conv3x3_s1", p_conv_s1, 2, {4, 4}, {{2, 9, 9, 16}, {24, 3, 3, 16}}, false, false},
    {"conv3x3_s2_bias", p_conv_s2b, 3, {4, 4, 1}, {{2, 9, 9, 16}, {32, 3, 3, 16}, {32}}, false, false},
    {"conv1x1_s2", p_conv_1x1s2, 2, {4, 4}, {{2, 8, 8, 16}, {32, 1, 1, 16}}, false, false},
    {"conv1x1_s1", p_conv_1x1, 2, {4, 4}, {{2, 6, 6, 16}, {8, 1, 1, 16}}, false, false},
    {"conv7x7_s2_c3", p_conv_7x7, 2, {4, 4}, {{2, 15, 15, 3}, {8, 7, 7, 3}}, false, false},
    {"batchnorm", p_bn, 3, {4, 1, 1}, {{4, 5, 5, 12}, {12}, {12}}, false, false},
    /* channels not a multiple of 4 (scalar kernels), and a power of two (masked channel index) */
    {"batchnorm_c6", p_bn, 3, {4, 1, 1}, {{3, 5, 5, 6}, {6}, {6}}, false, false},
    {"batchnorm_res_relu_c16", p_bn_res_relu, 4, {4, 1, 1, 4}, {{2, 7, 7, 16}, {16}, {16}, {2, 7, 7, 16}}, false, false},
    {"batchnorm_eval", p_bn, 3, {4, 1, 1}, {{4, 5, 5, 12}, {12}, {12}}, true, false},
    {"batchnorm_res_relu", p_bn_res_relu, 4, {4, 1, 1, 4}, {{4, 5, 5, 12}, {12}, {12}, {4, 5, 5, 12}}, false, false},
    {"batchnorm_res_relu_bf16", p_bn_res_relu, 4, {4, 1, 1, 4}, {{4, 5, 5, 12}, {12}, {12}, {4, 5, 5, 12}}, false,
     true},
    {"layernorm", p_layernorm, 3, {2, 1, 1}, {{7, 48}, {48}, {48}}, false, false},
    {"relu", p_relu, S1(1000), false, false},
    {"gelu", p_gelu, S1(1000), false, false},
    {"gelu_bf16", p_gelu, S1(1000), false, true},
    {"gelu_tanh", p_gelu_tanh, S1(1000), false, false},
    {"softmax", p_softmax, 1, {2}, {{13, 37}}, false, false},
    {"attention", p_attention, 1, {3}, {{2, 9, 72}}, false, false},
    {"maxpool", p_maxpool, 1, {4}, {{2, 9, 9, 8}}, false, false},
    {"avgpool", p_avgpool, 1, {4}, {{2, 4, 4, 8}}, false, false},
    {"add_broadcast", p_add, 2, {3, 3}, {{2, 5, 8}, {1, 5, 8}}, false, false},
    {"reshape_permute", p_reshape_permute, 1, {2}, {{6, 20}}, false, false},
    {"concat_broadcast", p_concat, 2, {3, 3}, {{1, 1, 8}, {3, 5, 8}}, false, false},
    {"slice", p_slice, 1, {3}, {{3, 6, 8}}, false, false},
    {"dropout", p_dropout, S1(500), false, false},
    {"drop_path", p_drop_path, 1, {2}, {{6, 50}}, false, false},
    {"cross_entropy", p_xent, 1, {2}, {{9, 11}}, false, false},
    {"mean", p_mean, S1(300), false, false},
    {"sum", p_sum, S1(300), false, false},
};
#define N_PROGS ((int)(sizeof progs / sizeof progs[0]))

static int64_t shape_numel(int nd, const int64_t *s) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= s[i];
    return n;
}

/* What one run of a program gives back (host copies). */
typedef struct prog_out {
    float *y, *grad[MAX_IN], *run_mean, *run_var;
    int64_t ny, nin[MAX_IN], nbn;
    quant_stats stats[2][MM_ROLE_COUNT];
} prog_out;

static void prog_out_free(prog_out *o) {
    free(o->y);
    for (int i = 0; i < MAX_IN; i++) free(o->grad[i]);
    free(o->run_mean);
    free(o->run_var);
}

/* Memory of the context's kind holding a copy of host values. */
static float *ctx_copy(ag_ctx *ctx, const float *h, int64_t n) {
    float *p = arena_alloc(&ctx->ar, sizeof(float) * (size_t)n);
    ag_mem_upload(ctx, p, h, sizeof(float) * (size_t)n);
    return p;
}

static float *host_download(ag_ctx *ctx, const float *p, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    ag_mem_download(ctx, h, p, sizeof(float) * (size_t)n);
    return h;
}

/* Runs p forward and backward (from a random output gradient) on the CPU or
 * the GPU; pol: the product sites' quantization (NULL: fp32). */
static bool g_conv_cudnn; /* the GPU's FP32 convolutions through cuDNN (train.gpu_conv = cudnn) */

static void run_prog(const prog *p, bool gpu, const mm_policy *pol, prog_out *out) {
    memset(out, 0, sizeof *out);
    ag_ctx ctx;
    ag_ctx_init(&ctx, 0);
    if (gpu) ag_ctx_use_gpu(&ctx);
    ctx.run.training = !p->eval;
    ctx.run.elementwise_bf16 = p->bf16;
    ctx.run.seed = 7;
    ctx.run.step = 3;
    ctx.run.conv_chunk_bytes = 4096; /* many chunks: their seams are where the two paths could part */
    ctx.run.gpu_conv_cudnn = g_conv_cudnn;
    mm_sites sites = {0};
    mm_site site[2];
    mm_site_declare(&sites, &site[0], "p.a", MM_B_WEIGHT);
    mm_site_declare(&sites, &site[1], "p.b", MM_B_ACT);
    mm_plan plan;
    if (pol) {
        mm_plan_init(&plan, pol, &sites);
        plan.collect_stats = true;
        ctx.run.mm = &plan;
    }
    ag_ctx_reset(&ctx);
    rng r;
    rng_init(&r, 99, (uint64_t)(p - progs));
    ag_var vars[MAX_IN], *in[MAX_IN] = {0};
    for (int i = 0; i < p->n_in; i++) {
        int64_t n = shape_numel(p->ndim[i], p->shape[i]);
        float *h = malloc(sizeof(float) * (size_t)n);
        bool scale_param = i == 1 && (p->fn == p_bn || p->fn == p_bn_res_relu || p->fn == p_layernorm);
        for (int64_t k = 0; k < n; k++) h[k] = scale_param ? 1.0f + 0.5f * rng_normal(&r) : rng_normal(&r);
        float *d = ctx_copy(&ctx, h, n), *g = arena_alloc(&ctx.ar, sizeof(float) * (size_t)n);
        ag_mem_zero(&ctx, g, sizeof(float) * (size_t)n);
        vars[i] = ag_leaf(d, g, p->ndim[i], p->shape[i]);
        in[i] = &vars[i];
        out->nin[i] = n;
        free(h);
    }
    int32_t labels[64];
    for (int i = 0; i < 64; i++) labels[i] = (int32_t)rng_below(&r, 11);
    int64_t c = p->n_in && p->ndim[0] == 4 ? p->shape[0][3] : 1;
    float *hm = malloc(sizeof(float) * (size_t)c), *hv = malloc(sizeof(float) * (size_t)c);
    for (int64_t k = 0; k < c; k++) hm[k] = 0.1f * rng_normal(&r), hv[k] = 1.0f + 0.5f * rng_uniform(&r);
    prog_env env = {&ctx, site, ctx_copy(&ctx, hm, c), ctx_copy(&ctx, hv, c), labels};
    ag_var *y = p->fn(&env, in);
    out->ny = ag_numel(y);
    float *dy = malloc(sizeof(float) * (size_t)out->ny);
    for (int64_t k = 0; k < out->ny; k++) dy[k] = rng_normal(&r);
    ag_backward_from(&ctx, y, dy);
    out->y = host_download(&ctx, y->value.data, out->ny);
    for (int i = 0; i < p->n_in; i++) out->grad[i] = host_download(&ctx, vars[i].grad, out->nin[i]);
    out->nbn = c;
    out->run_mean = host_download(&ctx, env.run_mean, c);
    out->run_var = host_download(&ctx, env.run_var, c);
    if (pol) {
        memcpy(out->stats, plan.stats, sizeof out->stats);
        mm_plan_free(&plan);
    }
    free(dy);
    free(hm);
    free(hv);
    mm_sites_free(&sites);
    ag_ctx_free(&ctx);
}

/* p on both devices: output, input gradients and BatchNorm buffers within tol. */
static void compare_prog(const prog *p, const mm_policy *pol, const char *what, double tol) {
    prog_out c, g;
    run_prog(p, false, pol, &c);
    run_prog(p, true, pol, &g);
    double e = norm_err(g.y, c.y, c.ny);
    for (int i = 0; i < p->n_in; i++) e = fmax(e, norm_err(g.grad[i], c.grad[i], c.nin[i]));
    if (p->fn == p_bn || p->fn == p_bn_res_relu)
        e = fmax(e, fmax(norm_err(g.run_mean, c.run_mean, c.nbn), norm_err(g.run_var, c.run_var, c.nbn)));
    fprintf(stderr, "  %-24s %-22s max normwise difference %.2g\n", p->name, what, e);
    ck_assert_msg(e <= tol, "%s under %s: GPU and CPU differ by %g (tolerance %g)", p->name, what, e, tol);
    if (pol) /* the same operands were quantized: the statistics' counts agree exactly */
        for (int s = 0; s < 2; s++)
            for (int role = 0; role < MM_ROLE_COUNT; role++) {
                const quant_stats *a = &g.stats[s][role], *b = &c.stats[s][role];
                ck_assert_msg(a->elements == b->elements && a->nonzero == b->nonzero && a->underflow == b->underflow &&
                                  a->saturated == b->saturated && !memcmp(a->gap_hist, b->gap_hist, sizeof a->gap_hist),
                              "%s under %s: %s statistics differ (underflow gpu %lld cpu %lld)", p->name, what,
                              mm_role_name((mm_role)role), (long long)a->underflow, (long long)b->underflow);
            }
    prog_out_free(&c);
    prog_out_free(&g);
}

static bool is_conv(const prog *p) {
    return p->fn == p_conv_s1 || p->fn == p_conv_s2b || p->fn == p_conv_1x1s2 || p->fn == p_conv_1x1 ||
           p->fn == p_conv_7x7;
}

/* Every op, fp32: relative 1e-5 (the bound); convolutions both gathered and through cuDNN. */
START_TEST(test_every_op_matches_cpu) {
    fprintf(stderr, "  fp32 convolutions: %s\n", cu_conv_library());
    for (int i = 0; i < N_PROGS; i++) compare_prog(&progs[i], NULL, "fp32", 1e-5);
    g_conv_cudnn = true;
    for (int i = 0; i < N_PROGS; i++)
        if (is_conv(&progs[i])) compare_prog(&progs[i], NULL, "fp32, cuDNN", 1e-5);
    g_conv_cudnn = false;
}
END_TEST

static bool is_product(const prog *p) {
    return p->fn == p_linear || p->fn == p_matmul || p->fn == p_matmul_t || p->fn == p_conv_s1 || p->fn == p_conv_s2b ||
           p->fn == p_conv_1x1s2 || p->fn == p_conv_1x1 || p->fn == p_conv_7x7 || p->fn == p_attention;
}

/* Every product under MX plans: the same quantized operands (statistics
 * equal), results within FP32 summation noise. Attention quantizes P after a
 * softmax of a product, so a summation-order difference can move a P value
 * across a rounding boundary: it gets a looser bound. */
START_TEST(test_every_product_under_mx_matches_cpu) {
    static const struct {
        const char *name, *format;
        mm_tiling tiling;
        quant_round grad_round;
    } plans[] = {
        {"mxsf 2d", "mxsf", MM_TILING_2D, QUANT_ROUND_EVEN},
        {"mxfp8_e4m3 1d", "mxfp8_e4m3", MM_TILING_1D, QUANT_ROUND_EVEN},
        {"mxint8 1d_requant", "mxint8", MM_TILING_1D_REQUANT, QUANT_ROUND_EVEN},
        {"boost 1d stochastic", "boost", MM_TILING_1D, QUANT_ROUND_STOCHASTIC},
        {"bf16 2d", "bf16", MM_TILING_2D, QUANT_ROUND_EVEN},
        {"mx6 1d", "mx6", MM_TILING_1D, QUANT_ROUND_EVEN},
    };
    for (size_t k = 0; k < sizeof plans / sizeof plans[0]; k++) {
        quant_format f;
        mx_err err;
        ck_assert_msg(quant_format_parse(plans[k].format, &f, &err) == 0, "%s", err.msg);
        mm_policy pol;
        mm_policy_init(&pol, f);
        pol.tiling = plans[k].tiling;
        pol.grad_round = plans[k].grad_round;
        pol.seed = 11;
        for (int i = 0; i < N_PROGS; i++)
            if (is_product(&progs[i])) compare_prog(&progs[i], &pol, plans[k].name, progs[i].fn == p_attention ? 5e-2 : 1e-5);
    }
    /* a mixed plan: fp32 activations against MX weights (the FP32 GEMM path for bf16-held operands) */
    mm_policy pol;
    mm_policy_init(&pol, QUANT_FORMAT_MXFP8_E4M3);
    pol.role_format[MM_ROLE_FWD_ACT] = pol.role_format[MM_ROLE_BWD_GRAD_DW] = QUANT_FORMAT_FP32;
    for (int i = 0; i < N_PROGS; i++)
        if (is_product(&progs[i]) && progs[i].fn != p_attention) compare_prog(&progs[i], &pol, "mixed fp32/mxfp8", 1e-5);
}
END_TEST

/* ---------------- models: training steps ---------------- */

static config *model_config_for(const char *sets) {
    config *c = malloc(sizeof *c);
    config_init(c);
    mx_err err = {0};
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", sets);
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save))
        ck_assert_msg(config_set(c, t, &err) == 0, "%s: %s", t, err.msg);
    return c;
}

/* Losses of `steps` AdamW steps, each on its own synthetic batch (the same
 * batches on both devices; new batches keep the loss near chance, so its
 * relative difference measures the steps, not a memorised batch). */
static void train_steps(const char *sets, bool gpu, int batch, int steps, double *loss) {
    char all[2048];
    snprintf(all, sizeof all, "%s train.device=%s", sets, gpu ? "cuda" : "cpu");
    config *c = model_config_for(all);
    session s;
    mx_err err = {0};
    ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
    optim_config oc = config_optim(c);
    optimizer o;
    optim_init(&o, &oc, &s.m.params);
    int side = c->v.model.img_size, chans = c->v.model.in_chans;
    size_t n = (size_t)batch * side * side * chans;
    float *x = malloc(sizeof(float) * n);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)batch);
    for (int i = 0; i < steps; i++) {
        rng r;
        rng_init(&r, 5, (uint64_t)i);
        for (size_t k = 0; k < n; k++) x[k] = rng_normal(&r);
        for (int k = 0; k < batch; k++) y[k] = (int32_t)rng_below(&r, (uint32_t)c->v.model.num_classes);
        loss[i] = session_forward_backward(&s, x, y, batch, side, chans, (uint64_t)i);
        optim_step(&o, oc.lr);
    }
    free(x);
    free(y);
    optim_free(&o);
    session_close(&s);
    free(c);
}

static void compare_training(const char *name, const char *sets, int batch, double tol1, double tol) {
    enum { STEPS = 4 };
    double lc[STEPS], lg[STEPS];
    train_steps(sets, false, batch, STEPS, lc);
    train_steps(sets, true, batch, STEPS, lg);
    for (int i = 0; i < STEPS; i++) {
        double e = fabs(lg[i] - lc[i]) / fabs(lc[i]);
        fprintf(stderr, "  %-28s step %d: loss cpu %.7f gpu %.7f (relative %.2g)\n", name, i + 1, lc[i], lg[i], e);
        ck_assert_msg(isfinite(lg[i]) && e <= (i == 0 ? tol1 : tol), "%s step %d: loss gpu %.9g cpu %.9g", name, i + 1,
                      lg[i], lc[i]);
    }
}

#define SGD "optim.name=sgd optim.lr=0.01 optim.momentum=0.9"
#define RESNET18 "model.arch=resnet18 model.stem=cifar model.img_size=32 " SGD
#define DEIT_TINY "model.arch=deit_tiny model.img_size=224 model.patch_size=16 " SGD

/* ResNet-18 and DeiT-Tiny, 4 steps: fp32 relative 1e-4 at step 1 (the
 * issue's bound; measured 0). SGD with momentum, not AdamW: AdamW's first updates are
 * close to lr * sign(g), so a gradient near zero whose sign the summation
 * order flips moves its weight by 2 lr, and the runs part (measured on the
 * H200, fp32 ResNet-18: 1.5e-5 at step 2, 1e-3 at step 3). SGD's updates
 * follow the gradients' own differences; MX runs also move a few values
 * across rounding boundaries, so later steps get 1e-2 (docs/gpu.md). */
START_TEST(test_training_matches_cpu) {
    compare_training("resnet18 fp32", RESNET18 " quant.format=fp32", 8, 1e-4, 1e-2);
    compare_training("deit_tiny fp32", DEIT_TINY " quant.format=fp32", 4, 1e-4, 1e-2);
    /* MX: the same quantized operands (test_every_product_under_mx_matches_cpu),
       but a product's FP32 sum is order-dependent wherever its terms span more
       than 24 bits, and the next layer's quantizer turns a last-bit difference
       into a whole grid step now and then; layer after layer (forward, then the
       gradients) the runs part, DeiT's 72 quantized products more than
       ResNet's 21. Measured on the H200 (docs/gpu.md), step 1 with FP32 GEMMs:
       ResNet-18 0 (mxsf 2d) and 1.7e-4 (mxfp8 1d), DeiT-Tiny 2.1e-3; the
       tensor cores' accumulation rounds its own way on top. */
    compare_training("resnet18 mxsf 2d, fp32 gemm", RESNET18 " quant.format=mxsf quant.tiling=2d train.gpu_gemm=fp32", 8,
                     5e-3, 5e-2);
    compare_training("resnet18 mxfp8 1d, fp32 gemm",
                     RESNET18 " quant.format=mxfp8_e4m3 quant.tiling=1d train.gpu_gemm=fp32", 8, 5e-3, 5e-2);
    compare_training("deit_tiny mxsf 2d, fp32 gemm", DEIT_TINY " quant.format=mxsf quant.tiling=2d train.gpu_gemm=fp32", 4,
                     5e-3, 5e-2);
    compare_training("resnet18 mxsf 2d", RESNET18 " quant.format=mxsf quant.tiling=2d", 8, 2e-2, 5e-2);
    compare_training("resnet18 mxfp8_e4m3 1d", RESNET18 " quant.format=mxfp8_e4m3 quant.tiling=1d", 8, 2e-2, 5e-2);
    compare_training("deit_tiny mxsf 2d", DEIT_TINY " quant.format=mxsf quant.tiling=2d", 4, 2e-2, 5e-2);
    compare_training("resnet18 mxsf 2d, bf16 elementwise",
                     RESNET18 " quant.format=mxsf quant.tiling=2d quant.elementwise=bf16", 8, 2e-2, 5e-2);
}
END_TEST

/* A batch whose activations sit near 2^-127 (MX blocks scaled so low that
 * bf16 cannot hold their values): the unchecked step finds them after the
 * fact and runs again checked; loss and gradients equal those of a step
 * checked throughout (statistics collected: every operand synced). */
START_TEST(test_unchecked_step_reruns_checked) {
    /* E4M3's subnormal steps (2^-9 of the block scale) fall below bf16's 2^-133 when the scale is near 2^-127 */
    config *c = model_config_for(RESNET18 " quant.format=mxfp8_e4m3 quant.tiling=1d train.device=cuda");
    double loss[2];
    float *grads[2];
    int64_t reruns[2];
    size_t nt = 0;
    for (int k = 0; k < 2; k++) {
        session s;
        mx_err err = {0};
        ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
        s.plan.collect_stats = k == 1;
        int batch = 4, side = 32, n = batch * side * side * 3;
        float *x = malloc(sizeof(float) * (size_t)n);
        int32_t y[4] = {1, 2, 3, 4};
        rng r;
        rng_init(&r, 3, 0);
        for (int i = 0; i < n; i++) x[i] = ldexpf(rng_normal(&r), -124);
        loss[k] = session_forward_backward(&s, x, y, batch, side, 3, 0);
        reruns[k] = s.rechecked_steps;
        param_store_download(&s.m.params, true);
        nt = s.m.params.n_trainable;
        grads[k] = malloc(sizeof(float) * nt);
        memcpy(grads[k], s.m.params.grad, sizeof(float) * nt);
        free(x);
        session_close(&s);
    }
    fprintf(stderr, "  tiny activations: loss %.9g unchecked (%lld reruns), %.9g checked\n", loss[0], (long long)reruns[0],
            loss[1]);
    ck_assert_int_eq(reruns[0], 1);
    ck_assert_int_eq(reruns[1], 0);
    ck_assert_msg(loss[0] == loss[1], "loss %.9g after the rerun, %.9g checked", loss[0], loss[1]);
    ck_assert_msg(memcmp(grads[0], grads[1], sizeof(float) * nt) == 0, "gradients after the rerun differ");
    free(grads[0]);
    free(grads[1]);
    free(c);
}
END_TEST


/* The GPU ranks' code path on one GPU: gradient buckets summed through NCCL
 * on their own stream as the backward reaches them (1 MB buckets: dozens per
 * step, the last one shorter), joined, divided by the rank count, and
 * BatchNorm's statistics through NCCL (train.sync_bn). With one rank every
 * sum is a copy, so losses and weights must equal a run without them bit
 * for bit; each step must have started every bucket once. Several GPUs are
 * not lent here: the sums' arithmetic over ranks is dist.h's design, tested
 * on the CPU (test_dist). */
START_TEST(test_ddp_one_gpu_rank) {
    enum { STEPS = 3, BATCH = 8 };
    config *c = model_config_for(RESNET18 " quant.format=mxsf quant.tiling=2d train.device=cuda");
    double loss[2][STEPS];
    float *w[2];
    size_t nt = 0;
    for (int k = 0; k < 2; k++) {
        session s;
        mx_err err = {0};
        ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
        if (k == 1) {
            s.ddp = ddp_open_world(&s.m.params, (int64_t)1 << 20, 60, &err);
            ck_assert_msg(s.ddp, "%s", err.msg);
            s.ctx.run.sync_bn = true;
        }
        optim_config oc = config_optim(c);
        optimizer o;
        optim_init(&o, &oc, &s.m.params);
        int side = 32, n = BATCH * side * side * 3;
        float *x = malloc(sizeof(float) * (size_t)n);
        int32_t y[BATCH];
        for (int i = 0; i < STEPS; i++) {
            rng r;
            rng_init(&r, 7, (uint64_t)i);
            for (int j = 0; j < n; j++) x[j] = rng_normal(&r);
            for (int j = 0; j < BATCH; j++) y[j] = (int32_t)rng_below(&r, 10);
            loss[k][i] = session_forward_backward(&s, x, y, BATCH, side, 3, (uint64_t)i);
            optim_step(&o, oc.lr);
        }
        nt = s.m.params.n_trainable;
        if (k == 1) ck_assert_int_eq(ddp_elements_started(s.ddp), (int64_t)(STEPS * nt));
        param_store_download(&s.m.params, false);
        w[k] = malloc(sizeof(float) * nt);
        memcpy(w[k], s.m.params.data, sizeof(float) * nt);
        free(x);
        optim_free(&o);
        session_close(&s);
    }
    cu_nccl_close();
    fprintf(stderr, "  one GPU rank through NCCL (%s): losses %.9g %.9g %.9g, without %.9g %.9g %.9g\n",
            cu_nccl_library(), loss[1][0], loss[1][1], loss[1][2], loss[0][0], loss[0][1], loss[0][2]);
    for (int i = 0; i < STEPS; i++) ck_assert_msg(loss[0][i] == loss[1][i], "step %d: loss %.9g through NCCL, %.9g without", i + 1, loss[1][i], loss[0][i]);
    ck_assert_msg(memcmp(w[0], w[1], sizeof(float) * nt) == 0, "weights after %d steps through NCCL differ", STEPS);
    free(w[0]), free(w[1]);
    free(c);
}
END_TEST

/* ---------------- whole runs ---------------- */

static config *run_config_for(const char *dir, const char *extra) {
    char sets[2048];
    snprintf(sets, sizeof sets,
             "model.arch=resnet model.blocks=1,1,1,1 model.widths=8,8,16,16 model.img_size=12 data.dataset=synthetic "
             "data.synthetic_train=64 data.synthetic_eval=32 data.batch_size=8 train.epochs=2 optim.lr=0.01 "
             "optim.schedule=constant log.print_every=100 log.progress=false quant.format=mxsf quant.tiling=2d "
             "quant.grad_round=stochastic log.stats_every=4 log.dir=%s %s",
             dir, extra);
    return model_config_for(sets);
}

static void load_weights(const char *dir, float **w, size_t *n) {
    char p[1200];
    snprintf(p, sizeof p, "%s/ckpt/last.h5", dir);
    config *c = run_config_for(dir, "");
    session s;
    mx_err err = {0};
    ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
    ck_assert_msg(ckpt_load_weights(p, &s.m, &err) == 0, "%s", err.msg);
    *n = s.m.params.n_trainable;
    *w = malloc(sizeof(float) * *n);
    memcpy(*w, s.m.params.data, sizeof(float) * *n);
    session_close(&s);
    free(c);
}

/* On the GPU a run stopped after 5 steps and resumed equals the run without
 * a stop, loss for loss and weight for weight; its checkpoint resumes on the
 * CPU, and a CPU checkpoint on the GPU. */
START_TEST(test_resume_on_gpu_is_bit_identical) {
    const char *da = test_path("gpu_a"), *db = test_path("gpu_b");
    train_opts o = {0};
    train_result ra, rb;
    mx_err err = {0};
    config *a = run_config_for(da, "train.device=cuda");
    ck_assert_msg(trainer_run(a, &o, &ra, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(ra.steps, 16);
    config *b = run_config_for(db, "train.device=cuda train.max_steps=5");
    ck_assert_msg(trainer_run(b, &o, &rb, &err) == 0, "%s", err.msg);
    config *b2 = run_config_for(db, "train.device=cuda");
    train_opts res = {db, NULL};
    ck_assert_msg(trainer_run(b2, &res, &rb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rb.steps, 16);
    runlog la, lb;
    runlog_load(&la, da);
    runlog_load(&lb, db);
    int64_t j = 0, compared = 0;
    for (int64_t i = 0; i < lb.n_m; i++) {
        if (lb.m[i].is_eval && lb.m[i].step == 5) continue; /* b's extra evaluation */
        ck_assert_int_eq(la.m[j].step, lb.m[i].step);
        ck_assert_msg(la.m[j].loss == lb.m[i].loss, "step %lld: loss %.9g, resumed %.9g", (long long)la.m[j].step,
                      la.m[j].loss, lb.m[i].loss);
        compared++, j++;
    }
    ck_assert_int_ge(compared, 16);
    ck_assert_int_gt(la.n_s, 0);
    runlog_close(&la);
    runlog_close(&lb);
    float *wa, *wb;
    size_t na, nb;
    load_weights(da, &wa, &na);
    load_weights(db, &wb, &nb);
    ck_assert_int_eq(na, nb);
    ck_assert_msg(memcmp(wa, wb, sizeof(float) * na) == 0, "weights after resume differ");
    free(wa);
    free(wb);
    /* across devices: the GPU run's step-5 checkpoint continues on the CPU, a CPU one on the GPU */
    const char *dc = test_path("cross_c"), *dg = test_path("cross_g");
    config *c1 = run_config_for(dc, "train.device=cuda train.max_steps=5");
    ck_assert_msg(trainer_run(c1, &o, &rb, &err) == 0, "%s", err.msg);
    config *c2 = run_config_for(dc, "train.device=cpu");
    train_opts rc = {dc, NULL};
    ck_assert_msg(trainer_run(c2, &rc, &rb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rb.steps, 16);
    double gpu_then_cpu = rb.final_eval_loss;
    /* the first step after the move: the same state, one step of summation-order differences */
    runlog lc;
    runlog_load(&la, da);
    runlog_load(&lc, dc);
    double l6a = NAN, l6c = NAN;
    for (int64_t i = 0; i < la.n_m; i++)
        if (!la.m[i].is_eval && la.m[i].step == 6) l6a = la.m[i].loss;
    for (int64_t i = 0; i < lc.n_m; i++)
        if (!lc.m[i].is_eval && lc.m[i].step == 6) l6c = lc.m[i].loss;
    fprintf(stderr, "  step 6 after a GPU checkpoint: loss %.7f on the GPU, %.7f on the CPU\n", l6a, l6c);
    ck_assert_msg(fabs(l6a - l6c) <= 1e-3 * fabs(l6a), "step 6: GPU %.9g, resumed on the CPU %.9g", l6a, l6c);
    runlog_close(&la);
    runlog_close(&lc);
    ck_assert_int_eq(rb.steps, 16);
    config *g1 = run_config_for(dg, "train.device=cpu train.max_steps=5");
    ck_assert_msg(trainer_run(g1, &o, &rb, &err) == 0, "%s", err.msg);
    config *g2 = run_config_for(dg, "train.device=cuda");
    train_opts rg = {dg, NULL};
    ck_assert_msg(trainer_run(g2, &rg, &rb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rb.steps, 16);
    fprintf(stderr, "  cross-device resumes: final eval loss %.4f (GPU then CPU), %.4f (CPU then GPU), %.4f (GPU only)\n",
            gpu_then_cpu, rb.final_eval_loss, ra.final_eval_loss);
    free(a), free(b), free(b2), free(c1), free(c2), free(g1), free(g2);
}
END_TEST

int main(void) {
    if (!cu_available()) {
        printf("test_cuda_tape: no GPU is visible: skipped (runs on the accelerator machine)\n");
        return 77;
    }
    setenv("CK_FORK", "no", 1); /* CUDA does not survive fork(): the tests run in this process */
    Suite *s = suite_create("cuda_tape");
    TCase *tc = tcase_create("tape");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_every_op_matches_cpu);
    tcase_add_test(tc, test_every_product_under_mx_matches_cpu);
    tcase_add_test(tc, test_training_matches_cpu);
    tcase_add_test(tc, test_unchecked_step_reruns_checked);
    tcase_add_test(tc, test_ddp_one_gpu_rank);
    tcase_add_test(tc, test_resume_on_gpu_is_bit_identical);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
