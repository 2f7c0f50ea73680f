/* dist.h over Open MPI. MPI is initialised only when mpirun launched this
 * process, so a plain run neither needs nor touches it. */
#include "dist/dist.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/timer.h"

static bool g_on;            /* MPI initialised */
static int g_rank, g_size = 1, g_local = 1, g_local_rank;
static double g_timeout = 300;

static bool launched_by_mpirun(void) { return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK"); }

int dist_init(int *argc, char ***argv, mx_err *err) {
    if (!launched_by_mpirun()) return 0;
    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return mx_err_set(err, "MPI_Init failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    g_local = ls && atoi(ls) > 0 ? atoi(ls) : g_size;
    const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    g_local_rank = lr && atoi(lr) >= 0 ? atoi(lr) : g_rank;
    g_on = true;
    return 0;
}

void dist_finalize(void) {
    if (g_on) MPI_Finalize();
    g_on = false;
}

int dist_rank(void) { return g_rank; }
int dist_size(void) { return g_size; }
int dist_local_size(void) { return g_local; }
int dist_local_rank(void) { return g_local_rank; }

const char *dist_describe(void) {
    static char d[200];
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int n = 0;
    MPI_Get_library_version(v, &n);
    char *nl = strchr(v, ',');
    if (nl) *nl = 0;
    snprintf(d, sizeof d, "%s; %s", v, g_on ? "running" : "not launched by mpirun (one rank)");
    return d;
}

void dist_set_timeout(double seconds) { g_timeout = seconds > 0 ? seconds : 300; }

void dist_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    if (g_on) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

/* Waits for request q, polling, for at most the timeout. */
static void dist_wait_req(MPI_Request *q, const char *what) {
    double t0 = timer_now();
    int done = 0;
    for (;;) {
        if (MPI_Test(q, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
            fprintf(stderr, "mxtrain: rank %d of %d: %s failed (another rank ended?); stopping every rank\n", g_rank,
                    g_size, what);
            dist_abort(1);
        }
        if (done) return;
        if (timer_now() - t0 > g_timeout) {
            fprintf(stderr,
                    "mxtrain: rank %d of %d: %s waited %.0f s for the other ranks (one died or hangs; "
                    "train.dist_timeout_s); stopping every rank\n",
                    g_rank, g_size, what, g_timeout);
            dist_abort(1);
        }
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

/* ---------------- sums with identical bits everywhere ---------------- */

struct dist_req {
    MPI_Datatype type;
    size_t esize;
    void *buf;                 /* the caller's */
    int64_t n, chunk;          /* elements; per-rank chunk (n padded to size * chunk) */
    void *pad, *part;          /* padded copy of buf; this rank's summed chunk */
    size_t cap;                /* bytes pad can hold (requests are reused: see sum_pool) */
    int stage;                 /* 0 reduce-scatter in flight, 1 all-gather in flight */
    MPI_Request q;
};

/* Finished requests kept with their buffers: every step sums the same buckets,
 * so their staging memory is allocated (and faulted in) once, not per step. */
#define SUM_POOL 32
static dist_req *sum_pool[SUM_POOL];
static int sum_pooled;

static dist_req *sum_start(void *buf, int64_t n, MPI_Datatype type, size_t esize) {
    int64_t chunk = (n + g_size - 1) / g_size;
    MX_ASSERTF(chunk < (1ll << 31), "dist: a sum of %lld elements is too large", (long long)n);
    size_t need = (size_t)(chunk * g_size) * esize;
    int best = -1; /* the smallest that fits, so small sums leave the buckets' buffers alone */
    for (int i = 0; i < sum_pooled; i++)
        if (sum_pool[i]->cap >= need && (best < 0 || sum_pool[i]->cap < sum_pool[best]->cap)) best = i;
    dist_req *r = best >= 0 ? sum_pool[best] : NULL;
    if (r) sum_pool[best] = sum_pool[--sum_pooled];
    else {
        r = mx_calloc(1, sizeof *r);
        r->cap = need;
        r->pad = mx_malloc(need);
        r->part = mx_malloc(need / (size_t)g_size);
    }
    r->type = type, r->esize = esize, r->buf = buf, r->n = n, r->chunk = chunk, r->stage = 0;
    memcpy(r->pad, buf, (size_t)n * esize);
    memset((char *)r->pad + (size_t)n * esize, 0, need - (size_t)n * esize);
    /* each chunk summed by its owner over the ranks in one order: the same bits for everyone */
    if (MPI_Ireduce_scatter_block(r->pad, r->part, (int)r->chunk, type, MPI_SUM, MPI_COMM_WORLD, &r->q) !=
        MPI_SUCCESS) {
        fprintf(stderr, "mxtrain: rank %d of %d: reduce-scatter failed; stopping every rank\n", g_rank, g_size);
        dist_abort(1);
    }
    return r;
}

static void sum_free(dist_req *r) {
    if (sum_pooled < SUM_POOL) {
        sum_pool[sum_pooled++] = r;
        return;
    }
    free(r->pad);
    free(r->part);
    free(r);
}

/* Moves r on if its current stage has finished; true when the sum is in buf. */
static bool sum_advance(dist_req *r, bool wait) {
    for (;;) {
        int done = 0;
        if (wait) dist_wait_req(&r->q, r->stage == 0 ? "a gradient reduce-scatter" : "a gradient all-gather"), done = 1;
        else if (MPI_Test(&r->q, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) done = 0, wait = true;
        if (!done) return false;
        if (r->stage == 1) {
            memcpy(r->buf, r->pad, (size_t)r->n * r->esize);
            return true;
        }
        r->stage = 1;
        if (MPI_Iallgather(r->part, (int)r->chunk, r->type, r->pad, (int)r->chunk, r->type, MPI_COMM_WORLD, &r->q) !=
            MPI_SUCCESS) {
            fprintf(stderr, "mxtrain: rank %d of %d: all-gather failed; stopping every rank\n", g_rank, g_size);
            dist_abort(1);
        }
    }
}

dist_req *dist_sum_start(float *buf, int64_t n) { return sum_start(buf, n, MPI_FLOAT, sizeof(float)); }

bool dist_sum_test(dist_req *r) {
    if (!sum_advance(r, false)) return false;
    sum_free(r);
    return true;
}

void dist_sum_wait(dist_req *r) {
    sum_advance(r, true);
    sum_free(r);
}

void dist_sum_f32(float *buf, int64_t n) {
    if (g_size > 1 && n > 0) dist_sum_wait(dist_sum_start(buf, n));
}

void dist_sum_f64(double *buf, int64_t n) {
    if (g_size > 1 && n > 0) {
        dist_req *r = sum_start(buf, n, MPI_DOUBLE, sizeof(double));
        sum_advance(r, true);
        sum_free(r);
    }
}

void dist_max_i64(int64_t *buf, int64_t n) {
    if (g_size <= 1 || n <= 0) return;
    MPI_Request q;
    if (MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD, &q) != MPI_SUCCESS) {
        fprintf(stderr, "mxtrain: rank %d of %d: all-reduce failed; stopping every rank\n", g_rank, g_size);
        dist_abort(1);
    }
    dist_wait_req(&q, "an all-reduce");
}

void dist_bcast(void *buf, size_t bytes) {
    if (g_size <= 1 || bytes == 0) return;
    MPI_Request q;
    if (MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, MPI_COMM_WORLD, &q) != MPI_SUCCESS) {
        fprintf(stderr, "mxtrain: rank %d of %d: broadcast failed; stopping every rank\n", g_rank, g_size);
        dist_abort(1);
    }
    dist_wait_req(&q, "a broadcast");
}

/* FNV-1a: a mismatch check, not a security measure */
static uint64_t text_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int dist_check_same(const char *what, const char *text, mx_err *err) {
    if (g_size <= 1) return 0;
    uint64_t mine = text_hash(text);
    uint64_t *all = mx_malloc(sizeof(uint64_t) * (size_t)g_size);
    MPI_Request q;
    MPI_Iallgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD, &q);
    dist_wait_req(&q, "the config check");
    int bad = -1;
    for (int i = 1; i < g_size && bad < 0; i++)
        if (all[i] != all[0]) bad = i;
    free(all);
    if (bad >= 0) return mx_err_set(err, "%s differs between rank 0 and rank %d (every rank needs the same)", what, bad);
    return 0;
}
