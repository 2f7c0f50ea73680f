/* mxtrain quantize: fake-quantize a .npy file; the contract is in
 * docs/formats.md and issue #3 (scripts depend on it). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/npy.h"
#include "quant/quant.h"
#include "core/json.h"
#include "train/cli.h"
#include "cuda/cuda.h"
#include "train/commands.h"

#include <cJSON.h>

static const char quantize_usage[] =
    "usage: mxtrain quantize --format F [--round even|away|floor|stochastic] [--scale floor|rceil]\n"
    "                        [--block 1xK|RxC] [--axis N] [--seed S] [--scales-out SCALES.npy]\n"
    "                        [--device cpu|cuda] IN.npy OUT.npy\n"
    "\n"
    "Reads a float32 .npy of any rank (float64 is converted), quantizes it and writes the dequantized\n"
    "float32 .npy. Prints one JSON line of statistics on stdout.\n"
    "\n"
    "  --format F        one of the formats listed below (docs/formats.md)\n"
    "  --round R         even (default), away, floor, stochastic\n"
    "  --scale S         floor (default, OCP) or rceil\n"
    "  --block B         1xK: 1D blocks of K along --axis (default 1x32; 1xk1 for mx9/mx6/mx4/bdr_...);\n"
    "                    RxC: tiles over the last two axes (BDR: R x C = k1, e.g. 4x4)\n"
    "  --axis N          axis of 1D blocks (default -1; negative counts from the end)\n"
    "  --seed S          seed of stochastic rounding (default 0)\n"
    "  --scales-out F    write the uint8 E8M0 scale codes in block order\n"
    "  --device D        cpu (default) or cuda: the GPU quantizer (bit-identical output)\n"
    "\n"
    "bf16 and fp32 take no block. Errors are one line on stderr: exit status 1 for a missing or bad\n"
    "input file, 2 for bad options.\n"
    "\nformats: ";

int cmd_quantize(int argc, char **argv) {
    const char *fmt = NULL, *round = "even", *scale = "floor", *block = NULL, *axis_s = "-1", *seed_s = "0",
               *scales_out = NULL, *dev_s = "cpu";
    const char *pos[2];
    int npos = 0;
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            char list[1024];
            mx_enum_list(&quant_format_enum, false, list, sizeof list);
            printf("%s%s\n", quantize_usage, list);
            return 0;
        }
        const char **slot = NULL;
        const char *v;
        int r;
        static const char *const names[] = {"--format", "--round",      "--scale", "--block",
                                            "--axis",   "--seed",       "--scales-out", "--device"};
        const char **slots[] = {&fmt, &round, &scale, &block, &axis_s, &seed_s, &scales_out, &dev_s};
        for (int k = 0; k < 8 && !slot; k++) {
            r = cli_take_value(argc, argv, &i, names[k], &v);
            if (r < 0) return CLI_EXIT_USAGE;
            if (r == 1) {
                slot = slots[k];
                *slot = v;
            }
        }
        if (slot) continue;
        if (argv[i][0] == '-' && argv[i][1]) return cli_usage_error("quantize", "unknown option '%s'", argv[i]);
        if (npos == 2) return cli_usage_error("quantize", "unexpected argument '%s'", argv[i]);
        pos[npos++] = argv[i];
    }
    if (!fmt) return cli_usage_error("quantize", "--format is required");
    if (npos != 2) return cli_usage_error("quantize", "need IN.npy and OUT.npy");

    mx_err err;
    quant_format f;
    if (quant_format_parse(fmt, &f, &err)) return cli_usage_error("quantize", "%s", err.msg);
    quant_spec spec = quant_spec_default(f);
    if (quant_round_parse(round, &spec.round, &err)) return cli_usage_error("quantize", "%s", err.msg);
    if (quant_scale_parse(scale, &spec.scale, &err)) return cli_usage_error("quantize", "%s", err.msg);
    const quant_format_info *fi = quant_format_get(f);
    if (!fi->is_mx && (block || scales_out))
        return cli_usage_error("quantize", "format %s takes no block (no --block, no --scales-out)", fi->name);
    if (block && quant_block_parse(block, &spec.block_rows, &spec.block_cols, &err))
        return cli_usage_error("quantize", "%s", err.msg);
    int64_t axis, seed;
    if (!cli_parse_i64(axis_s, -64, 63, &axis)) return cli_usage_error("quantize", "malformed --axis '%s'", axis_s);
    if (!cli_parse_i64(seed_s, 0, INT64_MAX, &seed)) return cli_usage_error("quantize", "malformed --seed '%s'", seed_s);
    spec.axis = (int)axis;
    spec.seed = (uint64_t)seed;
    cli_device dev;
    int dr = cli_device_open(dev_s, &dev, &err);
    if (dr == -1) return cli_usage_error("quantize", "%s", err.msg);
    if (dr == -2) {
        fprintf(stderr, "mxtrain quantize: %s\n", err.msg);
        return 1;
    }

    npy_array in;
    if (npy_read_f32(pos[0], &in, &err)) { /* a missing or bad file: 1, as every command; options stay 2 */
        fprintf(stderr, "mxtrain quantize: %s\n", err.msg);
        return 1;
    }
    int rc = CLI_EXIT_USAGE;
    float *out = NULL;
    uint8_t *scales = NULL;
    int64_t nblocks = quant_num_blocks(&spec, in.ndim, in.shape, &err);
    if (nblocks < 0) {
        fprintf(stderr, "mxtrain quantize: %s: %s\n", pos[0], err.msg);
        goto done;
    }
    out = mx_malloc((size_t)in.numel * sizeof(float) + 64);
    scales = mx_malloc((size_t)nblocks + 1);
    quant_stats st;
    if (dev == CLI_DEVICE_CPU) quant_fake(&spec, in.data, out, in.ndim, in.shape, fi->is_mx ? scales : NULL, &st);
    else {
        size_t bytes = (size_t)in.numel * sizeof(float);
        float *dx = cu_malloc(bytes), *dy = cu_malloc(bytes);
        uint8_t *dsc = cu_malloc((size_t)nblocks + 1);
        cu_to_device(dx, in.data, bytes);
        cu_quant_fake(&spec, dx, dy, in.ndim, in.shape, fi->is_mx ? dsc : NULL, &st);
        cu_to_host(out, dy, bytes);
        cu_to_host(scales, dsc, (size_t)nblocks + 1);
        cu_free(dx);
        cu_free(dy);
        cu_free(dsc);
    }
    npy_array o = npy_wrap(NPY_DTYPE_F32, in.ndim, in.shape, out);
    rc = 1; /* from here on a failure is the disk's */
    if (npy_write(pos[1], &o, &err)) {
        fprintf(stderr, "mxtrain quantize: %s\n", err.msg);
        goto done;
    }
    if (scales_out) {
        int64_t sshape[NPY_MAX_DIMS];
        int sdim = quant_scales_shape(&spec, in.ndim, in.shape, sshape);
        npy_array sa = npy_wrap(NPY_DTYPE_U8, sdim, sshape, scales);
        if (npy_write(scales_out, &sa, &err)) {
            fprintf(stderr, "mxtrain quantize: %s\n", err.msg);
            goto done;
        }
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "format", fi->name);
    cJSON_AddStringToObject(j, "round", quant_round_name(spec.round));
    cJSON_AddStringToObject(j, "scale", quant_scale_name(spec.scale));
    if (fi->is_mx) {
        char blk[32];
        snprintf(blk, sizeof blk, "%dx%d", spec.block_rows, spec.block_cols);
        cJSON_AddStringToObject(j, "block", blk);
    } else {
        cJSON_AddNullToObject(j, "block");
    }
    cJSON_AddNumberToObject(j, "elements", (double)st.elements);
    cJSON_AddNumberToObject(j, "nonzero", (double)st.nonzero);
    mx_json_number(j, "underflow_ratio", quant_stats_underflow_ratio(&st), 6);
    mx_json_number(j, "saturation_ratio", quant_stats_saturation_ratio(&st), 6);
    mx_json_number(j, "qsnr_db", quant_stats_qsnr_db(&st), 3);
    mx_json_print(j);
    rc = 0;
done:
    free(out);
    free(scales);
    npy_free(&in);
    return rc;
}
