/* SPDX-License-Identifier: MIT */
/*
 * The table of ag-bench's workloads, one file each (wl_*.c).  Within a
 * repetition they run in this order at each thread count, and the results
 * are listed in it.  To add one: write wl_NAME.c defining a struct
 * workload, declare it here, list it in workloads[] and in meson.build.
 * Only ag-bench.c includes this header.
 */
#ifndef AG_BENCH_WORKLOADS_H
#define AG_BENCH_WORKLOADS_H

#include "common.h"

extern const struct workload wl_chain;
extern const struct workload wl_elementwise;
extern const struct workload wl_wide;
extern const struct workload wl_mlp;
extern const struct workload wl_cnn;
extern const struct workload wl_triad;
extern const struct workload wl_wide_loop;
extern const struct workload wl_gemm;
extern const struct workload wl_serve;
#ifdef AG_BENCH_DIST
extern const struct workload wl_dist; /* built when MPI is found */
#endif

static const struct workload *const workloads[] = {
	&wl_chain, &wl_elementwise, &wl_wide, &wl_mlp,	 &wl_cnn,
	&wl_triad, &wl_wide_loop,   &wl_gemm, &wl_serve,
#ifdef AG_BENCH_DIST
	&wl_dist,
#endif
};

/* Names that select several workloads at once. */
static const struct {
	const char *name;
	const char *members[4];
} workload_groups[] = {
	{ "limits", { "triad", "gemm", "wide-loop" } },
};

#endif /* AG_BENCH_WORKLOADS_H */
