/* mxtrain bench step / bench CONFIG / bench data: training-step and loader
 * throughput. Synthetic or first-batch data, warm-up, then timed steps
 * (forward, backward, AdamW); medians, one JSON line on stdout. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "core/gemm.h"
#include "core/rng.h"
#include "core/timer.h"
#include "core/threads.h"
#include "core/json.h"
#include "train/cli.h"
#include "cuda/cuda.h"
#include "train/commands.h"
#include "train/config.h"
#include "train/trainer.h"

#include <cJSON.h>

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0; /* Linux: kilobytes */
}

/* The per-op profile of the timed steps, per step: a "profile" array in the
 * JSON line, and a table on stderr, largest first. */
static void bench_profile_report(cJSON *j, const ag_prof *p, double optim_s, double step_s, int steps) {
    int order[AG_OP_COUNT], n = 0;
    for (int op = 0; op < AG_OP_COUNT; op++)
        if (p->calls[op] || p->bwd_s[op] > 0) order[n++] = op;
    for (int a = 1; a < n; a++) /* insertion sort by total time, descending */
        for (int b = a; b > 0; b--) {
            int x = order[b], y = order[b - 1];
            if (p->fwd_s[x] + p->bwd_s[x] <= p->fwd_s[y] + p->bwd_s[y]) break;
            order[b] = y, order[b - 1] = x;
        }
    cJSON *arr = cJSON_AddArrayToObject(j, "profile");
    fprintf(stderr, "%-16s %8s %10s %10s %7s\n", "op", "calls", "fwd ms", "bwd ms", "share");
    double total = 0;
    for (int k = 0; k < n; k++) {
        int op = order[k];
        double f = p->fwd_s[op] / steps * 1e3, b = p->bwd_s[op] / steps * 1e3;
        total += f + b;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "op", ag_op_table[op].name);
        cJSON_AddNumberToObject(o, "calls", (double)(p->calls[op] / steps));
        mx_json_number(o, "fwd_ms", f, 3);
        mx_json_number(o, "bwd_ms", b, 3);
        cJSON_AddItemToArray(arr, o);
        fprintf(stderr, "%-16s %8lld %10.3f %10.3f %6.1f%%\n", ag_op_table[op].name,
                (long long)(p->calls[op] / steps), f, b, 100 * (f + b) / (step_s * 1e3));
    }
    /* inside the ops: where the products' time goes (on the GPU the gathers
       are the product's own kernels and count as GEMM time) */
    double ms[AG_PROF_PART_COUNT];
    for (int k = 0; k < AG_PROF_PART_COUNT; k++) ms[k] = p->part_s[k] / steps * 1e3;
    double gemm = ms[AG_PROF_PRODUCT] - ms[AG_PROF_GATHER] - ms[AG_PROF_QUANT_ROWS];
    double quant = ms[AG_PROF_QUANT] + ms[AG_PROF_QUANT_ROWS];
    cJSON *parts = cJSON_AddObjectToObject(j, "profile_products");
    mx_json_number(parts, "gemm_ms", gemm, 3);
    mx_json_number(parts, "gather_ms", ms[AG_PROF_GATHER], 3);
    mx_json_number(parts, "quantize_ms", quant, 3);
    double o = optim_s / steps * 1e3;
    mx_json_number(j, "optimizer_ms", o, 3);
    fprintf(stderr, "%-16s %8s %10.3f %10s %6.1f%%\n", "optimizer", "", o, "", 100 * o / (step_s * 1e3));
    fprintf(stderr, "%-16s %8s %10.3f %10s %6.1f%% (mean step, ops and optimizer)\n", "total", "", total + o, "",
            100 * (total + o) / (step_s * 1e3));
    fprintf(stderr, "inside the ops: GEMMs %.3f ms (%.1f%%), gathers %.3f ms (%.1f%%), quantization %.3f ms (%.1f%%)\n",
            gemm, 100 * gemm / (step_s * 1e3), ms[AG_PROF_GATHER], 100 * ms[AG_PROF_GATHER] / (step_s * 1e3), quant,
            100 * quant / (step_s * 1e3));
}

/* Times `steps` training steps on one batch; prints the JSON line. */
static int bench_session_steps(const config *c, const float *images, const int32_t *labels, int batch, int side,
                               int chans, int warmup, int steps, bool profile) {
    session s;
    mx_err err = {0};
    if (session_open(&s, c, &err)) {
        fprintf(stderr, "mxtrain bench: %s\n", err.msg);
        return 1;
    }
    optim_config oc = config_optim(c);
    optimizer o;
    optim_init(&o, &oc, &s.m.params);
    float *pinned = NULL; /* on the GPU the batch comes from pinned memory, as the loader hands it over */
    if (s.ctx.gpu) {
        size_t bytes = sizeof(float) * (size_t)batch * side * side * chans;
        pinned = cu_host_alloc(bytes);
        memcpy(pinned, images, bytes);
        images = pinned;
    }
    double *t = mx_malloc(sizeof(double) * (size_t)steps);
    int64_t flops = 0, passes = 0, bytes_q = 0, held = 0;
    double loss = 0, optim_s = 0, steps_s = 0;
    ag_prof prof;
    for (int i = 0; i < warmup + steps; i++) {
        if (s.has_plan) mm_plan_reset_counters(&s.plan);
        s.ctx.flops = 0;
        if (profile && i == warmup) memset(&prof, 0, sizeof prof), s.ctx.prof = &prof;
        double t0 = timer_now();
        loss = session_forward_backward(&s, images, labels, batch, side, chans, (uint64_t)i);
        double t1 = timer_now();
        if (s.ctx.prof && s.ctx.gpu) cu_sync(), t1 = timer_now();
        optim_step(&o, oc.lr);
        if (s.ctx.gpu) cu_sync(); /* the update is part of the step */
        double dt = timer_now() - t0;
        if (i >= warmup) steps_s += dt, optim_s += timer_now() - t1;
        if (i >= warmup) t[i - warmup] = dt;
        flops = s.ctx.flops;
        if (s.has_plan) passes = s.plan.passes, bytes_q = s.plan.bytes_quantized, held = s.plan.bytes_held;
    }
    double med = timer_median(t, steps); /* sorts: t[0] is the minimum */
    /* device memory in use after the steps: the arenas never shrink, so this is
       the run's peak plus the CUDA context and cuBLAS workspace */
    double gpu_mb = s.ctx.gpu ? (double)cu_mem_used() / 1048576.0 : 0.0;
    /* the same without the context: comparable to PyTorch's peak allocation */
    double run_mb = s.ctx.gpu ? gpu_mb - (double)cu_mem_context() / 1048576.0 : 0.0;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "model", model_arch_name(s.mc.arch));
    cJSON_AddStringToObject(j, "device", s.ctx.gpu ? "cuda" : "cpu");
    mx_json_number(j, "gpu_mem_mb", gpu_mb, 0);
    mx_json_number(j, "gpu_run_mb", run_mb, 0);
    cJSON_AddNumberToObject(j, "params", (double)model_num_params(&s.m));
    cJSON_AddNumberToObject(j, "batch", batch);
    cJSON_AddNumberToObject(j, "img_size", side);
    cJSON_AddNumberToObject(j, "threads", threads_get());
    cJSON_AddStringToObject(j, "format", quant_format_get(c->v.quant.format)->name);
    cJSON_AddStringToObject(j, "tiling", s.has_plan ? mm_tiling_name(c->v.quant.tiling) : "-");
    cJSON_AddNumberToObject(j, "steps", steps);
    mx_json_number(j, "median_step_s", med, 5);
    mx_json_number(j, "min_step_s", t[0], 5);
    mx_json_number(j, "img_per_s", batch / med, 1);
    mx_json_number(j, "peak_rss_mb", peak_rss_mb(), 0);
    mx_json_number(j, "gflop_per_step", (double)flops * 1e-9, 2);
    mx_json_number(j, "gflop_per_s", (double)flops * 1e-9 / med, 1);
    cJSON_AddNumberToObject(j, "quant_passes", (double)passes);
    cJSON_AddNumberToObject(j, "quant_bytes", (double)bytes_q);
    cJSON_AddNumberToObject(j, "bytes_held_for_backward", (double)held);
    mx_json_number(j, "step_arena_mb", (double)s.ctx.ar.cap / 1048576.0, 0);
    mx_json_number(j, "scratch_mb", (double)s.ctx.scratch.cap / 1048576.0, 0);
    mx_json_number(j, "grad_pool_mb", (double)ag_grad_pool_bytes(&s.ctx) / 1048576.0, 0);
    mx_json_number(j, "loss", loss, 7);
    if (s.ctx.prof) bench_profile_report(j, &prof, optim_s, steps_s / steps, steps);
    s.ctx.prof = NULL;
    mx_json_print(j);
    fflush(stdout);
    free(t);
    if (pinned) cu_host_free(pinned);
    optim_free(&o);
    session_close(&s);
    return 0;
}

static const char step_usage[] =
    "usage: mxtrain bench step [--model resnet18|resnet|deit_tiny|vit] [--stem cifar|imagenet] [--img-size 32]\n"
    "                          [--patch 4] [--batch 64] [--classes 10] [--format F] [--tiling 1d|1d_requant|2d]\n"
    "                          [--steps 10] [--warmup 2] [--device cpu|cuda] [--profile] [--set section.key=value ...]\n"
    "       mxtrain bench CONFIG [--steps 10] [--warmup 2] [--device cpu|cuda] [--profile] [--set ...]\n"
    "\nTimes training steps (forward, backward, AdamW) on synthetic data (CONFIG: the first batch of its\n"
    "training data) after a warm-up, and prints one JSON line: median step seconds, images/s, peak RSS MB,\n"
    "GEMM GFLOP per step and achieved GFLOP/s, quantization passes and bytes per step, bytes held for\n"
    "backward. Threads: the global --threads. --profile adds each op's forward and backward milliseconds\n"
    "per step (a table on stderr, \"profile\" in the JSON; on the GPU every op is synchronized).\n";

int bench_step(int argc, char **argv) {
    config *c = mx_malloc(sizeof *c);
    config_init(c);
    mx_err err = {0};
    int64_t steps = 10, warmup = 2;
    bool profile = false;
    const char *sets[64];
    int n_sets = 0;
    /* bench defaults: cifar-style ResNet-18, batch 64, fp32, constant lr */
    const char *defaults[] = {"model.arch=resnet18", "model.stem=cifar", "model.img_size=32", "data.batch_size=64",
                              "optim.schedule=constant", "quant.tiling=2d"};
    for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++) config_set(c, defaults[i], &err);
    static const struct {
        const char *opt, *key;
    } map[] = {{"--model", "model.arch"},  {"--stem", "model.stem"},   {"--img-size", "model.img_size"},
               {"--patch", "model.patch_size"}, {"--batch", "data.batch_size"}, {"--classes", "model.num_classes"},
               {"--format", "quant.format"}, {"--tiling", "quant.tiling"}, {"--device", "train.device"}};
    int rc = 0;
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(step_usage, stdout);
            free(c);
            return 0;
        }
        const char *v;
        int r = 0;
        bool taken = false;
        for (size_t k = 0; k < sizeof map / sizeof *map && !taken; k++) {
            r = cli_take_value(argc, argv, &i, map[k].opt, &v);
            if (r < 0) goto usage;
            if (r == 1) {
                char buf[300];
                snprintf(buf, sizeof buf, "%s=%s", map[k].key, v);
                if (config_set(c, buf, &err)) {
                    rc = cli_usage_error("bench step", "%s: %s", map[k].opt, err.msg);
                    free(c);
                    return rc;
                }
                taken = true;
            }
        }
        if (taken) continue;
        if (!strcmp(argv[i], "--profile")) {
            profile = true;
        } else if ((r = cli_take_value(argc, argv, &i, "--steps", &v)) != 0) {
            if (r < 0 || !cli_parse_i64(v, 1, 100000, &steps)) goto usage;
        } else if ((r = cli_take_value(argc, argv, &i, "--warmup", &v)) != 0) {
            if (r < 0 || !cli_parse_i64(v, 0, 100000, &warmup)) goto usage;
        } else if ((r = cli_take_value(argc, argv, &i, "--set", &v)) != 0) {
            if (r < 0 || n_sets == 64) goto usage;
            sets[n_sets++] = v;
        } else {
            rc = cli_usage_error("bench step", "unknown argument '%s'", argv[i]);
            free(c);
            return rc;
        }
    }
    for (int k = 0; k < n_sets; k++)
        if (config_set(c, sets[k], &err)) {
            fprintf(stderr, "mxtrain bench step: %s\n", err.msg);
            free(c);
            return 1;
        }
    /* synthetic batch: normal pixels, labels cycling over the classes */
    int batch = c->v.data.batch_size, side = c->v.model.img_size, chans = c->v.model.in_chans;
    size_t n = (size_t)batch * side * side * chans;
    float *x = mx_aligned_alloc(sizeof(float) * n);
    int32_t *y = mx_malloc(sizeof(int32_t) * (size_t)batch);
    rng r;
    rng_init(&r, 1, 0);
    for (size_t i = 0; i < n; i++) x[i] = rng_normal(&r);
    for (int i = 0; i < batch; i++) y[i] = i % c->v.model.num_classes;
    rc = bench_session_steps(c, x, y, batch, side, chans, (int)warmup, (int)steps, profile);
    free(x);
    free(y);
    free(c);
    return rc;
usage:
    free(c);
    return cli_usage_error("bench step", "bad or missing option value");
}

typedef struct bench_cfg_args {
    const char *steps, *warmup, *batches;
    bool profile;
} bench_cfg_args;

static int bench_cfg_extra(int argc, char **argv, int *i, void *user) {
    bench_cfg_args *a = user;
    if (!strcmp(argv[*i], "--profile")) {
        a->profile = true;
        return 1;
    }
    int r = cli_take_value(argc, argv, i, "--steps", &a->steps);
    if (r) return r;
    r = cli_take_value(argc, argv, i, "--batches", &a->batches);
    if (r) return r;
    return cli_take_value(argc, argv, i, "--warmup", &a->warmup);
}

/* The config's training data and a training loader over it (ds zeroed on failure). */
static int open_train_loader(const config *c, data_config *dc, dataset *ds, loader **l, mx_err *err) {
    memset(ds, 0, sizeof *ds);
    *l = NULL;
    *dc = config_data(c);
    if (dataset_open(ds, dc, DATA_SPLIT_TRAIN, err) ||
        loader_create(l, ds, dc, c->v.data.batch_size, true, true, err)) {
        dataset_free(ds);
        return -1;
    }
    if (trainer_check_data(ds, loader_out_size(*l), &c->v.model, err)) { /* the data fits the model */
        loader_free(*l);
        *l = NULL;
        dataset_free(ds);
        return -1;
    }
    return 0;
}

/* bench CONFIG: steps on the first batch of the config's training data. */
int bench_config(int argc, char **argv) {
    config *c = mx_malloc(sizeof *c);
    bench_cfg_args a = {"10", "2", NULL, false};
    int rc = cmd_parse_config("bench", argc, argv, c, bench_cfg_extra, &a);
    int64_t steps, warmup;
    if (rc) goto out;
    if (!cli_parse_i64(a.steps, 1, 100000, &steps) || !cli_parse_i64(a.warmup, 0, 100000, &warmup)) {
        rc = cli_usage_error("bench", "bad --steps/--warmup");
        goto out;
    }
    mx_err err = {0};
    data_config dc;
    dataset ds;
    loader *l;
    if (open_train_loader(c, &dc, &ds, &l, &err)) {
        fprintf(stderr, "mxtrain bench: %s\n", err.msg);
        rc = 1;
        goto out;
    }
    loader_start_epoch(l, 0, 0);
    data_batch b;
    if (loader_next(l, &b, &err) != 1) {
        fprintf(stderr, "mxtrain bench: %s\n", err.msg[0] ? err.msg : "no batch");
        rc = 1;
    } else {
        rc = bench_session_steps(c, b.images, b.labels, b.count, loader_out_size(l), ds.c, (int)warmup, (int)steps,
                                 a.profile);
    }
    loader_free(l);
    dataset_free(&ds);
out:
    free(c);
    return rc;
}

/* bench data CONFIG: loader throughput over --batches training batches (one epoch at most). */
int bench_data(int argc, char **argv) {
    config *c = mx_malloc(sizeof *c);
    bench_cfg_args a = {"10", "2", "200", false};
    int rc = cmd_parse_config("bench data", argc, argv, c, bench_cfg_extra, &a);
    int64_t batches;
    if (rc) goto out;
    if (!cli_parse_i64(a.batches, 1, 1000000, &batches)) {
        rc = cli_usage_error("bench data", "bad --batches");
        goto out;
    }
    mx_err err = {0};
    data_config dc;
    dataset ds;
    loader *l;
    double t_open = timer_now();
    if (open_train_loader(c, &dc, &ds, &l, &err)) {
        fprintf(stderr, "mxtrain bench data: %s\n", err.msg);
        rc = 1;
        goto out;
    }
    t_open = timer_now() - t_open;
    double t0 = timer_now();
    loader_start_epoch(l, 0, 0);
    data_batch b;
    int64_t imgs = 0, nb = 0;
    int r = 0;
    while (nb < batches && (r = loader_next(l, &b, &err)) == 1) imgs += b.count, nb++;
    double dt = timer_now() - t0;
    if (nb < batches && r < 0) {
        fprintf(stderr, "mxtrain bench data: %s\n", err.msg);
        rc = 1;
    } else {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "dataset", data_kind_name(dc.kind));
        cJSON_AddNumberToObject(j, "workers", dc.workers);
        cJSON_AddNumberToObject(j, "batch", c->v.data.batch_size);
        cJSON_AddNumberToObject(j, "img_size", loader_out_size(l));
        cJSON_AddNumberToObject(j, "channels", ds.c);
        cJSON_AddBoolToObject(j, "augment", dc.augment);
        cJSON_AddNumberToObject(j, "batches", (double)nb);
        cJSON_AddNumberToObject(j, "images", (double)imgs);
        mx_json_number(j, "seconds", dt, 3);
        mx_json_number(j, "img_per_s", (double)imgs / dt, 0);
        mx_json_number(j, "open_s", t_open, 2);
        mx_json_print(j);
    }
    loader_free(l);
    dataset_free(&ds);
out:
    free(c);
    return rc;
}

/* bench gemm: the machine's sgemm ceiling through the same OpenBLAS call the mm path uses. */
int bench_gemm(int argc, char **argv) {
    int64_t n = 2048, reps = 5;
    const char *dev_s = "cpu";
    for (int i = 0; i < argc; i++) {
        const char *v;
        int r;
        if (cli_is_help(argv[i])) {
            printf("usage: mxtrain bench gemm [--n 2048] [--reps 5] [--device cpu|cuda]\n\nsgemm GFLOP/s of an n x n "
                   "x n product (median), on the global --threads; with --device cuda the GPU's cuBLASLt bf16\n"
                   "(tensor cores, FP32 accumulation) and fp32 products, timed with CUDA events.\n");
            return 0;
        }
        if ((r = cli_take_value(argc, argv, &i, "--n", &v)) != 0) {
            if (r < 0 || !cli_parse_i64(v, 16, 16384, &n)) return cli_usage_error("bench gemm", "bad --n");
        } else if ((r = cli_take_value(argc, argv, &i, "--reps", &v)) != 0) {
            if (r < 0 || !cli_parse_i64(v, 1, 1000, &reps)) return cli_usage_error("bench gemm", "bad --reps");
        } else if ((r = cli_take_value(argc, argv, &i, "--device", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            dev_s = v;
        } else {
            return cli_usage_error("bench gemm", "unknown argument '%s'", argv[i]);
        }
    }
    cli_device dev;
    mx_err err;
    int dr = cli_device_open(dev_s, &dev, &err);
    if (dr == -1) return cli_usage_error("bench gemm", "%s", err.msg);
    if (dr == -2) {
        fprintf(stderr, "mxtrain bench gemm: %s\n", err.msg);
        return 1;
    }
    if (dev == CLI_DEVICE_CUDA) return cu_gemm_bench(n, (int)reps);
    size_t nn = (size_t)(n * n);
    float *a = mx_aligned_alloc(sizeof(float) * nn), *b = mx_aligned_alloc(sizeof(float) * nn),
          *c = mx_aligned_alloc(sizeof(float) * nn);
    for (size_t i = 0; i < nn; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    double *t = mx_malloc(sizeof(double) * (size_t)(reps + 1));
    for (int64_t r = 0; r <= reps; r++) { /* the first is a warm-up */
        double t0 = timer_now();
        gemm_f32(false, false, (int)n, (int)n, (int)n, 1.0f, a, (int)n, b, (int)n, 0.0f, c, (int)n);
        if (r > 0) t[r - 1] = timer_now() - t0;
    }
    double med = timer_median(t, (int)reps);
    double gf = 2.0 * (double)n * n * n / med * 1e-9;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "bench", "gemm");
    cJSON_AddNumberToObject(j, "n", (double)n);
    cJSON_AddNumberToObject(j, "threads", threads_get());
    mx_json_number(j, "median_s", med, 5);
    mx_json_number(j, "gflop_per_s", gf, 1);
    mx_json_print(j);
    free(a), free(b), free(c), free(t);
    return 0;
}
