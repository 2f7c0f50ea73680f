/* dist.h where MPI was not found at build time: one rank. Launched by mpirun
 * as several, every process says so and stops (rather than each training the
 * whole model into the same run directory). */
#include "dist/dist.h"

#include <stdio.h>
#include <stdlib.h>

int dist_init(int *argc, char ***argv, mx_err *err) {
    const char *n = getenv("OMPI_COMM_WORLD_SIZE");
    if (!n) n = getenv("PMI_SIZE");
    if (n && atoi(n) > 1)
        return mx_err_set(err, "launched as %s ranks, but this mxtrain was built without MPI (apt-get install "
                          "libopenmpi-dev, then rebuild)", n);
    return 0;
}
void dist_finalize(void) {}
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
int dist_local_size(void) { return 1; }
int dist_local_rank(void) { return 0; }
const char *dist_describe(void) { return "none (built without MPI: one rank)"; }
void dist_set_timeout(double seconds) { (void)seconds; }
void dist_abort(int code) { exit(code); }
void dist_sum_f64(double *buf, int64_t n) { (void)buf, (void)n; }
void dist_sum_f32(float *buf, int64_t n) { (void)buf, (void)n; }
void dist_max_i64(int64_t *buf, int64_t n) { (void)buf, (void)n; }
void dist_bcast(void *buf, size_t bytes) { (void)buf, (void)bytes; }
dist_req *dist_sum_start(float *buf, int64_t n) { (void)buf, (void)n; return NULL; }
bool dist_sum_test(dist_req *r) { (void)r; return true; }
void dist_sum_wait(dist_req *r) { (void)r; }
int dist_check_same(const char *what, const char *text, mx_err *err) { (void)what, (void)text, (void)err; return 0; }
