/* train/: config errors and overrides, checkpoints (atomic writes, PyTorch
 * names for --init-from), resume equivalence, the non-finite guard, and short
 * end-to-end runs of `mxtrain train`, `eval` and `compare`. */
#include <hdf5.h>
#include <math.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/checkpoint.h"
#include "train/config.h"
#include "train/runlog.h"
#include "train/trainer.h"
#include "core/npy.h"
#include "core/safetensors.h"

#include <cJSON.h>
#include "cuda/cuda.h"
#include "test_util.h"

static const char *write_cfg(const char *name, const char *text) {
    const char *p = test_path(name);
    test_write_file(p, text, strlen(text));
    return p;
}

static void expect_cfg_error(const char *text, const char *needle) {
    config *c = malloc(sizeof *c);
    config_init(c);
    mx_err err = {0};
    const char *p = write_cfg("bad.ini", text);
    ck_assert_int_eq(config_load_file(c, p, &err), -1);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error '%s' lacks '%s'", err.msg, needle);
    ck_assert_msg(strstr(err.msg, "bad.ini:") != NULL, "error '%s' does not name the file", err.msg);
    free(c);
}

START_TEST(test_config_errors) {
    expect_cfg_error("[model]\narch = resnet18\n\n[modle]\nx = 1\n", "bad.ini:4: unknown section [modle]");
    /* a header behind a vertical tab (inih skips it as white space; found by fuzz_config) */
    expect_cfg_error("[model]\n\v[mode\xf6l]\narch = rs\n", "bad.ini:2: unknown section [mode\xf6l]");
    expect_cfg_error("[model]\narch = resnet18\nnum_clases = 10\n", "bad.ini:3: unknown key 'num_clases' in [model] (valid: arch, num_classes");
    expect_cfg_error("[data]\nbatch_size = many\n", "bad.ini:2: [data] batch_size: 'many' is not an integer");
    expect_cfg_error("[data]\n\nbatch_size = 0\n", "bad.ini:3: [data] batch_size: 0 is out of range");
    expect_cfg_error("[optim]\nlr = 1e-3x\n", "bad.ini:2: [optim] lr: '1e-3x' is not a number");
    expect_cfg_error("[quant]\nformat = mxfp9\n", "bad.ini:2: [quant] format:");
    expect_cfg_error("[quant]\ntile = 8by8\n", "bad.ini:2: [quant] tile:");
    expect_cfg_error("[quant]\nkeep = conv1\n", "bad.ini:2: [quant] keep:");
    expect_cfg_error("[data]\nshuffle = perhaps\n", "is not true/false");
    expect_cfg_error("[train]\nepochs = 2\nepochs = 3\n", "bad.ini:3: [train] epochs is set twice (first on line 2)");
    expect_cfg_error("[train]\nthis line has no equals sign\n", "bad.ini:2: syntax error");
    expect_cfg_error("epochs = 3\n", "bad.ini:1: key 'epochs' outside any section");
    config *c = malloc(sizeof *c);
    config_init(c);
    mx_err err = {0};
    ck_assert_int_eq(config_load_file(c, test_path("missing.ini"), &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "missing.ini: cannot open"));
    /* not regular files: a folder (read as an empty config before), /dev/zero (never ended) */
    ck_assert_int_eq(config_load_file(c, test_tmpdir(), &err), -1);
    ck_assert_msg(strstr(err.msg, "not a regular file") != NULL, "%s", err.msg);
    ck_assert_int_eq(config_load_file(c, "/dev/zero", &err), -1);
    ck_assert_msg(strstr(err.msg, "/dev/zero: not a regular file") != NULL, "%s", err.msg);
    /* an empty run directory would write into / */
    ck_assert_int_eq(config_set(c, "log.dir=", &err), -1);
    ck_assert_msg(strstr(err.msg, "[log] dir: must not be empty") != NULL, "%s", err.msg);
    free(c);
    /* a line longer than the parser's buffer is an error, never split: the tail
     * of this comment would otherwise set a key */
    char longline[600];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "[train]\n; ", 10);
    snprintf(longline + 560, 40, "max_steps = 3\n");
    expect_cfg_error(longline, "bad.ini:2: line longer than");
    /* a NUL byte */
    static const char nul[] = "[train]\nepochs = 2\0junk\n";
    const char *np = test_path("nul.ini");
    test_write_file(np, nul, sizeof nul - 1);
    c = malloc(sizeof *c);
    config_init(c);
    ck_assert_int_eq(config_load_file(c, np, &err), -1);
    ck_assert_msg(strstr(err.msg, "nul.ini:2: NUL byte") != NULL, "%s", err.msg);
    free(c);
}
END_TEST

START_TEST(test_config_set_and_roundtrip) {
    config *c = malloc(sizeof *c), *d = malloc(sizeof *d);
    config_init(c);
    mx_err err = {0};
    const char *p = write_cfg("ok.ini", "; comment\n[model]\narch = vit\ndim = 64 ; inline comment\n[quant]\nformat = mxsf\n"
                                        "keep = conv1:bf16, head:bf16\n");
    ck_assert_msg(config_load_file(c, p, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c->v.model.arch, MODEL_ARCH_VIT);
    ck_assert_int_eq(c->v.model.dim, 64);
    ck_assert_int_eq(config_set(c, "quant.tiling=1d", &err), 0);
    ck_assert_int_eq(c->v.quant.tiling, MM_TILING_1D);
    ck_assert_int_eq(config_set(c, "optim.lr=0.5", &err), 0);
    ck_assert_double_eq(c->v.optim.lr, 0.5);
    ck_assert_int_eq(config_set(c, "optim.lrr=0.5", &err), -1);
    ck_assert_msg(strstr(err.msg, "--set optim.lrr=0.5: unknown key 'lrr' in [optim]") != NULL, "%s", err.msg);
    ck_assert_int_eq(config_set(c, "quant.format=fp7", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "--set quant.format=fp7"));
    ck_assert_int_eq(config_set(c, "train.epochs=-1", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "out of range"));
    ck_assert_int_eq(config_set(c, "noequals", &err), -1);
    ck_assert_int_eq(config_set(c, "bogus.key=1", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "unknown section [bogus]"));
    /* the policy the config describes */
    mm_policy pol;
    ck_assert(config_policy(c, &pol));
    ck_assert_int_eq(pol.tiling, MM_TILING_1D);
    ck_assert_int_eq(mm_policy_format(&pol, "head", MM_ROLE_FWD_ACT), QUANT_FORMAT_BF16);
    ck_assert_int_eq(mm_policy_format(&pol, "blocks.0.attn.qkv", MM_ROLE_FWD_ACT), QUANT_FORMAT_MXSF);
    ck_assert_int_eq(config_set(c, "quant.bwd_grad=mxfp8_e5m2", &err), 0);
    ck_assert(config_policy(c, &pol));
    ck_assert_int_eq(mm_policy_format(&pol, "x", MM_ROLE_BWD_GRAD_DW), QUANT_FORMAT_MXFP8_E5M2);
    ck_assert_int_eq(mm_policy_format(&pol, "x", MM_ROLE_BWD_GRAD_DX), QUANT_FORMAT_MXFP8_E5M2);
    ck_assert_int_eq(mm_policy_format(&pol, "x", MM_ROLE_FWD_WEIGHT), QUANT_FORMAT_MXSF);
    /* the resolved config reads back to the same values */
    const char *rp = test_path("resolved.ini");
    FILE *f = fopen(rp, "w");
    config_write(c, f);
    fclose(f);
    config_init(d);
    ck_assert_msg(config_load_file(d, rp, &err) == 0, "%s", err.msg);
    for (int k = 0; k < config_key_count(); k++) ck_assert_str_eq(c->text[k], d->text[k]);
    free(c);
    free(d);
}
END_TEST

/* Every key is documented in docs/config.md. */
START_TEST(test_config_documented) {
    char p[1024];
    snprintf(p, sizeof p, "%s/docs/config.md", getenv("MX_SOURCE_DIR") ? getenv("MX_SOURCE_DIR") : "../..");
    FILE *f = fopen(p, "r");
    ck_assert_msg(f != NULL, "%s missing", p);
    static char doc[1 << 17];
    size_t n = fread(doc, 1, sizeof doc - 1, f);
    doc[n] = 0;
    fclose(f);
    for (int k = 0; k < config_key_count(); k++) {
        char name[128];
        const char *section;
        const key_def *d = config_key(k, &section);
        snprintf(name, sizeof name, "`%s.%s`", section, d->name);
        ck_assert_msg(strstr(doc, name) != NULL, "docs/config.md does not document %s", name);
    }
}
END_TEST

/* Every shipped config parses and builds its model, policy and data settings. */
START_TEST(test_shipped_configs) {
    const char *names[] = {"quickstart", "fmnist_resnet18", "cifar10_resnet18", "cifar10_deit_tiny",
                           "imagenet_resnet18", "imagenet_deit_tiny"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char p[1024];
        snprintf(p, sizeof p, "%s/configs/%s.ini", getenv("MX_SOURCE_DIR"), names[i]);
        config *c = malloc(sizeof *c);
        config_init(c);
        mx_err err = {0};
        ck_assert_msg(config_load_file(c, p, &err) == 0, "%s", err.msg);
        model_config mc;
        model m;
        data_config dc;
        optim_config oc;
        mm_policy pol;
        mc = config_model(c);
        ck_assert_msg(model_build(&m, &mc, &err) == 0, "%s: %s", names[i], err.msg);
        dc = config_data(c);
        oc = config_optim(c);
        ck_assert_msg(dc.batch_size >= 1 && dc.channels == mc.in_chans && oc.lr > 0, "%s: data/optim settings", names[i]);
        ck_assert(config_policy(c, &pol));
        ck_assert_int_eq(pol.tiling, MM_TILING_2D);
            model_free(&m);
        free(c);
    }
}
END_TEST

/* A small synthetic run; returns the config (caller frees). */
static config *small_config(const char *dir, const char *extra_sets) {
    config *c = malloc(sizeof *c);
    config_init(c);
    mx_err err = {0};
    const char *sets[] = {"model.arch=resnet", "model.blocks=1,1,1,1", "model.widths=8,8,16,16", "model.img_size=12",
                          "data.dataset=synthetic", "data.synthetic_train=64", "data.synthetic_eval=32",
                          "data.batch_size=8", "train.epochs=2", "optim.lr=0.01", "optim.warmup_steps=3",
                          "log.print_every=100", "log.progress=false", "quant.format=mxfp8_e4m3",
                          "log.stats_every=4"};
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) ck_assert_msg(config_set(c, sets[i], &err) == 0, "%s", err.msg);
    char s[1200];
    snprintf(s, sizeof s, "log.dir=%s", dir);
    ck_assert_int_eq(config_set(c, s, &err), 0);
    if (extra_sets) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", extra_sets);
        for (char *save = NULL, *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save))
            ck_assert_msg(config_set(c, t, &err) == 0, "%s", err.msg);
    }
    return c;
}

static void load_params(const char *ckpt, config *c, float **out, size_t *n) {
    session s;
    mx_err err = {0};
    ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
    ck_assert_msg(ckpt_load_weights(ckpt, &s.m, &err) == 0, "%s", err.msg);
    *n = s.m.params.n_trainable;
    *out = malloc(sizeof(float) * *n);
    memcpy(*out, s.m.params.data, sizeof(float) * *n);
    session_close(&s);
}

START_TEST(test_resume_equals_uninterrupted) {
    const char *da = test_path("run_a"), *db = test_path("run_b");
    config *a = small_config(da, "quant.grad_round=stochastic");
    train_opts o = {0};
    train_result ra, rb;
    mx_err err = {0};
    ck_assert_msg(trainer_run(a, &o, &ra, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(ra.steps, 16);
    /* the same run stopped after 5 steps (mid-epoch) ... */
    config *b = small_config(db, "quant.grad_round=stochastic train.max_steps=5 optim.schedule=constant");
    config *a2 = small_config(test_path("run_a2"), "quant.grad_round=stochastic optim.schedule=constant");
    ck_assert_msg(trainer_run(b, &o, &rb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rb.steps, 5);
    /* ... and resumed to the end */
    config *b2 = small_config(db, "quant.grad_round=stochastic optim.schedule=constant");
    train_opts res = {db, NULL};
    ck_assert_msg(trainer_run(b2, &res, &rb, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(rb.steps, 16);
    ck_assert_msg(trainer_run(a2, &o, &ra, &err) == 0, "%s", err.msg);
    /* losses of every step agree, and the final weights are bitwise equal */
    runlog la, lb;
    runlog_load(&la, test_path("run_a2"));
    runlog_load(&lb, db);
    ck_assert_int_eq(la.n_m, lb.n_m - 1); /* b also logged the evaluation after step 5 */
    int64_t j = 0;
    for (int64_t i = 0; i < lb.n_m; i++) {
        if (lb.m[i].is_eval && lb.m[i].step == 5) continue;
        ck_assert_int_eq(la.m[j].step, lb.m[i].step);
        if (!la.m[j].is_eval) ck_assert_msg(la.m[j].loss == lb.m[i].loss, "step %lld: loss %.9g vs resumed %.9g",
                                            (long long)la.m[j].step, la.m[j].loss, lb.m[i].loss);
        j++;
    }
    ck_assert_int_gt(la.n_s, 0);
    ck_assert_int_eq(la.n_s, lb.n_s);
    runlog_close(&la);
    runlog_close(&lb);
    /* summary.csv: a row per evaluation (2 epochs; the resumed run also evaluated after step 5) */
    for (int k = 0; k < 2; k++) {
        char sp[1200], row[512];
        snprintf(sp, sizeof sp, "%s/summary.csv", k ? db : test_path("run_a2"));
        FILE *sf = fopen(sp, "r");
        ck_assert_ptr_nonnull(sf);
        ck_assert_ptr_nonnull(fgets(row, sizeof row, sf));
        ck_assert_str_eq(row, "epoch,step,train_loss,eval_loss,eval_top1,eval_top5,lr,img_per_s,wall_s\n");
        int rows = 0, ep = 0;
        long long st = 0;
        double tl, el, t1, t5, lr, ips, wall;
        while (fgets(row, sizeof row, sf)) {
            ck_assert_int_eq(sscanf(row, "%d,%lld,%lf,%lf,%lf,%lf,%lf,%lf,%lf", &ep, &st, &tl, &el, &t1, &t5, &lr, &ips, &wall), 9);
            ck_assert_msg(t5 >= t1 && t1 >= 0 && t5 <= 1 && tl > 0 && wall >= 0, "%s", row);
            rows++;
        }
        fclose(sf);
        ck_assert_int_eq(rows, k ? 3 : 2);
        ck_assert_int_eq(ep, 2);
        ck_assert_int_eq(st, 16);
    }
    char pa[1200], pb[1200];
    snprintf(pa, sizeof pa, "%s/ckpt/last.h5", test_path("run_a2"));
    snprintf(pb, sizeof pb, "%s/ckpt/last.h5", db);
    float *wa, *wb;
    size_t na, nb;
    load_params(pa, a2, &wa, &na);
    load_params(pb, b2, &wb, &nb);
    ck_assert_int_eq(na, nb);
    ck_assert_msg(memcmp(wa, wb, sizeof(float) * na) == 0, "resumed weights differ");
    free(wa), free(wb), free(a), free(b), free(a2), free(b2);
}
END_TEST

START_TEST(test_checkpoint_atomic_and_init_from) {
    config *c = small_config(test_path("ck"), NULL);
    session s;
    mx_err err = {0};
    ck_assert_int_eq(session_open(&s, c, &err), 0);
    const char *path = test_path("ck.h5");
    ckpt_meta meta = {7, 1, 0, 0.5};
    optimizer o;
    optim_config oc = optim_config_default(OPTIM_KIND_ADAMW);
    optim_init(&o, &oc, &s.m.params);
    ck_assert_msg(ckpt_save(path, &s.m, &o, &meta, "text", &err) == 0, "%s", err.msg);
    float keep = s.m.params.data[0];
    /* a second save interrupted before the rename (its temporary torn) leaves the first intact */
    s.m.params.data[0] = 123.0f;
    meta.step = 8;
    ck_assert_int_eq(ckpt_write_tmp(path, &s.m, &o, &meta, "text", &err), 0);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ck_assert_int_eq(truncate(tmp, 1000), 0);
    ckpt_meta got;
    ck_assert_msg(ckpt_load(path, &s.m, &o, &got, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(got.step, 7);
    ck_assert_float_eq(s.m.params.data[0], keep);
    /* the torn temporary is not a checkpoint */
    ck_assert_int_eq(ckpt_load(tmp, &s.m, &o, &got, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "ck.h5.tmp"));

    /* --init-from: root-level datasets under PyTorch names, written with the HDF5 API */
    const char *pt = test_path("torch.h5");
    hid_t f = H5Fcreate(pt, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    param_store *ps = &s.m.params;
    for (int i = 0; i < ps->count; i++) {
        const param_entry *e = &ps->entries[i];
        if (e->is_integer) continue; /* num_batches_tracked may be absent */
        int64_t shape[8];
        int rank = param_torch_shape(e, shape);
        hsize_t dims[8];
        for (int k = 0; k < rank; k++) dims[k] = (hsize_t)shape[k];
        float *v = malloc(sizeof(float) * (size_t)e->numel);
        for (int64_t k = 0; k < e->numel; k++) v[k] = (float)(i + 1) + 0.001f * (float)k;
        hid_t sp = H5Screate_simple(rank, dims, NULL);
        hid_t d = H5Dcreate2(f, e->name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        H5Dclose(d), H5Sclose(sp);
        free(v);
    }
    H5Fclose(f);
    ck_assert_msg(ckpt_load_weights(pt, &s.m, &err) == 0, "%s", err.msg);
    int ic = param_find(ps, "conv1.weight");
    ck_assert_int_ge(ic, 0);
    /* conv1.weight is OIHW in the file: element [0, 0, 0, 1] is k = 1, stored OHWI at index I (= 3 channels) */
    ck_assert_float_eq_tol(param_data(ps, ic)[3], (float)(ic + 1) + 0.001f, 1e-6f);
    /* a wrong shape and an unknown name are named */
    f = H5Fopen(pt, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t d1[1] = {3};
    hid_t sp = H5Screate_simple(1, d1, NULL);
    hid_t d = H5Dcreate2(f, "extra.weight", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d), H5Sclose(sp);
    H5Fclose(f);
    ck_assert_int_eq(ckpt_load_weights(pt, &s.m, &err), -1);
    ck_assert_msg(strstr(err.msg, "'extra.weight' is not a parameter") != NULL, "%s", err.msg);
    f = H5Fopen(pt, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "extra.weight", H5P_DEFAULT);
    H5Ldelete(f, "fc.bias", H5P_DEFAULT);
    d1[0] = 11;
    sp = H5Screate_simple(1, d1, NULL);
    d = H5Dcreate2(f, "fc.bias", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d), H5Sclose(sp);
    H5Fclose(f);
    ck_assert_int_eq(ckpt_load_weights(pt, &s.m, &err), -1);
    ck_assert_msg(strstr(err.msg, "'fc.bias' has shape [11], the model expects [10]") != NULL, "%s", err.msg);
    test_write_file(test_path("junk.h5"), "not hdf5 at all", 15);
    ck_assert_int_eq(ckpt_load_weights(test_path("junk.h5"), &s.m, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "junk.h5: not a readable HDF5 file"));
    optim_free(&o);
    session_close(&s);
    free(c);
}
END_TEST

/* Each split's data against the model before any step (issue #20): channels,
 * labels beyond model.num_classes (an eval label of 9 with 4 classes used to
 * abort after two steps), a ViT's fixed side. */
START_TEST(test_data_checked_against_model) {
    model_config mc = model_config_default(MODEL_ARCH_RESNET);
    mc.num_classes = 4;
    mc.in_chans = 1;
    dataset ds;
    memset(&ds, 0, sizeof ds);
    snprintf(ds.source, sizeof ds.source, "val.h5");
    ds.c = 1;
    ds.num_classes = 4;
    mx_err err = {0};
    ck_assert_int_eq(trainer_check_data(&ds, 28, &mc, &err), 0);
    ds.num_classes = 10;
    ck_assert_int_eq(trainer_check_data(&ds, 28, &mc, &err), -1);
    ck_assert_msg(strstr(err.msg, "val.h5: labels up to 9 (10 classes) but model.num_classes = 4"), "%s", err.msg);
    ds.num_classes = 4;
    ds.c = 3;
    ck_assert_int_eq(trainer_check_data(&ds, 28, &mc, &err), -1);
    ck_assert_msg(strstr(err.msg, "val.h5: images have 3 channels but model.in_chans = 1"), "%s", err.msg);
    ds.c = 1;
    mc.arch = MODEL_ARCH_VIT;
    mc.img_size = 32;
    ck_assert_int_eq(trainer_check_data(&ds, 28, &mc, &err), -1);
    ck_assert_msg(strstr(err.msg, "images come out 28x28 but the ViT is built for model.img_size = 32"), "%s", err.msg);
    ck_assert_int_eq(trainer_check_data(&ds, 32, &mc, &err), 0);
}
END_TEST

/* Tampering helpers: a scalar attribute replaced, one value of a dataset set. */
static void set_attr(const char *path, const char *group, const char *name, hid_t type, const void *v) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t g = group ? H5Gopen2(f, group, H5P_DEFAULT) : f;
    H5Adelete(g, name);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(g, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type == H5T_IEEE_F64LE ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64, v);
    H5Aclose(a), H5Sclose(sp);
    if (group) H5Gclose(g);
    H5Fclose(f);
}

static void poke_dataset(const char *path, const char *name, float v) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    float *buf = malloc(sizeof(float) * (size_t)n);
    H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    buf[n / 2] = v;
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    free(buf);
    H5Sclose(sp), H5Dclose(d), H5Fclose(f);
}

/* The optimizer's state is saved per parameter under PyTorch names and
 * layouts (optim/state/<name>/exp_avg, exp_avg_sq; SGD: momentum_buffer),
 * so a PyTorch user can rebuild it; the flat layout of older checkpoints
 * still loads. */
START_TEST(test_optimizer_state_pytorch_names) {
    for (int kind = 0; kind < 2; kind++) {
        config *c = small_config(test_path("ost"), kind ? "optim.name=sgd optim.momentum=0.9" : NULL);
        session s;
        mx_err err = {0};
        ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
        optim_config oc = config_optim(c);
        optimizer o;
        optim_init(&o, &oc, &s.m.params);
        for (size_t i = 0; i < o.n; i++) o.m[i] = 0.001f * (float)(i % 97), o.v[i] = kind ? 0.0f : 0.002f * (float)(i % 89);
        param_store *ps = &s.m.params;
        for (int i = 0; i < ps->count; i++) /* padding between entries is never saved: keep it zero */
            if (ps->entries[i].kind != PARAM_KIND_BUFFER) {
                const param_entry *e = &ps->entries[i];
                size_t end = e->offset + (size_t)e->numel, next = e->offset + (((size_t)e->numel + 15) & ~(size_t)15);
                for (size_t k = end; k < next && k < o.n; k++) o.m[k] = o.v[k] = 0.0f;
            }
        ckpt_meta meta = {3, 0, 0, -1}, got;
        const char *path = test_path("ost.h5");
        ck_assert_msg(ckpt_save(path, &s.m, &o, &meta, "text", &err) == 0, "%s", err.msg);
        /* conv1.weight's first moment, OIHW as PyTorch holds it */
        int ci = param_find(ps, "conv1.weight");
        const param_entry *e = &ps->entries[ci];
        float *want = malloc(sizeof(float) * (size_t)e->numel), *have = malloc(sizeof(float) * (size_t)e->numel);
        param_to_torch(e, o.m + e->offset, want);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        hid_t d = H5Dopen2(f, kind ? "optim/state/conv1.weight/momentum_buffer" : "optim/state/conv1.weight/exp_avg",
                           H5P_DEFAULT);
        ck_assert_int_ge(d, 0);
        hid_t sp = H5Dget_space(d);
        hsize_t dims[4];
        ck_assert_int_eq(H5Sget_simple_extent_dims(sp, dims, NULL), 4);
        ck_assert(dims[0] == 8 && dims[1] == 3 && dims[2] == 3 && dims[3] == 3);
        H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, have);
        ck_assert(memcmp(have, want, sizeof(float) * (size_t)e->numel) == 0);
        H5Sclose(sp), H5Dclose(d), H5Fclose(f);
        free(want), free(have);
        /* round trip */
        float *m0 = malloc(sizeof(float) * o.n), *v0 = malloc(sizeof(float) * o.n);
        memcpy(m0, o.m, sizeof(float) * o.n), memcpy(v0, o.v, sizeof(float) * o.n);
        memset(o.m, 0, sizeof(float) * o.n), memset(o.v, 0, sizeof(float) * o.n);
        ck_assert_msg(ckpt_load(path, &s.m, &o, &got, &err) == 0, "%s", err.msg);
        ck_assert(memcmp(o.m, m0, sizeof(float) * o.n) == 0 && memcmp(o.v, v0, sizeof(float) * o.n) == 0);
        if (!kind) { /* the flat layout: optim/exp_avg, optim/exp_avg_sq over the whole buffer */
            f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
            hid_t go = H5Gopen2(f, "optim", H5P_DEFAULT);
            H5Ldelete(go, "state", H5P_DEFAULT);
            hsize_t n = o.n;
            const float *src[2] = {m0, v0};
            const char *names[2] = {"exp_avg", "exp_avg_sq"};
            for (int k = 0; k < 2; k++) {
                hid_t fs = H5Screate_simple(1, &n, NULL);
                hid_t fd = H5Dcreate2(go, names[k], H5T_IEEE_F32LE, fs, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
                H5Dwrite(fd, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, src[k]);
                H5Dclose(fd), H5Sclose(fs);
            }
            H5Gclose(go), H5Fclose(f);
            memset(o.m, 0, sizeof(float) * o.n), memset(o.v, 0, sizeof(float) * o.n);
            ck_assert_msg(ckpt_load(path, &s.m, &o, &got, &err) == 0, "%s", err.msg);
            ck_assert(memcmp(o.m, m0, sizeof(float) * o.n) == 0 && memcmp(o.v, v0, sizeof(float) * o.n) == 0);
        }
        free(m0), free(v0);
        optim_free(&o);
        session_close(&s);
        free(c);
    }
}
END_TEST

/* A checkpoint is validated on load: attributes in range and of their type,
 * no non-finite weight, buffer or optimizer moment. */
START_TEST(test_checkpoint_validated_on_load) {
    config *c = small_config(test_path("ckv"), NULL);
    session s;
    mx_err err = {0};
    ck_assert_int_eq(session_open(&s, c, &err), 0);
    optimizer o;
    optim_config oc = optim_config_default(OPTIM_KIND_ADAMW);
    optim_init(&o, &oc, &s.m.params);
    ckpt_meta meta = {7, 1, 0, 0.5}, got;
    const char *path = test_path("ckv.h5");
    const int64_t huge = (int64_t)1 << 62, neg = -5;
    const double half = 0.5;
    for (int t = 0; t < 8; t++) {
        o.step = 7;
        ck_assert_msg(ckpt_save(path, &s.m, &o, &meta, "text", &err) == 0, "%s", err.msg);
        const char *want = NULL;
        switch (t) {
        case 0: set_attr(path, NULL, "epoch", H5T_STD_I64LE, &huge), want = "attributes out of range"; break;
        case 1: set_attr(path, NULL, "step", H5T_STD_I64LE, &neg), want = "attributes out of range"; break;
        case 2: set_attr(path, NULL, "step", H5T_IEEE_F64LE, &half), want = "not scalars of the right type"; break;
        case 3: set_attr(path, "optim", "optim_kind", H5T_STD_I64LE, &huge), want = "is not an optimizer"; break;
        case 4: set_attr(path, "optim", "optim_step", H5T_STD_I64LE, &huge), want = "attributes out of range"; break;
        case 5: poke_dataset(path, "model/fc.weight", NAN), want = "'fc.weight' holds 1 non-finite"; break;
        case 6: poke_dataset(path, "model/bn1.running_var", INFINITY), want = "'bn1.running_var' holds 1 non-finite"; break;
        default:
            poke_dataset(path, "optim/state/fc.weight/exp_avg_sq", NAN);
            want = "'exp_avg_sq' holds 1 non-finite values (NaN or Inf) of 160 (optim/state/fc.weight/exp_avg_sq)";
            break;
        }
        ck_assert_int_eq(ckpt_load(path, &s.m, &o, &got, &err), -1);
        ck_assert_msg(strstr(err.msg, want) && strstr(err.msg, "ckv.h5"), "case %d: '%s' lacks '%s'", t, err.msg,
                      want);
    }
    /* weights-only loading (eval, --init-from) refuses non-finite weights too */
    ck_assert_int_eq(ckpt_load_weights(path, &s.m, &err), 0); /* the last case poisoned only the optimizer */
    poke_dataset(path, "model/conv1.weight", NAN);
    ck_assert_int_eq(ckpt_load_weights(path, &s.m, &err), -1);
    ck_assert_msg(strstr(err.msg, "'conv1.weight' holds 1 non-finite") != NULL, "%s", err.msg);
    optim_free(&o);
    session_close(&s);
    free(c);
}
END_TEST

START_TEST(test_nonfinite_guard) {
    const char *dir = test_path("nan");
    train_opts o = {0};
    train_result r;
    mx_err err = {0};
    /* a good run leaves a checkpoint at step 3 */
    config *c = small_config(dir, "train.max_steps=3 train.ckpt_every=1");
    ck_assert_msg(trainer_run(c, &o, &r, &err) == 0, "%s", err.msg);
    /* an infinite weight is refused when loaded, naming the entry ... */
    session s;
    ck_assert_int_eq(session_open(&s, c, &err), 0);
    int fc = param_find(&s.m.params, "fc.weight");
    const char *bad = test_path("bad_weights.h5");
    ckpt_meta meta = {0, 0, 0, 0};
    ck_assert_int_eq(ckpt_save(bad, &s.m, NULL, &meta, NULL, &err), 0);
    poke_dataset(bad, "model/fc.weight", INFINITY); /* (mxtrain itself never writes one) */
    free(c);
    c = small_config(dir, NULL);
    train_opts init = {NULL, bad};
    ck_assert_int_eq(trainer_run(c, &init, &r, &err), -1);
    ck_assert_msg(strstr(err.msg, "'fc.weight' holds 1 non-finite"), "%s", err.msg);
    /* ... a finite but huge one makes the first loss non-finite: the guard stops the run */
    param_data(&s.m.params, fc)[0] = 3e38f;
    ck_assert_int_eq(ckpt_save(bad, &s.m, NULL, &meta, NULL, &err), 0);
    session_close(&s);
    ck_assert_int_eq(trainer_run(c, &init, &r, &err), -1);
    ck_assert_msg(strstr(err.msg, "step 0: non-finite loss") && strstr(err.msg, "worst layer: "), "%s", err.msg);
    /* the last good checkpoint is intact */
    char last[1200];
    snprintf(last, sizeof last, "%s/ckpt/last.h5", dir);
    ck_assert_int_eq(session_open(&s, c, &err), 0);
    optimizer opt;
    optim_config oc;
    oc = config_optim(c);
    optim_init(&opt, &oc, &s.m.params);
    ck_assert_msg(ckpt_load(last, &s.m, &opt, &meta, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(meta.step, 3);
    for (size_t i = 0; i < s.m.params.n_trainable; i++) ck_assert(isfinite(s.m.params.data[i]));
    optim_free(&opt);
    session_close(&s);
    free(c);
    /* skip: every step is skipped, the run still completes, and a skipped step
     * leaves no trace: the BatchNorm statistics are those of the weights loaded */
    c = small_config(test_path("nan_skip"), "train.on_nonfinite=skip train.max_steps=4");
    ck_assert_msg(trainer_run(c, &init, &r, &err) == 0, "%s", err.msg);
    char skip_last[1200];
    snprintf(skip_last, sizeof skip_last, "%s/ckpt/last.h5", test_path("nan_skip"));
    ck_assert_int_eq(session_open(&s, c, &err), 0);
    ck_assert_msg(ckpt_load_weights(skip_last, &s.m, &err) == 0, "%s", err.msg);
    int rv = param_find(&s.m.params, "bn1.running_var"), nb = param_find(&s.m.params, "bn1.num_batches_tracked");
    ck_assert_float_eq(param_data(&s.m.params, rv)[0], 1.0f);
    ck_assert_float_eq(param_data(&s.m.params, nb)[0], 0.0f);
    /* a state holding NaN or Inf is never written as a checkpoint */
    param_data(&s.m.params, rv)[1] = INFINITY;
    ck_assert_int_eq(ckpt_save(test_path("poisoned.h5"), &s.m, NULL, &meta, NULL, &err), -1);
    ck_assert_msg(strstr(err.msg, "not written: 'bn1.running_var' holds non-finite"), "%s", err.msg);
    session_close(&s);
    free(c);
    /* a learning rate that blows the weights up: the run stops at the first
     * non-finite state, and the last checkpoint it names loads (all finite) */
    c = small_config(test_path("lr_huge"), "optim.lr=1e6 optim.warmup_steps=0 train.ckpt_every=1 train.max_steps=20");
    ck_assert_int_eq(trainer_run(c, &o, &r, &err), -1);
    ck_assert_msg(strstr(err.msg, "non-finite"), "%s", err.msg);
    char huge_last[1200];
    snprintf(huge_last, sizeof huge_last, "%s/ckpt/last.h5", test_path("lr_huge"));
    if (access(huge_last, R_OK) == 0) {
        ck_assert_msg(strstr(err.msg, huge_last), "%s", err.msg);
        ck_assert_int_eq(session_open(&s, c, &err), 0);
        optim_init(&opt, &oc, &s.m.params);
        ck_assert_msg(ckpt_load(huge_last, &s.m, &opt, &meta, &err) == 0, "%s", err.msg);
        optim_free(&opt);
        session_close(&s);
    }
    free(c);
}
END_TEST

static const char *mxtrain_bin(void) {
    static char p[1024];
    snprintf(p, sizeof p, "%s/mxtrain", getenv("MX_BUILD_DIR") ? getenv("MX_BUILD_DIR") : "..");
    return p;
}

static double last_eval_acc(const char *dir) {
    runlog l;
    runlog_load(&l, dir);
    double acc = -1;
    for (int64_t i = 0; i < l.n_m; i++)
        if (l.m[i].is_eval) acc = l.m[i].eval_acc;
    runlog_close(&l);
    return acc;
}

static bool exists(const char *dir, const char *name) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0 && st.st_size > 0;
}

/* The quickstart config, trimmed: must beat chance (10%) by a wide margin. */
/* SIGTERM (a scheduler) and SIGHUP (a closed terminal) save and exit like Ctrl-C. */
START_TEST(test_sigterm_and_sighup_save) {
    const char *sigs[2] = {"TERM", "HUP"};
    for (int i = 0; i < 2; i++) {
        char dir[600], cmd[3000];
        snprintf(dir, sizeof dir, "%s/sig%s", test_tmpdir(), sigs[i]);
        snprintf(cmd, sizeof cmd,
                 "%s train %s/configs/quickstart.ini --set data.dataset=synthetic --set model.in_chans=3 "
                 "--set train.epochs=100000 --set log.dir=%s > %s.out 2>&1 & pid=$!; "
                 "for k in $(seq 100); do [ -f %s/metrics.jsonl ] && [ -s %s/metrics.jsonl ] && break; sleep 0.2; done; "
                 "sleep 0.5; kill -%s $pid; wait $pid; exit $?",
                 mxtrain_bin(), getenv("MX_SOURCE_DIR"), dir, dir, dir, dir, sigs[i]);
        int rc = system(cmd);
        ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == TRAIN_EXIT_INTERRUPTED, "SIG%s: exit status %d", sigs[i],
                      WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
        ck_assert_msg(exists(dir, "ckpt/last.h5"), "SIG%s: no checkpoint saved", sigs[i]);
        char out[700], text[4096] = {0};
        snprintf(out, sizeof out, "%s.out", dir);
        FILE *f = fopen(out, "r");
        ck_assert_ptr_nonnull(f);
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = 0;
        fclose(f);
        char want[64];
        snprintf(want, sizeof want, "interrupted (SIG%s)", sigs[i]);
        ck_assert_msg(strstr(text, want) != NULL, "SIG%s: output lacks '%s':\n%s", sigs[i], want, text);
    }
}
END_TEST

/* A small run as a config file (the CLI's view of small_config). */
static void write_small_config(const char *path, const char *dir) {
    char text[2048];
    snprintf(text, sizeof text,
             "[model]\narch = resnet\nblocks = 1,1,1,1\nwidths = 8,8,16,16\nimg_size = 12\n"
             "[data]\ndataset = synthetic\nsynthetic_train = 160\nsynthetic_eval = 32\nbatch_size = 8\n"
             "[optim]\nlr = 0.01\nwarmup_steps = 3\n"
             "[quant]\nformat = mxfp8_e4m3\ngrad_round = stochastic\n"
             "[train]\nepochs = 3\nckpt_every = 2\n"
             "[log]\ndir = %s\nprint_every = 100\nprogress = false\nstats_every = 1\n",
             dir);
    test_write_file(path, text, strlen(text));
}

static char *slurp(const char *dir, const char *name, size_t *n) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    ck_assert_msg(f != NULL, "%s missing", p);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    ck_assert_int_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    b[len] = 0;
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* kill -9 at random moments (mid-step, mid-checkpoint, mid-log-line) and
 * --resume, again and again: metrics, stats.csv, stats.h5 and the weights
 * end up equal to an uninterrupted run's (every step once; img/s aside). */
START_TEST(test_kill_resume_equals_uninterrupted) {
    char da[700], db[700], ca[800], cb[800], cmd[6000];
    snprintf(da, sizeof da, "%s/kr_a", test_tmpdir());
    snprintf(db, sizeof db, "%s/kr_b", test_tmpdir());
    snprintf(ca, sizeof ca, "%s.ini", da);
    snprintf(cb, sizeof cb, "%s.ini", db);
    write_small_config(ca, da);
    write_small_config(cb, db);
    snprintf(cmd, sizeof cmd, "%s train %s > %s.out 2>&1", mxtrain_bin(), ca, da);
    ck_assert_int_eq(system(cmd), 0);
    /* kills at 20..300 ms into each attempt until one finishes by itself */
    snprintf(cmd, sizeof cmd,
             "kills=0; for i in $(seq 60); do "
             "  if [ -f %s/ckpt/last.h5 ]; then r=\"--resume %s\"; else r=; fi; "
             "  %s train %s $r >> %s.out 2>&1 & pid=$!; "
             "  sleep 0.$(printf %%03d $(( (RANDOM %% 280) + 20 ))); "
             "  if kill -9 $pid 2>/dev/null; then kills=$((kills+1)); fi; wait $pid; rc=$?; "
             "  [ $rc -eq 0 ] && break; "
             "done; echo $kills > %s.kills; "
             "%s train %s --resume %s >> %s.out 2>&1",
             db, db, mxtrain_bin(), cb, db, db, mxtrain_bin(), cb, db, db);
    char script[800], run[900];
    snprintf(script, sizeof script, "%s.sh", db);
    test_write_file(script, cmd, strlen(cmd)); /* bash: $RANDOM */
    snprintf(run, sizeof run, "bash %s", script);
    int rc = system(run);
    ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "the resumed run failed (see %s.out)", db);
    char kp[800];
    snprintf(kp, sizeof kp, "%s.kills", db);
    FILE *kf = fopen(kp, "r");
    int kills = 0;
    ck_assert(kf && fscanf(kf, "%d", &kills) == 1);
    fclose(kf);
    fprintf(stderr, "kill -9 / --resume: %d kills\n", kills);
    ck_assert_int_ge(kills, 1);
    /* metrics: the same records in the same order, equal but for img/s */
    runlog la, lb;
    runlog_load(&la, da);
    runlog_load(&lb, db);
    ck_assert_int_eq(la.n_m, lb.n_m);
    for (int64_t i = 0; i < la.n_m; i++) {
        const metric_rec *x = &la.m[i], *y = &lb.m[i];
        ck_assert_msg(x->step == y->step && x->epoch == y->epoch && x->is_eval == y->is_eval,
                      "record %lld: step %lld vs %lld", (long long)i, (long long)x->step, (long long)y->step);
        ck_assert_msg(x->is_eval ? x->eval_loss == y->eval_loss && x->eval_acc == y->eval_acc
                                 : x->loss == y->loss && x->lr == y->lr,
                      "record %lld (step %lld) differs", (long long)i, (long long)x->step);
    }
    /* statistics: stats.csv byte for byte, stats.h5 row for row */
    size_t na, nb;
    char *sa = slurp(da, "stats.csv", &na), *sb = slurp(db, "stats.csv", &nb);
    ck_assert_msg(na == nb && memcmp(sa, sb, na) == 0, "stats.csv differs (%zu vs %zu bytes)", na, nb);
    free(sa), free(sb);
    ck_assert_int_gt(la.n_s, 0);
    ck_assert_int_eq(la.n_s, lb.n_s);
    for (int64_t i = 0; i < la.n_s; i++) {
        const stat_rec *x = &la.s[i], *y = &lb.s[i];
        ck_assert(x->step == y->step && strcmp(x->layer, y->layer) == 0 && x->role == y->role);
        ck_assert(x->st.elements == y->st.elements && x->st.nonzero == y->st.nonzero);
        ck_assert_msg(x->st.underflow == y->st.underflow && x->st.saturated == y->st.saturated,
                      "stats row %lld: counts differ", (long long)i);
        ck_assert(memcmp(&x->qsnr_db, &y->qsnr_db, sizeof(double)) == 0);
        ck_assert(memcmp(x->st.gap_hist, y->st.gap_hist, sizeof x->st.gap_hist) == 0);
    }
    runlog_close(&la);
    runlog_close(&lb);
    /* the weights */
    config *c = small_config(test_path("kr_w"), NULL);
    char pa[1200], pb[1200];
    snprintf(pa, sizeof pa, "%s/ckpt/last.h5", da);
    snprintf(pb, sizeof pb, "%s/ckpt/last.h5", db);
    float *wa, *wb;
    size_t nwa, nwb;
    load_params(pa, c, &wa, &nwa);
    load_params(pb, c, &wb, &nwb);
    ck_assert_int_eq(nwa, nwb);
    ck_assert_msg(memcmp(wa, wb, sizeof(float) * nwa) == 0, "weights after kills differ");
    free(wa), free(wb), free(c);
}
END_TEST

/* Torn and foreign lines in a resumed run's logs are dropped, never read as
 * zeros; a full disk stops the run with a message, no crash. */
START_TEST(test_logs_torn_lines_and_disk_full) {
    const char *d = test_path("torn");
    config *c = small_config(d, "train.epochs=1");
    train_opts o = {0};
    train_result r;
    mx_err err = {0};
    ck_assert_msg(trainer_run(c, &o, &r, &err) == 0, "%s", err.msg);
    char p[1200];
    snprintf(p, sizeof p, "%s/metrics.jsonl", d);
    FILE *f = fopen(p, "a");
    fputs("{\"step\":99,\"epoch\":0,\"lr\":0.01,\"loss\":0.5,\"img_p", f); /* a kill mid-line */
    fclose(f);
    runlog l;
    runlog_load(&l, d);
    for (int64_t i = 0; i < l.n_m; i++) {
        ck_assert(l.m[i].step != 99);
        if (!l.m[i].is_eval) ck_assert(l.m[i].loss > 0);
    }
    ck_assert_int_eq(l.n_m, 8 + 1);
    runlog_close(&l);
    f = fopen(p, "w");
    fputs("{\"step\":1,\"epoch\":0,\"lr\":0.01,\"loss\":zero,\"img_per_s\":1}\n{\"step\":2}\n", f);
    fclose(f);
    runlog_load(&l, d);
    ck_assert_int_eq(l.n_m, 0);
    runlog_close(&l);
    /* disk full: the logs go to /dev/full */
    if (access("/dev/full", W_OK) == 0) {
        const char *d2 = test_path("full");
        config *c2 = small_config(d2, "train.epochs=1");
        char q[1200];
        mkdir(d2, 0755);
        snprintf(q, sizeof q, "%s/metrics.jsonl", d2);
        ck_assert_int_eq(symlink("/dev/full", q), 0);
        int rc = trainer_run(c2, &o, &r, &err);
        ck_assert_int_lt(rc, 0);
        ck_assert_msg(strstr(err.msg, "disk full"), "%s", err.msg);
        free(c2);
        /* and the checkpoint */
        const char *d3 = test_path("full_ckpt");
        config *c3 = small_config(d3, "train.epochs=1");
        snprintf(q, sizeof q, "%s/ckpt", d3);
        mkdir(d3, 0755);
        mkdir(q, 0755);
        snprintf(q, sizeof q, "%s/ckpt/last.h5.tmp", d3);
        ck_assert_int_eq(symlink("/dev/full", q), 0);
        rc = trainer_run(c3, &o, &r, &err);
        ck_assert_int_lt(rc, 0);
        ck_assert_msg(strstr(err.msg, "last.h5.tmp"), "%s", err.msg);
        free(c3);
    } else {
        fprintf(stderr, "SKIP disk-full cases: no /dev/full\n");
    }
    free(c);
}
END_TEST

START_TEST(test_quickstart_end_to_end) {
    struct stat st;
    if (stat("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", &st) != 0) {
        fprintf(stderr, "skipped: dataset-fashion-mnist is not installed\n");
        return;
    }
    bool sanitized = getenv("MX_SANITIZED") != NULL; /* ~10x slower: fewer steps */
    const char *dir = test_path("quick");
    char cmd[3000];
    snprintf(cmd, sizeof cmd,
             "%s train %s/configs/quickstart.ini --set train.max_steps=%d --set data.limit_eval=%d "
             "--set log.dir=%s --set log.stats_every=20 --set optim.warmup_steps=10 > %s/out.txt 2>&1",
             mxtrain_bin(), getenv("MX_SOURCE_DIR"), sanitized ? 40 : 200, sanitized ? 500 : 2000, dir, test_tmpdir());
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
    double acc = last_eval_acc(dir);
    fprintf(stderr, "quickstart trimmed: eval accuracy %.3f\n", acc);
    ck_assert_msg(acc > (sanitized ? 0.4 : 0.7), "accuracy %.3f", acc);
    const char *files[] = {"config.ini", "metrics.csv", "metrics.jsonl", "stats.csv", "stats.h5", "report.html",
                           "ckpt/last.h5", "ckpt/best.h5", "summary.csv"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) ck_assert_msg(exists(dir, files[i]), "%s missing", files[i]);
    /* eval under another format (direct cast) prints a JSON line, valid JSON whatever the
       checkpoint's name (here with a quote and a backslash), with every quant.* setting */
    char weird[700];
    snprintf(weird, sizeof weird, "%s/we\"ird\\.h5", test_tmpdir());
    snprintf(cmd, sizeof cmd, "cp %s/ckpt/last.h5 '%s'", dir, weird);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(cmd, sizeof cmd,
             "%s eval %s/configs/quickstart.ini --checkpoint '%s' --set quant.format=mxfp8_e4m3 "
             "--set data.limit_eval=300 > %s/eval.json 2>/dev/null",
             mxtrain_bin(), getenv("MX_SOURCE_DIR"), weird, test_tmpdir());
    ck_assert_int_eq(system(cmd), 0);
    char p[600], line[4096] = {0};
    snprintf(p, sizeof p, "%s/eval.json", test_tmpdir());
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    fclose(f);
    cJSON *j = cJSON_Parse(line);
    ck_assert_msg(cJSON_IsObject(j), "not JSON: %s", line);
    const cJSON *ck = cJSON_GetObjectItemCaseSensitive(j, "checkpoint"),
                *fm = cJSON_GetObjectItemCaseSensitive(j, "format"),
                *acc2 = cJSON_GetObjectItemCaseSensitive(j, "eval_acc");
    ck_assert_msg(cJSON_IsString(ck) && strcmp(ck->valuestring, weird) == 0, "%s", line);
    ck_assert_msg(cJSON_IsString(fm) && strcmp(fm->valuestring, "mxfp8_e4m3") == 0 && cJSON_IsNumber(acc2), "%s", line);
    ck_assert_msg(cJSON_GetObjectItemCaseSensitive(j, "tiling") && cJSON_GetObjectItemCaseSensitive(j, "round") &&
                      cJSON_GetObjectItemCaseSensitive(j, "keep") && cJSON_GetObjectItemCaseSensitive(j, "elementwise"),
                  "%s", line);
    double acc_first = acc2->valuedouble;
    cJSON_Delete(j);
    /* --init-from is --checkpoint's other name; --save-logits writes [samples, classes] */
    snprintf(cmd, sizeof cmd,
             "%s eval %s/configs/quickstart.ini --init-from '%s' --save-logits %s/logits.npy --set quant.format=mxfp8_e4m3 "
             "--set data.limit_eval=300 > %s/eval2.json 2>/dev/null",
             mxtrain_bin(), getenv("MX_SOURCE_DIR"), weird, test_tmpdir(), test_tmpdir());
    ck_assert_int_eq(system(cmd), 0);
    snprintf(p, sizeof p, "%s/eval2.json", test_tmpdir());
    f = fopen(p, "r");
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
    fclose(f);
    j = cJSON_Parse(line);
    ck_assert_msg(cJSON_IsObject(j) && cJSON_GetObjectItemCaseSensitive(j, "eval_acc")->valuedouble == acc_first, "%s", line);
    cJSON_Delete(j);
    npy_array lg;
    mx_err lerr;
    snprintf(p, sizeof p, "%s/logits.npy", test_tmpdir());
    ck_assert_msg(npy_read(p, &lg, &lerr) == 0, "%s", lerr.msg);
    ck_assert(lg.ndim == 2 && lg.shape[0] == 300 && lg.shape[1] == 10 && lg.dtype == NPY_DTYPE_F32);
    for (int64_t k = 0; k < lg.numel; k++) ck_assert(isfinite(((float *)lg.data)[k]));
    npy_free(&lg);
}
END_TEST

/* bench step prints one JSON line with the documented fields; 1d counts twice 2d's passes. */
START_TEST(test_bench_step_cli) {
    char cmd[2000], p[600], line[2048];
    const char *tilings[2] = {"2d", "1d"};
    long passes[2];
    for (int t = 0; t < 2; t++) {
        snprintf(p, sizeof p, "%s/bench_%s.json", test_tmpdir(), tilings[t]);
        snprintf(cmd, sizeof cmd,
                 "%s bench step --model resnet --set model.blocks=1,1,1,1 --set model.widths=8,8,16,16 --img-size 16 "
                 "--batch 8 --steps 2 --warmup 1 --format mxsf --tiling %s > %s",
                 mxtrain_bin(), tilings[t], p);
        ck_assert_int_eq(system(cmd), 0);
        FILE *f = fopen(p, "r");
        ck_assert_ptr_nonnull(fgets(line, sizeof line, f));
        fclose(f);
        const char *keys[] = {"\"median_step_s\":", "\"img_per_s\":", "\"peak_rss_mb\":", "\"gflop_per_step\":",
                              "\"gflop_per_s\":", "\"quant_passes\":", "\"quant_bytes\":", "\"bytes_held_for_backward\":"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) ck_assert_msg(strstr(line, keys[k]), "%s lacks %s", line, keys[k]);
        passes[t] = strtol(strstr(line, "\"quant_passes\":") + 15, NULL, 10);
        double gf = strtod(strstr(line, "\"gflop_per_step\":") + 17, NULL);
        ck_assert_msg(gf > 0, "%s", line);
    }
    ck_assert_int_eq(passes[1], 2 * passes[0] - 2);
}
END_TEST

/* Weights out to safetensors and back: `mxtrain export`, then --init-from /
 * eval's loader reading the .safetensors file gives the same weights and
 * buffers bit for bit; a mismatch a config key would fix says which key. */
START_TEST(test_safetensors_weights) {
    config *c = small_config(test_path("st_run"), NULL);
    session s;
    mx_err err = {0};
    ck_assert_msg(session_open(&s, c, &err) == 0, "%s", err.msg);
    param_store *ps = &s.m.params;
    for (int i = 0; i < ps->count; i++) { /* buffers unlike a fresh model's */
        param_entry *e = &ps->entries[i];
        if (e->kind != PARAM_KIND_BUFFER) continue;
        for (int64_t k = 0; k < e->numel; k++) param_data(ps, i)[k] = e->is_integer ? 5.0f : 0.25f * (float)(k % 7);
    }
    ckpt_meta meta = {3, 0, 0, -1};
    const char *ck = test_path("st.h5"), *out = test_path("st.safetensors");
    ck_assert_msg(ckpt_save(ck, &s.m, NULL, &meta, "text", &err) == 0, "%s", err.msg);
    char args[1400], msg[4096];
    snprintf(args, sizeof args, "export %s %s", ck, out);
    ck_assert_msg(test_run_mxtrain(args, msg, sizeof msg) == 0, "%s", msg);
    config *c2 = small_config(test_path("st_run2"), "train.seed=99");
    session s2;
    ck_assert_msg(session_open(&s2, c2, &err) == 0, "%s", err.msg);
    ck_assert(memcmp(s2.m.params.data, ps->data, sizeof(float) * ps->n_trainable) != 0); /* another seed */
    ck_assert_msg(ckpt_load_weights(out, &s2.m, &err) == 0, "%s", err.msg);
    ck_assert(memcmp(s2.m.params.data, ps->data, sizeof(float) * ps->n_trainable) == 0);
    for (int i = 0; i < ps->count; i++)
        ck_assert_msg(memcmp(param_data(&s2.m.params, i), param_data(ps, i), sizeof(float) * (size_t)ps->entries[i].numel) == 0,
                      "%s differs after the round trip", ps->entries[i].name);
    /* every tensor under its PyTorch name, num_batches_tracked as I64 (F16/BF16 reading: test_core) */
    st_file f;
    ck_assert_msg(st_open(out, &f, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(f.n, ps->count);
    int nbt = st_find(&f, "bn1.num_batches_tracked");
    ck_assert_int_ge(nbt, 0);
    ck_assert_int_eq(f.t[nbt].dtype, ST_DTYPE_I64);
    ck_assert_int_eq(f.t[st_find(&f, "conv1.weight")].shape[1], 3); /* OIHW, as PyTorch */
    st_close(&f);
    /* a model with other classes: the message names the key */
    config *c3 = small_config(test_path("st_run3"), "model.num_classes=7");
    session s3;
    ck_assert_msg(session_open(&s3, c3, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(ckpt_load_weights(out, &s3.m, &err), -1);
    ck_assert_msg(strstr(err.msg, "'fc.weight' has shape [10,16], the model expects [7,16]: set model.num_classes = 10"),
                  "%s", err.msg);
    session_close(&s3);
    /* export's errors */
    snprintf(args, sizeof args, "export %s %s/x.bin", ck, test_tmpdir());
    ck_assert_int_eq(test_run_mxtrain(args, msg, sizeof msg), 2);
    snprintf(args, sizeof args, "export %s/absent.h5 %s/x.safetensors", test_tmpdir(), test_tmpdir());
    ck_assert_int_eq(test_run_mxtrain(args, msg, sizeof msg), 1);
    ck_assert_msg(strstr(msg, "absent.h5") && strchr(msg, '\n') == msg + strlen(msg) - 1, "%s", msg);
    session_close(&s2);
    session_close(&s);
    free(c), free(c2), free(c3);
}
END_TEST

/* --device cuda where no GPU can be used (CI; a build without nvcc): one
 * clear line, exit status 1, and nothing written. */
START_TEST(test_device_cuda_without_gpu) {
    if (cu_available()) { /* the accelerator machine: the cuda suites cover it */
        fprintf(stderr, "test_device_cuda_without_gpu: a GPU is visible; skipped\n");
        return;
    }
    char args[2000], out[4096];
    const char *dir = test_path("cuda_run");
    snprintf(args, sizeof args, "train %s/configs/quickstart.ini --set data.dataset=synthetic --set model.in_chans=3 "
             "--device cuda --set log.dir=%s", getenv("MX_SOURCE_DIR") ? getenv("MX_SOURCE_DIR") : "../..", dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 1);
    ck_assert_msg(strstr(out, "train.device = cuda: ") && strchr(out, '\n') == out + strlen(out) - 1, "%s", out);
    ck_assert_msg(access(dir, F_OK) != 0, "the run directory was created: %s", out);
    ck_assert_int_eq(test_run_mxtrain("bench step --device cuda --steps 1 --warmup 0 --batch 2", out, sizeof out), 1);
    ck_assert_msg(strstr(out, "train.device = cuda: "), "%s", out);
    ck_assert_int_eq(test_run_mxtrain("bench step --device tpu", out, sizeof out), 2);
    ck_assert_msg(strstr(out, "cpu") && strstr(out, "cuda"), "%s", out);
}
END_TEST

/* summary.csv's lines (header first), newlines removed. */
static int read_summary(const char *dir, char rows[][512], int cap) {
    char p[1200];
    snprintf(p, sizeof p, "%s/summary.csv", dir);
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    int n = 0;
    while (n < cap && fgets(rows[n], 512, f)) rows[n][strcspn(rows[n], "\n")] = 0, n++;
    fclose(f);
    return n;
}

/* Where field k (0-based) of a CSV line starts. */
static const char *csv_field(const char *line, int k) {
    for (int i = 0; i < k; i++) {
        line = strchr(line, ',');
        ck_assert_ptr_nonnull(line);
        line++;
    }
    return line;
}

START_TEST(test_compare_cli) {
    const char *dir = test_path("cmp");
    const char *cfg = write_cfg("cmp.ini", "[model]\narch = resnet\nblocks = 1,1,1,1\nwidths = 8,8,16,16\nimg_size = 12\n"
                                           "[data]\ndataset = synthetic\nsynthetic_train = 32\nsynthetic_eval = 16\n"
                                           "batch_size = 8\n[log]\nstats_every = 2\nprogress = false\n");
    char cmd[2000];
    snprintf(cmd, sizeof cmd, "%s compare %s --formats bf16,mxsf --tilings 1d,2d --out %s > /dev/null 2>&1",
             mxtrain_bin(), cfg, dir);
    ck_assert_int_eq(system(cmd), 0);
    char rows[8][512];
    int nrows = read_summary(dir, rows, 8);
    ck_assert_int_eq(nrows, 5);
    ck_assert_msg(strstr(rows[0], ",step_s,passes_per_step,wall_s"), "header: %s", rows[0]);
    long passes_1d = -1, passes_2d = -1;
    for (int k = 1; k < nrows; k++) {
        if (strncmp(rows[k], "mxsf,1d,", 8) == 0) passes_1d = strtol(csv_field(rows[k], 7), NULL, 10);
        if (strncmp(rows[k], "mxsf,2d,", 8) == 0) passes_2d = strtol(csv_field(rows[k], 7), NULL, 10);
    }
    /* 3 passes per product with 2d, 6 with 1d, except that 1d skips the two
       operands of the first conv's dX product (the images need no gradient) */
    ck_assert_int_gt(passes_2d, 0);
    ck_assert_int_eq(passes_2d % 3, 0);
    ck_assert_int_eq(passes_1d, 2 * passes_2d - 2);
    ck_assert(exists(dir, "summary.md") && exists(dir, "report.html") && exists(dir, "mxsf_1d/metrics.jsonl"));
    /* the report names the run and draws what the statistics hold: the baseline across the accuracy bars, QSNR and
       saturation per layer, each format's underflow threshold on the gap histograms */
    static char html[1 << 22];
    char rp[1200];
    snprintf(rp, sizeof rp, "%s/report.html", dir);
    FILE *rf = fopen(rp, "r");
    ck_assert_ptr_nonnull(rf);
    html[fread(html, 1, sizeof html - 1, rf)] = 0;
    fclose(rf);
    ck_assert(strstr(html, "Model <code>resnet</code>") && strstr(html, "quant.block = ") && strstr(html, "mxtrain 0."));
    ck_assert(strstr(html, "bf16 1d baseline") && strstr(html, "Per-layer QSNR dB") && strstr(html, "saturation ratio"));
    ck_assert_msg(strstr(html, "mxsf underflows from gap 13"), "no threshold mark");
    /* --resume reports finished variants from their records (same results, nothing retrained) and
       trains the one whose directory is gone */
    snprintf(cmd, sizeof cmd, "rm -r %s/bf16_2d", dir);
    ck_assert_int_eq(system(cmd), 0);
    static char log[1 << 16];
    snprintf(cmd, sizeof cmd, "compare %s --formats bf16,mxsf --tilings 1d,2d --out %s --resume", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(cmd, log, sizeof log), 0);
    char again[8][512];
    ck_assert_int_eq(read_summary(dir, again, 8), 5);
    for (int k = 1; k < nrows; k++) { /* format..mean_grad_underflow equal */
        size_t n = (size_t)(csv_field(rows[k], 6) - rows[k]);
        ck_assert_msg(strncmp(rows[k], again[k], n) == 0, "%s vs %s", rows[k], again[k]);
    }
    int complete = 0;
    for (const char *q = log; (q = strstr(q, "already complete")); q++) complete++;
    ck_assert_msg(complete == 3 && !strstr(log, "bf16_2d at step"), "%s", log); /* bf16_2d trained afresh */
    /* bad variants are refused before anything trains */
    snprintf(cmd, sizeof cmd, "%s compare %s --formats bf16,nope --out %s/x > /dev/null 2>&1", mxtrain_bin(), cfg, dir);
    ck_assert_int_eq(WEXITSTATUS(system(cmd)), 2);
}
END_TEST

/* eval --formats: one evaluation per variant, a JSON line each, the table and the report. */
START_TEST(test_eval_formats) {
    char dir[1024], cfg[1024]; /* copies: test_path's buffers rotate */
    snprintf(dir, sizeof dir, "%s", test_path("evf"));
    snprintf(cfg, sizeof cfg, "%s", write_cfg("evf.ini", "[model]\narch = resnet\nblocks = 1,1,1,1\nwidths = 8,8,16,16\nimg_size = 12\n"
                                           "[data]\ndataset = synthetic\nsynthetic_train = 32\nsynthetic_eval = 24\n"
                                           "batch_size = 8\n[log]\nprogress = false\n"));
    static char out[1 << 16];
    char args[2000];
    snprintf(args, sizeof args, "train %s --set log.dir=%s/run", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 0);
    snprintf(args, sizeof args, "eval %s --checkpoint %s/run/ckpt/last.h5 --formats bf16,mxfp8_e4m3 --tilings 1d,2d --out %s/ev",
             cfg, dir, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 0);
    /* four JSON lines: bf16 first (no agreement), then agreements in [0, 1]; bf16's operands far closer than E4M3's */
    double qsnr[4] = {0};
    int lines = 0;
    for (char *save = NULL, *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (l[0] != '{') continue; /* stderr's progress lines */
        cJSON *j = cJSON_Parse(l);
        ck_assert_msg(j && lines < 4, "%s", l);
        cJSON *ag = cJSON_GetObjectItem(j, "agreement"), *roles = cJSON_GetObjectItem(j, "roles");
        ck_assert(lines == 0 ? cJSON_IsNull(ag) : (cJSON_IsNumber(ag) && ag->valuedouble >= 0 && ag->valuedouble <= 1));
        cJSON *act = cJSON_GetObjectItem(roles, "fwd_act");
        ck_assert_msg(act && cJSON_IsNumber(cJSON_GetObjectItem(act, "mean_qsnr_db")), "%s", l);
        qsnr[lines] = cJSON_GetObjectItem(act, "mean_qsnr_db")->valuedouble;
        ck_assert_str_eq(cJSON_GetObjectItem(j, "format")->valuestring, lines < 2 ? "bf16" : "mxfp8_e4m3");
        ck_assert_str_eq(cJSON_GetObjectItem(j, "tiling")->valuestring, lines % 2 ? "2d" : "1d");
        ck_assert_int_eq(cJSON_GetObjectItem(j, "samples")->valueint, 24);
        cJSON_Delete(j);
        lines++;
    }
    ck_assert_int_eq(lines, 4);
    ck_assert_msg(qsnr[0] > 45 && qsnr[2] > 20 && qsnr[2] < qsnr[0] - 10, "%g %g", qsnr[0], qsnr[2]);
    char p[1200];
    snprintf(p, sizeof p, "%s/ev", dir);
    ck_assert(exists(p, "summary.md") && exists(p, "report.html"));
    char rows[8][512];
    ck_assert_int_eq(read_summary(p, rows, 8), 5);
    ck_assert_msg(!strncmp(rows[0], "format,tiling,top1,top5,loss,agreement,fwd_act_qsnr_db", 54), "%s", rows[0]);
    ck_assert_msg(!strncmp(rows[3], "mxfp8_e4m3,1d,", 14), "%s", rows[3]);
    /* usage errors: exit 2 before anything runs */
    snprintf(args, sizeof args, "eval %s --checkpoint %s/run/ckpt/last.h5 --formats bf16,nope", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "nope"), "%s", out);
    snprintf(args, sizeof args, "eval %s --checkpoint %s/run/ckpt/last.h5 --tilings 2d", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 2);
    snprintf(args, sizeof args, "eval %s --checkpoint %s/run/ckpt/last.h5 --formats bf16 --save-logits x.npy", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 2);
    /* a checkpoint that is not there: one line, exit 1 */
    snprintf(args, sizeof args, "eval %s --checkpoint %s/none.h5 --formats bf16,mxint8", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 1);
    ck_assert_msg(strstr(out, "none.h5"), "%s", out);

    /* probe: every role of every layer per variant (1d: six; 2d would reuse the forward's tiles), bf16's error far
       below E4M3's */
    snprintf(args, sizeof args, "probe %s --checkpoint %s/run/ckpt/last.h5 --formats bf16,mxfp8_e4m3 --tilings 1d --batches 2 "
             "--out %s/pr",
             cfg, dir, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 0);
    snprintf(p, sizeof p, "%s/pr", dir);
    ck_assert(exists(p, "probe.h5") && exists(p, "report.html"));
    snprintf(args, sizeof args, "%s/pr/probe.csv", dir);
    FILE *f = fopen(args, "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int roles[2][MM_ROLE_COUNT] = {{0}};
    double q[2] = {0};
    int nq[2] = {0};
    ck_assert(fgets(line, sizeof line, f) && !strncmp(line, "variant,tiling,layer,role,format,elements,nonzero,qsnr_db", 57));
    while (fgets(line, sizeof line, f)) {
        int v = !strncmp(line, "bf16,", 5) ? 0 : 1;
        char role[64];
        ck_assert(sscanf(csv_field(line, 3), "%63[^,]", role) == 1);
        for (int r = 0; r < MM_ROLE_COUNT; r++) roles[v][r] += !strcmp(role, mm_role_name((mm_role)r));
        q[v] += strtod(csv_field(line, 7), NULL), nq[v]++;
    }
    fclose(f);
    for (int v = 0; v < 2; v++)
        for (int r = 0; r < MM_ROLE_COUNT; r++) ck_assert_msg(roles[v][r] > 0, "variant %d role %d missing", v, r);
    ck_assert_msg(q[0] / nq[0] > q[1] / nq[1] + 10, "bf16 %g, e4m3 %g", q[0] / nq[0], q[1] / nq[1]);
    snprintf(args, sizeof args, "probe %s --checkpoint %s/run/ckpt/last.h5 --batches 0 --formats bf16", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 2);
    snprintf(args, sizeof args, "probe %s --checkpoint %s/run/ckpt/last.h5", cfg, dir);
    ck_assert_int_eq(test_run_mxtrain(args, out, sizeof out), 2);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_config_set_and_roundtrip);
    tcase_add_test(tc, test_config_documented);
    tcase_add_test(tc, test_shipped_configs);
    tcase_add_test(tc, test_checkpoint_atomic_and_init_from);
    tcase_add_test(tc, test_checkpoint_validated_on_load);
    tcase_add_test(tc, test_data_checked_against_model);
    tcase_add_test(tc, test_sigterm_and_sighup_save);
    tcase_add_test(tc, test_resume_equals_uninterrupted);
    tcase_add_test(tc, test_kill_resume_equals_uninterrupted);
    tcase_add_test(tc, test_logs_torn_lines_and_disk_full);
    tcase_add_test(tc, test_nonfinite_guard);
    tcase_add_test(tc, test_compare_cli);
    tcase_add_test(tc, test_eval_formats);
    tcase_add_test(tc, test_device_cuda_without_gpu);
    tcase_add_test(tc, test_safetensors_weights);
    tcase_add_test(tc, test_optimizer_state_pytorch_names);
    tcase_add_test(tc, test_bench_step_cli);
    tcase_add_test(tc, test_quickstart_end_to_end);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
