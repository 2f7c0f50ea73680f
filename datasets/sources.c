/* Dataset readers: IDX (gzip or plain), CIFAR-10 binary, HDF5, imagefolder
 * listing, synthetic. Everything read is validated before use. */
#include <dirent.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "datasets/datasets.h"

static const char *const data_kind_names[DATA_KIND_COUNT] = {"fashion-mnist", "mnist",    "cifar10",
                                                             "imagefolder",   "hdf5",     "synthetic"};

const char *data_kind_name(data_kind k) { return (unsigned)k < DATA_KIND_COUNT ? data_kind_names[k] : "?"; }

MX_ENUM_OF_NAMES(data_kind_enum, "dataset", data_kind_names);

int data_kind_parse(const char *s, data_kind *out, mx_err *err) {
    int v;
    if (mx_enum_parse(&data_kind_enum, s, &v, err)) return -1;
    *out = (data_kind)v;
    return 0;
}

data_config data_config_default(data_kind k) {
    data_config c;
    memset(&c, 0, sizeof c);
    c.kind = k;
    c.channels = 3;
    c.num_classes = 10;
    c.synthetic_train = 2048;
    c.synthetic_eval = 512;
    c.img_size = k == DATA_KIND_SYNTHETIC ? 32 : k == DATA_KIND_IMAGEFOLDER ? 224 : 0;
    snprintf(c.h5_images, sizeof c.h5_images, "images");
    snprintf(c.h5_labels, sizeof c.h5_labels, "labels");
    c.shuffle = c.augment = true;
    c.workers = 2;
    return c;
}

/* per-channel statistics: 1..DATA_MAX_CHANNELS numbers, or empty */
static int data_parse_floats(const char *v, float *out, int *n, mx_err *err) {
    double d[DATA_MAX_CHANNELS];
    *n = 0;
    if (!v[0]) return 0;
    if (key_parse_list(v, d, 1, DATA_MAX_CHANNELS, false, n, err)) return -1;
    for (int i = 0; i < *n; i++) out[i] = (float)d[i];
    return 0;
}
static int data_parse_mean(const char *v, void *cfg, mx_err *err) {
    data_config *c = cfg;
    return data_parse_floats(v, c->mean, &c->n_mean, err);
}
static int data_parse_std(const char *v, void *cfg, mx_err *err) {
    data_config *c = cfg;
    return data_parse_floats(v, c->std, &c->n_std, err);
}

#define DK(...) KEY_NUM(data_config, __VA_ARGS__)
#define BIG 1e18
static const key_def data_keys[] = {
    KEY_ENUMV(data_config, "dataset", kind, "fashion-mnist", &data_kind_enum, "what the images are"),
    KEY_TEXTV(data_config, "path", path, "",
              "dataset location; empty = default (`/usr/share/datasets/fashion-mnist` for fashion-mnist)"),
    DK("batch_size", INT, batch_size, "128", 1, 1 << 20, "training batch size"),
    DK("eval_batch_size", INT, eval_batch_size, "0", 0, 1 << 20, "evaluation batch size; 0 = batch_size"),
    KEY_BOOLV(data_config, "shuffle", shuffle, "true", "shuffle training samples each epoch (seeded)"),
    KEY_BOOLV(data_config, "augment", augment, "true",
              "training augmentation: random crop (pad side/8) + horizontal flip (no flip for mnist); imagefolder: "
              "random-resized-crop + flip"),
    DK("limit_train", I64, limit_train, "0", 0, BIG, "use only the first N training samples; 0 = all"),
    DK("limit_eval", I64, limit_eval, "0", 0, BIG, "use only the first N evaluation samples; 0 = all"),
    KEY_CUSTOMV("mean", "", data_parse_mean,
                "per-channel mean after scaling pixels to [0,1], comma-separated; empty = the dataset's standard values"),
    KEY_CUSTOMV("std", "", data_parse_std, "per-channel std, like `mean`"),
    DK("workers", INT, workers, "2", 1, 64, "background loader threads"),
    DK("img_size", INT, img_size, "0", 0, 4096,
       "resize file datasets to this side; 0 = native (imagefolder/synthetic use model.img_size)"),
    KEY_TEXTV(data_config, "h5_images", h5_images, "images", "hdf5: uint8 images dataset (N x H x W x C)"),
    KEY_TEXTV(data_config, "h5_labels", h5_labels, "labels", "hdf5: integer labels dataset (N)"),
    DK("synthetic_train", I64, synthetic_train, "2048", 1, BIG, "synthetic: training samples"),
    DK("synthetic_eval", I64, synthetic_eval, "512", 1, BIG, "synthetic: evaluation samples"),
};
#undef DK
#undef BIG
const key_table data_key_table = KEY_TABLE("data", data_keys);

void data_default_norm(data_kind k, int channels, float *mean, float *std) {
    static const float cifar_m[3] = {0.4914f, 0.4822f, 0.4465f}, cifar_s[3] = {0.2470f, 0.2435f, 0.2616f};
    static const float inet_m[3] = {0.485f, 0.456f, 0.406f}, inet_s[3] = {0.229f, 0.224f, 0.225f};
    for (int i = 0; i < channels; i++) {
        switch (k) {
        case DATA_KIND_FASHION_MNIST: mean[i] = 0.2860f, std[i] = 0.3530f; break;
        case DATA_KIND_MNIST: mean[i] = 0.1307f, std[i] = 0.3081f; break;
        case DATA_KIND_CIFAR10: mean[i] = cifar_m[i % 3], std[i] = cifar_s[i % 3]; break;
        case DATA_KIND_IMAGEFOLDER: mean[i] = inet_m[i % 3], std[i] = inet_s[i % 3]; break;
        default: mean[i] = 0.5f, std[i] = 0.5f; break;
        }
    }
}

/* ---------------- IDX (MNIST family) ---------------- */

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Reads exactly n bytes from a gz stream (which also reads plain files). */
static int gz_read_all(gzFile f, void *buf, size_t n, const char *path, mx_err *err) {
    unsigned char *p = buf;
    while (n > 0) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int got = gzread(f, p, chunk);
        if (got < 0) {
            int code;
            const char *m = gzerror(f, &code);
            return mx_err_set(err, "%s: corrupt gzip data (%s)", path, m ? m : "?");
        }
        if (got == 0) return mx_err_set(err, "%s: truncated (%zu bytes missing)", path, n);
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

/* Finds base or base.gz in dir. */
static int idx_find(const char *dir, const char *base, char *out, size_t cap, mx_err *err) {
    struct stat st;
    snprintf(out, cap, "%s/%s.gz", dir, base);
    if (stat(out, &st) == 0) return 0;
    snprintf(out, cap, "%s/%s", dir, base);
    if (stat(out, &st) == 0) return 0;
    return mx_err_set(err, "%s/%s(.gz): no such file (is the dataset at data.path = %s?)", dir, base, dir);
}

/* Reads an IDX file with the given rank into a fresh buffer. */
static int idx_read(const char *path, int want_rank, int64_t *dims, uint8_t **data, mx_err *err) {
    gzFile f = gzopen(path, "rb");
    if (!f) return mx_err_set(err, "%s: cannot open", path);
    unsigned char hdr[4 + 4 * 3];
    int rc = -1;
    *data = NULL;
    if (gz_read_all(f, hdr, 4, path, err)) goto done;
    if (hdr[0] != 0 || hdr[1] != 0 || hdr[2] != 0x08) {
        mx_err_set(err, "%s: not an IDX ubyte file (magic %02x%02x%02x%02x)", path, hdr[0], hdr[1], hdr[2], hdr[3]);
        goto done;
    }
    if (hdr[3] != want_rank) {
        mx_err_set(err, "%s: IDX rank %d, expected %d", path, hdr[3], want_rank);
        goto done;
    }
    if (gz_read_all(f, hdr + 4, 4 * (size_t)want_rank, path, err)) goto done;
    int64_t total = 1;
    for (int i = 0; i < want_rank; i++) {
        dims[i] = be32(hdr + 4 + 4 * i);
        if (dims[i] <= 0 || dims[i] > (1 << 28)) {
            mx_err_set(err, "%s: implausible dimension %lld", path, (long long)dims[i]);
            goto done;
        }
        total *= dims[i];
        if (total > ((int64_t)1 << 34)) {
            mx_err_set(err, "%s: implausible size", path);
            goto done;
        }
    }
    /* grown as the data arrive, 64 MiB at a time: a header claiming
     * gigabytes in a small (or truncated) file is an error, not an allocation */
    size_t have = 0, cap = 0;
    while (have < (size_t)total) {
        size_t want = (size_t)total - have < ((size_t)64 << 20) ? (size_t)total - have : ((size_t)64 << 20);
        if (have + want > cap) {
            cap = have + want;
            uint8_t *grown = realloc(*data, cap);
            if (!grown) {
                mx_err_set(err, "%s: cannot allocate %lld bytes", path, (long long)total);
                goto done;
            }
            *data = grown;
        }
        if (gz_read_all(f, *data + have, want, path, err)) goto done;
        have += want;
    }
    if (!*data) *data = mx_malloc(1);
    unsigned char extra;
    if (gzread(f, &extra, 1) != 0) {
        mx_err_set(err, "%s: trailing bytes after %lld values", path, (long long)total);
        goto done;
    }
    rc = 0;
done:
    gzclose(f);
    if (rc) {
        free(*data);
        *data = NULL;
    }
    return rc;
}

static int idx_open(dataset *ds, const char *dir, data_split split, mx_err *err) {
    const char *pre = split == DATA_SPLIT_TRAIN ? "train" : "t10k";
    char ipath[1200], lpath[1200], base[64];
    snprintf(base, sizeof base, "%s-images-idx3-ubyte", pre);
    if (idx_find(dir, base, ipath, sizeof ipath, err)) return -1;
    snprintf(base, sizeof base, "%s-labels-idx1-ubyte", pre);
    if (idx_find(dir, base, lpath, sizeof lpath, err)) return -1;
    int64_t idims[3] = {0}, ldims[1] = {0};
    uint8_t *labels = NULL;
    if (idx_read(ipath, 3, idims, &ds->images, err)) return -1;
    if (idx_read(lpath, 1, ldims, &labels, err)) return -1;
    if (ldims[0] != idims[0]) {
        free(labels);
        return mx_err_set(err, "%s: %lld labels for %lld images in %s", lpath, (long long)ldims[0],
                          (long long)idims[0], ipath);
    }
    ds->n = idims[0];
    ds->h = (int)idims[1];
    ds->w = (int)idims[2];
    ds->c = 1;
    ds->num_classes = 10;
    ds->labels = mx_malloc(sizeof(int32_t) * (size_t)ds->n);
    for (int64_t i = 0; i < ds->n; i++) {
        if (labels[i] >= 10) {
            mx_err_set(err, "%s: label %d of sample %lld out of range [0, 10)", lpath, labels[i], (long long)i);
            free(labels);
            return -1;
        }
        ds->labels[i] = labels[i];
    }
    free(labels);
    snprintf(ds->source, sizeof ds->source, "%s", ipath);
    return 0;
}

/* ---------------- CIFAR-10 binary ---------------- */

static int cifar_open(dataset *ds, const char *dir0, data_split split, mx_err *err) {
    /* accept the folder itself or its parent holding cifar-10-batches-bin */
    char dir[1100], path[1200];
    struct stat st;
    snprintf(dir, sizeof dir, "%s/cifar-10-batches-bin", dir0);
    if (stat(dir, &st) != 0) snprintf(dir, sizeof dir, "%s", dir0);
    const int rec = 1 + 3072;
    int nfiles = split == DATA_SPLIT_TRAIN ? 5 : 1;
    int64_t cap_img = 0, cap_lab = 0;
    ds->h = ds->w = 32;
    ds->c = 3;
    ds->num_classes = 10;
    ds->n = 0;
    unsigned char *buf = mx_malloc((size_t)rec);
    for (int fi = 0; fi < nfiles; fi++) {
        if (split == DATA_SPLIT_TRAIN) snprintf(path, sizeof path, "%s/data_batch_%d.bin", dir, fi + 1);
        else snprintf(path, sizeof path, "%s/test_batch.bin", dir);
        FILE *f = fopen(path, "rb");
        if (!f) {
            free(buf);
            return mx_err_set(err, "%s: cannot open (CIFAR-10 binary batches expected in data.path)", path);
        }
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fseek(f, 0, SEEK_SET);
        if (size <= 0 || size % rec != 0) {
            fclose(f);
            free(buf);
            return mx_err_set(err, "%s: %ld bytes is not a whole number of %d-byte records (truncated?)", path, size,
                              rec);
        }
        int64_t cnt = size / rec;
        MX_GROW(ds->images, cap_img, (ds->n + cnt) * 3072, 3072);
        MX_GROW(ds->labels, cap_lab, ds->n + cnt, 1);
        for (int64_t r = 0; r < cnt; r++) {
            if (fread(buf, 1, (size_t)rec, f) != (size_t)rec) {
                fclose(f);
                free(buf);
                return mx_err_set(err, "%s: read error at record %lld", path, (long long)r);
            }
            if (buf[0] >= 10) {
                int bad = buf[0];
                fclose(f);
                free(buf);
                return mx_err_set(err, "%s: label %d of record %lld out of range [0, 10)", path, bad, (long long)r);
            }
            int64_t i = ds->n + r;
            ds->labels[i] = buf[0];
            uint8_t *img = ds->images + i * 3072; /* CHW -> HWC */
            for (int c = 0; c < 3; c++)
                for (int p = 0; p < 1024; p++) img[p * 3 + c] = buf[1 + c * 1024 + p];
        }
        fclose(f);
        ds->n += cnt;
    }
    free(buf);
    snprintf(ds->source, sizeof ds->source, "%s", dir);
    return 0;
}

/* ---------------- HDF5 ---------------- */

static int h5_open_split(dataset *ds, const data_config *cfg, const char *dir, data_split split, mx_err *err) {
    char path[1200];
    struct stat st;
    const char *names[2];
    if (split == DATA_SPLIT_TRAIN) names[0] = "train.h5", names[1] = NULL;
    else names[0] = "val.h5", names[1] = "test.h5";
    path[0] = 0;
    for (int i = 0; i < 2 && names[i]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) == 0) break;
        path[0] = 0;
    }
    if (!path[0])
        return mx_err_set(err, "%s: no %s in this folder (hdf5 datasets: data.path holds train.h5 and val.h5 or test.h5)",
                          dir, split == DATA_SPLIT_TRAIN ? "train.h5" : "val.h5/test.h5");
    int rc = -1;
    H5E_auto2_t old_fn;
    void *old_data;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages, not HDF5's stack dumps */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), di = -1, dl = -1, si = -1, sl = -1;
    if (f < 0) {
        mx_err_set(err, "%s: not a readable HDF5 file", path);
        goto done;
    }
    di = H5Dopen2(f, cfg->h5_images, H5P_DEFAULT);
    if (di < 0) {
        mx_err_set(err, "%s: no dataset '%s' (data.h5_images)", path, cfg->h5_images);
        goto done;
    }
    dl = H5Dopen2(f, cfg->h5_labels, H5P_DEFAULT);
    if (dl < 0) {
        mx_err_set(err, "%s: no dataset '%s' (data.h5_labels)", path, cfg->h5_labels);
        goto done;
    }
    si = H5Dget_space(di);
    sl = H5Dget_space(dl);
    hsize_t idims[4] = {0}, ldims[2] = {0};
    int ir = H5Sget_simple_extent_ndims(si), lr = H5Sget_simple_extent_ndims(sl);
    if (ir != 3 && ir != 4) {
        mx_err_set(err, "%s: '%s' has rank %d, expected N x H x W x C (or N x H x W)", path, cfg->h5_images, ir);
        goto done;
    }
    if (lr != 1) {
        mx_err_set(err, "%s: '%s' has rank %d, expected N", path, cfg->h5_labels, lr);
        goto done;
    }
    H5Sget_simple_extent_dims(si, idims, NULL);
    H5Sget_simple_extent_dims(sl, ldims, NULL);
    if (ir == 3) idims[3] = 1;
    if (idims[0] != ldims[0]) {
        mx_err_set(err, "%s: %llu images but %llu labels", path, (unsigned long long)idims[0],
                   (unsigned long long)ldims[0]);
        goto done;
    }
    if (idims[3] < 1 || idims[3] > DATA_MAX_CHANNELS || idims[1] < 1 || idims[2] < 1 || idims[1] > 65536 ||
        idims[2] > 65536) {
        mx_err_set(err, "%s: implausible image shape %llux%llux%llu", path, (unsigned long long)idims[1],
                   (unsigned long long)idims[2], (unsigned long long)idims[3]);
        goto done;
    }
    hid_t it = H5Dget_type(di);
    bool ok_type = H5Tget_class(it) == H5T_INTEGER && H5Tget_size(it) == 1 && H5Tget_sign(it) == H5T_SGN_NONE;
    H5Tclose(it);
    if (!ok_type) { /* int8 read as uint8 would turn negative pixels into 0 */
        mx_err_set(err, "%s: '%s' must be uint8 (unsigned 8-bit integers)", path, cfg->h5_images);
        goto done;
    }
    hid_t lt = H5Dget_type(dl);
    bool ok_lt = H5Tget_class(lt) == H5T_INTEGER;
    H5Tclose(lt);
    if (!ok_lt) {
        mx_err_set(err, "%s: '%s' must be integers", path, cfg->h5_labels);
        goto done;
    }
    ds->n = (int64_t)idims[0];
    ds->h = (int)idims[1];
    ds->w = (int)idims[2];
    ds->c = (int)idims[3];
    uint64_t per = idims[1] * idims[2] * idims[3];
    if (idims[0] > (((uint64_t)1 << 36) / per)) { /* 64 GiB of pixels: a header, not a dataset */
        mx_err_set(err, "%s: implausible size (%llu images of %llu bytes)", path, (unsigned long long)idims[0],
                   (unsigned long long)per);
        goto done;
    }
    size_t bytes = (size_t)ds->n * (size_t)ds->h * (size_t)ds->w * (size_t)ds->c;
    ds->images = malloc(bytes ? bytes : 1);
    if (!ds->images) {
        mx_err_set(err, "%s: cannot allocate %zu bytes for the images", path, bytes);
        goto done;
    }
    int64_t *lab = mx_malloc(sizeof(int64_t) * (size_t)(ds->n ? ds->n : 1));
    if (H5Dread(di, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, ds->images) < 0 ||
        H5Dread(dl, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, lab) < 0) {
        free(lab);
        mx_err_set(err, "%s: read failed (truncated or corrupt file?)", path);
        goto done;
    }
    int64_t maxl = -1;
    ds->labels = mx_malloc(sizeof(int32_t) * (size_t)(ds->n ? ds->n : 1));
    for (int64_t i = 0; i < ds->n; i++) {
        if (lab[i] < 0 || lab[i] >= 100000) {
            mx_err_set(err, "%s: label %lld of sample %lld out of range", path, (long long)lab[i], (long long)i);
            free(lab);
            goto done;
        }
        ds->labels[i] = (int32_t)lab[i];
        if (lab[i] > maxl) maxl = lab[i];
    }
    free(lab);
    ds->num_classes = (int)(maxl + 1);
    snprintf(ds->source, sizeof ds->source, "%s", path);
    rc = 0;
done:
    if (si >= 0) H5Sclose(si);
    if (sl >= 0) H5Sclose(sl);
    if (di >= 0) H5Dclose(di);
    if (dl >= 0) H5Dclose(dl);
    if (f >= 0) H5Fclose(f);
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    return rc;
}

/* ---------------- imagefolder ---------------- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool is_image_name(const char *n) {
    const char *dot = strrchr(n, '.');
    if (!dot) return false;
    const char *exts[] = {".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP"};
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
        if (strcmp(dot, exts[i]) == 0) return true;
    return false;
}

/* Sorted sub-directory (or image file) names of dir. */
static int list_dir(const char *dir, bool want_dirs, char ***out, int *count, mx_err *err) {
    DIR *d = opendir(dir);
    if (!d) return mx_err_set(err, "%s: cannot open folder", dir);
    int n = 0;
    int64_t cap = 0;
    char **v = NULL;
    struct dirent *e;
    char p[2048];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        bool is_dir = S_ISDIR(st.st_mode);
        if (want_dirs ? !is_dir : (is_dir || !is_image_name(e->d_name))) continue;
        MX_GROW(v, cap, n + 1, 16);
        v[n] = strdup(e->d_name);
        MX_ASSERT(v[n]);
        n++;
    }
    closedir(d);
    if (n) qsort(v, (size_t)n, sizeof *v, cmp_str);
    *out = v;
    *count = n;
    return 0;
}

static void free_names(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

static int imagefolder_open(dataset *ds, const data_config *cfg, const char *root, data_split split, mx_err *err) {
    char dir[1200];
    struct stat st;
    if (split == DATA_SPLIT_TRAIN) snprintf(dir, sizeof dir, "%s/train", root);
    else {
        snprintf(dir, sizeof dir, "%s/val", root);
        if (stat(dir, &st) != 0) snprintf(dir, sizeof dir, "%s/test", root);
    }
    /* classes come from train/, so labels agree between splits */
    char tdir[1200];
    snprintf(tdir, sizeof tdir, "%s/train", root);
    char **classes;
    int nc;
    if (list_dir(tdir, true, &classes, &nc, err)) return -1;
    if (nc == 0) {
        free(classes);
        return mx_err_set(err, "%s: no class folders", tdir);
    }
    int64_t cap_files = 0, cap_labels = 0;
    ds->files = NULL;
    ds->labels = NULL;
    ds->n = 0;
    char **sub;
    int ns;
    if (list_dir(dir, true, &sub, &ns, err)) {
        free_names(classes, nc);
        return -1;
    }
    for (int s = 0; s < ns; s++) {
        char **found = bsearch(&sub[s], classes, (size_t)nc, sizeof *classes, cmp_str);
        if (!found) {
            mx_err_set(err, "%s/%s: class folder not present in %s", dir, sub[s], tdir);
            free_names(sub, ns);
            free_names(classes, nc);
            return -1;
        }
        char cdir[2048];
        snprintf(cdir, sizeof cdir, "%s/%s", dir, sub[s]);
        char **imgs = NULL;
        int ni = 0;
        if (list_dir(cdir, false, &imgs, &ni, err)) {
            free_names(sub, ns);
            free_names(classes, nc);
            return -1;
        }
        for (int i = 0; i < ni; i++) {
            MX_GROW(ds->files, cap_files, ds->n + 1, 256);
            MX_GROW(ds->labels, cap_labels, ds->n + 1, 256);
            size_t len = strlen(cdir) + strlen(imgs[i]) + 2;
            ds->files[ds->n] = mx_malloc(len);
            snprintf(ds->files[ds->n], len, "%s/%s", cdir, imgs[i]);
            ds->labels[ds->n] = (int32_t)(found - classes);
            ds->n_files = ++ds->n;
        }
        free_names(imgs, ni);
    }
    free_names(sub, ns);
    if (ds->n == 0) {
        free_names(classes, nc);
        return mx_err_set(err, "%s: no images (expected %s/<class>/*.jpg|png)", dir, dir);
    }
    ds->class_names = classes;
    ds->num_classes = nc;
    ds->h = ds->w = cfg->img_size;
    ds->c = cfg->channels;
    snprintf(ds->source, sizeof ds->source, "%s", dir);
    return 0;
}

/* ---------------- open / free ---------------- */

int dataset_open(dataset *ds, const data_config *cfg, data_split split, mx_err *err) {
    memset(ds, 0, sizeof *ds);
    ds->kind = cfg->kind;
    ds->split = split;
    const char *path = cfg->path;
    int rc = 0;
    switch (cfg->kind) {
    case DATA_KIND_FASHION_MNIST:
    case DATA_KIND_MNIST:
        if (!path[0]) {
            if (cfg->kind == DATA_KIND_MNIST) {
                rc = mx_err_set(err, "mnist: set data.path to the folder holding the IDX files");
                break;
            }
            path = "/usr/share/datasets/fashion-mnist";
        }
        rc = idx_open(ds, path, split, err);
        break;
    case DATA_KIND_CIFAR10:
        if (!path[0]) {
            rc = mx_err_set(err, "cifar10: set data.path to the folder holding data_batch_1.bin .. test_batch.bin");
            break;
        }
        rc = cifar_open(ds, path, split, err);
        break;
    case DATA_KIND_HDF5:
        if (!path[0]) {
            rc = mx_err_set(err, "hdf5: set data.path to the folder holding train.h5 and val.h5");
            break;
        }
        rc = h5_open_split(ds, cfg, path, split, err);
        break;
    case DATA_KIND_IMAGEFOLDER:
        if (!path[0]) {
            rc = mx_err_set(err, "imagefolder: set data.path to the folder holding train/ and val/");
            break;
        }
        if (cfg->img_size < 8) {
            rc = mx_err_set(err, "imagefolder: data.img_size must be at least 8");
            break;
        }
        rc = imagefolder_open(ds, cfg, path, split, err);
        break;
    case DATA_KIND_SYNTHETIC:
        if (cfg->img_size < 1 || cfg->channels < 1 || cfg->channels > DATA_MAX_CHANNELS || cfg->num_classes < 2) {
            rc = mx_err_set(err, "synthetic: needs data.img_size >= 1, 1..4 channels and >= 2 classes");
            break;
        }
        ds->n = split == DATA_SPLIT_TRAIN ? cfg->synthetic_train : cfg->synthetic_eval;
        ds->h = ds->w = cfg->img_size;
        ds->c = cfg->channels;
        ds->num_classes = cfg->num_classes;
        ds->seed = cfg->seed ^ (split == DATA_SPLIT_TRAIN ? 0x5eedull : 0xe7a1ull);
        snprintf(ds->source, sizeof ds->source, "synthetic");
        break;
    default: rc = mx_err_set(err, "dataset kind %d not supported", (int)cfg->kind);
    }
    if (rc) {
        dataset_free(ds);
        return -1;
    }
    int64_t limit = split == DATA_SPLIT_TRAIN ? cfg->limit_train : cfg->limit_eval;
    if (limit > 0 && limit < ds->n) ds->n = limit;
    if (ds->n <= 0) {
        mx_err_set(err, "%s: no samples", ds->source);
        dataset_free(ds);
        return -1;
    }
    return 0;
}

void dataset_free(dataset *ds) {
    free(ds->images);
    free(ds->labels);
    for (int64_t i = 0; i < ds->n_files; i++) free(ds->files[i]);
    free(ds->files);
    if (ds->class_names) free_names(ds->class_names, ds->num_classes);
    memset(ds, 0, sizeof *ds);
}
