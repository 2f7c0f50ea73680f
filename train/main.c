/* mxtrain: command dispatch. Global option --threads N (before or after the
 * command) sets OpenMP and OpenBLAS threads; default: all cores. */
#include <stdio.h>
#include <string.h>

#include "core/cpu.h"
#include "core/threads.h"
#include "cuda/cuda.h"
#include "dist/dist.h"
#include "train/cli.h"
#include "train/commands.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"train", cmd_train, "train a model from a config file (run directory, checkpoints, report)"},
    {"eval", cmd_eval, "evaluate a checkpoint under any format (direct-cast inference)"},
    {"compare", cmd_compare, "train one config under several formats/tilings; summary and report"},
    {"probe", cmd_probe, "quantization error of every GEMM operand per layer, role and format (no training)"},
    {"export", cmd_export, "a checkpoint's weights as .safetensors (PyTorch names; timm, Hugging Face)"},
    {"quantize", cmd_quantize, "quantize a .npy tensor to an MX format (fake-quant), with statistics"},
    {"qsnr", cmd_qsnr, "the QSNR study: formats x distributions (or an .npy), table, CSV and chart"},
    {"bench", cmd_bench, "benchmarks: 'bench quantize' measures the quantizer against memcpy"},
    {"version", cmd_version, "version, compiler, OpenBLAS kernels, threads and CPU features"},
};
#define N_COMMANDS (int)(sizeof commands / sizeof commands[0])

static void main_usage(FILE *out) {
    fprintf(out,
            "usage: mxtrain [--threads N] <command> [options]\n"
            "\nTrain and study neural networks with every matrix product in a microscaling (MX) format.\n"
            "\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\nglobal options:\n"
            "  --threads N  threads for OpenMP and OpenBLAS (default: all cores)\n"
            "  --version    the version (mxtrain version: everything about this build and machine)\n"
            "  --help       this text; 'mxtrain <command> --help' for a command\n");
}

static int main_run(int argc, char **argv);

int main(int argc, char **argv) {
    cpu_select_blas_kernels(argv);

    /* Pull --threads out of argv wherever it appears. */
    int threads = 0, n = 0;
    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = i > 0 ? cli_take_value(argc, argv, &i, "--threads", &v) : 0;
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 1) {
            int64_t t;
            if (!cli_parse_i64(v, 1, 4096, &t)) {
                fprintf(stderr, "mxtrain: --threads wants an integer in 1..4096, got '%s'\n", v);
                return CLI_EXIT_USAGE;
            }
            threads = (int)t;
            continue;
        }
        argv[n++] = argv[i];
    }
    argc = n;
    /* under mpirun, before any thread starts; the default threads share the cores among this machine's ranks */
    mx_err derr = {0};
    if (dist_init(&argc, &argv, &derr)) {
        fprintf(stderr, "mxtrain: %s\n", derr.msg);
        return 1;
    }
    if (!threads && dist_local_size() > 1) {
        threads = threads_available() / dist_local_size();
        threads = threads > 0 ? threads : 1;
    }
    threads_set(threads);
    cu_select_device(dist_local_rank()); /* GPU ranks: one GPU each */
    int rc = main_run(argc, argv);
    /* an error (1) may be this rank's alone: the others must not wait for it; an
       interruption (agreed at a step) and usage errors end every rank by themselves */
    if (rc == 1 && dist_size() > 1) dist_abort(rc);
    dist_finalize();
    return rc;
}

static int main_run(int argc, char **argv) {

    if (argc < 2) {
        main_usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("mxtrain %s\n", MXTRAIN_VERSION);
        return 0;
    }
    if (cli_is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
        main_usage(stdout);
        return 0;
    }
    if (dist_size() > 1 && strcmp(argv[1], "train") != 0) {
        fprintf(stderr, "mxtrain: only 'train' runs on several ranks (launched as %d by mpirun)\n", dist_size());
        return CLI_EXIT_USAGE;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "mxtrain: unknown command '%s'\n", argv[1]);
    main_usage(stderr);
    return CLI_EXIT_USAGE;
}
