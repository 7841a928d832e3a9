/* SPDX-License-Identifier: MIT */
/*
 * The one clock of libag's benchmarks (ag-bench, the kernel and GEMM
 * benches, the pool bench): monotonic wall time in seconds, as a double.
 * Header-only so that programs outside libag's layers can share it.
 */
#ifndef AG_BENCH_CLOCK_H
#define AG_BENCH_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The same clock in integer nanoseconds, for per-operation costs. */
static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#endif /* AG_BENCH_CLOCK_H */
