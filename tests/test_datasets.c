/* datasets/: each reader on files written here in the real formats (gzip IDX,
 * CIFAR binary, HDF5 via its C API, PNG/JPEG via stb_image_write), broken
 * variants of each, and the loader's determinism. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include <stb_image_write.h>

#include "datasets/datasets.h"
#include "test_util.h"

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes an IDX file (gzip when gz) of n samples; image i is filled with i,
 * label i % 10 (or bad_label for sample 2 when >= 0). Returns bytes written. */
static void write_idx(const char *dir, const char *pre, int n, int side, bool gz, int bad_label, int cut_bytes) {
    char p[600];
    unsigned char hdr[16];
    size_t img_bytes = (size_t)n * side * side;
    unsigned char *buf = malloc(16 + img_bytes);
    hdr[0] = hdr[1] = 0, hdr[2] = 8, hdr[3] = 3;
    put_be32(hdr + 4, (uint32_t)n), put_be32(hdr + 8, (uint32_t)side), put_be32(hdr + 12, (uint32_t)side);
    memcpy(buf, hdr, 16);
    for (size_t i = 0; i < img_bytes; i++) buf[16 + i] = (unsigned char)(i / ((size_t)side * side));
    size_t total = 16 + img_bytes - (size_t)cut_bytes;
    snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte%s", dir, pre, gz ? ".gz" : "");
    if (gz) {
        gzFile f = gzopen(p, "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(gzwrite(f, buf, (unsigned)total), (int)total);
        gzclose(f);
    } else {
        test_write_file(p, buf, total);
    }
    unsigned char lab[8 + 1024];
    lab[0] = lab[1] = 0, lab[2] = 8, lab[3] = 1;
    put_be32(lab + 4, (uint32_t)n);
    for (int i = 0; i < n; i++) lab[8 + i] = (unsigned char)(i % 10);
    if (bad_label >= 0) lab[8 + 2] = (unsigned char)bad_label;
    snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte%s", dir, pre, gz ? ".gz" : "");
    if (gz) {
        gzFile f = gzopen(p, "wb");
        gzwrite(f, lab, (unsigned)(8 + n));
        gzclose(f);
    } else {
        test_write_file(p, lab, (size_t)(8 + n));
    }
    free(buf);
}

static const char *mkdir_t(const char *name) {
    const char *d = test_path(name);
    mkdir(d, 0755);
    return d;
}

static data_config cfg_for(data_kind k, const char *dir) {
    data_config c = data_config_default(k);
    snprintf(c.path, sizeof c.path, "%s", dir);
    return c;
}

static void expect_open_error(const data_config *c, data_split split, const char *needle) {
    dataset ds;
    mx_err err = {0};
    ck_assert_int_eq(dataset_open(&ds, c, split, &err), -1);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "error '%s' lacks '%s'", err.msg, needle);
}

START_TEST(test_idx_gzip_and_plain) {
    for (int gz = 0; gz < 2; gz++) {
        const char *dir = mkdir_t(gz ? "idx_gz" : "idx_plain");
        write_idx(dir, "train", 30, 28, gz, -1, 0);
        write_idx(dir, "t10k", 12, 28, gz, -1, 0);
        data_config c = cfg_for(DATA_KIND_FASHION_MNIST, dir);
        dataset tr, te;
        mx_err err = {0};
        ck_assert_msg(dataset_open(&tr, &c, DATA_SPLIT_TRAIN, &err) == 0, "%s", err.msg);
        ck_assert_msg(dataset_open(&te, &c, DATA_SPLIT_EVAL, &err) == 0, "%s", err.msg);
        ck_assert_int_eq(tr.n, 30);
        ck_assert_int_eq(te.n, 12);
        ck_assert_int_eq(tr.h, 28);
        ck_assert_int_eq(tr.c, 1);
        ck_assert_int_eq(tr.images[7 * 784 + 100], 7);
        ck_assert_int_eq(tr.labels[13], 3);
        dataset_free(&tr);
        dataset_free(&te);
        c.limit_train = 5;
        ck_assert_int_eq(dataset_open(&tr, &c, DATA_SPLIT_TRAIN, &err), 0);
        ck_assert_int_eq(tr.n, 5);
        dataset_free(&tr);
    }
}
END_TEST

START_TEST(test_idx_broken) {
    const char *d1 = mkdir_t("idx_trunc");
    write_idx(d1, "train", 30, 28, true, -1, 500); /* gzip of a short payload */
    data_config c = cfg_for(DATA_KIND_FASHION_MNIST, d1);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "truncated");
    expect_open_error(&c, DATA_SPLIT_EVAL, "t10k-images-idx3-ubyte");

    const char *d2 = mkdir_t("idx_badlabel");
    write_idx(d2, "train", 30, 28, false, 12, 0);
    c = cfg_for(DATA_KIND_MNIST, d2);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "label 12 of sample 2 out of range");

    const char *d3 = mkdir_t("idx_corrupt");
    write_idx(d3, "train", 30, 28, true, -1, 0);
    char p[600];
    snprintf(p, sizeof p, "%s/train-images-idx3-ubyte.gz", d3);
    FILE *f = fopen(p, "r+b");
    fseek(f, 40, SEEK_SET);
    unsigned char junk[64];
    memset(junk, 0xA5, sizeof junk);
    fwrite(junk, 1, sizeof junk, f);
    fclose(f);
    c = cfg_for(DATA_KIND_FASHION_MNIST, d3);
    dataset ds;
    mx_err err = {0};
    ck_assert_int_eq(dataset_open(&ds, &c, DATA_SPLIT_TRAIN, &err), -1);
    ck_assert_msg(strstr(err.msg, "train-images-idx3-ubyte.gz") != NULL, "%s", err.msg);

    /* count mismatch: 30 images, labels file of another set */
    const char *d4 = mkdir_t("idx_count");
    write_idx(d4, "train", 30, 28, false, -1, 0);
    write_idx(d4, "t10k", 31, 28, false, -1, 0);
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/t10k-labels-idx1-ubyte", d4);
    snprintf(b, sizeof b, "%s/train-labels-idx1-ubyte", d4);
    ck_assert_int_eq(rename(a, b), 0);
    c = cfg_for(DATA_KIND_FASHION_MNIST, d4);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "31 labels for 30 images");
}
END_TEST

static void write_cifar(const char *dir, int per_file, int cut) {
    unsigned char rec[3073];
    for (int fi = 0; fi < 6; fi++) {
        char p[600];
        if (fi < 5) snprintf(p, sizeof p, "%s/data_batch_%d.bin", dir, fi + 1);
        else snprintf(p, sizeof p, "%s/test_batch.bin", dir);
        FILE *f = fopen(p, "wb");
        for (int r = 0; r < per_file; r++) {
            rec[0] = (unsigned char)((fi * per_file + r) % 10);
            for (int c = 0; c < 3; c++) memset(rec + 1 + c * 1024, 10 * c + r, 1024);
            fwrite(rec, 1, (fi == 2 && r == per_file - 1) ? (size_t)(3073 - cut) : 3073, f);
        }
        fclose(f);
    }
}

START_TEST(test_cifar10) {
    const char *dir = mkdir_t("cifar");
    write_cifar(dir, 4, 0);
    data_config c = cfg_for(DATA_KIND_CIFAR10, dir);
    dataset ds;
    mx_err err = {0};
    ck_assert_msg(dataset_open(&ds, &c, DATA_SPLIT_TRAIN, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(ds.n, 20);
    ck_assert_int_eq(ds.c, 3);
    /* record 1 of file 1: channel c is 10c + 1, stored HWC */
    ck_assert_int_eq(ds.images[1 * 3072 + 5 * 3 + 2], 21);
    ck_assert_int_eq(ds.labels[6], 6);
    dataset_free(&ds);
    ck_assert_int_eq(dataset_open(&ds, &c, DATA_SPLIT_EVAL, &err), 0);
    ck_assert_int_eq(ds.n, 4);
    dataset_free(&ds);
    const char *bad = mkdir_t("cifar_trunc");
    write_cifar(bad, 4, 100);
    c = cfg_for(DATA_KIND_CIFAR10, bad);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "data_batch_3.bin");
}
END_TEST

static void write_h5(const char *path, int n, int side, int ch, hid_t img_type, int label_n, int bad_label) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t idims[4] = {(hsize_t)n, (hsize_t)side, (hsize_t)side, (hsize_t)ch}, ldims[1] = {(hsize_t)label_n};
    hid_t si = H5Screate_simple(4, idims, NULL), sl = H5Screate_simple(1, ldims, NULL);
    size_t cnt = (size_t)n * side * side * ch;
    hid_t di = H5Dcreate2(f, "images", img_type, si, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (H5Tget_size(img_type) == 1) {
        uint8_t *img = malloc(cnt);
        for (size_t i = 0; i < cnt; i++) img[i] = (uint8_t)(i % 251);
        H5Dwrite(di, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, img);
        free(img);
    } else {
        float *img = calloc(cnt, sizeof(float));
        H5Dwrite(di, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, img);
        free(img);
    }
    int64_t lab[64];
    for (int i = 0; i < label_n; i++) lab[i] = i % 5;
    if (bad_label) lab[1] = -3;
    hid_t dl = H5Dcreate2(f, "labels", H5T_STD_I64LE, sl, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(dl, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, lab);
    H5Dclose(di), H5Dclose(dl), H5Sclose(si), H5Sclose(sl), H5Fclose(f);
}

START_TEST(test_hdf5) {
    const char *dir = mkdir_t("h5ok");
    char p[600];
    snprintf(p, sizeof p, "%s/train.h5", dir);
    write_h5(p, 10, 8, 3, H5T_STD_U8LE, 10, 0);
    snprintf(p, sizeof p, "%s/val.h5", dir);
    write_h5(p, 6, 8, 3, H5T_STD_U8LE, 6, 0);
    data_config c = cfg_for(DATA_KIND_HDF5, dir);
    dataset ds;
    mx_err err = {0};
    ck_assert_msg(dataset_open(&ds, &c, DATA_SPLIT_TRAIN, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(ds.n, 10);
    ck_assert_int_eq(ds.c, 3);
    ck_assert_int_eq(ds.num_classes, 5);
    ck_assert_int_eq(ds.images[300], 300 % 251);
    ck_assert_int_eq(ds.labels[7], 2);
    dataset_free(&ds);
    ck_assert_int_eq(dataset_open(&ds, &c, DATA_SPLIT_EVAL, &err), 0);
    ck_assert_int_eq(ds.n, 6);
    dataset_free(&ds);
    snprintf(c.h5_labels, sizeof c.h5_labels, "targets");
    expect_open_error(&c, DATA_SPLIT_TRAIN, "no dataset 'targets'");

    const char *d2 = mkdir_t("h5bad");
    snprintf(p, sizeof p, "%s/train.h5", d2);
    write_h5(p, 10, 8, 3, H5T_IEEE_F32LE, 10, 0);
    c = cfg_for(DATA_KIND_HDF5, d2);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "must be uint8");
    write_h5(p, 10, 8, 3, H5T_STD_I8LE, 10, 0); /* signed bytes are not pixels */
    expect_open_error(&c, DATA_SPLIT_TRAIN, "must be uint8");
    write_h5(p, 10, 8, 3, H5T_STD_U8LE, 9, 0);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "10 images but 9 labels");
    write_h5(p, 10, 8, 3, H5T_STD_U8LE, 10, 1);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "label -3 of sample 1");
    /* a truncated file */
    write_h5(p, 10, 8, 3, H5T_STD_U8LE, 10, 0);
    FILE *f = fopen(p, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size);
    ck_assert_int_eq(fread(buf, 1, (size_t)size, f), size);
    fclose(f);
    test_write_file(p, buf, (size_t)size / 3);
    free(buf);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "train.h5");
    expect_open_error(&c, DATA_SPLIT_EVAL, "val.h5");
}
END_TEST

/* imagefolder: two classes, PNG and JPEG, of odd sizes; and a corrupt file. */
START_TEST(test_imagefolder) {
    const char *root = mkdir_t("imgf");
    char p[700];
    const char *sub[] = {"train", "val", "train/cat", "train/dog", "val/cat", "val/dog"};
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/%s", root, sub[i]);
        mkdir(p, 0755);
    }
    unsigned char img[40 * 30 * 3];
    for (int i = 0; i < 40 * 30 * 3; i++) img[i] = (unsigned char)(i * 7);
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/train/cat/c%d.png", root, k);
        ck_assert(stbi_write_png(p, 40, 30, 3, img, 40 * 3));
        snprintf(p, sizeof p, "%s/train/dog/d%d.jpg", root, k);
        ck_assert(stbi_write_jpg(p, 30, 40, 3, img, 90));
    }
    snprintf(p, sizeof p, "%s/val/dog/v.png", root);
    ck_assert(stbi_write_png(p, 40, 30, 3, img, 40 * 3));
    data_config c = cfg_for(DATA_KIND_IMAGEFOLDER, root);
    c.img_size = 16;
    c.workers = 2;
    dataset tr, va;
    mx_err err = {0};
    ck_assert_msg(dataset_open(&tr, &c, DATA_SPLIT_TRAIN, &err) == 0, "%s", err.msg);
    ck_assert_msg(dataset_open(&va, &c, DATA_SPLIT_EVAL, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(tr.n, 6);
    ck_assert_int_eq(tr.num_classes, 2);
    ck_assert_int_eq(va.n, 1);
    ck_assert_int_eq(va.labels[0], 1); /* "dog" is class 1 of train's sorted classes */
    loader *l;
    ck_assert_int_eq(loader_create(&l, &tr, &c, 4, true, false, &err), 0);
    loader_start_epoch(l, 0, 0);
    data_batch b;
    int batches = 0, samples = 0;
    while (loader_next(l, &b, &err) == 1) {
        batches++;
        samples += b.count;
        for (int i = 0; i < b.count * 16 * 16 * 3; i++) ck_assert(isfinite(b.images[i]) && fabsf(b.images[i]) < 5);
    }
    ck_assert_int_eq(batches, 2);
    ck_assert_int_eq(samples, 6);
    loader_free(l);
    /* a corrupt image: the loader's error names it */
    snprintf(p, sizeof p, "%s/train/dog/zz_broken.jpg", root);
    test_write_file(p, "\xff\xd8\xff\xe0 not really a jpeg", 22);
    dataset_free(&tr);
    ck_assert_int_eq(dataset_open(&tr, &c, DATA_SPLIT_TRAIN, &err), 0);
    c.shuffle = false;
    ck_assert_int_eq(loader_create(&l, &tr, &c, 7, true, false, &err), 0);
    loader_start_epoch(l, 0, 0);
    ck_assert_int_eq(loader_next(l, &b, &err), -1);
    ck_assert_msg(strstr(err.msg, "zz_broken.jpg") != NULL, "%s", err.msg);
    loader_free(l);
    dataset_free(&tr);
    dataset_free(&va);
    /* missing folder */
    snprintf(c.path, sizeof c.path, "%s/nope", root);
    expect_open_error(&c, DATA_SPLIT_TRAIN, "nope/train");
}
END_TEST

/* Collects one epoch's labels and an image checksum per batch. */
static void run_epoch(const dataset *ds, data_config c, int workers, int64_t epoch, int64_t skip, int32_t *labels,
                      double *sums, int *nb) {
    c.workers = workers;
    loader *l;
    mx_err err = {0};
    ck_assert_int_eq(loader_create(&l, ds, &c, 8, true, true, &err), 0);
    loader_start_epoch(l, epoch, skip);
    data_batch b;
    int k = 0, pos = 0;
    while (loader_next(l, &b, &err) == 1) {
        double s = 0;
        for (int i = 0; i < b.count * 12 * 12 * 3; i++) s += b.images[i] * (1 + i % 13);
        sums[k++] = s;
        for (int i = 0; i < b.count; i++) labels[pos++] = b.labels[i];
    }
    *nb = k;
    loader_free(l);
}

START_TEST(test_loader_determinism) {
    data_config c = data_config_default(DATA_KIND_SYNTHETIC);
    c.img_size = 12;
    c.synthetic_train = 100;
    c.seed = 42;
    dataset ds;
    mx_err err = {0};
    ck_assert_int_eq(dataset_open(&ds, &c, DATA_SPLIT_TRAIN, &err), 0);
    int32_t la[100], lb[100], lc[100];
    double sa[20], sb[20], sc[20];
    int na, nbb, nc;
    run_epoch(&ds, c, 1, 0, 0, la, sa, &na);
    run_epoch(&ds, c, 3, 0, 0, lb, sb, &nbb);
    ck_assert_int_eq(na, 12); /* 100 / 8, last partial batch dropped */
    ck_assert_int_eq(nbb, 12);
    for (int i = 0; i < na; i++) ck_assert(sa[i] == sb[i]);
    ck_assert_mem_eq(la, lb, sizeof(int32_t) * 96);
    run_epoch(&ds, c, 2, 1, 0, lc, sc, &nc); /* another epoch: another order */
    ck_assert(memcmp(la, lc, sizeof(int32_t) * 96) != 0);
    run_epoch(&ds, c, 2, 0, 5, lc, sc, &nc); /* resuming at batch 5 gives the same batches 5.. */
    ck_assert_int_eq(nc, 7);
    for (int i = 0; i < nc; i++) ck_assert(sc[i] == sa[5 + i]);
    c.seed = 43;
    run_epoch(&ds, c, 2, 0, 0, lc, sc, &nc);
    ck_assert(sc[0] != sa[0]);
    dataset_free(&ds);
    /* eval loader: every sample once, in order, last batch partial */
    c.seed = 42;
    ck_assert_int_eq(dataset_open(&ds, &c, DATA_SPLIT_EVAL, &err), 0);
    loader *l;
    ck_assert_int_eq(loader_create(&l, &ds, &c, 100, false, false, &err), 0);
    loader_start_epoch(l, 0, 0);
    data_batch b;
    int total = 0;
    while (loader_next(l, &b, &err) == 1) total += b.count;
    ck_assert_int_eq(total, 512);
    /* a new epoch can start while batches are still pending */
    loader_start_epoch(l, 1, 0);
    ck_assert_int_eq(loader_next(l, &b, &err), 1);
    loader_start_epoch(l, 2, 0);
    ck_assert_int_eq(loader_next(l, &b, &err), 1);
    ck_assert_int_eq(b.first, 0);
    loader_free(l);
    dataset_free(&ds);
}
END_TEST

/* The Debian package's files, when installed: 60000 + 10000 samples. */
START_TEST(test_fashion_mnist_package) {
    data_config c = data_config_default(DATA_KIND_FASHION_MNIST);
    struct stat st;
    if (stat("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", &st) != 0) {
        fprintf(stderr, "skipped: dataset-fashion-mnist is not installed\n");
        return;
    }
    dataset tr, te;
    mx_err err = {0};
    ck_assert_msg(dataset_open(&tr, &c, DATA_SPLIT_TRAIN, &err) == 0, "%s", err.msg);
    ck_assert_msg(dataset_open(&te, &c, DATA_SPLIT_EVAL, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(tr.n, 60000);
    ck_assert_int_eq(te.n, 10000);
    ck_assert_int_eq(tr.h, 28);
    ck_assert_int_eq(tr.labels[0], 9); /* the first training image is an ankle boot */
    int hist[10] = {0};
    for (int64_t i = 0; i < tr.n; i++) hist[tr.labels[i]]++;
    for (int k = 0; k < 10; k++) ck_assert_int_eq(hist[k], 6000);
    dataset_free(&tr);
    dataset_free(&te);
}
END_TEST

int main(void) {
    Suite *s = suite_create("datasets");
    TCase *tc = tcase_create("datasets");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_idx_gzip_and_plain);
    tcase_add_test(tc, test_idx_broken);
    tcase_add_test(tc, test_cifar10);
    tcase_add_test(tc, test_hdf5);
    tcase_add_test(tc, test_imagefolder);
    tcase_add_test(tc, test_loader_determinism);
    tcase_add_test(tc, test_fashion_mnist_package);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
