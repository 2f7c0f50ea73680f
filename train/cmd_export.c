/* mxtrain export CK OUT.safetensors: a checkpoint's weights in the format
 * timm and Hugging Face ship (PyTorch names and layouts). */
#include <stdio.h>
#include <string.h>

#include "train/checkpoint.h"
#include "train/cli.h"
#include "train/commands.h"

static const char export_usage[] =
    "usage: mxtrain export CHECKPOINT.h5 OUT.safetensors\n"
    "\nWrites the weights of an mxtrain checkpoint (its group 'model', or a weights-only file's root\n"
    "datasets) as safetensors: the PyTorch state_dict names and layouts, float32 (int64 for\n"
    "num_batches_tracked). `--init-from` and `eval --checkpoint` read .safetensors files back\n"
    "(F32, F16, BF16), so weights move to and from timm and Hugging Face.\n";

int cmd_export(int argc, char **argv) {
    const char *pos[2];
    int np = 0;
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) {
            fputs(export_usage, stdout);
            return 0;
        }
        if (argv[i][0] == '-') return cli_usage_error("export", "unknown option '%s'", argv[i]);
        if (np == 2) return cli_usage_error("export", "unexpected argument '%s'", argv[i]);
        pos[np++] = argv[i];
    }
    if (np != 2) return cli_usage_error("export", "wants CHECKPOINT.h5 OUT.safetensors");
    size_t n = strlen(pos[1]);
    if (n < 12 || strcmp(pos[1] + n - 12, ".safetensors") != 0)
        return cli_usage_error("export", "the output '%s' must end in .safetensors", pos[1]);
    mx_err err;
    if (ckpt_export_safetensors(pos[0], pos[1], &err)) {
        fprintf(stderr, "mxtrain export: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "mxtrain export: wrote %s\n", pos[1]);
    return 0;
}
