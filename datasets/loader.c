/* The batch loader: seeded shuffling, background decode/augment/normalise.
 *
 * Batches are produced ahead into a ring of `depth` slots by the worker
 * threads; batch b lives in slot b % depth and is produced only after the
 * consumer has released batch b - depth. Each sample's augmentation draws from
 * its own Philox stream (seed, epoch, sample), so the bytes of every batch are
 * independent of the number of workers and of scheduling. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>

#include "core/rng.h"
#include "datasets/datasets.h"

typedef enum slot_state { SLOT_EMPTY, SLOT_FILLING, SLOT_READY, SLOT_ERROR } slot_state;

typedef struct slot {
    float *images;
    int32_t *labels;
    int count;
    int64_t batch;
    slot_state state;
    char msg[512];
} slot;

struct loader {
    const dataset *ds;
    int batch, out, c;            /* batch size, output side, channels */
    int rank, n_ranks;            /* data-parallel shard (loader_set_shard): 0, 1 alone */
    bool train, shuffle, augment, drop_last;
    float mean[DATA_MAX_CHANNELS], inv_std[DATA_MAX_CHANNELS];
    float lut[DATA_MAX_CHANNELS][256]; /* (v / 255 - mean) / std per channel and byte value */
    uint64_t seed;
    int64_t *order, num_batches, epoch;
    /* ring and workers */
    slot *slots;
    int depth, n_workers;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int64_t produce_next, released, next; /* next batch to produce / released so far / to hand out */
    int active_fills;
    uint64_t generation;
    bool stop, have_out;
    const arena_mem *mem; /* where slot images live (NULL: malloc) */
};

int loader_out_size(const loader *l) { return l->out; }
int64_t loader_num_batches(const loader *l) { return l->num_batches; }

/* ---------------- sample geometry ---------------- */

/* Writes the normalised out x out crop box (x0, y0, cw, ch) of src (sw x sh x c,
 * uint8 HWC) into dst, bilinear, horizontally flipped if asked; pixels outside
 * the source are 0 (zero padding before normalisation, as torchvision pads). */
static void sample_box(const loader *l, const uint8_t *src, int sw, int sh, double x0, double y0, double cw,
                       double ch, bool flip, float *dst) {
    int out = l->out, c = l->c;
    const float(*lut)[256] = l->lut;
    double sx = cw / out, sy = ch / out;
    bool integral = sx == 1.0 && sy == 1.0 && x0 == floor(x0) && y0 == floor(y0);
    for (int y = 0; y < out; y++) {
        for (int x = 0; x < out; x++) {
            int xo = flip ? out - 1 - x : x;
            float *d = dst + ((size_t)y * out + xo) * c;
            if (integral) {
                int ix = (int)x0 + x, iy = (int)y0 + y;
                if (ix < 0 || iy < 0 || ix >= sw || iy >= sh) {
                    for (int k = 0; k < c; k++) d[k] = lut[k][0];
                } else {
                    const uint8_t *s = src + ((size_t)iy * sw + ix) * c;
                    for (int k = 0; k < c; k++) d[k] = lut[k][s[k]];
                }
                continue;
            }
            /* pixel centres: source coordinate of the output pixel's centre */
            double fx = x0 + (x + 0.5) * sx - 0.5, fy = y0 + (y + 0.5) * sy - 0.5;
            int ix = (int)floor(fx), iy = (int)floor(fy);
            float ax = (float)(fx - ix), ay = (float)(fy - iy);
            for (int k = 0; k < c; k++) {
                float v[4];
                for (int q = 0; q < 4; q++) {
                    int px = ix + (q & 1), py = iy + (q >> 1);
                    px = px < 0 ? 0 : px >= sw ? sw - 1 : px; /* clamp: edge pixels extend */
                    py = py < 0 ? 0 : py >= sh ? sh - 1 : py;
                    v[q] = src[((size_t)py * sw + px) * c + k];
                }
                float top = v[0] + (v[1] - v[0]) * ax, bot = v[2] + (v[3] - v[2]) * ax;
                float val = (top + (bot - top) * ay) / 255.0f;
                d[k] = (val - l->mean[k]) * l->inv_std[k];
            }
        }
    }
}

/* Synthetic sample: noise plus a class-dependent bright pattern (learnable). */
static int32_t synth_sample(const dataset *ds, int64_t idx, uint8_t *img) {
    int32_t label = (int32_t)(rng_u32_at(ds->seed, (uint64_t)idx, 0) % (uint32_t)ds->num_classes);
    int s = ds->h, c = ds->c, cell = s / 4 > 0 ? s / 4 : 1;
    for (int y = 0; y < s; y++)
        for (int x = 0; x < s; x++)
            for (int k = 0; k < c; k++) {
                uint64_t i = ((uint64_t)y * s + x) * c + k;
                uint32_t noise = rng_u32_at(ds->seed, (uint64_t)idx, 1 + i) >> 26; /* 0..63 */
                bool on = ((y / cell) * 4 + x / cell + k) % ds->num_classes == label;
                img[i] = (uint8_t)(noise + (on ? 160 : 32));
            }
    return label;
}

/* Fills one sample (position p of the epoch order) into dst; returns its label or -1. */
static int32_t fill_sample(loader *l, int64_t p, float *dst, uint8_t *tmp, char *msg, size_t msg_cap) {
    const dataset *ds = l->ds;
    int64_t idx = l->order[p];
    rng r;
    rng_init(&r, l->seed, rng_mix(rng_mix((uint64_t)l->epoch, (uint64_t)idx), 0xa06));
    const uint8_t *src;
    int sw = ds->w, sh = ds->h;
    uint8_t *decoded = NULL;
    int32_t label = ds->labels ? ds->labels[idx] : 0;
    if (ds->kind == DATA_KIND_SYNTHETIC) {
        label = synth_sample(ds, idx, tmp);
        src = tmp;
    } else if (ds->kind == DATA_KIND_IMAGEFOLDER) {
        int n0;
        decoded = stbi_load(ds->files[idx], &sw, &sh, &n0, l->c);
        if (!decoded) {
            snprintf(msg, msg_cap, "%s: cannot decode image (%s)", ds->files[idx], stbi_failure_reason());
            return -1;
        }
        src = decoded;
    } else {
        src = ds->images + (size_t)idx * (size_t)(ds->h * ds->w * ds->c);
    }
    double x0 = 0, y0 = 0, cw = sw, ch = sh;
    bool flip = false;
    if (ds->kind == DATA_KIND_IMAGEFOLDER) {
        if (l->augment) { /* random-resized-crop: scale (0.08, 1), ratio (3/4, 4/3) */
            bool found = false;
            double area = (double)sw * sh;
            for (int t = 0; t < 10 && !found; t++) {
                double ta = area * (0.08 + 0.92 * rng_uniform_f64(&r));
                double ar = exp(log(3.0 / 4.0) + (log(4.0 / 3.0) - log(3.0 / 4.0)) * rng_uniform_f64(&r));
                double w = round(sqrt(ta * ar)), h = round(sqrt(ta / ar));
                if (w > 0 && h > 0 && w <= sw && h <= sh) {
                    x0 = rng_below(&r, (uint32_t)(sw - w + 1));
                    y0 = rng_below(&r, (uint32_t)(sh - h + 1));
                    cw = w, ch = h, found = true;
                }
            }
            if (!found) { /* centre crop of the whole image */
                double side = sw < sh ? sw : sh;
                cw = ch = side, x0 = (sw - side) / 2, y0 = (sh - side) / 2;
            }
            flip = rng_uniform(&r) < 0.5f;
        } else { /* resize shorter side to out / 0.875, centre crop out */
            double shorter = sw < sh ? sw : sh, side = shorter * 0.875;
            cw = ch = side, x0 = (sw - side) / 2, y0 = (sh - side) / 2;
        }
    } else if (l->augment) { /* random crop with out/8 zero padding, horizontal flip (not for digits) */
        int pad = sw / 8;
        x0 = (double)rng_below(&r, (uint32_t)(2 * pad + 1)) - pad;
        y0 = (double)rng_below(&r, (uint32_t)(2 * pad + 1)) - pad;
        flip = ds->kind != DATA_KIND_MNIST && rng_uniform(&r) < 0.5f;
    }
    sample_box(l, src, sw, sh, x0, y0, cw, ch, flip, dst);
    stbi_image_free(decoded);
    if (label < 0 || label >= ds->num_classes) {
        snprintf(msg, msg_cap, "%s: label %d of sample %lld out of range", ds->source, label, (long long)idx);
        return -1;
    }
    return label;
}

/* ---------------- workers ---------------- */

static void *loader_worker(void *arg) {
    loader *l = arg;
    const dataset *ds = l->ds;
    uint8_t *tmp = ds->kind == DATA_KIND_SYNTHETIC ? mx_malloc((size_t)ds->h * ds->w * ds->c) : NULL;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && !(l->produce_next < l->num_batches && l->produce_next < l->released + l->depth))
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop) break;
        int64_t b = l->produce_next++;
        uint64_t gen = l->generation;
        slot *s = &l->slots[b % l->depth];
        s->state = SLOT_FILLING;
        s->batch = b;
        l->active_fills++;
        pthread_mutex_unlock(&l->mu);

        int64_t first = b * l->batch * l->n_ranks + (int64_t)l->rank * l->batch, n = l->ds->n - first;
        int count = n < l->batch ? (n > 0 ? (int)n : 0) : l->batch;
        size_t per = (size_t)l->out * l->out * l->c;
        bool bad = false;
        char msg[512] = {0};
        for (int i = 0; i < count && !bad; i++) {
            int32_t lab = fill_sample(l, first + i, s->images + (size_t)i * per, tmp, msg, sizeof msg);
            if (lab < 0) bad = true;
            else s->labels[i] = lab;
        }

        pthread_mutex_lock(&l->mu);
        l->active_fills--;
        if (gen == l->generation) {
            s->count = count;
            s->state = bad ? SLOT_ERROR : SLOT_READY;
            if (bad) snprintf(s->msg, sizeof s->msg, "%s", msg);
        }
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    free(tmp);
    return NULL;
}

int loader_create(loader **out, const dataset *ds, const data_config *cfg, int batch_size, bool train,
                  bool drop_last, mx_err *err) {
    if (batch_size < 1) return mx_err_set(err, "batch size must be at least 1 (got %d)", batch_size);
    int c = ds->c;
    if (cfg->n_mean && cfg->n_mean != 1 && cfg->n_mean != c)
        return mx_err_set(err, "data.mean has %d values for %d channels", cfg->n_mean, c);
    if (cfg->n_std && cfg->n_std != 1 && cfg->n_std != c)
        return mx_err_set(err, "data.std has %d values for %d channels", cfg->n_std, c);
    loader *l = mx_calloc(1, sizeof *l);
    l->ds = ds;
    l->batch = batch_size;
    l->n_ranks = 1;
    l->out = cfg->img_size > 0 ? cfg->img_size : ds->w;
    l->c = c;
    l->train = train;
    l->shuffle = train && cfg->shuffle;
    l->augment = train && cfg->augment;
    l->drop_last = drop_last;
    l->seed = cfg->seed;
    float mean[DATA_MAX_CHANNELS], std[DATA_MAX_CHANNELS];
    data_default_norm(ds->kind, c, mean, std);
    for (int k = 0; k < c; k++) {
        if (cfg->n_mean) mean[k] = cfg->mean[cfg->n_mean == 1 ? 0 : k];
        if (cfg->n_std) std[k] = cfg->std[cfg->n_std == 1 ? 0 : k];
        if (!(std[k] > 0)) {
            free(l);
            return mx_err_set(err, "data.std must be positive");
        }
        l->mean[k] = mean[k];
        l->inv_std[k] = 1.0f / std[k];
        for (int v = 0; v < 256; v++) l->lut[k][v] = ((float)v / 255.0f - l->mean[k]) * l->inv_std[k];
    }
    l->num_batches = drop_last ? ds->n / batch_size : (ds->n + batch_size - 1) / batch_size;
    if (l->num_batches == 0) {
        free(l);
        return mx_err_set(err, "%s: %lld samples is less than one batch of %d", ds->source, (long long)ds->n,
                          batch_size);
    }
    l->order = mx_malloc(sizeof(int64_t) * (size_t)ds->n);
    l->n_workers = cfg->workers > 0 ? cfg->workers : 1;
    l->depth = l->n_workers + 2;
    l->slots = mx_calloc((size_t)l->depth, sizeof(slot));
    size_t per = (size_t)l->out * l->out * c * (size_t)batch_size;
    for (int i = 0; i < l->depth; i++) {
        l->slots[i].images = mx_aligned_alloc(sizeof(float) * per);
        l->slots[i].labels = mx_malloc(sizeof(int32_t) * (size_t)batch_size);
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->produce_next = l->num_batches; /* idle until the first epoch starts */
    l->threads = mx_malloc(sizeof(pthread_t) * (size_t)l->n_workers);
    for (int i = 0; i < l->n_workers; i++) MX_ASSERT(pthread_create(&l->threads[i], NULL, loader_worker, l) == 0);
    *out = l;
    return 0;
}

void loader_free(loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_workers; i++) pthread_join(l->threads[i], NULL);
    for (int i = 0; i < l->depth; i++) {
        if (l->mem) l->mem->release(l->slots[i].images);
        else free(l->slots[i].images);
        free(l->slots[i].labels);
    }
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l->slots);
    free(l->threads);
    free(l->order);
    free(l);
}

void loader_set_memory(loader *l, const arena_mem *mem) {
    pthread_mutex_lock(&l->mu);
    MX_ASSERTF(l->active_fills == 0 && l->produce_next >= l->num_batches && !l->mem,
               "loader_set_memory after the first epoch started");
    size_t bytes = sizeof(float) * (size_t)l->out * l->out * l->c * (size_t)l->batch;
    for (int i = 0; i < l->depth; i++) {
        free(l->slots[i].images);
        l->slots[i].images = mem->alloc(bytes);
    }
    l->mem = mem;
    pthread_mutex_unlock(&l->mu);
}

int loader_set_shard(loader *l, int rank, int n_ranks, mx_err *err) {
    MX_ASSERT(n_ranks >= 1 && rank >= 0 && rank < n_ranks && l->produce_next == l->num_batches && l->next == 0);
    int64_t g = (int64_t)l->batch * n_ranks;
    int64_t nb = l->drop_last ? l->ds->n / g : (l->ds->n + g - 1) / g;
    if (nb == 0)
        return mx_err_set(err, "%s: %lld samples is less than one global batch of %d ranks x %d", l->ds->source,
                          (long long)l->ds->n, n_ranks, l->batch);
    pthread_mutex_lock(&l->mu);
    l->rank = rank, l->n_ranks = n_ranks;
    l->num_batches = l->produce_next = nb;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

void loader_start_epoch(loader *l, int64_t epoch, int64_t first_batch) {
    pthread_mutex_lock(&l->mu);
    l->generation++;
    l->produce_next = l->num_batches; /* nothing new starts while we reset */
    while (l->active_fills > 0) pthread_cond_wait(&l->cv, &l->mu);
    int64_t n = l->ds->n;
    for (int64_t i = 0; i < n; i++) l->order[i] = i;
    if (l->shuffle) { /* Fisher-Yates from the (seed, epoch) stream */
        rng r;
        rng_init(&r, l->seed, rng_mix(0x5u, (uint64_t)epoch));
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)(rng_next_u64(&r) % (uint64_t)(i + 1));
            int64_t t = l->order[i];
            l->order[i] = l->order[j];
            l->order[j] = t;
        }
    }
    l->epoch = epoch;
    if (first_batch < 0) first_batch = 0;
    if (first_batch > l->num_batches) first_batch = l->num_batches;
    for (int i = 0; i < l->depth; i++) l->slots[i].state = SLOT_EMPTY;
    l->produce_next = l->released = l->next = first_batch;
    l->have_out = false;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

int loader_next(loader *l, data_batch *b, mx_err *err) {
    pthread_mutex_lock(&l->mu);
    if (l->have_out) { /* release the batch handed out last time */
        l->slots[(l->next - 1) % l->depth].state = SLOT_EMPTY;
        l->released = l->next;
        l->have_out = false;
        pthread_cond_broadcast(&l->cv);
    }
    if (l->next >= l->num_batches) {
        pthread_mutex_unlock(&l->mu);
        return 0;
    }
    slot *s = &l->slots[l->next % l->depth];
    while (!((s->state == SLOT_READY || s->state == SLOT_ERROR) && s->batch == l->next))
        pthread_cond_wait(&l->cv, &l->mu);
    if (s->state == SLOT_ERROR) {
        mx_err_set(err, "%s", s->msg);
        pthread_mutex_unlock(&l->mu);
        return -1;
    }
    b->images = s->images;
    b->labels = s->labels;
    b->count = s->count;
    b->first = l->next * l->batch * l->n_ranks + (int64_t)l->rank * l->batch;
    l->next++;
    l->have_out = true;
    pthread_mutex_unlock(&l->mu);
    return 1;
}
