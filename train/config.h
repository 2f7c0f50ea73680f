/* Run configuration: INI files (inih) with sections [model] [data] [optim]
 * [quant] [train] [log], plus `--set section.key=value` overrides.
 *
 * Each section is a module's key table (core/keys.h) over that module's own
 * config struct: model_key_table (layers/model.c), data_key_table
 * (datasets/sources.c), optim_key_table (optim/optim.c), mm_key_table
 * (autograd/mm_config.c), and [train]/[log] here. Values are parsed once, at
 * load, into typed fields (enums included); parsing, validation, the resolved
 * config written to a run directory, --keys and docs/config.md all come from
 * the tables. An unknown section or key, a wrong type, an out-of-range value or
 * a bad name is an error naming file:line (for --set: the option). */
#ifndef MX_TRAIN_CONFIG_H
#define MX_TRAIN_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "autograd/mm.h"
#include "core/error.h"
#include "datasets/datasets.h"
#include "layers/model.h"
#include "optim/optim.h"
#include "train/cli.h"

#define CONFIG_MAX_KEYS 128
#define CONFIG_TEXT 1024

typedef enum train_nonfinite { TRAIN_NONFINITE_STOP, TRAIN_NONFINITE_SKIP, TRAIN_NONFINITE_COUNT } train_nonfinite;
/* How the GPU multiplies quantized operands: bf16 tensor cores, or FP32 GEMMs (docs/gpu.md). */
typedef enum train_gpu_gemm { TRAIN_GPU_GEMM_BF16, TRAIN_GPU_GEMM_FP32, TRAIN_GPU_GEMM_COUNT } train_gpu_gemm;
typedef enum train_cpu_gemm {
    TRAIN_CPU_GEMM_AUTO,
    TRAIN_CPU_GEMM_FP32,
    TRAIN_CPU_GEMM_OPENBLAS,
    TRAIN_CPU_GEMM_COUNT
} train_cpu_gemm;
typedef enum train_gpu_conv { TRAIN_GPU_CONV_GATHER, TRAIN_GPU_CONV_CUDNN, TRAIN_GPU_CONV_COUNT } train_gpu_conv;
typedef enum train_cpu_conv { TRAIN_CPU_CONV_AUTO, TRAIN_CPU_CONV_GATHER, TRAIN_CPU_CONV_COUNT } train_cpu_conv;

/* [train] */
typedef struct train_config {
    int epochs;
    int64_t max_steps, seed, ckpt_every;
    int64_t gpu_chunk_mb;
    train_nonfinite on_nonfinite;
    double label_smoothing;
    cli_device device;
    train_gpu_gemm gpu_gemm;
    train_gpu_conv gpu_conv;
    train_cpu_conv cpu_conv;
    train_cpu_gemm cpu_gemm;
    bool sync_bn;          /* data-parallel ranks: BatchNorm statistics over the global batch */
    double dist_timeout_s; /* data-parallel ranks: longest wait for the others in a collective */
} train_config;

/* [log] */
typedef struct log_config {
    char dir[512];
    int64_t stats_every, print_every;
    bool progress;
} log_config;

/* Every section as its module's own typed configuration, read once. */
typedef struct run_config {
    model_config model;
    data_config data;
    optim_config optim;
    mm_config quant;
    train_config train;
    log_config log;
} run_config;

typedef struct config {
    run_config v;
    char file[512];                             /* where it came from ("" for defaults only) */
    int line[CONFIG_MAX_KEYS];                  /* per key: line that set it (0: default, -1: --set) */
    char text[CONFIG_MAX_KEYS][CONFIG_TEXT];    /* per key: current value as text */
} config;

/* The keys of every section, in order: key k is config_key(k). */
int config_key_count(void);
const key_def *config_key(int k, const char **section);

/* Defaults for every key. */
void config_init(config *c);
/* Reads an INI file over the current values. */
int config_load_file(config *c, const char *path, mx_err *err);
/* Applies "section.key=value" (a --set option). */
int config_set(config *c, const char *assignment, mx_err *err);
/* Writes every key, grouped by section, as an INI file that config_load_file reads back. */
int config_write(const config *c, FILE *f);
/* Markdown reference of every key (docs/config.md's table). */
void config_write_reference(FILE *f);

/* The modules' configurations with what one section takes from another
 * (the seed, the model's channels and classes for the data). */
model_config config_model(const config *c);
data_config config_data(const config *c);
optim_config config_optim(const config *c);
/* Fills p; returns whether any GEMM operand is quantized. */
bool config_policy(const config *c, mm_policy *p);
/* Checks between keys that no single key's parser can see (a block or tile
 * some format in use cannot take); 0, or -1 with a message. */
int config_check(const config *c, mx_err *err);
bool config_elementwise_bf16(const config *c);

/* A study's variants (compare, eval --formats): each format x tiling of one
 * base config, in that order (variant k: format k / nt, tiling k % nt). */
#define CONFIG_MAX_FORMATS 32
#define CONFIG_MAX_TILINGS 8
typedef struct config_variants {
    char format[CONFIG_MAX_FORMATS][64], tiling[CONFIG_MAX_TILINGS][64];
    int nf, nt;
} config_variants;
/* Comma lists (tilings NULL: the base's); every variant's config is checked
 * before any runs. 0; -1 with err and *usage set for an unknown name (exit 2)
 * or a variant that cannot be (exit 1). */
int config_variants_parse(const config *base, const char *formats, const char *tilings, config_variants *v,
                          bool *usage, mx_err *err);
static inline int config_variant_count(const config_variants *v) { return v->nf * v->nt; }
/* Variant k into c (base with quant.format and quant.tiling set), named "format tiling". */
int config_variant(const config *base, const config_variants *v, int k, config *c, char *name, size_t name_n,
                   mx_err *err);

#endif
