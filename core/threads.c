#include "core/threads.h"

#include <omp.h>

extern void openblas_set_num_threads(int n);

static int threads_current;

int threads_available(void) { return omp_get_num_procs(); }

void threads_set(int n) {
    if (n <= 0) n = threads_available();
    threads_current = n;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int threads_get(void) { return threads_current > 0 ? threads_current : omp_get_max_threads(); }
