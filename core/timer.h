/* Wall-clock timing for benchmarks and progress: a monotonic clock and the
 * median of repeated measurements (sorts in place). */
#ifndef MX_CORE_TIMER_H
#define MX_CORE_TIMER_H

double timer_now(void);                 /* seconds, monotonic */
double timer_median(double *v, int n);  /* sorts v */

#endif
