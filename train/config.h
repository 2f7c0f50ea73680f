/* Run configuration: INI files (inih) with sections [model] [data] [optim]
 * [quant] [train] [log], plus `--set section.key=value` overrides.
 *
 * One table (config.c: config_keys) lists every key with its type, default,
 * range and documentation; parsing, validation, the resolved config written to
 * a run directory and the reference in docs/config.md all come from it. An
 * unknown section or key, a wrong type, an out-of-range value or a bad name is
 * an error naming file:line (for --set: the option). */
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

#define CONFIG_STR 256

/* Typed values of every key (names follow section_key). */
typedef struct run_config {
    /* [model] */
    char model_arch[CONFIG_STR], model_stem[CONFIG_STR], model_blocks[CONFIG_STR], model_widths[CONFIG_STR];
    int model_num_classes, model_in_chans, model_img_size, model_patch_size, model_dim, model_depth, model_heads;
    double model_mlp_ratio, model_drop_path;
    /* [data] */
    char data_dataset[CONFIG_STR], data_path[CONFIG_STR], data_mean[CONFIG_STR], data_std[CONFIG_STR];
    char data_h5_images[CONFIG_STR], data_h5_labels[CONFIG_STR];
    int data_batch_size, data_eval_batch_size, data_workers, data_img_size;
    bool data_shuffle, data_augment;
    int64_t data_limit_train, data_limit_eval, data_synthetic_train, data_synthetic_eval;
    /* [optim] */
    char optim_name[CONFIG_STR], optim_schedule[CONFIG_STR];
    double optim_lr, optim_weight_decay, optim_beta1, optim_beta2, optim_eps, optim_momentum, optim_min_lr;
    double optim_gamma, optim_clip_grad_norm;
    bool optim_nesterov;
    int64_t optim_warmup_steps, optim_step_size;
    /* [quant] */
    char quant_format[CONFIG_STR], quant_tiling[CONFIG_STR], quant_tile[CONFIG_STR], quant_round[CONFIG_STR];
    char quant_scale[CONFIG_STR], quant_elementwise[CONFIG_STR], quant_grad_round[CONFIG_STR], quant_keep[CONFIG_STR];
    char quant_fwd_act[CONFIG_STR], quant_fwd_weight[CONFIG_STR], quant_bwd_grad[CONFIG_STR];
    char quant_bwd_act[CONFIG_STR], quant_bwd_weight[CONFIG_STR];
    int quant_block;
    /* [train] */
    int train_epochs;
    int64_t train_max_steps, train_seed, train_ckpt_every;
    char train_on_nonfinite[CONFIG_STR];
    double train_label_smoothing;
    /* [log] */
    char log_dir[CONFIG_STR];
    int64_t log_stats_every, log_print_every;
    bool log_progress;
} run_config;

typedef enum config_type { CONFIG_TYPE_INT, CONFIG_TYPE_I64, CONFIG_TYPE_FLOAT, CONFIG_TYPE_BOOL, CONFIG_TYPE_STRING,
                           CONFIG_TYPE_COUNT } config_type;

typedef struct config_key {
    const char *section, *key;
    config_type type;
    size_t offset;          /* into run_config */
    const char *def;        /* default, as text */
    double min, max;        /* numeric range (inclusive) */
    int (*check)(const char *value, mx_err *err); /* names, formats, lists; NULL: none */
    const char *doc;
} config_key;

extern const config_key config_keys[];
extern const int config_n_keys;

typedef struct config {
    run_config v;
    char file[512];                 /* where it came from ("" for defaults only) */
    int line[128];                  /* per key: line that set it (0: default, -1: --set) */
    char text[128][CONFIG_STR];     /* per key: current value as text */
} config;

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

/* Translations into the modules' configurations. */
int config_model(const config *c, model_config *out, mx_err *err);
int config_data(const config *c, data_config *out, mx_err *err);
int config_optim(const config *c, optim_config *out, mx_err *err);
/* Returns 1 and fills p when any GEMM operand is quantized, 0 for an all-fp32
 * policy (p untouched), -1 on error. */
int config_policy(const config *c, mm_policy *p, mx_err *err);
bool config_elementwise_bf16(const config *c);

#endif
