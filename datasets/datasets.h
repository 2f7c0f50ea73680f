/* Datasets and the batch loader.
 *
 * A dataset is one split (train or eval) of labelled images. Small datasets
 * (IDX, CIFAR binary, HDF5) are read whole into memory as uint8 NHWC;
 * imagefolder keeps file names and decodes with stb_image per sample;
 * synthetic computes each sample from the seed. Every file is untrusted:
 * missing, truncated or corrupt input and out-of-range labels are one-line
 * errors naming the file.
 *
 * The loader shuffles with the seeded RNG (the order is a function of seed and
 * epoch only), batches, and decodes/augments/normalises in background threads
 * so that input work overlaps the training step. Per-sample augmentation
 * randomness is drawn from (seed, epoch, sample), so batches do not depend on
 * the number of workers. */
#ifndef MX_DATASETS_DATASETS_H
#define MX_DATASETS_DATASETS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/error.h"
#include "core/keys.h"

typedef enum data_kind {
    DATA_KIND_FASHION_MNIST,
    DATA_KIND_MNIST,
    DATA_KIND_CIFAR10,
    DATA_KIND_IMAGEFOLDER,
    DATA_KIND_HDF5,
    DATA_KIND_SYNTHETIC,
    DATA_KIND_COUNT
} data_kind;

typedef enum data_split { DATA_SPLIT_TRAIN, DATA_SPLIT_EVAL, DATA_SPLIT_COUNT } data_split;

#define DATA_MAX_CHANNELS 4

typedef struct data_config {
    data_kind kind;
    char path[1024];          /* "" = the dataset's default location */
    int img_size;             /* output side; 0 = native (imagefolder and synthetic need one) */
    int channels;             /* imagefolder/synthetic: decoded channels (3; 1 = grey) */
    int num_classes;          /* synthetic */
    int64_t synthetic_train, synthetic_eval; /* synthetic sample counts */
    int64_t limit_train, limit_eval;         /* first N samples; 0 = all */
    float mean[DATA_MAX_CHANNELS], std[DATA_MAX_CHANNELS];
    int n_mean, n_std;        /* 0 = the dataset's standard statistics */
    char h5_images[128], h5_labels[128];
    bool shuffle, augment;
    int workers;              /* background decode threads (>= 1) */
    int batch_size, eval_batch_size; /* eval 0 = batch_size (the loader takes them as arguments) */
    uint64_t seed;
} data_config;

/* The [data] keys of a config file, over data_config (channels, classes and
 * seed come from the model and train sections). */
extern const key_table data_key_table;

typedef struct dataset {
    data_kind kind;
    data_split split;
    char source[1024];        /* what was read (for messages) */
    int64_t n;
    int h, w, c;              /* stored geometry (imagefolder: output geometry) */
    int num_classes;
    uint8_t *images;          /* in-memory kinds: [n, h, w, c] */
    int32_t *labels;          /* [n] */
    char **files;             /* imagefolder: one path per sample */
    int64_t n_files;          /* entries in files (n may be cut by a limit) */
    char **class_names;       /* imagefolder: sorted class folder names */
    uint64_t seed;            /* synthetic */
} dataset;

const char *data_kind_name(data_kind k);
extern const mx_enum data_kind_enum;
int data_kind_parse(const char *s, data_kind *out, mx_err *err);
data_config data_config_default(data_kind k);
/* The dataset's standard per-channel mean/std (after scaling to [0, 1]). */
void data_default_norm(data_kind k, int channels, float *mean, float *std);

/* Opens one split; applies the limit. */
int dataset_open(dataset *ds, const data_config *cfg, data_split split, mx_err *err);
void dataset_free(dataset *ds);

/* A batch: normalised float images [count, size, size, c] (NHWC) and labels. */
typedef struct data_batch {
    float *images;
    int32_t *labels;
    int count;
    int64_t first;            /* position of its first sample in the epoch order */
} data_batch;

typedef struct loader loader;

/* out_size: output side (0 = the dataset's own); train = shuffle/augment per cfg. */
int loader_create(loader **out, const dataset *ds, const data_config *cfg, int batch_size, bool train,
                  bool drop_last, mx_err *err);
void loader_free(loader *l);
/* Moves the batch buffers to other host memory (pinned memory, cu_pinned_mem,
 * when steps run on the GPU: a batch's copy to the device is then queued
 * without waiting, and the workers decode the next batches meanwhile). Before
 * the first loader_start_epoch. */
void loader_set_memory(loader *l, const arena_mem *mem);
/* Data-parallel shard (before the first loader_start_epoch): batches become
 * this rank's part of global batches of n_ranks x batch_size samples, in the
 * order one rank with the global batch would see them (rank r takes samples
 * r*batch_size .. of each); batch counts and positions are the global ones.
 * A shard of a last partial global batch may be short or empty (count 0). */
int loader_set_shard(loader *l, int rank, int n_ranks, mx_err *err);
int loader_out_size(const loader *l);   /* output side (square) */
int64_t loader_num_batches(const loader *l);
/* Starts an epoch (abandons an unfinished one) at batch first_batch (> 0 when
 * resuming mid-epoch: earlier batches are skipped without decoding). The
 * sample order is a function of (seed, epoch). */
void loader_start_epoch(loader *l, int64_t epoch, int64_t first_batch);
/* The next batch: 1 = got one (valid until the next call), 0 = epoch done,
 * -1 = error (a sample's file is bad; the message names it). */
int loader_next(loader *l, data_batch *b, mx_err *err);

#endif
