/* The configuration table and its parser (see config.h). */
#include "train/config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---------------- value checks ---------------- */

static int check_arch(const char *v, mx_err *err) {
    model_arch a;
    return model_arch_parse(v, &a, err);
}
static int check_stem(const char *v, mx_err *err) {
    model_stem s;
    return model_stem_parse(v, &s, err);
}
static int check_dataset(const char *v, mx_err *err) {
    data_kind k;
    return data_kind_parse(v, &k, err);
}
static int check_optim(const char *v, mx_err *err) {
    optim_kind k;
    return optim_kind_parse(v, &k, err);
}
static int check_schedule(const char *v, mx_err *err) {
    optim_schedule s;
    return optim_schedule_parse(v, &s, err);
}
static int check_format(const char *v, mx_err *err) {
    quant_format f;
    return quant_format_parse(v, &f, err);
}
static int check_format_opt(const char *v, mx_err *err) { return v[0] ? check_format(v, err) : 0; }
static int check_tiling(const char *v, mx_err *err) {
    mm_tiling t;
    return mm_tiling_parse(v, &t, err);
}
static int check_round(const char *v, mx_err *err) {
    quant_round r;
    return quant_round_parse(v, &r, err);
}
static int check_round_opt(const char *v, mx_err *err) { return v[0] ? check_round(v, err) : 0; }
static int check_scale(const char *v, mx_err *err) {
    quant_scale s;
    return quant_scale_parse(v, &s, err);
}
static int check_elementwise(const char *v, mx_err *err) {
    if (strcmp(v, "fp32") == 0 || strcmp(v, "bf16") == 0) return 0;
    return mx_err_set(err, "'%s' is not an elementwise precision (valid: fp32, bf16)", v);
}
static int check_nonfinite(const char *v, mx_err *err) {
    if (strcmp(v, "stop") == 0 || strcmp(v, "skip") == 0) return 0;
    return mx_err_set(err, "'%s' is not a non-finite policy (valid: stop, skip)", v);
}
static int check_tile(const char *v, mx_err *err) {
    int r, c;
    char extra;
    if (sscanf(v, "%dx%d%c", &r, &c, &extra) != 2 || r < 1 || c < 1 || r > 64 || c > 64)
        return mx_err_set(err, "'%s' is not a tile (ROWSxCOLS, e.g. 8x8, each 1..64)", v);
    return 0;
}

/* Comma-separated numbers: count in [lo, hi]; ints when want_int. */
static int parse_list(const char *v, double *out, int lo, int hi, bool want_int, int *n, mx_err *err) {
    char buf[CONFIG_STR];
    snprintf(buf, sizeof buf, "%s", v);
    int k = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char *end;
        double d = strtod(tok, &end);
        while (*end == ' ') end++;
        if (end == tok || *end || !isfinite(d) || (want_int && (d != floor(d) || d < 1 || d > 65536)))
            return mx_err_set(err, "'%s' is not a list of %s", v, want_int ? "positive integers" : "numbers");
        if (k == hi) return mx_err_set(err, "'%s' has more than %d values", v, hi);
        out[k++] = d;
    }
    if (k < lo) return mx_err_set(err, "'%s' needs %d%s values", v, lo, lo == hi ? "" : " or more");
    *n = k;
    return 0;
}
static int check_int4(const char *v, mx_err *err) {
    double d[4];
    int n;
    return parse_list(v, d, 4, 4, true, &n, err);
}
static int check_floats(const char *v, mx_err *err) {
    double d[DATA_MAX_CHANNELS];
    int n;
    return v[0] ? parse_list(v, d, 1, DATA_MAX_CHANNELS, false, &n, err) : 0;
}

/* "pattern:format, pattern:format" */
static int parse_keep(const char *v, mm_policy *p, mx_err *err) {
    char buf[CONFIG_STR];
    snprintf(buf, sizeof buf, "%s", v);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        char *end = tok + strlen(tok);
        while (end > tok && end[-1] == ' ') *--end = 0;
        if (!*tok) continue;
        char *colon = strchr(tok, ':');
        if (!colon || colon == tok || !colon[1])
            return mx_err_set(err, "'%s' is not PATTERN:FORMAT (e.g. conv1:bf16)", tok);
        *colon = 0;
        quant_format f;
        if (quant_format_parse(colon + 1, &f, err)) return -1;
        if (p && mm_policy_add_keep(p, tok, f, err)) return -1;
    }
    return 0;
}
static int check_keep(const char *v, mx_err *err) {
    mm_policy tmp;
    mm_policy_init(&tmp, QUANT_FORMAT_FP32);
    return parse_keep(v, &tmp, err);
}

/* ---------------- the table ---------------- */

#define K(sec, name, type, field, def, lo, hi, check, doc) \
    {sec, name, CONFIG_TYPE_##type, offsetof(run_config, field), def, lo, hi, check, doc}
#define BIG 1e18

const config_key config_keys[] = {
    K("model", "arch", STRING, model_arch, "resnet18", 0, 0, check_arch,
      "`resnet18` (torchvision), `resnet` (blocks/widths below), `deit_tiny` (timm), `vit` (dim/depth/heads below)"),
    K("model", "num_classes", INT, model_num_classes, "10", 2, 100000, NULL, "classes of the classifier head"),
    K("model", "in_chans", INT, model_in_chans, "3", 1, 4, NULL, "input channels (1 for Fashion-MNIST/MNIST)"),
    K("model", "stem", STRING, model_stem, "cifar", 0, 0, check_stem,
      "ResNet stem: `imagenet` (7x7/2 conv + max-pool) or `cifar` (3x3/1 conv, no pool)"),
    K("model", "blocks", STRING, model_blocks, "2,2,2,2", 0, 0, check_int4, "`resnet`: BasicBlocks per stage"),
    K("model", "widths", STRING, model_widths, "64,128,256,512", 0, 0, check_int4, "`resnet`: channels per stage"),
    K("model", "img_size", INT, model_img_size, "32", 4, 4096, NULL,
      "ViT input side (the patch grid is img_size / patch_size); also the decode size of imagefolder/synthetic data"),
    K("model", "patch_size", INT, model_patch_size, "4", 1, 1024, NULL, "ViT patch side"),
    K("model", "dim", INT, model_dim, "192", 8, 65536, NULL, "`vit`: embedding width"),
    K("model", "depth", INT, model_depth, "12", 1, 1024, NULL, "`vit`: transformer blocks"),
    K("model", "heads", INT, model_heads, "3", 1, 1024, NULL, "`vit`: attention heads (dim must divide)"),
    K("model", "mlp_ratio", FLOAT, model_mlp_ratio, "4", 0.25, 64, NULL, "ViT MLP hidden width / dim"),
    K("model", "drop_path", FLOAT, model_drop_path, "0", 0, 0.99, NULL, "ViT stochastic depth rate (linear over blocks)"),

    K("data", "dataset", STRING, data_dataset, "fashion-mnist", 0, 0, check_dataset,
      "`fashion-mnist`, `mnist`, `cifar10`, `imagefolder`, `hdf5`, `synthetic`"),
    K("data", "path", STRING, data_path, "", 0, 0, NULL,
      "dataset location; empty = default (`/usr/share/datasets/fashion-mnist` for fashion-mnist)"),
    K("data", "batch_size", INT, data_batch_size, "128", 1, 1 << 20, NULL, "training batch size"),
    K("data", "eval_batch_size", INT, data_eval_batch_size, "0", 0, 1 << 20, NULL, "evaluation batch size; 0 = batch_size"),
    K("data", "shuffle", BOOL, data_shuffle, "true", 0, 0, NULL, "shuffle training samples each epoch (seeded)"),
    K("data", "augment", BOOL, data_augment, "true", 0, 0, NULL,
      "training augmentation: random crop (pad side/8) + horizontal flip (no flip for mnist); imagefolder: "
      "random-resized-crop + flip"),
    K("data", "limit_train", I64, data_limit_train, "0", 0, BIG, NULL, "use only the first N training samples; 0 = all"),
    K("data", "limit_eval", I64, data_limit_eval, "0", 0, BIG, NULL, "use only the first N evaluation samples; 0 = all"),
    K("data", "mean", STRING, data_mean, "", 0, 0, check_floats,
      "per-channel mean after scaling pixels to [0,1], comma-separated; empty = the dataset's standard values"),
    K("data", "std", STRING, data_std, "", 0, 0, check_floats, "per-channel std, like `mean`"),
    K("data", "workers", INT, data_workers, "2", 1, 64, NULL, "background loader threads"),
    K("data", "img_size", INT, data_img_size, "0", 0, 4096, NULL,
      "resize file datasets to this side; 0 = native (imagefolder/synthetic use model.img_size)"),
    K("data", "h5_images", STRING, data_h5_images, "images", 0, 0, NULL, "hdf5: uint8 images dataset (N x H x W x C)"),
    K("data", "h5_labels", STRING, data_h5_labels, "labels", 0, 0, NULL, "hdf5: integer labels dataset (N)"),
    K("data", "synthetic_train", I64, data_synthetic_train, "2048", 1, BIG, NULL, "synthetic: training samples"),
    K("data", "synthetic_eval", I64, data_synthetic_eval, "512", 1, BIG, NULL, "synthetic: evaluation samples"),

    K("optim", "name", STRING, optim_name, "adamw", 0, 0, check_optim, "`adamw` or `sgd` (PyTorch semantics)"),
    K("optim", "lr", FLOAT, optim_lr, "0.001", 0, 1e6, NULL, "peak learning rate"),
    K("optim", "weight_decay", FLOAT, optim_weight_decay, "0.05", 0, 1e3, NULL,
      "weight decay (AdamW: decoupled; SGD: L2); applies to weights of rank >= 2 only, never to biases, norm "
      "parameters, `cls_token`, `pos_embed`"),
    K("optim", "beta1", FLOAT, optim_beta1, "0.9", 0, 0.999999, NULL, "AdamW beta1"),
    K("optim", "beta2", FLOAT, optim_beta2, "0.999", 0, 0.99999999, NULL, "AdamW beta2"),
    K("optim", "eps", FLOAT, optim_eps, "1e-8", 0, 1, NULL, "AdamW epsilon (outside the square root)"),
    K("optim", "momentum", FLOAT, optim_momentum, "0.9", 0, 0.999999, NULL, "SGD momentum (0 = none)"),
    K("optim", "nesterov", BOOL, optim_nesterov, "false", 0, 0, NULL, "SGD Nesterov momentum"),
    K("optim", "schedule", STRING, optim_schedule, "cosine", 0, 0, check_schedule,
      "`cosine` (to min_lr at the last step), `step` (x gamma every step_size steps), `constant`; all after warmup"),
    K("optim", "warmup_steps", I64, optim_warmup_steps, "0", 0, BIG, NULL, "linear warmup steps"),
    K("optim", "min_lr", FLOAT, optim_min_lr, "0", 0, 1e6, NULL, "cosine floor"),
    K("optim", "step_size", I64, optim_step_size, "1000", 1, BIG, NULL, "step schedule: steps between decays"),
    K("optim", "gamma", FLOAT, optim_gamma, "0.1", 0, 1, NULL, "step schedule: decay factor"),
    K("optim", "clip_grad_norm", FLOAT, optim_clip_grad_norm, "0", 0, 1e9, NULL,
      "clip gradients to this global L2 norm; 0 = off"),

    K("quant", "format", STRING, quant_format, "fp32", 0, 0, check_format,
      "format of every GEMM operand: `fp32`, `bf16`, `mxint8`, `mxfp8_e4m3`, `mxfp8_e5m2`, `mxfp6_e3m2`, "
      "`mxfp6_e2m3`, `mxfp4_e2m1`, `boost` (MXFP8_E2M5), `mxsf`"),
    K("quant", "tiling", STRING, quant_tiling, "2d", 0, 0, check_tiling,
      "`1d` (blocks along each product's reduction axis, re-quantized for backward), `1d_requant`, `2d` (tiles "
      "quantized once, reused transposed)"),
    K("quant", "block", INT, quant_block, "32", 1, 4096, NULL, "1D block length"),
    K("quant", "tile", STRING, quant_tile, "8x8", 0, 0, check_tile, "2D tile ROWSxCOLS"),
    K("quant", "round", STRING, quant_round, "even", 0, 0, check_round,
      "rounding: `even`, `away`, `floor`, `stochastic`"),
    K("quant", "grad_round", STRING, quant_grad_round, "", 0, 0, check_round_opt,
      "rounding of gradient operands (e.g. `stochastic`); empty = `round`"),
    K("quant", "scale", STRING, quant_scale, "floor", 0, 0, check_scale, "shared-scale mode: `floor` or `rceil`"),
    K("quant", "elementwise", STRING, quant_elementwise, "fp32", 0, 0, check_elementwise,
      "`bf16`: norms, activations, softmax and residual adds round outputs to bfloat16; `fp32`: no rounding"),
    K("quant", "fwd_act", STRING, quant_fwd_act, "", 0, 0, check_format_opt,
      "forward activation format; empty = `format`"),
    K("quant", "fwd_weight", STRING, quant_fwd_weight, "", 0, 0, check_format_opt, "forward weight format"),
    K("quant", "bwd_grad", STRING, quant_bwd_grad, "", 0, 0, check_format_opt,
      "output-gradient format in both backward products"),
    K("quant", "bwd_act", STRING, quant_bwd_act, "", 0, 0, check_format_opt, "activation format in the dW product"),
    K("quant", "bwd_weight", STRING, quant_bwd_weight, "", 0, 0, check_format_opt, "weight format in the dX product"),
    K("quant", "keep", STRING, quant_keep, "", 0, 0, check_keep,
      "per-layer overrides `pattern:format, ...` with `*` wildcards, e.g. `conv1:bf16, fc:bf16`"),

    K("train", "epochs", INT, train_epochs, "1", 1, 1000000, NULL, "training epochs"),
    K("train", "max_steps", I64, train_max_steps, "0", 0, BIG, NULL, "cap on optimizer steps; 0 = none"),
    K("train", "seed", I64, train_seed, "0", 0, BIG, NULL, "seed of initialisation, shuffling, augmentation, dropout"),
    K("train", "ckpt_every", I64, train_ckpt_every, "0", 0, BIG, NULL,
      "also write ckpt/last.h5 every N steps; 0 = each epoch only"),
    K("train", "on_nonfinite", STRING, train_on_nonfinite, "stop", 0, 0, check_nonfinite,
      "a NaN/Inf loss or gradient norm: `stop` the run or `skip` the step"),
    K("train", "label_smoothing", FLOAT, train_label_smoothing, "0", 0, 0.99, NULL, "cross-entropy label smoothing"),

    K("log", "dir", STRING, log_dir, "runs/run", 0, 0, NULL, "run directory (created)"),
    K("log", "stats_every", I64, log_stats_every, "0", 0, BIG, NULL,
      "collect per-layer quantization statistics every N steps into stats.csv/stats.h5; 0 = off"),
    K("log", "print_every", I64, log_print_every, "50", 1, BIG, NULL,
      "steps between plain progress lines (when stderr is not a terminal)"),
    K("log", "progress", BOOL, log_progress, "true", 0, 0, NULL, "progress bar when stderr is a terminal"),
};
const int config_n_keys = (int)(sizeof config_keys / sizeof config_keys[0]);

static const char *const config_sections[] = {"model", "data", "optim", "quant", "train", "log"};
#define N_SECTIONS 6

/* ---------------- setting values ---------------- */

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < config_n_keys; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].key, key) == 0) return i;
    return -1;
}

static bool section_known(const char *s) {
    for (int i = 0; i < N_SECTIONS; i++)
        if (strcmp(config_sections[i], s) == 0) return true;
    return false;
}

static int unknown_section(const char *s, mx_err *err) {
    return mx_err_set(err, "unknown section [%s] (valid: model, data, optim, quant, train, log)", s);
}

static int unknown_key(const char *section, const char *key, mx_err *err) {
    char valid[1024] = "";
    size_t n = 0;
    for (int i = 0; i < config_n_keys; i++)
        if (strcmp(config_keys[i].section, section) == 0)
            n += (size_t)snprintf(valid + n, n < sizeof valid ? sizeof valid - n : 0, "%s%s", n ? ", " : "",
                                  config_keys[i].key);
    return mx_err_set(err, "unknown key '%s' in [%s] (valid: %s)", key, section, valid);
}

/* Validates value for key k and stores it (typed and as text). */
static int set_value(config *c, int k, const char *value, mx_err *err) {
    const config_key *key = &config_keys[k];
    char *field = (char *)&c->v + key->offset;
    char *end;
    switch (key->type) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_I64: {
        errno = 0;
        long long x = strtoll(value, &end, 10);
        if (end == value || *end || errno)
            return mx_err_set(err, "[%s] %s: '%s' is not an integer", key->section, key->key, value);
        if ((double)x < key->min || (double)x > key->max)
            return mx_err_set(err, "[%s] %s: %lld is out of range [%.17g, %.17g]", key->section, key->key, x, key->min,
                              key->max);
        if (key->type == CONFIG_TYPE_INT) *(int *)field = (int)x;
        else *(int64_t *)field = x;
        break;
    }
    case CONFIG_TYPE_FLOAT: {
        errno = 0;
        double x = strtod(value, &end);
        if (end == value || *end || !isfinite(x))
            return mx_err_set(err, "[%s] %s: '%s' is not a number", key->section, key->key, value);
        if (x < key->min || x > key->max)
            return mx_err_set(err, "[%s] %s: %g is out of range [%g, %g]", key->section, key->key, x, key->min,
                              key->max);
        *(double *)field = x;
        break;
    }
    case CONFIG_TYPE_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0 || strcmp(value, "yes") == 0) *(bool *)field = true;
        else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0 || strcmp(value, "no") == 0)
            *(bool *)field = false;
        else return mx_err_set(err, "[%s] %s: '%s' is not true/false", key->section, key->key, value);
        break;
    case CONFIG_TYPE_STRING:
        if (strlen(value) >= CONFIG_STR)
            return mx_err_set(err, "[%s] %s: value longer than %d characters", key->section, key->key, CONFIG_STR - 1);
        if (key->check) {
            mx_err e2 = {0};
            if (key->check(value, &e2)) return mx_err_set(err, "[%s] %s: %s", key->section, key->key, e2.msg);
        }
        snprintf(field, CONFIG_STR, "%s", value);
        break;
    default: MX_ASSERT(0);
    }
    snprintf(c->text[k], CONFIG_STR, "%s", value);
    return 0;
}

void config_init(config *c) {
    MX_ASSERT(config_n_keys <= (int)(sizeof c->line / sizeof c->line[0]));
    memset(c, 0, sizeof *c);
    for (int k = 0; k < config_n_keys; k++) {
        mx_err err;
        MX_ASSERTF(set_value(c, k, config_keys[k].def, &err) == 0, "bad default: %s", err.msg);
    }
}

/* ---------------- INI files ---------------- */

typedef struct parse_state {
    config *c;
    FILE *f;
    const char *path;
    int line;
    bool seen[128];
    bool failed;
    mx_err *err;
} parse_state;

/* fgets that counts lines and checks section headers (inih does not report
 * sections without keys, and its handler gets no line number). */
static char *reader(char *str, int num, void *stream) {
    parse_state *ps = stream;
    if (ps->failed) return NULL;
    char *r = fgets(str, num, ps->f);
    if (!r) return NULL;
    ps->line++;
    const char *p = str;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        char name[128];
        size_t len = close ? (size_t)(close - p - 1) : 0;
        if (!close || len >= sizeof name) {
            mx_err_set(ps->err, "%s:%d: malformed section header", ps->path, ps->line);
            ps->failed = true;
            return NULL;
        }
        memcpy(name, p + 1, len);
        name[len] = 0;
        if (!section_known(name)) {
            mx_err e2;
            unknown_section(name, &e2);
            mx_err_set(ps->err, "%s:%d: %s", ps->path, ps->line, e2.msg);
            ps->failed = true;
            return NULL;
        }
    }
    return r;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    parse_state *ps = user;
    mx_err e2 = {0};
    if (!section[0]) {
        mx_err_set(ps->err, "%s:%d: key '%s' outside any section (start with [model], [data], ...)", ps->path,
                   ps->line, name);
        ps->failed = true;
        return 0;
    }
    int k = find_key(section, name);
    if (k < 0) {
        unknown_key(section, name, &e2);
        mx_err_set(ps->err, "%s:%d: %s", ps->path, ps->line, e2.msg);
        ps->failed = true;
        return 0;
    }
    if (ps->seen[k]) {
        mx_err_set(ps->err, "%s:%d: [%s] %s is set twice (first on line %d)", ps->path, ps->line, section, name,
                   ps->c->line[k]);
        ps->failed = true;
        return 0;
    }
    if (set_value(ps->c, k, value, &e2)) {
        mx_err_set(ps->err, "%s:%d: %s", ps->path, ps->line, e2.msg);
        ps->failed = true;
        return 0;
    }
    ps->seen[k] = true;
    ps->c->line[k] = ps->line;
    return 1;
}

int config_load_file(config *c, const char *path, mx_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) return mx_err_set(err, "%s: cannot open config file", path);
    parse_state ps = {.c = c, .f = f, .path = path, .err = err};
    int rc = ini_parse_stream(reader, &ps, handler, &ps);
    fclose(f);
    if (ps.failed) return -1;
    if (rc > 0) return mx_err_set(err, "%s:%d: syntax error (expected [section] or key = value)", path, rc);
    if (rc < 0) return mx_err_set(err, "%s: cannot read", path);
    snprintf(c->file, sizeof c->file, "%s", path);
    return 0;
}

int config_set(config *c, const char *assignment, mx_err *err) {
    const char *eq = strchr(assignment, '='), *dot = strchr(assignment, '.');
    if (!eq || !dot || dot > eq)
        return mx_err_set(err, "--set %s: expected section.key=value (e.g. quant.format=mxsf)", assignment);
    char section[64], key[64];
    size_t sl = (size_t)(dot - assignment), kl = (size_t)(eq - dot - 1);
    if (sl >= sizeof section || kl >= sizeof key) return mx_err_set(err, "--set %s: name too long", assignment);
    memcpy(section, assignment, sl);
    section[sl] = 0;
    memcpy(key, dot + 1, kl);
    key[kl] = 0;
    mx_err e2 = {0};
    if (!section_known(section)) {
        unknown_section(section, &e2);
        return mx_err_set(err, "--set %s: %s", assignment, e2.msg);
    }
    int k = find_key(section, key);
    if (k < 0) {
        unknown_key(section, key, &e2);
        return mx_err_set(err, "--set %s: %s", assignment, e2.msg);
    }
    if (set_value(c, k, eq + 1, &e2)) return mx_err_set(err, "--set %s: %s", assignment, e2.msg);
    c->line[k] = -1;
    return 0;
}

int config_write(const config *c, FILE *f) {
    fprintf(f, "; resolved configuration (every key; written by mxtrain)\n");
    for (int s = 0; s < N_SECTIONS; s++) {
        fprintf(f, "\n[%s]\n", config_sections[s]);
        for (int k = 0; k < config_n_keys; k++)
            if (strcmp(config_keys[k].section, config_sections[s]) == 0)
                fprintf(f, "%s = %s\n", config_keys[k].key, c->text[k]);
    }
    return ferror(f) ? -1 : 0;
}

void config_write_reference(FILE *f) {
    static const char *const tn[CONFIG_TYPE_COUNT] = {"int", "int", "number", "bool", "text"};
    for (int s = 0; s < N_SECTIONS; s++) {
        fprintf(f, "\n### [%s]\n\n| key | type | default | meaning |\n|---|---|---|---|\n", config_sections[s]);
        for (int k = 0; k < config_n_keys; k++) {
            const config_key *key = &config_keys[k];
            if (strcmp(key->section, config_sections[s]) != 0) continue;
            fprintf(f, "| `%s.%s` | %s | %s%s%s | %s |\n", key->section, key->key, tn[key->type], key->def[0] ? "`" : "",
                    key->def[0] ? key->def : "(empty)", key->def[0] ? "`" : "", key->doc);
        }
    }
}

/* ---------------- translations ---------------- */

int config_model(const config *c, model_config *out, mx_err *err) {
    const run_config *v = &c->v;
    model_arch a;
    if (model_arch_parse(v->model_arch, &a, err)) return -1;
    model_config m = model_config_default(a);
    m.num_classes = v->model_num_classes;
    m.in_chans = v->model_in_chans;
    if (model_stem_parse(v->model_stem, &m.stem, err)) return -1;
    double b[4], w[4];
    int n;
    if (a == MODEL_ARCH_RESNET) {
        if (parse_list(v->model_blocks, b, 4, 4, true, &n, err) || parse_list(v->model_widths, w, 4, 4, true, &n, err))
            return -1;
        for (int i = 0; i < 4; i++) m.blocks[i] = (int)b[i], m.widths[i] = (int)w[i];
    }
    m.img_size = v->model_img_size;
    m.patch_size = v->model_patch_size;
    if (a == MODEL_ARCH_VIT) {
        m.dim = v->model_dim;
        m.depth = v->model_depth;
        m.heads = v->model_heads;
    }
    m.mlp_ratio = (float)v->model_mlp_ratio;
    m.drop_path = (float)v->model_drop_path;
    m.seed = (uint64_t)v->train_seed;
    *out = m;
    return 0;
}

int config_data(const config *c, data_config *out, mx_err *err) {
    const run_config *v = &c->v;
    data_kind k;
    if (data_kind_parse(v->data_dataset, &k, err)) return -1;
    data_config d = data_config_default(k);
    snprintf(d.path, sizeof d.path, "%s", v->data_path);
    d.img_size = v->data_img_size;
    if ((k == DATA_KIND_IMAGEFOLDER || k == DATA_KIND_SYNTHETIC) && d.img_size == 0) d.img_size = v->model_img_size;
    d.channels = v->model_in_chans;
    d.num_classes = v->model_num_classes;
    d.synthetic_train = v->data_synthetic_train;
    d.synthetic_eval = v->data_synthetic_eval;
    d.limit_train = v->data_limit_train;
    d.limit_eval = v->data_limit_eval;
    double tmp[DATA_MAX_CHANNELS];
    if (v->data_mean[0]) {
        if (parse_list(v->data_mean, tmp, 1, DATA_MAX_CHANNELS, false, &d.n_mean, err)) return -1;
        for (int i = 0; i < d.n_mean; i++) d.mean[i] = (float)tmp[i];
    }
    if (v->data_std[0]) {
        if (parse_list(v->data_std, tmp, 1, DATA_MAX_CHANNELS, false, &d.n_std, err)) return -1;
        for (int i = 0; i < d.n_std; i++) d.std[i] = (float)tmp[i];
    }
    snprintf(d.h5_images, sizeof d.h5_images, "%s", v->data_h5_images);
    snprintf(d.h5_labels, sizeof d.h5_labels, "%s", v->data_h5_labels);
    d.shuffle = v->data_shuffle;
    d.augment = v->data_augment;
    d.workers = v->data_workers;
    d.seed = (uint64_t)v->train_seed;
    *out = d;
    return 0;
}

int config_optim(const config *c, optim_config *out, mx_err *err) {
    const run_config *v = &c->v;
    optim_kind k;
    if (optim_kind_parse(v->optim_name, &k, err)) return -1;
    optim_config o = optim_config_default(k);
    o.lr = v->optim_lr;
    o.weight_decay = v->optim_weight_decay;
    o.beta1 = v->optim_beta1;
    o.beta2 = v->optim_beta2;
    o.eps = v->optim_eps;
    o.momentum = v->optim_momentum;
    o.nesterov = v->optim_nesterov;
    if (optim_schedule_parse(v->optim_schedule, &o.schedule, err)) return -1;
    o.warmup_steps = v->optim_warmup_steps;
    o.min_lr = v->optim_min_lr;
    o.step_size = v->optim_step_size;
    o.gamma = v->optim_gamma;
    o.clip_grad_norm = v->optim_clip_grad_norm;
    *out = o;
    return 0;
}

int config_policy(const config *c, mm_policy *p, mx_err *err) {
    const run_config *v = &c->v;
    quant_format f;
    if (quant_format_parse(v->quant_format, &f, err)) return -1;
    mm_policy_init(p, f);
    const char *over[MM_ROLE_COUNT] = {v->quant_fwd_act,  v->quant_fwd_weight, v->quant_bwd_grad,
                                       v->quant_bwd_weight, v->quant_bwd_grad,  v->quant_bwd_act};
    for (int r = 0; r < MM_ROLE_COUNT; r++)
        if (over[r][0] && quant_format_parse(over[r], &p->role_format[r], err)) goto fail;
    if (mm_tiling_parse(v->quant_tiling, &p->tiling, err)) goto fail;
    p->block = v->quant_block;
    if (sscanf(v->quant_tile, "%dx%d", &p->tile_rows, &p->tile_cols) != 2) {
        mx_err_set(err, "quant.tile: bad value '%s'", v->quant_tile);
        goto fail;
    }
    if (quant_round_parse(v->quant_round, &p->round, err)) goto fail;
    p->grad_round = p->round;
    if (v->quant_grad_round[0] && quant_round_parse(v->quant_grad_round, &p->grad_round, err)) goto fail;
    if (quant_scale_parse(v->quant_scale, &p->scale, err)) goto fail;
    if (parse_keep(v->quant_keep, p, err)) goto fail;
    p->seed = (uint64_t)v->train_seed;
    bool any = false;
    for (int r = 0; r < MM_ROLE_COUNT; r++) any |= p->role_format[r] != QUANT_FORMAT_FP32;
    for (int i = 0; i < p->n_keep; i++) any |= p->keep[i].format != QUANT_FORMAT_FP32;
    return any ? 1 : 0;
fail:
    return -1;
}

bool config_elementwise_bf16(const config *c) { return strcmp(c->v.quant_elementwise, "bf16") == 0; }
