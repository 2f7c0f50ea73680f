/* HDF5 checkpoints (see checkpoint.h). */
#include "train/checkpoint.h"

#include "core/safetensors.h"

#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* HDF5 prints its error stack by default; we report our own one-liners. */
static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

/* Scalar attributes: file_type on disk, mem_type in memory. */
static int attr_write(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(loc, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = a >= 0 ? H5Awrite(a, mem_type, v) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return r < 0 ? -1 : 0;
}

/* A scalar attribute of the class mem_type has (HDF5 would convert a float
 * attribute to an integer silently): -1 if absent, of another class or shape. */
static int attr_read(hid_t loc, const char *name, hid_t mem_type, void *v) {
    if (H5Aexists(loc, name) <= 0) return -1;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t ty = H5Aget_type(a), sp = H5Aget_space(a);
    bool ok = H5Tget_class(ty) == H5Tget_class(mem_type) && H5Sget_simple_extent_npoints(sp) == 1;
    herr_t r = ok ? H5Aread(a, mem_type, v) : -1;
    H5Sclose(sp);
    H5Tclose(ty);
    H5Aclose(a);
    return r < 0 ? -1 : 0;
}

static int attr_write_i64(hid_t loc, const char *name, int64_t v) {
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}
static int attr_read_i64(hid_t loc, const char *name, int64_t *v) { return attr_read(loc, name, H5T_NATIVE_INT64, v); }

/* buf with room for n floats (contents not kept): one buffer serves every entry. */
static float *ckpt_grow(float *buf, size_t *cap, size_t n) {
    if (n <= *cap) return buf;
    free(buf);
    *cap = n;
    return mx_malloc(sizeof(float) * n);
}

static int write_dataset(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int rank, const int64_t *shape,
                         const void *data) {
    hsize_t dims[8];
    for (int i = 0; i < rank; i++) dims[i] = (hsize_t)shape[i];
    hid_t sp = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t d = H5Dcreate2(loc, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = d >= 0 ? H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : -1;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return r < 0 ? -1 : 0;
}

/* First index i in [0, n) with a non-finite v[i], or -1. */
static int64_t first_nonfinite(const float *v, int64_t n) {
    int64_t bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static) if (n >= 65536)
    for (int64_t i = 0; i < n; i++) bad += !isfinite(v[i]);
    if (!bad) return -1;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return i;
    return -1;
}

int ckpt_find_nonfinite(const model *m, const optimizer *o, char *what, size_t n) {
    const param_store *ps = &m->params;
    for (int i = 0; i < ps->count; i++) {
        const param_entry *e = &ps->entries[i];
        const float *v = (e->kind == PARAM_KIND_BUFFER ? ps->buffers : ps->data) + e->offset;
        if (first_nonfinite(v, e->numel) >= 0) {
            snprintf(what, n, "'%s'", e->name);
            return 1;
        }
    }
    if (!o) return 0;
    const char *names[2] = {"exp_avg", "exp_avg_sq"};
    const float *st[2] = {o->m, o->v};
    for (int k = 0; k < 2; k++) {
        int64_t at = st[k] ? first_nonfinite(st[k], (int64_t)o->n) : -1;
        if (at < 0) continue;
        const char *entry = "?"; /* the parameter whose moment it is */
        for (int i = 0; i < ps->count; i++) {
            const param_entry *e = &ps->entries[i];
            if (e->kind != PARAM_KIND_BUFFER && at >= (int64_t)e->offset && at < (int64_t)e->offset + e->numel)
                entry = e->name;
        }
        snprintf(what, n, "optimizer %s of '%s'", names[k], entry);
        return 1;
    }
    return 0;
}

/* The optimizer's per-parameter state as PyTorch names it: AdamW's two
 * moments, SGD's momentum buffer. */
static int ckpt_state_count(const optimizer *o) { return o->cfg.kind == OPTIM_KIND_ADAMW ? 2 : 1; }
static const char *ckpt_state_name(const optimizer *o, int k) {
    return o->cfg.kind == OPTIM_KIND_ADAMW ? (k ? "exp_avg_sq" : "exp_avg") : "momentum_buffer";
}
static float *ckpt_state(const optimizer *o, int k) { return k ? o->v : o->m; }

int ckpt_write_tmp(const char *path, model *m, optimizer *o, const ckpt_meta *meta, const char *config_text,
                   mx_err *err) {
    param_store_download(&m->params, false);
    if (o) optim_download(o);
    char bad[400];
    if (ckpt_find_nonfinite(m, o, bad, sizeof bad)) /* a checkpoint is only ever a good state */
        return mx_err_set(err, "%s: not written: %s holds non-finite values", path, bad);
    h5_quiet();
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return mx_err_set(err, "%s: cannot create checkpoint file", tmp);
    int rc = -1;
    hid_t gm = H5Gcreate2(f, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), go = -1;
    param_store *ps = &m->params;
    float *buf = NULL;
    size_t cap = 0;
    for (int i = 0; i < ps->count; i++) {
        const param_entry *e = &ps->entries[i];
        int64_t shape[8];
        int rank = param_torch_shape(e, shape);
        const float *src = param_data(ps, i);
        if (e->is_integer) {
            int64_t *iv = mx_malloc(sizeof(int64_t) * (size_t)e->numel);
            for (int64_t k = 0; k < e->numel; k++) iv[k] = (int64_t)src[k];
            int r = write_dataset(gm, e->name, H5T_STD_I64LE, H5T_NATIVE_INT64, rank, shape, iv);
            free(iv);
            if (r) goto fail;
            continue;
        }
        buf = ckpt_grow(buf, &cap, (size_t)e->numel);
        param_to_torch(e, src, buf);
        if (write_dataset(gm, e->name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, rank, shape, buf)) goto fail;
    }
    if (o) { /* optim/state/<PyTorch name>/{exp_avg, exp_avg_sq | momentum_buffer}, PyTorch layouts */
        go = H5Gcreate2(f, "optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (go < 0 || attr_write_i64(go, "optim_step", o->step) || attr_write_i64(go, "optim_kind", o->cfg.kind))
            goto fail;
        hid_t gs = H5Gcreate2(go, "state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (gs < 0) goto fail;
        bool ok = true;
        for (int i = 0; i < ps->count && ok; i++) {
            const param_entry *e = &ps->entries[i];
            if (e->kind == PARAM_KIND_BUFFER) continue;
            int64_t shape[8];
            int rank = param_torch_shape(e, shape);
            hid_t ge = H5Gcreate2(gs, e->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            ok = ge >= 0;
            for (int k = 0; k < ckpt_state_count(o) && ok; k++) {
                buf = ckpt_grow(buf, &cap, (size_t)e->numel);
                param_to_torch(e, ckpt_state(o, k) + e->offset, buf);
                ok = write_dataset(ge, ckpt_state_name(o, k), H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, rank, shape, buf) == 0;
            }
            if (ge >= 0) H5Gclose(ge);
        }
        H5Gclose(gs);
        if (!ok) goto fail;
    }
    if (attr_write_i64(f, "step", meta->step) || attr_write_i64(f, "epoch", meta->epoch) ||
        attr_write_i64(f, "seed", (int64_t)meta->seed) || attr_write(f, "best_acc", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &meta->best_acc))
        goto fail;
    if (config_text) {
        hid_t st = H5Tcopy(H5T_C_S1);
        H5Tset_size(st, H5T_VARIABLE);
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t d = H5Dcreate2(f, "config", st, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        herr_t r = d >= 0 ? H5Dwrite(d, st, H5S_ALL, H5S_ALL, H5P_DEFAULT, &config_text) : -1;
        if (d >= 0) H5Dclose(d);
        H5Sclose(sp);
        H5Tclose(st);
        if (r < 0) goto fail;
    }
    rc = 0;
fail:
    free(buf);
    if (go >= 0) H5Gclose(go);
    if (gm >= 0) H5Gclose(gm);
    if (H5Fclose(f) < 0) rc = -1;
    if (rc) {
        unlink(tmp);
        return mx_err_set(err, "%s: writing the checkpoint failed (disk full?)", tmp);
    }
    int fd = open(tmp, O_RDONLY); /* the data must be on disk before the rename makes it current */
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

int ckpt_commit(const char *path, mx_err *err) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (rename(tmp, path) != 0) return mx_err_set(err, "%s: cannot rename %s into place", path, tmp);
    return 0;
}

int ckpt_save(const char *path, model *m, optimizer *o, const ckpt_meta *meta, const char *config_text,
              mx_err *err) {
    if (ckpt_write_tmp(path, m, o, meta, config_text, err)) return -1;
    return ckpt_commit(path, err);
}

/* ---------------- reading ---------------- */

/* The config key that makes the model take a tensor of PyTorch shape got
 * where it expects want (a stem, classes, channels, patch grid), or NULL. */
static const char *ckpt_shape_hint(const char *name, int rg, const int64_t *got, int rw, const int64_t *want, char *buf,
                                   size_t n) {
    size_t len = strlen(name);
    bool ends = false;
    static const char *const heads[] = {"fc.weight", "fc.bias", "head.weight", "head.bias"};
    for (int i = 0; i < 4; i++) {
        size_t k = strlen(heads[i]);
        ends |= len >= k && strcmp(name + len - k, heads[i]) == 0 && (len == k || name[len - k - 1] == '.');
    }
    if (rg != rw) return NULL;
    if (strcmp(name, "conv1.weight") == 0 && rg == 4) {
        if (got[2] != want[2]) snprintf(buf, n, "set model.stem = %s", got[2] == 7 ? "imagenet" : "cifar");
        else if (got[1] != want[1]) snprintf(buf, n, "set model.in_chans = %lld", (long long)got[1]);
        else return NULL;
    } else if (ends && got[0] != want[0]) {
        snprintf(buf, n, "set model.num_classes = %lld", (long long)got[0]);
    } else if (strcmp(name, "patch_embed.proj.weight") == 0 && rg == 4 && got[2] != want[2]) {
        snprintf(buf, n, "set model.patch_size = %lld", (long long)got[2]);
    } else if (strcmp(name, "patch_embed.proj.weight") == 0 && rg == 4 && got[1] != want[1]) {
        snprintf(buf, n, "set model.in_chans = %lld", (long long)got[1]);
    } else if (strcmp(name, "pos_embed") == 0 && rg == 3 && got[1] != want[1]) {
        snprintf(buf, n, "set model.img_size and model.patch_size for %lld patches", (long long)got[1] - 1);
    } else {
        return NULL;
    }
    return buf;
}

/* "PATH: 'NAME' has shape [..], the model expects [..]" (+ the key that fixes it) */
static int ckpt_shape_error(mx_err *err, const char *path, const char *name, int rg, const int64_t *got, int rw,
                            const int64_t *want) {
    char g[160] = "", w[160] = "", hint[160];
    size_t a = 0, b = 0;
    for (int i = 0; i < rg; i++) a += (size_t)snprintf(g + a, sizeof g - a, "%s%lld", i ? "," : "", (long long)got[i]);
    for (int i = 0; i < rw; i++) b += (size_t)snprintf(w + b, sizeof w - b, "%s%lld", i ? "," : "", (long long)want[i]);
    const char *h = ckpt_shape_hint(name, rg, got, rw, want, hint, sizeof hint);
    return mx_err_set(err, "%s: '%s' has shape [%s], the model expects [%s]%s%s", path, name, g, w, h ? ": " : "",
                      h ? h : "");
}

/* Reads dataset `name` under loc into dst (count values of PyTorch shape `shape`). */
static int read_checked(hid_t loc, const char *name, const char *path, int rank, const int64_t *shape, bool integer,
                        void *dst, mx_err *err) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return mx_err_set(err, "%s: missing '%s'", path, name);
    hid_t sp = H5Dget_space(d), ty = H5Dget_type(d);
    int r = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[16] = {0};
    int rc = -1;
    if (r < 0 || r > 16) {
        mx_err_set(err, "%s: '%s' has an unreadable shape", path, name);
        goto done;
    }
    H5Sget_simple_extent_dims(sp, dims, NULL);
    bool same = r == rank;
    for (int i = 0; same && i < r; i++) same = (int64_t)dims[i] == shape[i];
    if (!same) {
        int64_t got[16];
        for (int i = 0; i < r; i++) got[i] = (int64_t)dims[i];
        ckpt_shape_error(err, path, name, r, got, rank, shape);
        goto done;
    }
    H5T_class_t cls = H5Tget_class(ty);
    if (cls != H5T_FLOAT && cls != H5T_INTEGER) {
        mx_err_set(err, "%s: '%s' is not numeric", path, name);
        goto done;
    }
    if (H5Dread(d, integer ? H5T_NATIVE_INT64 : H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0) {
        mx_err_set(err, "%s: cannot read '%s' (truncated or corrupt file?)", path, name);
        goto done;
    }
    if (!integer) { /* a non-finite weight, buffer or moment would poison every step that follows */
        int64_t n = 1, bad = 0;
        for (int i = 0; i < rank; i++) n *= shape[i];
        const float *v = dst;
        for (int64_t k = 0; k < n; k++) bad += !isfinite(v[k]);
        if (bad) {
            mx_err_set(err, "%s: '%s' holds %lld non-finite values (NaN or Inf) of %lld", path, name, (long long)bad,
                       (long long)n);
            goto done;
        }
    } else {
        int64_t n = 1;
        for (int i = 0; i < rank; i++) n *= shape[i];
        const int64_t *v = dst;
        for (int64_t k = 0; k < n; k++)
            if (v[k] < 0 || v[k] > ((int64_t)1 << 53)) {
                mx_err_set(err, "%s: '%s' holds %lld, out of range [0, 2^53]", path, name, (long long)v[k]);
                goto done;
            }
    }
    rc = 0;
done:
    H5Tclose(ty);
    H5Sclose(sp);
    H5Dclose(d);
    return rc;
}

typedef struct name_check {
    const param_store *ps;
    char first_unknown[256];
} name_check;

static herr_t visit_name(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    name_check *nc = data;
    if (nc->first_unknown[0]) return 0;
    hid_t obj = H5Oopen(g, name, H5P_DEFAULT);
    if (obj < 0) return 0;
    bool is_dataset = H5Iget_type(obj) == H5I_DATASET;
    H5Oclose(obj);
    if (is_dataset && param_find(nc->ps, name) < 0)
        snprintf(nc->first_unknown, sizeof nc->first_unknown, "%s", name);
    return 0;
}

static int read_model(hid_t g, const char *path, model *m, bool strict_names, bool allow_missing_counters,
                      mx_err *err) {
    param_store *ps = &m->params;
    float *buf = NULL;
    size_t cap = 0;
    for (int i = 0; i < ps->count; i++) {
        const param_entry *e = &ps->entries[i];
        int64_t shape[8];
        int rank = param_torch_shape(e, shape);
        if (allow_missing_counters && e->is_integer && H5Lexists(g, e->name, H5P_DEFAULT) <= 0) continue;
        if (e->is_integer) {
            int64_t *iv = mx_malloc(sizeof(int64_t) * (size_t)e->numel);
            int r = read_checked(g, e->name, path, rank, shape, true, iv, err);
            if (!r)
                for (int64_t k = 0; k < e->numel; k++) param_data(ps, i)[k] = (float)iv[k];
            free(iv);
            if (r) goto fail;
            continue;
        }
        buf = ckpt_grow(buf, &cap, (size_t)e->numel);
        if (read_checked(g, e->name, path, rank, shape, false, buf, err)) goto fail;
        param_from_torch(e, buf, param_data(ps, i));
    }
    free(buf);
    if (strict_names) {
        name_check nc = {ps, ""};
        H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, visit_name, &nc);
        if (nc.first_unknown[0])
            return mx_err_set(err, "%s: '%s' is not a parameter of this model (%s)", path, nc.first_unknown,
                              model_arch_name(m->cfg.arch));
    }
    return 0;
fail:
    free(buf);
    return -1;
}

static hid_t open_ro(const char *path, mx_err *err) {
    h5_quiet();
    if (access(path, R_OK) != 0) {
        mx_err_set(err, "%s: no such checkpoint", path);
        return -1;
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) mx_err_set(err, "%s: not a readable HDF5 file (truncated or corrupt?)", path);
    return f;
}

static bool ckpt_is_safetensors(const char *path) {
    size_t n = strlen(path);
    return n >= 12 && strcmp(path + n - 12, ".safetensors") == 0;
}

/* Weights from a .safetensors file (PyTorch names and layouts; F32, F16,
 * BF16; num_batches_tracked as I64 or absent), with read_model's checks. */
static int read_model_safetensors(const char *path, model *m, mx_err *err) {
    st_file f;
    if (st_open(path, &f, err)) return -1;
    param_store *ps = &m->params;
    float *buf = NULL;
    size_t cap = 0;
    int rc = -1;
    for (int i = 0; i < ps->count; i++) {
        const param_entry *e = &ps->entries[i];
        int64_t shape[8];
        int rank = param_torch_shape(e, shape);
        int j = st_find(&f, e->name);
        if (j < 0) {
            if (e->is_integer) continue;
            mx_err_set(err, "%s: missing '%s'", path, e->name);
            goto done;
        }
        const st_tensor *t = &f.t[j];
        bool same = t->ndim == rank;
        for (int k = 0; same && k < rank; k++) same = t->shape[k] == shape[k];
        if (!same) {
            ckpt_shape_error(err, path, e->name, t->ndim, t->shape, rank, shape);
            goto done;
        }
        buf = ckpt_grow(buf, &cap, (size_t)e->numel);
        st_read_f32(&f, j, buf);
        int64_t bad = 0;
        for (int64_t k = 0; k < e->numel; k++) bad += !isfinite(buf[k]);
        if (bad) {
            mx_err_set(err, "%s: '%s' holds %lld non-finite values (NaN or Inf) of %lld", path, e->name, (long long)bad,
                       (long long)e->numel);
            goto done;
        }
        param_from_torch(e, buf, param_data(ps, i));
    }
    for (int j = 0; j < f.n; j++)
        if (param_find(ps, f.t[j].name) < 0) {
            mx_err_set(err, "%s: '%s' is not a parameter of this model (%s)", path, f.t[j].name,
                       model_arch_name(m->cfg.arch));
            goto done;
        }
    rc = 0;
done:
    free(buf);
    st_close(&f);
    return rc;
}

int ckpt_load_weights(const char *path, model *m, mx_err *err) {
    if (ckpt_is_safetensors(path)) {
        int rc = read_model_safetensors(path, m, err);
        if (rc == 0) param_store_upload(&m->params);
        return rc;
    }
    hid_t f = open_ro(path, err);
    if (f < 0) return -1;
    bool has_group = H5Lexists(f, "model", H5P_DEFAULT) > 0;
    hid_t g = has_group ? H5Gopen2(f, "model", H5P_DEFAULT) : f;
    int rc = read_model(g, path, m, true, true, err);
    if (has_group) H5Gclose(g);
    H5Fclose(f);
    if (rc == 0) param_store_upload(&m->params);
    return rc;
}

int ckpt_load(const char *path, model *m, optimizer *o, ckpt_meta *meta, mx_err *err) {
    hid_t f = open_ro(path, err);
    if (f < 0) return -1;
    int rc = -1;
    hid_t g = -1, go = -1;
    if (H5Lexists(f, "model", H5P_DEFAULT) <= 0 || H5Lexists(f, "optim", H5P_DEFAULT) <= 0) {
        mx_err_set(err, "%s: not an mxtrain training checkpoint (needs groups model and optim)", path);
        goto done;
    }
    g = H5Gopen2(f, "model", H5P_DEFAULT);
    if (read_model(g, path, m, true, false, err)) goto done;
    go = H5Gopen2(f, "optim", H5P_DEFAULT);
    int64_t n = (int64_t)o->n, kind, ostep;
    if (attr_read_i64(go, "optim_kind", &kind) || attr_read_i64(go, "optim_step", &ostep)) {
        mx_err_set(err, "%s: optimizer attributes missing", path);
        goto done;
    }
    if (kind < 0 || kind >= OPTIM_KIND_COUNT) {
        mx_err_set(err, "%s: optim_kind %lld is not an optimizer (0..%d)", path, (long long)kind, OPTIM_KIND_COUNT - 1);
        goto done;
    }
    if (kind != o->cfg.kind) {
        mx_err_set(err, "%s: saved by optimizer %s, the config asks for %s", path, optim_kind_name((optim_kind)kind),
                   optim_kind_name(o->cfg.kind));
        goto done;
    }
    if (H5Lexists(go, "state", H5P_DEFAULT) > 0) { /* per parameter, PyTorch names and layouts */
        hid_t gs = H5Gopen2(go, "state", H5P_DEFAULT);
        const param_store *ps = &m->params;
        float *buf = NULL;
        size_t cap = 0;
        int bad = 0;
        for (int i = 0; i < ps->count && !bad; i++) {
            const param_entry *e = &ps->entries[i];
            if (e->kind == PARAM_KIND_BUFFER) continue;
            if (H5Lexists(gs, e->name, H5P_DEFAULT) <= 0) {
                bad = mx_err_set(err, "%s: no optimizer state for '%s'", path, e->name);
                break;
            }
            hid_t ge = H5Gopen2(gs, e->name, H5P_DEFAULT);
            int64_t shape[8];
            int rank = param_torch_shape(e, shape);
            for (int k = 0; k < ckpt_state_count(o) && !bad; k++) {
                buf = ckpt_grow(buf, &cap, (size_t)e->numel);
                char what[200];
                snprintf(what, sizeof what, "optim/state/%s/%s", e->name, ckpt_state_name(o, k));
                bad = read_checked(ge, ckpt_state_name(o, k), path, rank, shape, false, buf, err);
                if (bad) {
                    mx_err why = *err;
                    mx_err_set(err, "%s (%s)", why.msg, what);
                } else {
                    param_from_torch(e, buf, ckpt_state(o, k) + e->offset);
                }
            }
            H5Gclose(ge);
        }
        free(buf);
        H5Gclose(gs);
        if (bad) goto done;
    } else if (read_checked(go, "exp_avg", path, 1, &n, false, o->m, err) || /* flat (checkpoints before 2026-12-02) */
               read_checked(go, "exp_avg_sq", path, 1, &n, false, o->v, err)) {
        goto done;
    }
    o->step = ostep;
    int64_t seed;
    if (attr_read_i64(f, "step", &meta->step) || attr_read_i64(f, "epoch", &meta->epoch) ||
        attr_read_i64(f, "seed", &seed) || attr_read(f, "best_acc", H5T_NATIVE_DOUBLE, &meta->best_acc)) {
        mx_err_set(err, "%s: step/epoch/seed/best_acc attributes missing or not scalars of the right type", path);
        goto done;
    }
    /* in range: steps below 2^53 (a double counts them exactly), an epoch has
     * at least one step, an update at most one per step, seeds as the config's */
    const int64_t lim = (int64_t)1 << 53;
    if (meta->step < 0 || meta->step > lim || meta->epoch < 0 || meta->epoch > meta->step || ostep < 0 ||
        ostep > meta->step || seed < 0 || !(meta->best_acc >= -1.0 && meta->best_acc <= 1.0)) {
        mx_err_set(err, "%s: attributes out of range (step %lld, epoch %lld, optim_step %lld, seed %lld, best_acc %g)",
                   path, (long long)meta->step, (long long)meta->epoch, (long long)ostep, (long long)seed,
                   meta->best_acc);
        goto done;
    }
    meta->seed = (uint64_t)seed;
    param_store_upload(&m->params);
    optim_upload(o);
    rc = 0;
done:
    if (go >= 0) H5Gclose(go);
    if (g >= 0) H5Gclose(g);
    H5Fclose(f);
    return rc;
}

/* ---------------- export ---------------- */

typedef struct name_list {
    char **names;
    int n;
    int64_t cap;
} name_list;

static herr_t collect_dataset(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    name_list *l = data;
    hid_t obj = H5Oopen(g, name, H5P_DEFAULT);
    if (obj < 0) return 0;
    bool is_dataset = H5Iget_type(obj) == H5I_DATASET;
    H5Oclose(obj);
    if (!is_dataset) return 0;
    MX_GROW(l->names, l->cap, l->n + 1, 64);
    l->names[l->n] = mx_malloc(strlen(name) + 1);
    strcpy(l->names[l->n++], name);
    return 0;
}

int ckpt_export_safetensors(const char *path, const char *out, mx_err *err) {
    hid_t f = open_ro(path, err);
    if (f < 0) return -1;
    bool has_group = H5Lexists(f, "model", H5P_DEFAULT) > 0;
    hid_t g = has_group ? H5Gopen2(f, "model", H5P_DEFAULT) : f;
    name_list l = {0};
    H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, collect_dataset, &l);
    st_item *items = mx_calloc((size_t)(l.n ? l.n : 1), sizeof *items);
    int64_t (*shapes)[16] = mx_calloc((size_t)(l.n ? l.n : 1), sizeof *shapes);
    int rc = -1;
    if (l.n == 0) {
        mx_err_set(err, "%s: no tensors to export (group 'model' or root datasets)", path);
        goto done;
    }
    for (int i = 0; i < l.n; i++) {
        hid_t d = H5Dopen2(g, l.names[i], H5P_DEFAULT), sp = H5Dget_space(d), ty = H5Dget_type(d);
        int r = H5Sget_simple_extent_ndims(sp);
        hsize_t dims[16] = {0};
        H5T_class_t cls = H5Tget_class(ty);
        bool ok = r >= 0 && r <= ST_MAX_DIMS && (cls == H5T_FLOAT || cls == H5T_INTEGER);
        int64_t numel = 1;
        if (ok) {
            H5Sget_simple_extent_dims(sp, dims, NULL);
            for (int k = 0; k < r; k++) shapes[i][k] = (int64_t)dims[k], numel *= (int64_t)dims[k];
        }
        float *v = ok ? mx_malloc(sizeof(float) * (size_t)(numel ? numel : 1)) : NULL;
        if (ok) ok = H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0;
        H5Tclose(ty);
        H5Sclose(sp);
        H5Dclose(d);
        items[i] = (st_item){l.names[i], r, shapes[i], v, cls == H5T_INTEGER};
        if (!ok) {
            mx_err_set(err, "%s: cannot read '%s' (truncated or corrupt file?)", path, l.names[i]);
            goto done;
        }
    }
    rc = st_write(out, items, l.n, err);
done:
    for (int i = 0; i < l.n; i++) free((void *)items[i].data); /* NULL past a failure */
    for (int i = 0; i < l.n; i++) free(l.names[i]);
    free(l.names);
    free(items);
    free(shapes);
    if (has_group) H5Gclose(g);
    H5Fclose(f);
    return rc;
}
