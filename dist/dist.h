/* Data-parallel ranks (issue #19): `mpirun -np N mxtrain train CONFIG` runs N
 * ranks, each on its shard of every global batch, whose gradients are summed
 * over the ranks before each optimizer step. Without mpirun (or with one
 * rank) nothing here does anything and MPI is never initialised.
 *
 * Every sum returns identical bits on every rank (a reduce-scatter, each
 * chunk summed by one rank in rank order, then an all-gather), so the ranks'
 * optimizer steps stay identical. Every collective waits at most
 * dist_set_timeout() seconds for the other ranks; then the rank says so and
 * ends the whole job (MPI_Abort): a rank that died or hangs never leaves the
 * others waiting forever.
 *
 * Built with Open MPI where CMake finds it (libopenmpi-dev), else
 * dist/dist_none.c: the same interface, one rank, and an error when launched
 * as several. */
#ifndef MX_DIST_DIST_H
#define MX_DIST_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

/* Starts MPI when this process was launched by mpirun (before any thread);
 * 0, or -1 with err set (launched as several ranks by a build without MPI). */
int dist_init(int *argc, char ***argv, mx_err *err);
/* Ends MPI (a normal exit). */
void dist_finalize(void);
/* This process's rank and the number of ranks (0 and 1 without mpirun). */
int dist_rank(void);
int dist_size(void);
/* Ranks on this machine (threads default to the cores divided among them),
 * and this rank's index among them (its GPU, when ranks train on GPUs). */
int dist_local_size(void);
int dist_local_rank(void);
/* Whether this build can run several ranks ("Open MPI 4.1.4", or why not). */
const char *dist_describe(void);
/* Seconds a collective waits for the other ranks (train.dist_timeout_s). */
void dist_set_timeout(double seconds);
/* Ends every rank: a fatal error on this one (after its message). */
MX_NORETURN void dist_abort(int code);

/* In-place sums over the ranks (blocking; identical bits on every rank). */
void dist_sum_f64(double *buf, int64_t n);
void dist_sum_f32(float *buf, int64_t n);
/* The maximum over the ranks. */
void dist_max_i64(int64_t *buf, int64_t n);
/* Rank 0's `bytes` at buf, copied to every rank's (NCCL's unique id). */
void dist_bcast(void *buf, size_t bytes);

/* A non-blocking in-place float sum (gradient buckets overlapped with the
 * backward): start it, advance it with dist_sum_test (true once done; the
 * buffer then holds the sum), or wait. The buffer stays untouched by the
 * caller meanwhile. A request is freed by the test that returns true or by
 * the wait. */
typedef struct dist_req dist_req;
dist_req *dist_sum_start(float *buf, int64_t n);
bool dist_sum_test(dist_req *r);
void dist_sum_wait(dist_req *r);

/* 0 if `text` is the same on every rank, else -1 with err naming `what` and
 * the first rank that differs from rank 0. */
int dist_check_same(const char *what, const char *text, mx_err *err);

#endif
