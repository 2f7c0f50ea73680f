/* One thread knob for OpenMP and OpenBLAS (they share libgomp's pool). */
#ifndef MX_CORE_THREADS_H
#define MX_CORE_THREADS_H

int threads_available(void);      /* cores the process may use */
void threads_set(int n);          /* n <= 0: all available cores */
int threads_get(void);

#endif
