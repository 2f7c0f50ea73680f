/* The training loop (see trainer.h). */
#include "train/trainer.h"
#include "dist/dist.h"
#include "train/ddp.h"
#include "core/gemm.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "core/timer.h"
#include "cuda/cuda.h"
#include "train/checkpoint.h"
#include "train/report.h"
#include "train/runlog.h"

int make_dirs(const char *dir, mx_err *err) {
    char p[1024];
    snprintf(p, sizeof p, "%s", dir);
    for (char *c = p + 1; *c; c++) {
        if (*c != '/') continue;
        *c = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return mx_err_set(err, "%s: cannot create folder", p);
        *c = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return mx_err_set(err, "%s: cannot create folder", p);
    return 0;
}

/* ---------------- session ---------------- */

int session_open(session *s, const config *cfg, mx_err *err) {
    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->mc = config_model(cfg);
    if (model_build(&s->m, &s->mc, err)) return -1;
    mm_policy pol;
    s->has_plan = config_policy(cfg, &pol);
    if (s->has_plan && mm_policy_check(&pol, err)) {
        model_free(&s->m);
        return -1;
    }
    if (s->has_plan) mm_plan_init(&s->plan, &pol, &s->m.params.sites);
    ag_ctx_init(&s->ctx, 0);
    if (cfg->v.train.device == CLI_DEVICE_CUDA) {
        mx_err e;
        if (cu_init(&e) || cu_gemm_open(&e)) {
            mx_err_set(err, "train.device = cuda: %s", e.msg);
            session_close(s);
            return -1;
        }
        if (dist_local_size() > cu_device_count()) { /* NCCL takes one GPU per rank */
            mx_err_set(err, "train.device = cuda: %d ranks on this machine need a GPU each; %d visible",
                       dist_local_size(), cu_device_count());
            session_close(s);
            return -1;
        }
        ag_ctx_use_gpu(&s->ctx);
        s->ctx.run.gpu_fp32_gemm = cfg->v.train.gpu_gemm == TRAIN_GPU_GEMM_FP32;
        s->ctx.run.gpu_conv_cudnn = cfg->v.train.gpu_conv == TRAIN_GPU_CONV_CUDNN;
        s->ctx.run.conv_chunk_bytes = cfg->v.train.gpu_chunk_mb << 20;
        param_store_to_gpu(&s->m.params);
        s->d_buffers_before = cu_malloc(sizeof(float) * (s->m.params.n_buffers + 1));
    }
    s->ctx.run.mm = s->has_plan ? &s->plan : NULL;
    s->ctx.run.cpu_bf16 = !s->ctx.gpu && cfg->v.train.cpu_gemm != TRAIN_CPU_GEMM_FP32 && gemm_bf16_available();
    s->ctx.run.cpu_f32_dnnl = !s->ctx.gpu && cfg->v.train.cpu_gemm == TRAIN_CPU_GEMM_AUTO && gemm_dnnl_f32_preferred();
    s->ctx.run.cpu_conv_dnnl = !s->ctx.gpu && cfg->v.train.cpu_conv == TRAIN_CPU_CONV_AUTO;
    s->ctx.run.elementwise_bf16 = config_elementwise_bf16(cfg);
    s->ctx.run.sync_bn = cfg->v.train.sync_bn && dist_size() > 1;
    if (ddp_open(&s->m.params, (int64_t)25 << 20, cfg->v.train.dist_timeout_s, &s->ddp, err)) { /* DDP's bucket size */
        session_close(s);
        return -1;
    }
    s->ctx.run.seed = (uint64_t)cfg->v.train.seed;
    s->label_smoothing = (float)cfg->v.train.label_smoothing;
    return 0;
}

void session_close(session *s) {
    ddp_close(s->ddp);
    if (s->d_buffers_before) cu_free(s->d_buffers_before);
    ag_ctx_free(&s->ctx);
    if (s->has_plan) mm_plan_free(&s->plan);
    model_free(&s->m);
}

/* The batch's images where the step runs (a copy in the step arena on the GPU). */
static float *session_input(session *s, const float *images, int64_t n) {
    if (!s->ctx.gpu) return (float *)images;
    float *d = arena_alloc(&s->ctx.ar, sizeof(float) * (size_t)n);
    cu_to_device_async(d, images, sizeof(float) * (size_t)n);
    return d;
}

static float session_forward_backward_once(session *s, const float *images, const int32_t *labels, int count,
                                          int side, int chans, uint64_t step) {
    ag_ctx *ctx = &s->ctx;
    ctx->run.step = step;
    ctx->run.training = ctx->run.grad_enabled = true;
    ag_ctx_reset(ctx);
    param_zero_grad(&s->m.params);
    ag_var x = ag_leaf(session_input(s, images, (int64_t)count * side * side * chans), NULL, 4,
                       (int64_t[]){count, side, side, chans});
    ag_var *loss = ag_cross_entropy(ctx, model_forward(ctx, &s->m, &x), labels, s->label_smoothing);
    ddp_begin(s->ddp, ctx);
    ag_backward(ctx, loss);
    ddp_end(s->ddp, ctx); /* several ranks: the mean gradient over them */
    float l; /* read after the backward is queued: on the GPU the step's one wait */
    ag_mem_download(ctx, &l, loss->value.data, sizeof l);
    return l;
}

/* On the GPU with a quantization plan, whether this step may send its
 * operands to the tensor cores unchecked (ag_run.gpu_unchecked_bf16). */
static bool session_unchecked(const session *s) { return s->ctx.gpu && s->has_plan && !s->plan.collect_stats; }

double session_forward_backward(session *s, const float *images, const int32_t *labels, int count, int side,
                                int chans, uint64_t step) {
    param_store *ps = &s->m.params;
    bool unchecked = session_unchecked(s);
    s->ctx.run.gpu_unchecked_bf16 = unchecked;
    mm_plan saved = s->has_plan ? s->plan : (mm_plan){0};
    if (unchecked) cu_copy(s->d_buffers_before, ps->d_buffers, sizeof(float) * ps->n_buffers);
    float l = session_forward_backward_once(s, images, labels, count, side, chans, step);
    int64_t inexact = unchecked ? cu_quant_inexact_take() : 0;
    if (unchecked && dist_size() > 1) dist_max_i64(&inexact, 1); /* any rank's rerun is every rank's */
    if (inexact > 0) {
        /* some operand held values bf16 cannot (blocks scaled near 2^-127): the
           step again as the checked path forms it, from the same state */
        cu_copy(ps->d_buffers, s->d_buffers_before, sizeof(float) * ps->n_buffers);
        s->plan.passes = saved.passes, s->plan.bytes_quantized = saved.bytes_quantized;
        s->plan.bytes_held = saved.bytes_held;
        s->ctx.run.gpu_unchecked_bf16 = false;
        l = session_forward_backward_once(s, images, labels, count, side, chans, step);
        s->rechecked_steps++;
    }
    s->ctx.run.gpu_unchecked_bf16 = false;
    return l;
}

void session_adopt_loader(const session *s, loader *l) {
    if (s->ctx.gpu) loader_set_memory(l, &cu_pinned_mem);
}

int session_evaluate(session *s, loader *l, eval_result *res, mx_err *err) {
    ag_ctx *ctx = &s->ctx;
    bool collect = s->has_plan && s->plan.collect_stats;
    if (s->has_plan) s->plan.collect_stats = res->stats;
    ctx->run.training = ctx->run.grad_enabled = false;
    loader_start_epoch(l, 0, 0);
    data_batch b;
    double sum = 0;
    int64_t correct = 0, correct5 = 0, seen = 0;
    int r, side = loader_out_size(l);
    int chans = s->mc.in_chans;
    while ((r = loader_next(l, &b, err)) == 1) {
        if (b.count == 0) continue; /* a rank's empty shard of the last batch */
        ag_var *logits, *lv;
        for (int pass = 0; pass < 2; pass++) { /* GPU: unchecked bf16 operands, checked if need be */
            ctx->run.gpu_unchecked_bf16 = pass == 0 && session_unchecked(s);
            ag_ctx_reset(ctx);
            ag_var x = ag_leaf(session_input(s, b.images, (int64_t)b.count * side * side * chans), NULL, 4,
                               (int64_t[]){b.count, side, side, chans});
            logits = model_forward(ctx, &s->m, &x);
            lv = ag_cross_entropy(ctx, logits, b.labels, 0.0f);
            if (!ctx->run.gpu_unchecked_bf16 || cu_quant_inexact_take() == 0) break;
        }
        ctx->run.gpu_unchecked_bf16 = false;
        int64_t C = logits->value.shape[1];
        const float *lg = logits->value.data;
        float lval;
        if (ctx->gpu) { /* the logits to the host (ctx->meta: reset with the step) */
            float *h = arena_alloc(&ctx->meta, sizeof(float) * (size_t)(b.count * C));
            cu_to_host(h, lg, sizeof(float) * (size_t)(b.count * C));
            lg = h;
        }
        ag_mem_download(ctx, &lval, lv->value.data, sizeof lval);
        sum += lval * b.count;
        if (res->logits) memcpy(res->logits + seen * C, lg, sizeof(float) * (size_t)(b.count * C));
        for (int i = 0; i < b.count; i++) {
            const float *row = lg + (int64_t)i * C;
            int64_t best = 0, above = 0; /* above: classes scoring higher than the label */
            for (int64_t c = 1; c < C; c++)
                if (row[c] > row[best]) best = c;
            for (int64_t c = 0; c < C; c++) above += row[c] > row[b.labels[i]];
            correct += best == b.labels[i];
            correct5 += above < 5;
        }
        seen += b.count;
    }
    ctx->run.training = ctx->run.grad_enabled = true;
    if (s->has_plan) s->plan.collect_stats = collect;
    if (r < 0) return -1;
    if (dist_size() > 1) { /* each rank evaluated its shard (loader_set_shard) */
        MX_ASSERT(!res->logits);
        double t[4] = {sum, (double)correct, (double)correct5, (double)seen};
        dist_sum_f64(t, 4);
        sum = t[0], correct = (int64_t)t[1], correct5 = (int64_t)t[2], seen = (int64_t)t[3];
    }
    res->loss = seen ? sum / (double)seen : NAN;
    res->top1 = seen ? (double)correct / (double)seen : NAN;
    res->top5 = seen ? (double)correct5 / (double)seen : NAN;
    res->samples = seen;
    return 0;
}

int ckpt_session_open(ckpt_session *cs, const config *c, const char *ckpt, int batch, mx_err *err) {
    memset(cs, 0, sizeof *cs);
    data_config dc = config_data(c);
    if (dataset_open(&cs->ds, &dc, DATA_SPLIT_EVAL, err) ||
        loader_create(&cs->l, &cs->ds, &dc, batch, false, false, err) ||
        trainer_check_data(&cs->ds, loader_out_size(cs->l), &c->v.model, err) || session_open(&cs->s, c, err))
        return -1;
    cs->s_open = true;
    session_adopt_loader(&cs->s, cs->l);
    return ckpt_load_weights(ckpt, &cs->s.m, err);
}

void ckpt_session_close(ckpt_session *cs) {
    if (cs->s_open) session_close(&cs->s);
    loader_free(cs->l);
    dataset_free(&cs->ds);
}

/* ---------------- SIGINT, SIGTERM, SIGHUP ---------------- */

/* Each of these saves the run and exits like Ctrl-C (a scheduler's SIGTERM,
 * a closed terminal's SIGHUP). */
static const int train_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define N_TRAIN_SIGNALS ((int)(sizeof train_signals / sizeof train_signals[0]))

static volatile sig_atomic_t g_interrupted; /* the signal number, 0 if none */

static void on_signal(int sig) {
    g_interrupted = sig;
    signal(sig, SIG_DFL); /* a second one kills at once */
}

/* ---------------- progress ---------------- */

typedef struct progress {
    bool tty;
    int64_t print_every;
    double last_draw, t0;
    int64_t step0;
} progress;

static void fmt_eta(char *b, size_t n, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(b, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(b, n, "%ld:%02ld", t / 60, t % 60);
}

static void progress_update(progress *p, int64_t step, int64_t total, int64_t epoch, double lr, double loss,
                            double img_s, bool force) {
    double t = timer_now(), rate = (double)(step - p->step0) / (t - p->t0 + 1e-9);
    char eta[32];
    fmt_eta(eta, sizeof eta, (double)(total - step) / (rate > 0 ? rate : 1e-9));
    if (p->tty) {
        if (!force && t - p->last_draw < 0.2 && step != total) return;
        p->last_draw = t;
        int width = 28, fill = (int)((double)width * (double)step / (double)(total ? total : 1));
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
        bar[width] = 0;
        fprintf(stderr, "\r[%s] %lld/%lld ep %lld | %.0f img/s | avg loss %.4f | lr %.2e | ETA %s \033[K", bar,
                (long long)step, (long long)total, (long long)epoch, img_s, loss, lr, eta);
        fflush(stderr);
    } else if (force || step % p->print_every == 0 || step == total) {
        fprintf(stderr, "step %lld/%lld epoch %lld lr %.3e avg_loss %.4f img/s %.0f eta %s\n", (long long)step,
                (long long)total, (long long)epoch, lr, loss, img_s, eta);
    }
}

static void progress_end_line(progress *p) {
    if (p->tty) fputc('\n', stderr);
}

/* ---------------- non-finite guard ---------------- */

/* Names the parameter whose gradient is worst (most non-finite values, else
 * the largest norm), with its numbers and the GEMM statistics of its layer. */
static void describe_worst(session *s, char *out, size_t n) {
    param_store *ps = &s->m.params;
    /* a parameter that is itself non-finite is the culprit; otherwise the one
       with the largest share of non-finite gradient values, then the largest norm */
    int worst = -1;
    double worst_key[3] = {-1, -1, -1};
    int64_t worst_bad = 0;
    double worst_norm = 0;
    for (int i = 0; i < ps->count; i++) {
        const param_entry *e = &ps->entries[i];
        if (e->kind == PARAM_KIND_BUFFER) continue;
        const float *g = ps->grad + e->offset, *w = ps->data + e->offset;
        int64_t bad = 0, bad_w = 0;
        double nrm = 0;
        for (int64_t k = 0; k < e->numel; k++) {
            if (!isfinite(w[k])) bad_w++;
            if (!isfinite(g[k])) bad++;
            else nrm += (double)g[k] * g[k];
        }
        double key[3] = {(double)bad_w, (double)bad / (double)e->numel, nrm};
        bool better = false;
        for (int q = 0; q < 3; q++) {
            if (key[q] != worst_key[q]) {
                better = key[q] > worst_key[q];
                break;
            }
        }
        if (better) {
            worst = i, worst_bad = bad, worst_norm = nrm;
            memcpy(worst_key, key, sizeof key);
        }
    }
    if (worst < 0) {
        snprintf(out, n, "no parameters");
        return;
    }
    const param_entry *e = &ps->entries[worst];
    float wmax = 0;
    const float *w = ps->data + e->offset;
    for (int64_t k = 0; k < e->numel; k++) wmax = fmaxf(wmax, fabsf(w[k])); /* fmaxf keeps Inf, drops NaN */
    size_t len = (size_t)snprintf(out, n, "worst layer: %s (%lld of %lld gradient values non-finite, finite-part norm %.3g, max |w| %.3g)",
                                  e->name, (long long)worst_bad, (long long)e->numel, sqrt(worst_norm), (double)wmax);
    if (!s->has_plan || len >= n) return;
    /* the GEMM statistics of that layer, when collected this step */
    char layer[96];
    snprintf(layer, sizeof layer, "%s", e->name);
    char *dot = strrchr(layer, '.');
    if (dot) *dot = 0;
    const mm_sites *sites = s->plan.sites;
    for (int i = 0; i < sites->n; i++) {
        if (strcmp(sites->at[i]->name, layer) != 0) continue;
        for (int role = 0; role < MM_ROLE_COUNT && len < n; role++) {
            const quant_stats *st = &s->plan.stats[i][role];
            if (st->elements == 0) continue;
            len += (size_t)snprintf(out + len, n - len, "; %s underflow %.3g saturation %.3g",
                                    mm_role_name((mm_role)role), quant_stats_underflow_ratio(st),
                                    quant_stats_saturation_ratio(st));
        }
    }
}

/* ---------------- the run ---------------- */

static int write_text(const char *path, const char *text, mx_err *err) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return mx_err_set(err, "%s: cannot write", tmp);
    fputs(text, f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) return mx_err_set(err, "%s: write failed", path);
    return 0;
}

int trainer_check_data(const dataset *ds, int side, const model_config *mc, mx_err *err) {
    if (ds->c != mc->in_chans)
        return mx_err_set(err, "%s: images have %d channels but model.in_chans = %d", ds->source, ds->c, mc->in_chans);
    if (ds->num_classes > mc->num_classes)
        return mx_err_set(err, "%s: labels up to %d (%d classes) but model.num_classes = %d", ds->source,
                          ds->num_classes - 1, ds->num_classes, mc->num_classes);
    bool vit = mc->arch == MODEL_ARCH_DEIT_TINY || mc->arch == MODEL_ARCH_VIT;
    if (vit && side != mc->img_size) /* the patch grid and position embedding are fixed at build */
        return mx_err_set(err, "%s: images come out %dx%d but the ViT is built for model.img_size = %d (set "
                          "data.img_size = %d or model.img_size = %d)", ds->source, side, side, mc->img_size,
                          mc->img_size, side);
    return 0;
}

/* Everything a run holds; run_close frees what run_open and the loop made,
 * whichever step they got to. */
typedef struct run_state {
    config *cfg;
    const train_opts *opts;
    train_result *res;
    session s;
    bool s_open, opt_open, log_open, sig_set[N_TRAIN_SIGNALS];
    dataset train_ds, eval_ds;
    loader *train_l, *eval_l;
    optimizer opt;
    optim_config oc;
    runlog log;
    struct sigaction old_sa[N_TRAIN_SIGNALS]; /* restored by run_close */
    char dir[1024], last[1100], best[1100], report[1100];
    char *config_text;
    ckpt_meta meta;
    int side, chans;         /* the loader's images */
    int64_t nb, total;       /* batches per epoch, steps of the run */
    float *buf_before;       /* on_nonfinite = skip: the buffers (BN statistics) before the step */
    double *step_times;      /* seconds of each step run here (grown as steps run, never
                                sized from the configured total, which may be absurd) */
    int64_t n_times, cap_times, skipped;
    int64_t step, epoch;
    double t_start, t_prev, last_loss, ema; /* t_prev: end of the previous step (its time includes loading) */
    double wall0;            /* wall seconds of the run before this process (resumed runs) */
    progress pg;
    bool writes;             /* rank 0 (or alone): the one that writes files and prints progress */
} run_state;

/* The logs up to this step reach the disk before the checkpoint does, and
 * stats.h5 (exact, what a resume reads) is rewritten first: a checkpoint
 * never points past the records a resume needs. */
static int save_last(run_state *r, mx_err *err) {
    if (!r->writes) return 0;
    if (runlog_flush(&r->log, err)) return -1;
    if (r->log.n_s > 0 && runlog_write_stats_h5(&r->log, err)) return -1;
    return ckpt_save(r->last, &r->s.m, &r->opt, &r->meta, r->config_text, err);
}

static int run_epoch_end(run_state *r, mx_err *err);

static bool log_has_eval(const runlog *l, int64_t step) {
    for (int64_t i = l->n_m - 1; i >= 0; i--)
        if (l->m[i].is_eval && l->m[i].step == step) return true;
    return false;
}

static void write_report(run_state *r) {
    if (!r->writes) return;
    report_run rr = {"run", &r->log};
    char title[1200];
    snprintf(title, sizeof title, "mxtrain run %s", r->dir);
    mx_err e;
    char *what = report_describe(r->cfg, false), *html = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&html, &n);
    fputs(what, f);
    fprintf(f, "<p>%lld of %lld steps done.</p>\n", (long long)r->step, (long long)r->total);
    fclose(f);
    if (report_write(r->report, title, &rr, 1, html, &e)) fprintf(stderr, "mxtrain train: %s\n", e.msg);
    free(what);
    free(html);
}

/* The run directory and its config.ini. */
static int run_open_dir(run_state *r, mx_err *err) {
    config *cfg = r->cfg;
    if (r->opts->resume_dir) {
        mx_err e2;
        char set[1200];
        snprintf(set, sizeof set, "log.dir=%s", r->opts->resume_dir);
        if (config_set(cfg, set, &e2)) return mx_err_set(err, "%s", e2.msg);
    }
    snprintf(r->dir, sizeof r->dir, "%s", cfg->v.log.dir);
    char ckdir[1100];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", r->dir);
    snprintf(r->last, sizeof r->last, "%s/last.h5", ckdir);
    snprintf(r->best, sizeof r->best, "%s/best.h5", ckdir);
    snprintf(r->report, sizeof r->report, "%s/report.html", r->dir);
    if (r->opts->resume_dir && access(r->last, R_OK) != 0)
        return mx_err_set(err, "%s: no checkpoint to resume from", r->last);
    size_t tl = 0;
    FILE *mem = open_memstream(&r->config_text, &tl);
    config_write(cfg, mem);
    fclose(mem);
    /* several ranks: one config for all (a mismatch ends every rank before anything is written) */
    if (dist_check_same("the config (with its --set values)", r->config_text, err)) return -1;
    if (!r->writes) return 0;
    if (make_dirs(ckdir, err)) return -1;
    char cpath[1100];
    snprintf(cpath, sizeof cpath, "%s/config.ini", r->dir);
    return write_text(cpath, r->config_text, err);
}

/* What the run's records say (a run found complete on resume has nothing else). */
static void result_from_log(run_state *r) {
    train_result *res = r->res;
    res->steps = r->meta.step;
    res->best_acc = r->meta.best_acc;
    res->mean_grad_underflow = runlog_mean_grad_underflow(&r->log);
    res->wall_s = runlog_last_wall(&r->log);
    for (int64_t i = r->log.n_m - 1; i >= 0; i--)
        if (r->log.m[i].is_eval) {
            res->final_acc = r->log.m[i].eval_acc;
            res->final_eval_loss = r->log.m[i].eval_loss;
            break;
        }
    for (int64_t i = r->log.n_m - 1; i >= 0; i--)
        if (!r->log.m[i].is_eval) {
            res->final_loss = r->log.m[i].loss;
            break;
        }
}

/* Data, model, optimizer, resumed state and logs; returns 0, or 1 when the
 * run is already complete, or -1. */
static int run_open(run_state *r, mx_err *err) {
    config *cfg = r->cfg;
    mx_err e;
    if (cfg->v.train.device == CLI_DEVICE_CUDA && cu_init(&e)) /* before anything is written */
        return mx_err_set(err, "train.device = cuda: %s", e.msg);
    r->writes = dist_rank() == 0;
    dist_set_timeout(cfg->v.train.dist_timeout_s);
    if (run_open_dir(r, err)) return -1;

    data_config dc = config_data(cfg);
    if (dataset_open(&r->train_ds, &dc, DATA_SPLIT_TRAIN, err)) return -1;
    if (dataset_open(&r->eval_ds, &dc, DATA_SPLIT_EVAL, err)) return -1;
    int bs = cfg->v.data.batch_size, ebs = cfg->v.data.eval_batch_size ? cfg->v.data.eval_batch_size : bs;
    int ranks = dist_size();
    bool drop_last = r->train_ds.n >= (int64_t)bs * ranks;
    if (loader_create(&r->train_l, &r->train_ds, &dc, bs, true, drop_last, err)) return -1;
    if (loader_create(&r->eval_l, &r->eval_ds, &dc, ebs, false, false, err)) return -1;
    /* several ranks: each its shard of every global batch, in one rank's order for that batch */
    if (ranks > 1 && (loader_set_shard(r->train_l, dist_rank(), ranks, err) ||
                      loader_set_shard(r->eval_l, dist_rank(), ranks, err)))
        return -1;
    r->side = loader_out_size(r->train_l);
    r->chans = r->train_ds.c;
    /* both splits against the model, and the eval split against the train split */
    if (trainer_check_data(&r->train_ds, r->side, &cfg->v.model, err) ||
        trainer_check_data(&r->eval_ds, loader_out_size(r->eval_l), &cfg->v.model, err))
        return -1;
    if (loader_out_size(r->eval_l) != r->side)
        return mx_err_set(err, "%s: evaluation images come out %dx%d, training images %dx%d (set data.img_size)",
                          r->eval_ds.source, loader_out_size(r->eval_l), loader_out_size(r->eval_l), r->side,
                          r->side);

    if (session_open(&r->s, cfg, err)) return -1;
    r->s_open = true;
    session_adopt_loader(&r->s, r->train_l);
    session_adopt_loader(&r->s, r->eval_l);
    r->oc = config_optim(cfg);
    r->nb = loader_num_batches(r->train_l);
    r->total = (int64_t)cfg->v.train.epochs * r->nb;
    if (cfg->v.train.max_steps > 0 && cfg->v.train.max_steps < r->total) r->total = cfg->v.train.max_steps;
    r->oc.total_steps = r->total;
    optim_init(&r->opt, &r->oc, &r->s.m.params);
    r->opt_open = true;

    r->meta.seed = (uint64_t)cfg->v.train.seed;
    r->meta.best_acc = -1;
    if (r->opts->resume_dir) {
        if (ckpt_load(r->last, &r->s.m, &r->opt, &r->meta, err)) return -1;
        if (r->meta.seed != (uint64_t)cfg->v.train.seed)
            return mx_err_set(err, "%s: saved with train.seed = %llu, the config has %lld", r->last,
                              (unsigned long long)r->meta.seed, (long long)cfg->v.train.seed);
        if (r->writes) fprintf(stderr, "resuming %s at step %lld (epoch %lld)\n", r->dir, (long long)r->meta.step,
                (long long)r->meta.epoch);
    } else if (r->opts->init_from) {
        if (ckpt_load_weights(r->opts->init_from, &r->s.m, err)) return -1;
        if (r->writes) fprintf(stderr, "initialised weights from %s\n", r->opts->init_from);
    }
    /* the other ranks keep the records in memory only, read (on resume) after rank 0 rewrote them */
    if (r->writes && runlog_open(&r->log, r->dir, r->opts->resume_dir != NULL, r->meta.step, err)) return -1;
    if (ranks > 1) {
        int64_t ok = 0;
        dist_max_i64(&ok, 1); /* a barrier */
        if (!r->writes && r->opts->resume_dir) runlog_load(&r->log, r->dir);
    }
    r->log_open = true;

    if (ranks > 1 && r->writes)
        fprintf(stderr, "mxtrain train: %d ranks x batch %d = global batch %lld (%s)\n", ranks, bs,
                (long long)bs * ranks, cfg->v.train.sync_bn ? "BatchNorm statistics over the global batch"
                                                            : "BatchNorm statistics per rank");
    if (r->writes)
    fprintf(stderr, "mxtrain train: %s (%lld parameters), %s %lld train / %lld eval images, %s, quant %s/%s, %lld steps\n",
            model_arch_name(r->s.mc.arch), (long long)model_num_params(&r->s.m), data_kind_name(dc.kind),
            (long long)r->train_ds.n, (long long)r->eval_ds.n, optim_kind_name(r->oc.kind),
            quant_format_get(cfg->v.quant.format)->name, mm_tiling_name(cfg->v.quant.tiling), (long long)r->total);
    if (r->meta.step >= r->total && log_has_eval(&r->log, r->meta.step)) {
        if (r->writes) fprintf(stderr, "%s: already complete at step %lld of %lld (raise train.epochs or train.max_steps to go on)\n",
                r->dir, (long long)r->meta.step, (long long)r->total);
        result_from_log(r);
        return 1;
    }
    r->step = r->meta.step;
    r->epoch = r->meta.epoch;
    r->t_start = timer_now();
    r->wall0 = runlog_last_wall(&r->log); /* earlier processes' time, up to their last evaluation */
    r->last_loss = r->ema = NAN;
    r->pg = (progress){isatty(2) && cfg->v.log.progress, cfg->v.log.print_every, 0, timer_now(), r->meta.step};
    g_interrupted = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    for (int i = 0; i < N_TRAIN_SIGNALS; i++) r->sig_set[i] = sigaction(train_signals[i], &sa, &r->old_sa[i]) == 0;
    return 0;
}

/* One optimizer step on batch b; -1 when a non-finite step stops the run. */
static int run_step(run_state *r, const data_batch *b, mx_err *err) {
    const config *cfg = r->cfg;
    int64_t step = r->step;
    bool stats_now = r->s.has_plan && cfg->v.log.stats_every > 0 && step % cfg->v.log.stats_every == 0;
    if (r->s.has_plan) {
        r->s.plan.collect_stats = stats_now;
        if (stats_now) mm_plan_reset_stats(&r->s.plan);
        mm_plan_reset_counters(&r->s.plan);
    }
    param_store *ps = &r->s.m.params;
    bool skip_policy = cfg->v.train.on_nonfinite == TRAIN_NONFINITE_SKIP;
    if (skip_policy) { /* the forward updates running statistics: a skipped step must not */
        if (!r->buf_before) r->buf_before = mx_malloc(sizeof(float) * (ps->n_buffers ? ps->n_buffers : 1));
        if (ps->gpu) cu_to_host(r->buf_before, ps->d_buffers, sizeof(float) * ps->n_buffers);
        else memcpy(r->buf_before, ps->buffers, sizeof(float) * ps->n_buffers);
    }
    double lr = optim_lr_at(&r->oc, step);
    double loss = session_forward_backward(&r->s, b->images, b->labels, b->count, r->side, r->chans, (uint64_t)step);
    double count = b->count;
    if (dist_size() > 1) { /* the global batch's loss, and a stop any rank was asked for */
        double t[3] = {loss * b->count, (double)b->count, g_interrupted ? (double)g_interrupted : 0.0};
        dist_sum_f64(t, 3);
        loss = t[0] / t[1], count = t[1];
        if (t[2] != 0 && !g_interrupted) g_interrupted = SIGTERM;
    }
    double gnorm = optim_grad_norm(&r->s.m.params);
    if (!isfinite(loss) || !isfinite(gnorm)) {
        char why[1024];
        param_store_download(ps, true); /* describe_worst reads the host copies */
        describe_worst(&r->s, why, sizeof why);
        if (skip_policy) {
            if (ps->gpu) cu_to_device(ps->d_buffers, r->buf_before, sizeof(float) * ps->n_buffers);
            else memcpy(ps->buffers, r->buf_before, sizeof(float) * ps->n_buffers);
            r->skipped++;
            if (r->writes) fprintf(stderr, "%sstep %lld: non-finite loss %g / gradient norm %g; step skipped; %s\n",
                    r->pg.tty ? "\n" : "", (long long)step, loss, gnorm, why);
            r->step++;
            return 0;
        }
        progress_end_line(&r->pg);
        runlog_step(&r->log, step + 1, r->epoch, lr, loss, 0);
        return mx_err_set(err, "step %lld: non-finite loss %g / gradient norm %g, run stopped (%s); last good checkpoint: %s",
                          (long long)step, loss, gnorm, why, access(r->last, R_OK) == 0 ? r->last : "none yet");
    }
    if (r->oc.clip_grad_norm > 0) optim_clip_grad_norm(&r->s.m.params, gnorm, r->oc.clip_grad_norm);
    optim_step(&r->opt, lr);
    /* finite loss and gradients can still leave a non-finite state (an update
     * that overflows, an Inf running variance): stop before it is saved */
    char bad[400];
    /* on the GPU a count there first; the host copies are fetched to name the culprit */
    bool scan = !ps->gpu || optim_count_nonfinite_gpu(&r->opt) > 0;
    if (scan && ps->gpu) param_store_download(ps, false), optim_download(&r->opt);
    if (scan && ckpt_find_nonfinite(&r->s.m, &r->opt, bad, sizeof bad)) {
        progress_end_line(&r->pg);
        runlog_step(&r->log, step + 1, r->epoch, lr, loss, 0);
        return mx_err_set(err, "step %lld: the update left non-finite values in %s (loss %g, gradient norm %g); run "
                          "stopped; last good checkpoint: %s", (long long)step, bad, loss, gnorm,
                          access(r->last, R_OK) == 0 ? r->last : "none yet");
    }
    step = ++r->step;
    double t = timer_now(), dt = t - r->t_prev;
    r->t_prev = t;
    MX_GROW(r->step_times, r->cap_times, r->n_times + 1, 1024);
    r->step_times[r->n_times++] = dt;
    r->last_loss = loss;
    r->ema = isfinite(r->ema) ? 0.98 * r->ema + 0.02 * loss : loss;
    runlog_step(&r->log, step, r->epoch, lr, loss, count / dt);
    if (stats_now) runlog_stats(&r->log, step, &r->s.plan);
    if (r->log.write_failed) return runlog_flush(&r->log, err); /* the disk is full: stop, saying so */
    if (r->s.has_plan) {
        r->res->passes_per_step = r->s.plan.passes;
        r->res->bytes_quantized_per_step = r->s.plan.bytes_quantized;
        r->res->bytes_held = r->s.plan.bytes_held;
    }
    if (r->writes) progress_update(&r->pg, step, r->total, r->epoch, lr, r->ema, count / dt, false);
    r->meta.step = step;
    r->meta.epoch = r->epoch;
    if (cfg->v.train.ckpt_every > 0 && step % cfg->v.train.ckpt_every == 0 && save_last(r, err)) return -1;
    return 0;
}

/* The rest of the current epoch (or up to the run's last step), then its
 * evaluation and checkpoints; returns 0, 1 when interrupted (saved), or -1. */
static int run_epoch(run_state *r, mx_err *err) {
    int64_t first = r->step - r->epoch * r->nb;
    if (first >= r->nb) { /* the epoch was complete: resumed from its last step's checkpoint */
        if (!log_has_eval(&r->log, r->step)) return run_epoch_end(r, err); /* killed before its evaluation */
        r->epoch++;
        return 0;
    }
    loader_start_epoch(r->train_l, r->epoch, first);
    data_batch b;
    int lr_rc = 1;
    r->t_prev = timer_now();
    while (r->step < r->total && (lr_rc = loader_next(r->train_l, &b, err)) == 1) {
        if (run_step(r, &b, err)) return -1;
        if (g_interrupted) break;
    }
    if (g_interrupted) {
        progress_end_line(&r->pg);
        if (save_last(r, err)) return -1;
        if (r->writes) fprintf(stderr, "interrupted (%s) at step %lld: saved %s; continue with --resume %s\n",
                g_interrupted == SIGINT ? "SIGINT" : g_interrupted == SIGTERM ? "SIGTERM" : "SIGHUP", (long long)r->step,
                r->last, r->dir);
        r->res->interrupted = true;
        return 1;
    }
    if (r->step < r->total && lr_rc < 0) return -1;
    return run_epoch_end(r, err);
}

/* An epoch's (or the run's last partial epoch's) evaluation, checkpoints and report. */
static int run_epoch_end(run_state *r, mx_err *err) {
    bool epoch_done = r->step - r->epoch * r->nb >= r->nb;
    progress_end_line(&r->pg);
    eval_result ev = {0};
    if (session_evaluate(&r->s, r->eval_l, &ev, err)) return -1;
    double el = ev.loss, ea = ev.top1;
    runlog_eval(&r->log, r->step, r->epoch, ev.loss, ev.top1, ev.top5, r->wall0 + timer_now() - r->t_start);
    if (r->writes && runlog_write_summary(&r->log, err)) return -1;
    if (r->writes) fprintf(stderr, "epoch %lld: step %lld, train loss (moving average) %.4f, eval loss %.4f, top-1 %.2f%%, top-5 %.2f%%\n",
            (long long)r->epoch + 1, (long long)r->step, r->ema, el, 100 * ea, 100 * ev.top5);
    r->res->final_acc = ea;
    r->res->final_eval_loss = el;
    if (epoch_done) r->epoch++;
    r->meta.step = r->step;
    r->meta.epoch = r->epoch;
    if (ea > r->meta.best_acc) {
        r->meta.best_acc = ea;
        if (r->writes && ckpt_save(r->best, &r->s.m, &r->opt, &r->meta, r->config_text, err)) return -1;
    }
    if (save_last(r, err)) return -1;
    write_report(r);
    r->pg.t0 = timer_now();
    r->pg.step0 = r->step;
    return 0;
}

/* stats.h5, the report and the result of a run that ended well. */
static int run_finish(run_state *r, mx_err *err) {
    if (r->writes && r->log.n_s > 0 && runlog_write_stats_h5(&r->log, err)) return -1;
    write_report(r);
    train_result *res = r->res;
    r->meta.step = r->step;
    result_from_log(r);
    res->seconds = timer_now() - r->t_start;
    res->wall_s = r->wall0 + res->seconds;
    res->final_loss = r->last_loss;
    if (r->n_times) res->median_step_s = timer_median(r->step_times, (int)r->n_times);
    if (!res->interrupted && r->writes)
        fprintf(stderr, "done: %lld steps in %.0f s, eval acc %.2f%% (best %.2f%%), eval loss %.4f%s; %s\n",
                (long long)r->step, res->seconds, 100 * res->final_acc, 100 * res->best_acc, res->final_eval_loss,
                r->skipped ? " (non-finite steps skipped)" : "", r->report);
    return 0;
}

static void run_close(run_state *r) {
    for (int i = 0; i < N_TRAIN_SIGNALS; i++)
        if (r->sig_set[i]) sigaction(train_signals[i], &r->old_sa[i], NULL);
    if (r->log_open) runlog_close(&r->log);
    if (r->opt_open) optim_free(&r->opt);
    if (r->s_open) session_close(&r->s);
    loader_free(r->train_l);
    loader_free(r->eval_l);
    dataset_free(&r->train_ds);
    dataset_free(&r->eval_ds);
    free(r->step_times);
    free(r->buf_before);
    free(r->config_text);
    free(r);
}

int trainer_run(config *cfg, const train_opts *opts, train_result *res, mx_err *err) {
    memset(res, 0, sizeof *res);
    res->mean_grad_underflow = res->median_step_s = res->wall_s = NAN;
    run_state *r = mx_calloc(1, sizeof *r);
    r->cfg = cfg;
    r->opts = opts;
    r->res = res;
    int rc = run_open(r, err);
    if (rc == 1) rc = 0; /* already complete */
    else if (rc == 0) {
        int e = 0;
        while (r->step < r->total && (e = run_epoch(r, err)) == 0) {}
        /* resumed from the last step's checkpoint, killed before its evaluation */
        if (e == 0 && !log_has_eval(&r->log, r->step)) e = run_epoch_end(r, err);
        rc = e < 0 || run_finish(r, err) ? -1 : res->interrupted ? TRAIN_EXIT_INTERRUPTED : 0;
    }
    run_close(r);
    return rc;
}
