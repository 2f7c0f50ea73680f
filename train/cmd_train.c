/* mxtrain train / eval: config-driven training and direct-cast evaluation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/checkpoint.h"
#include "train/cli.h"
#include "core/npy.h"
#include "train/commands.h"

#include <cJSON.h>
#include "train/config.h"
#include "train/trainer.h"

/* Options shared by train/eval/compare: the CONFIG positional and --set. Other
 * options are handed to `extra` (returns 1 taken, 0 not, -1 error). */
int cmd_parse_config(const char *cmd, int argc, char **argv, config *c,
                     int (*extra)(int argc, char **argv, int *i, void *user), void *user) {
    config_init(c);
    const char *path = NULL;
    const char *sets[256];
    int n_sets = 0;
    char device_set[64];
    for (int i = 0; i < argc; i++) {
        const char *v;
        int r = cli_take_value(argc, argv, &i, "--set", &v);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 1) {
            if (n_sets == 256) return cli_usage_error(cmd, "too many --set options");
            sets[n_sets++] = v;
            continue;
        }
        /* --device D is --set train.device=D */
        if ((r = cli_take_value(argc, argv, &i, "--device", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            if (n_sets == 256) return cli_usage_error(cmd, "too many --set options");
            int k = snprintf(device_set, sizeof device_set, "train.device=%s", v);
            if (k < 0 || (size_t)k >= sizeof device_set) return cli_usage_error(cmd, "--device '%s' is not a device", v);
            sets[n_sets++] = device_set;
            continue;
        }
        if (extra) {
            r = extra(argc, argv, &i, user);
            if (r < 0) return CLI_EXIT_USAGE;
            if (r == 1) continue;
        }
        if (argv[i][0] == '-') return cli_usage_error(cmd, "unknown option '%s'", argv[i]);
        if (path) return cli_usage_error(cmd, "more than one config file ('%s' and '%s')", path, argv[i]);
        path = argv[i];
    }
    if (!path) return cli_usage_error(cmd, "missing CONFIG file");
    mx_err err = {0};
    if (config_load_file(c, path, &err)) {
        fprintf(stderr, "mxtrain %s: %s\n", cmd, err.msg);
        return 1;
    }
    for (int k = 0; k < n_sets; k++)
        if (config_set(c, sets[k], &err)) {
            fprintf(stderr, "mxtrain %s: %s\n", cmd, err.msg);
            return 1;
        }
    if (config_check(c, &err)) {
        fprintf(stderr, "mxtrain %s: %s: %s\n", cmd, path, err.msg);
        return 1;
    }
    return 0;
}

typedef struct train_args {
    const char *resume, *init_from;
} train_args;

static int train_extra(int argc, char **argv, int *i, void *user) {
    train_args *a = user;
    int r = cli_take_value(argc, argv, i, "--resume", &a->resume);
    if (r) return r;
    return cli_take_value(argc, argv, i, "--init-from", &a->init_from);
}

static void train_usage(FILE *f) {
    fprintf(f, "usage: mxtrain train CONFIG [--set section.key=value ...] [--resume RUN_DIR] [--init-from FILE.h5]\n"
               "                    [--threads N]\n"
               "\nTrains the model the config describes and writes the run directory (log.dir): config.ini,\n"
               "metrics.csv/.jsonl, stats.csv/.h5, ckpt/last.h5, ckpt/best.h5, report.html.\n"
               "  --set K=V        override a config key (repeatable), e.g. --set quant.format=mxsf\n"
               "  --resume DIR     continue the run in DIR from DIR/ckpt/last.h5 (same losses as without a stop)\n"
               "  --init-from F    load weights only (group 'model' or root datasets, PyTorch names)\n"
               "  --keys           print the reference of every config key (Markdown) and exit\n"
               "Ctrl-C finishes the step, saves ckpt/last.h5 and exits with status 130.\n"
               "Keys: docs/config.md.\n");
}

int cmd_train(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) return train_usage(stdout), 0;
        if (strcmp(argv[i], "--keys") == 0) return config_write_reference(stdout), 0;
    }
    config *c = mx_malloc(sizeof *c);
    train_args a = {0};
    int rc = cmd_parse_config("train", argc, argv, c, train_extra, &a);
    if (rc) {
        free(c);
        return rc;
    }
    if (a.resume && a.init_from) {
        free(c);
        return cli_usage_error("train", "--resume and --init-from exclude each other");
    }
    train_opts o = {a.resume, a.init_from};
    train_result res;
    mx_err err = {0};
    rc = trainer_run(c, &o, &res, &err);
    free(c);
    if (rc < 0) {
        fprintf(stderr, "mxtrain train: %s\n", err.msg);
        return 1;
    }
    return rc;
}

