/* mxtrain bench: performance measurements (targets live here, not in tests). */
#include <stdio.h>
#include <string.h>

#include "quant/quant.h"
#include "train/cli.h"
#include "cuda/cuda.h"
#include "train/commands.h"

int bench_step(int argc, char **argv);
int bench_config(int argc, char **argv);
int bench_data(int argc, char **argv);
int bench_gemm(int argc, char **argv);

static const char bench_usage[] =
    "usage: mxtrain bench quantize [--format F] [--n N] [--reps R] [--device cpu|cuda]\n"
    "       mxtrain bench step [--model M] [--batch B] [--format F] [--tiling T] ...  (bench step --help)\n"
    "       mxtrain bench CONFIG [--steps N] [--set ...]   training steps on the config's first batch\n"
    "       mxtrain bench data CONFIG [--batches N]        loader images/s\n"
    "       mxtrain bench gemm [--n 2048]                  sgemm GFLOP/s (the GEMM ceiling)\n"
    "\n"
    "Measures, alternately in one run, fake-quant GB/s (8 bytes per element: read + write float32),\n"
    "pack GB/s (4 + 1 + 1/32 bytes per element) and memcpy GB/s of the same size on the same threads,\n"
    "and prints one JSON line per format with the ratios. Default: every format, N = 16777216\n"
    "elements, R = 9 repetitions (medians). Set threads with the global --threads.\n"
    "--device cuda: the same on the GPU against a device-to-device copy (CUDA events), plus the\n"
    "fake-quant kernel that writes bf16 (6 bytes per element).\n";

static int bench_quantize(int argc, char **argv) {
    const char *fmt = NULL, *n_s = "16777216", *reps_s = "9", *dev_s = "cpu";
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(bench_usage, stdout);
            return 0;
        }
        const char *v;
        int r;
        if ((r = cli_take_value(argc, argv, &i, "--format", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            fmt = v;
        } else if ((r = cli_take_value(argc, argv, &i, "--n", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            n_s = v;
        } else if ((r = cli_take_value(argc, argv, &i, "--reps", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            reps_s = v;
        } else if ((r = cli_take_value(argc, argv, &i, "--device", &v)) != 0) {
            if (r < 0) return CLI_EXIT_USAGE;
            dev_s = v;
        } else {
            return cli_usage_error("bench quantize", "unknown argument '%s'", argv[i]);
        }
    }
    int64_t n, reps;
    if (!cli_parse_i64(n_s, 1024, (int64_t)1 << 31, &n)) return cli_usage_error("bench quantize", "bad --n '%s'", n_s);
    if (!cli_parse_i64(reps_s, 1, 1000, &reps)) return cli_usage_error("bench quantize", "bad --reps '%s'", reps_s);
    quant_format formats[QUANT_FORMAT_COUNT];
    int nf = 0;
    if (fmt) {
        mx_err err;
        if (quant_format_parse(fmt, &formats[0], &err)) return cli_usage_error("bench quantize", "%s", err.msg);
        nf = 1;
    } else {
        for (int f = 0; f < QUANT_FORMAT_COUNT; f++)
            if (f != QUANT_FORMAT_FP32) formats[nf++] = (quant_format)f;
    }
    cli_device dev;
    mx_err derr;
    int dr = cli_device_open(dev_s, &dev, &derr);
    if (dr == -1) return cli_usage_error("bench quantize", "%s", derr.msg);
    if (dr == -2) {
        fprintf(stderr, "mxtrain bench quantize: %s\n", derr.msg);
        return 1;
    }
    if (dev == CLI_DEVICE_CUDA) return cu_quant_bench(formats, nf, n, (int)reps);
    return quant_bench(formats, nf, n, (int)reps);
}

int cmd_bench(int argc, char **argv) {
    if (argc < 1 || cli_is_help(argv[0])) {
        fputs(bench_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? CLI_EXIT_USAGE : 0;
    }
    if (strcmp(argv[0], "quantize") == 0) return bench_quantize(argc - 1, argv + 1);
    if (strcmp(argv[0], "step") == 0) return bench_step(argc - 1, argv + 1);
    if (strcmp(argv[0], "data") == 0) return bench_data(argc - 1, argv + 1);
    if (strcmp(argv[0], "gemm") == 0) return bench_gemm(argc - 1, argv + 1);
    size_t len = strlen(argv[0]);
    if (len > 4 && strcmp(argv[0] + len - 4, ".ini") == 0) return bench_config(argc, argv);
    return cli_usage_error("bench", "unknown benchmark '%s' (available: quantize, step, data, gemm, or a CONFIG.ini)",
                           argv[0]);
}
