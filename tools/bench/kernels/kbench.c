// SPDX-License-Identifier: MIT
/*
 * kbench: throughput of the simd kernels on one thread, every ISA path this
 * CPU runs, f32 over 2^22 elements (the docs/benchmarks.md elementwise size).
 * Prints ns/element and GB/s (bytes read + written / time), best of 9
 * (the build machines are shared; the best run is the least disturbed).
 *
 *   ./build/tools/kbench [op ...]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "isa.h"

#define N (1 << 22)
#define REPS 9

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static const struct {
	const char *name;
	int op;
	double lo, hi;
} ops[] = {
	{ "exp", AG_K_EXP, -10, 10 },	    { "log", AG_K_LOG, 0.5, 2 },
	{ "sin", AG_K_SIN, -1, 1 },	    { "tanh", AG_K_TANH, -1, 1 },
	{ "sigmoid", AG_K_SIGMOID, -1, 1 }, { "gelu", AG_K_GELU, -1, 1 },
	{ "relu", AG_K_RELU, -1, 1 },	    { "neg", AG_K_NEG, -1, 1 },
};

static bool wanted(int argc, char **argv, const char *name)
{
	int i;

	if (argc < 2)
		return true;
	for (i = 1; i < argc; i++)
		if (!strcmp(argv[i], name))
			return true;
	return false;
}

int main(int argc, char **argv)
{
	static const char *const isas[] = { "generic", "avx2", "avx512" };
	float *x = aligned_alloc(64, N * sizeof(float));
	float *y = aligned_alloc(64, N * sizeof(float));
	float *g = aligned_alloc(64, N * sizeof(float));
	float *gx = aligned_alloc(64, N * sizeof(float));
	double t[REPS];
	size_t o;
	int k, r;
	int64_t i;

	if (!x || !y || !g || !gx)
		return 1;
	for (k = 0; k < 3; k++) {
		const struct ag_k_isa *isa = ag_k_isa_by_name(isas[k]);

		if (!isa)
			continue;
		for (o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
			double fwd, bwd;

			if (!wanted(argc, argv, ops[o].name))
				continue;
			for (i = 0; i < N; i++) {
				x[i] = (float)(ops[o].lo +
					       (ops[o].hi - ops[o].lo) *
						       (double)(i * 7919 % N) /
						       N);
				g[i] = 1;
			}
			for (r = 0; r < REPS; r++) {
				double t0 = bench_now();

				isa->unary_f32(ops[o].op, N, x, 1, y, 1, NULL);
				t[r] = bench_now() - t0;
			}
			qsort(t, REPS, sizeof(t[0]), cmp_d);
			fwd = t[0];
			for (r = 0; r < REPS; r++) {
				double t0 = bench_now();

				isa->unary_bwd_f32(ops[o].op, N, g, 1, x, 1, y,
						   1, gx, 1, NULL);
				t[r] = bench_now() - t0;
			}
			qsort(t, REPS, sizeof(t[0]), cmp_d);
			bwd = t[0];
			printf("%-8s %-8s fwd %6.3f ms %6.2f GB/s %5.2f ns/el   bwd %6.3f ms %6.2f GB/s\n",
			       isa->name, ops[o].name, fwd * 1e3,
			       8.0 * N / fwd / 1e9, fwd / N * 1e9, bwd * 1e3,
			       12.0 * N / bwd / 1e9);
		}
	}
	for (k = 0; k < 3; k++) {
		const struct ag_k_isa *isa = ag_k_isa_by_name(isas[k]);
		double fwd, bwd;

		if (!isa || !wanted(argc, argv, "mul"))
			continue;
		for (i = 0; i < N; i++)
			x[i] = g[i] = 0.5f;
		for (r = 0; r < REPS; r++) {
			double t0 = bench_now();

			isa->binary_f32(AG_K_MUL, N, x, 1, g, 1, y, 1);
			t[r] = bench_now() - t0;
		}
		qsort(t, REPS, sizeof(t[0]), cmp_d);
		fwd = t[0];
		for (r = 0; r < REPS; r++) {
			double t0 = bench_now();

			isa->binary_bwd_f32(AG_K_MUL, N, g, 1, x, 1, y, 1, gx,
					    1, x, 1);
			t[r] = bench_now() - t0;
		}
		qsort(t, REPS, sizeof(t[0]), cmp_d);
		bwd = t[0];
		printf("%-8s %-8s fwd %6.3f ms %6.2f GB/s                bwd %6.3f ms %6.2f GB/s\n",
		       isa->name, "mul", fwd * 1e3, 12.0 * N / fwd / 1e9,
		       bwd * 1e3, 20.0 * N / bwd / 1e9);
	}
	if (wanted(argc, argv, "triad")) {
		/* STREAM-style a = b + s c over 3 x 64 MiB, the bandwidth the
		 * elementwise kernels are measured against */
		int64_t m = (64 << 20) / sizeof(float);
		float *a3 = aligned_alloc(64, m * sizeof(float));
		float *b3 = aligned_alloc(64, m * sizeof(float));
		float *c3 = aligned_alloc(64, m * sizeof(float));

		if (!a3 || !b3 || !c3)
			return 1;
		for (i = 0; i < m; i++) {
			a3[i] = 0;
			b3[i] = 1;
			c3[i] = 2;
		}
		for (r = 0; r < REPS; r++) {
			double t0 = bench_now();

			for (i = 0; i < m; i++)
				a3[i] = b3[i] + 3.0f * c3[i];
			t[r] = bench_now() - t0;
		}
		qsort(t, REPS, sizeof(t[0]), cmp_d);
		printf("triad 3x64MiB: %.2f GB/s (a[1] = %g)\n",
		       12.0 * m / t[0] / 1e9, a3[1]);
		free(a3);
		free(b3);
		free(c3);
	}
	free(x);
	free(y);
	free(g);
	free(gx);
	return 0;
}
