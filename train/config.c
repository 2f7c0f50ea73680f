/* Composes the modules' key tables into sections, and reads INI files (see config.h). */
#include "train/config.h"

#include <ctype.h>

#include <ini.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------- [train] and [log] ---------------- */

static const char *const train_nonfinite_names[] = {"stop", "skip"};
_Static_assert(sizeof train_nonfinite_names / sizeof train_nonfinite_names[0] == TRAIN_NONFINITE_COUNT, "names");
MX_ENUM_OF_NAMES(train_nonfinite_enum, "non-finite policy", train_nonfinite_names);
static const char *const train_gpu_gemm_names[] = {"bf16", "fp32"};
_Static_assert(sizeof train_gpu_gemm_names / sizeof train_gpu_gemm_names[0] == TRAIN_GPU_GEMM_COUNT, "names");
MX_ENUM_OF_NAMES(train_gpu_gemm_enum, "GPU GEMM", train_gpu_gemm_names);
static const char *const train_cpu_gemm_names[] = {"auto", "fp32", "openblas"};
_Static_assert(sizeof train_cpu_gemm_names / sizeof train_cpu_gemm_names[0] == TRAIN_CPU_GEMM_COUNT, "names");
MX_ENUM_OF_NAMES(train_cpu_gemm_enum, "CPU GEMM", train_cpu_gemm_names);
static const char *const train_gpu_conv_names[] = {"gather", "cudnn"};
_Static_assert(sizeof train_gpu_conv_names / sizeof train_gpu_conv_names[0] == TRAIN_GPU_CONV_COUNT, "names");
MX_ENUM_OF_NAMES(train_gpu_conv_enum, "GPU convolution", train_gpu_conv_names);
static const char *const train_cpu_conv_names[] = {"auto", "gather"};
_Static_assert(sizeof train_cpu_conv_names / sizeof train_cpu_conv_names[0] == TRAIN_CPU_CONV_COUNT, "names");
MX_ENUM_OF_NAMES(train_cpu_conv_enum, "CPU convolution", train_cpu_conv_names);

#define BIG 1e18
static const key_def train_keys[] = {
    KEY_NUM(train_config, "epochs", INT, epochs, "1", 1, 1000000, "training epochs"),
    KEY_NUM(train_config, "max_steps", I64, max_steps, "0", 0, BIG, "cap on optimizer steps; 0 = none"),
    KEY_NUM(train_config, "seed", I64, seed, "0", 0, BIG, "seed of initialisation, shuffling, augmentation, dropout"),
    KEY_NUM(train_config, "ckpt_every", I64, ckpt_every, "0", 0, BIG,
            "also write ckpt/last.h5 every N steps; 0 = each epoch only"),
    KEY_ENUMV(train_config, "on_nonfinite", on_nonfinite, "stop", &train_nonfinite_enum,
              "a NaN/Inf loss or gradient norm: `stop` the run or `skip` the step"),
    KEY_NUM(train_config, "label_smoothing", DOUBLE, label_smoothing, "0", 0, 0.99, "cross-entropy label smoothing"),
    KEY_ENUMV(train_config, "device", device, "cpu", &cli_device_enum,
              "where steps run: `cpu`, or `cuda` (the GPU: the same products, see docs/gpu.md)"),
    KEY_ENUMV(train_config, "gpu_gemm", gpu_gemm, "bf16", &train_gpu_gemm_enum,
              "GPU products of quantized operands: `bf16` tensor cores (exact operands, the tensor cores' own "
              "FP32 accumulation) or `fp32` GEMMs (the CPU's arithmetic up to the order of sums; slower)"),
    KEY_ENUMV(train_config, "cpu_gemm", cpu_gemm, "auto", &train_cpu_gemm_enum,
              "CPU GEMM engines: `auto` runs products of two quantized operands on the CPU's BF16 units through oneDNN "
              "where it has them (exact operands, FP32 accumulation) and FP32 products through oneDNN's f32 matmul "
              "where its kernels are AVX-512 ones, OpenBLAS otherwise; `fp32` runs everything as OpenBLAS sgemm; "
              "`openblas` is `auto` with OpenBLAS for the FP32 products"),
    KEY_NUM(train_config, "gpu_chunk_mb", I64, gpu_chunk_mb, "512", 1, 1 << 20,
            "GPU convolutions: MB of gathered im2col columns per GEMM (smaller: less device memory, more GEMMs)"),
    KEY_ENUMV(train_config, "cpu_conv", cpu_conv, "auto", &train_cpu_conv_enum,
              "CPU convolutions over two float32 operands: `auto` runs oneDNN's direct kernels where FP32 products "
              "use oneDNN (train.cpu_gemm = auto on AVX-512 CPUs; no im2col gathers), `gather` forms im2col rows "
              "and multiplies them, as quantized convolutions always do"),
    KEY_ENUMV(train_config, "gpu_conv", gpu_conv, "gather", &train_gpu_conv_enum,
              "GPU convolutions over two float32 operands: `gather` (im2col + cuBLAS, as quantized ones always do) "
              "or `cudnn` (FP32 implicit GEMM, deterministic: less memory, slower in NHWC; gathers where cuDNN 9 "
              "is not on the library path)"),
    KEY_BOOLV(train_config, "sync_bn", sync_bn, "false",
              "several ranks (mpirun): BatchNorm's batch statistics over the global batch, summed over the ranks; "
              "false keeps each rank's own, as PyTorch DDP does"),
    KEY_NUM(train_config, "dist_timeout_s", DOUBLE, dist_timeout_s, "300", 1, 1e7,
            "several ranks: seconds a rank waits for the others in a collective before it ends every rank "
            "(one died or hangs)"),
};
static const key_table train_key_table = KEY_TABLE("train", train_keys);

static const key_def log_keys[] = {
    KEY_TEXT_NONEMPTY(log_config, "dir", dir, "runs/run", "run directory (created; not empty)"),
    KEY_NUM(log_config, "stats_every", I64, stats_every, "0", 0, BIG,
            "collect per-layer quantization statistics every N steps into stats.csv/stats.h5; 0 = off"),
    KEY_NUM(log_config, "print_every", I64, print_every, "50", 1, BIG,
            "steps between plain progress lines (when stderr is not a terminal)"),
    KEY_BOOLV(log_config, "progress", progress, "true", "progress bar when stderr is a terminal"),
};
static const key_table log_key_table = KEY_TABLE("log", log_keys);
#undef BIG

/* ---------------- the sections ---------------- */

typedef struct config_section {
    const key_table *t;
    size_t offset; /* of the module's struct in run_config */
} config_section;

static const config_section config_sections[] = {
    {&model_key_table, offsetof(run_config, model)}, {&data_key_table, offsetof(run_config, data)},
    {&optim_key_table, offsetof(run_config, optim)}, {&mm_key_table, offsetof(run_config, quant)},
    {&train_key_table, offsetof(run_config, train)}, {&log_key_table, offsetof(run_config, log)},
};
#define N_SECTIONS ((int)(sizeof config_sections / sizeof config_sections[0]))

int config_key_count(void) {
    int n = 0;
    for (int s = 0; s < N_SECTIONS; s++) n += config_sections[s].t->n;
    MX_ASSERT(n <= CONFIG_MAX_KEYS);
    return n;
}

/* Key k: its section (index) and definition. */
static const key_def *key_at(int k, int *sec) {
    for (int s = 0; s < N_SECTIONS; s++) {
        if (k < config_sections[s].t->n) {
            *sec = s;
            return &config_sections[s].t->keys[k];
        }
        k -= config_sections[s].t->n;
    }
    MX_ASSERT(0);
    return NULL;
}

const key_def *config_key(int k, const char **section) {
    int s;
    const key_def *d = key_at(k, &s);
    if (section) *section = config_sections[s].t->section;
    return d;
}

static int section_find(const char *name) {
    for (int s = 0; s < N_SECTIONS; s++)
        if (strcmp(config_sections[s].t->section, name) == 0) return s;
    return -1;
}

static int find_key(const char *section, const char *key) {
    for (int k = 0, n = config_key_count(); k < n; k++) {
        const char *sec;
        const key_def *d = config_key(k, &sec);
        if (strcmp(sec, section) == 0 && strcmp(d->name, key) == 0) return k;
    }
    return -1;
}

static bool section_known(const char *s) { return section_find(s) >= 0; }

static int unknown_section(const char *s, mx_err *err) {
    char valid[256] = "";
    size_t n = 0;
    for (int i = 0; i < N_SECTIONS && n < sizeof valid; i++)
        n += (size_t)snprintf(valid + n, sizeof valid - n, "%s%s", i ? ", " : "", config_sections[i].t->section);
    return mx_err_set(err, "unknown section [%s] (valid: %s)", s, valid);
}

static int unknown_key(const char *section, const char *key, mx_err *err) {
    const key_table *t = config_sections[section_find(section)].t;
    char valid[1024] = "";
    size_t n = 0;
    for (int i = 0; i < t->n && n < sizeof valid; i++)
        n += (size_t)snprintf(valid + n, sizeof valid - n, "%s%s", i ? ", " : "", t->keys[i].name);
    return mx_err_set(err, "unknown key '%s' in [%s] (valid: %s)", key, section, valid);
}

/* Validates value for key k and stores it (typed and as text). */
static int set_value(config *c, int k, const char *value, mx_err *err) {
    int s;
    const key_def *d = key_at(k, &s);
    if (strlen(value) >= CONFIG_TEXT)
        return mx_err_set(err, "[%s] %s: value longer than %d characters", config_sections[s].t->section, d->name,
                          CONFIG_TEXT - 1);
    mx_err e2 = {0};
    if (key_set(d, (char *)&c->v + config_sections[s].offset, value, &e2))
        return mx_err_set(err, "[%s] %s: %s", config_sections[s].t->section, d->name, e2.msg);
    snprintf(c->text[k], CONFIG_TEXT, "%s", value);
    return 0;
}

void config_init(config *c) {
    memset(c, 0, sizeof *c);
    for (int k = 0, n = config_key_count(); k < n; k++) {
        mx_err err;
        MX_ASSERTF(set_value(c, k, config_key(k, NULL)->def, &err) == 0, "bad default: %s", err.msg);
    }
}

/* ---------------- INI files ---------------- */

typedef struct parse_state {
    config *c;
    FILE *f;
    const char *path;
    int line;
    bool seen[CONFIG_MAX_KEYS];
    bool failed;
    mx_err *err;
    char *buf; /* the whole line, however long */
    size_t cap;
} parse_state;

/* Reads a line for inih, counting lines and checking section headers (inih
 * does not report sections without keys, and its handler gets no line
 * number). A line longer than inih's buffer, or with a NUL byte, is an error:
 * never split or cut, so no part of a comment can ever set a key. */
static char *reader(char *str, int num, void *stream) {
    parse_state *ps = stream;
    if (ps->failed) return NULL;
    ssize_t len = getline(&ps->buf, &ps->cap, ps->f);
    if (len < 0) return NULL;
    ps->line++;
    if ((size_t)len != strlen(ps->buf)) {
        mx_err_set(ps->err, "%s:%d: NUL byte in the line (a config is text)", ps->path, ps->line);
        ps->failed = true;
        return NULL;
    }
    if (len > num - 1) {
        mx_err_set(ps->err, "%s:%d: line longer than %d characters", ps->path, ps->line, num - 2);
        ps->failed = true;
        return NULL;
    }
    char *r = memcpy(str, ps->buf, (size_t)len + 1);
    const char *p = str;
    while (isspace((unsigned char)*p)) p++; /* as inih skips it (\v and \f too) */
    if (*p == '[') {
        const char *close = strchr(p, ']');
        char name[128];
        size_t nl = close ? (size_t)(close - p - 1) : 0;
        if (!close || nl >= sizeof name) {
            mx_err_set(ps->err, "%s:%d: malformed section header", ps->path, ps->line);
            ps->failed = true;
            return NULL;
        }
        memcpy(name, p + 1, nl);
        name[nl] = 0;
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
        /* the reader refuses unknown section headers; this holds whatever inih takes for one */
        if (!section_known(section)) unknown_section(section, &e2);
        else unknown_key(section, name, &e2);
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
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) { /* a folder reads as empty, /dev/zero never ends */
        fclose(f);
        return mx_err_set(err, "%s: not a regular file (a config is an INI text file)", path);
    }
    parse_state ps = {.c = c, .f = f, .path = path, .err = err};
    int rc = ini_parse_stream(reader, &ps, handler, &ps);
    free(ps.buf);
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
    int k = 0;
    for (int s = 0; s < N_SECTIONS; s++) {
        const key_table *t = config_sections[s].t;
        fprintf(f, "\n[%s]\n", t->section);
        for (int i = 0; i < t->n; i++, k++) fprintf(f, "%s = %s\n", t->keys[i].name, c->text[k]);
    }
    return ferror(f) ? -1 : 0;
}

void config_write_reference(FILE *f) {
    for (int s = 0; s < N_SECTIONS; s++) {
        const key_table *t = config_sections[s].t;
        fprintf(f, "\n### [%s]\n\n| key | type | default | meaning |\n|---|---|---|---|\n", t->section);
        for (int i = 0; i < t->n; i++) {
            const key_def *d = &t->keys[i];
            char type[1024];
            key_type_text(d, type, sizeof type);
            fprintf(f, "| `%s.%s` | %s | %s%s%s | %s |\n", t->section, d->name, type, d->def[0] ? "`" : "",
                    d->def[0] ? d->def : "(empty)", d->def[0] ? "`" : "", d->doc);
        }
    }
}

/* ---------------- what one section takes from another ---------------- */

model_config config_model(const config *c) {
    model_config m = c->v.model;
    m.seed = (uint64_t)c->v.train.seed;
    return m;
}

data_config config_data(const config *c) {
    data_config d = c->v.data;
    if ((d.kind == DATA_KIND_IMAGEFOLDER || d.kind == DATA_KIND_SYNTHETIC) && d.img_size == 0)
        d.img_size = c->v.model.img_size;
    d.channels = c->v.model.in_chans;
    d.num_classes = c->v.model.num_classes;
    d.seed = (uint64_t)c->v.train.seed;
    return d;
}

optim_config config_optim(const config *c) { return c->v.optim; }

int config_check(const config *c, mx_err *err) {
    mm_policy p;
    return config_policy(c, &p) ? mm_policy_check(&p, err) : 0;
}

bool config_policy(const config *c, mm_policy *p) { return mm_config_policy(&c->v.quant, (uint64_t)c->v.train.seed, p); }

bool config_elementwise_bf16(const config *c) { return c->v.quant.elementwise == MM_ELEMENTWISE_BF16; }

/* ---------------- a study's variants ---------------- */

static int variants_split(const char *s, char items[][64], int cap) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", s);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ", ", &save); t && n < cap; t = strtok_r(NULL, ", ", &save))
        snprintf(items[n++], 64, "%s", t);
    return n;
}

/* err's message after a prefix */
static int variants_err(mx_err *err, const char *a, const char *b) {
    mx_err e = *err;
    return mx_err_set(err, "%s%s%s", a, b, e.msg);
}

int config_variant(const config *base, const config_variants *v, int k, config *c, char *name, size_t name_n,
                   mx_err *err) {
    const char *f = v->format[k / v->nt], *t = v->tiling[k % v->nt];
    *c = *base;
    if (name) snprintf(name, name_n, "%s %s", f, t);
    char set[160];
    snprintf(set, sizeof set, "quant.format=%s", f);
    if (config_set(c, set, err)) return -1;
    snprintf(set, sizeof set, "quant.tiling=%s", t);
    return config_set(c, set, err);
}

int config_variants_parse(const config *base, const char *formats, const char *tilings, config_variants *v,
                          bool *usage, mx_err *err) {
    memset(v, 0, sizeof *v);
    *usage = true;
    v->nf = variants_split(formats, v->format, CONFIG_MAX_FORMATS);
    v->nt = tilings ? variants_split(tilings, v->tiling, CONFIG_MAX_TILINGS) : 0;
    if (v->nt == 0) snprintf(v->tiling[v->nt++], 64, "%s", mm_tiling_name(base->v.quant.tiling));
    if (v->nf == 0) return mx_err_set(err, "--formats: no format named");
    for (int i = 0; i < v->nf; i++) {
        quant_format f;
        if (quant_format_parse(v->format[i], &f, err)) return variants_err(err, "--formats: ", "");
    }
    for (int j = 0; j < v->nt; j++) {
        mm_tiling t;
        if (mm_tiling_parse(v->tiling[j], &t, err)) return variants_err(err, "--tilings: ", "");
    }
    *usage = false;
    config *c = malloc(sizeof *c);
    if (!c) return mx_err_set(err, "out of memory");
    int rc = 0;
    for (int k = 0; k < config_variant_count(v) && !rc; k++) { /* each variant's policy (a block a BDR format cannot take ...) */
        char name[160];
        if (config_variant(base, v, k, c, name, sizeof name, err) || config_check(c, err)) {
            strcat(name, ": ");
            rc = variants_err(err, name, "");
        }
    }
    free(c);
    return rc;
}
