/* The checkpoint reader (train/checkpoint.c), structure-aware: raw byte
 * mutations would test libhdf5's own parser, so instead each input is a list
 * of edits applied with the HDF5 API to a valid checkpoint of a small model
 * (drop or retype a dataset, change its shape, poison values, drop or
 * retype or move an attribute), and the reader must refuse or accept it
 * cleanly. */
#include <hdf5.h>
#include <math.h>
#include <string.h>

#include "fuzz_util.h"
#include "optim/optim.h"
#include "train/checkpoint.h"

static model g_model;
static optimizer g_opt;
static uint8_t *g_good;
static size_t g_good_n;

static void setup(void) {
    model_config mc = model_config_default(MODEL_ARCH_RESNET);
    mc.in_chans = 1, mc.num_classes = 3, mc.img_size = 8;
    for (int i = 0; i < 4; i++) mc.blocks[i] = 1, mc.widths[i] = 4;
    mx_err err;
    if (model_build(&g_model, &mc, &err)) abort();
    optim_config oc = optim_config_default(OPTIM_KIND_ADAMW);
    optim_init(&g_opt, &oc, &g_model.params);
    ckpt_meta meta = {.step = 10, .epoch = 1, .seed = 3, .best_acc = 0.5};
    const char *p = fuzz_file(1, "good.h5", NULL, 0);
    if (ckpt_save(p, &g_model, &g_opt, &meta, "[model]\n", &err)) abort();
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    g_good_n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g_good = malloc(g_good_n);
    if (fread(g_good, 1, g_good_n, f) != g_good_n) abort();
    fclose(f);
}

static void write_f32(hid_t loc, const char *name, int rank, const hsize_t *dims, hid_t type, const uint8_t *src,
                      size_t avail) {
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    if (n > 4096) return;
    double *v = calloc(n ? n : 1, sizeof(double));
    for (hsize_t i = 0; i < n; i++) {
        uint8_t b = avail ? src[i % avail] : 0;
        v[i] = b == 0xff ? NAN : b == 0xfe ? INFINITY : (double)b - 128.0;
    }
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0) {
        H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        H5Dclose(d);
    }
    H5Sclose(sp);
    free(v);
}

static void set_attr(hid_t loc, const char *name, hid_t type, double v) {
    if (H5Aexists(loc, name) > 0) H5Adelete(loc, name);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, H5T_NATIVE_DOUBLE, &v);
        H5Aclose(a);
    }
    H5Sclose(sp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_good) setup();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const char *p = fuzz_file(0, "edit.h5", g_good, g_good_n);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) abort();
    hid_t gm = H5Gopen2(f, "model", H5P_DEFAULT);
    static const char *const attrs[] = {"step", "epoch", "seed", "best_acc"};
    const hid_t types[] = {H5T_STD_I64LE, H5T_IEEE_F64LE, H5T_STD_I8LE, H5T_IEEE_F32LE}; /* run-time ids */
    const param_store *ps = &g_model.params;
    /* edits of 4 bytes: op, target, a, b */
    for (size_t k = 0; k + 4 <= size && k < 64; k += 4) {
        uint8_t op = data[k] % 7, t = data[k + 1], a = data[k + 2], b = data[k + 3];
        const char *entry = ps->entries[t % ps->count].name;
        hsize_t dims[4] = {a % 9, b % 9, 1 + a % 3, 1 + b % 3};
        switch (op) {
        case 0: H5Ldelete(gm, entry, H5P_DEFAULT); break;
        case 1: /* same name, another shape / rank / type */
            H5Ldelete(gm, entry, H5P_DEFAULT);
            write_f32(gm, entry, 1 + b % 4, dims, types[a % 4], data + k, size - k);
            break;
        case 2: { /* poison values of a float entry, keeping its shape */
            hid_t d = H5Dopen2(gm, entry, H5P_DEFAULT);
            if (d < 0) break;
            hid_t sp = H5Dget_space(d);
            hssize_t n = H5Sget_simple_extent_npoints(sp);
            if (n > 0 && n < 100000) {
                float *v = malloc(sizeof(float) * (size_t)n);
                if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0) {
                    v[a % n] = b & 1 ? NAN : b & 2 ? -INFINITY : 1e30f;
                    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
                }
                free(v);
            }
            H5Sclose(sp);
            H5Dclose(d);
            break;
        }
        case 3: /* an attribute: another value or type */
            set_attr(f, attrs[t % 4], types[a % 4], (double)(int8_t)b * (b & 1 ? 1e17 : 1.0));
            break;
        case 4:
            if (H5Aexists(f, attrs[t % 4]) > 0) H5Adelete(f, attrs[t % 4]);
            break;
        case 5: /* the optimizer group */
            if (a & 1) H5Ldelete(f, "optim", H5P_DEFAULT);
            else {
                hid_t go = H5Gopen2(f, "optim", H5P_DEFAULT);
                if (go >= 0) {
                    set_attr(go, b & 1 ? "optim_step" : "optim_kind", types[t % 4], (double)(int8_t)a);
                    if (b & 2) { /* a parameter's state replaced: shape, type and values from the input */
                        char st[200];
                        snprintf(st, sizeof st, "state/%s", ps->entries[t % ps->count].name);
                        hid_t ge = H5Lexists(go, st, H5P_DEFAULT) > 0 ? H5Gopen2(go, st, H5P_DEFAULT) : -1;
                        if (ge >= 0) {
                            const char *nm = b & 4 ? "exp_avg_sq" : "exp_avg";
                            H5Ldelete(ge, nm, H5P_DEFAULT);
                            write_f32(ge, nm, 1 + a % 2, dims, H5T_IEEE_F32LE, data + k, size - k);
                            H5Gclose(ge);
                        }
                    } else if (b & 4) { /* no per-parameter state: the reader looks for the flat layout */
                        H5Ldelete(go, "state", H5P_DEFAULT);
                    }
                    H5Gclose(go);
                }
            }
            break;
        default: /* an extra, unknown entry */
            write_f32(gm, "extra.weight", 1 + a % 2, dims, H5T_IEEE_F32LE, data + k, size - k);
            break;
        }
    }
    H5Gclose(gm);
    H5Fclose(f);
    ckpt_meta meta;
    mx_err err;
    ckpt_load(p, &g_model, &g_opt, &meta, &err);
    ckpt_load_weights(p, &g_model, &err);
    return 0;
}
