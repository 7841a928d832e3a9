// SPDX-License-Identifier: MIT
/*
 * gemmbench: single-threaded 1024^3 sgemm (row-major, no transposes) of
 * each BLAS given on the command line, loaded with dlopen so both can be
 * measured by one binary (they export the same cblas symbols).
 * Reports GFLOP/s, median and best of 9 after a warm-up.
 *
 *   ./build/tools/gemmbench \
 *	/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 \
 *	/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

#define N 1024
#define REPS 9

/* CBLAS enum values, fixed by the CBLAS standard */
#define ROW_MAJOR 101
#define NO_TRANS 111

typedef void (*sgemm_fn)(int order, int ta, int tb, int m, int n, int k,
			 float alpha, const float *a, int lda, const float *b,
			 int ldb, float beta, float *c, int ldc);

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* ISO C has no object-to-function pointer cast; POSIX guarantees the
 * representations match, so copy the bits. */
#define SYM(h, name, fp)                        \
	do {                                    \
		void *p_ = dlsym(h, name);      \
		memcpy(&(fp), &p_, sizeof(fp)); \
	} while (0)

static void one_thread(void *h)
{
	void (*ob)(int);
	void (*bl)(long);
	char *(*core)(void);
	const char *(*arch)(int);
	int (*arch_id)(void);

	SYM(h, "openblas_set_num_threads", ob);
	SYM(h, "bli_thread_set_num_threads", bl);
	SYM(h, "openblas_get_corename", core);
	SYM(h, "bli_arch_string", arch);
	SYM(h, "bli_arch_query_id", arch_id);
	if (ob)
		ob(1);
	if (bl)
		bl(1);
	if (core)
		printf("  openblas core: %s\n", core());
	if (arch && arch_id)
		printf("  blis arch: %s\n", arch(arch_id()));
}

int main(int argc, char **argv)
{
	float *a = aligned_alloc(64, sizeof(float) * N * N);
	float *b = aligned_alloc(64, sizeof(float) * N * N);
	float *c = aligned_alloc(64, sizeof(float) * N * N);
	double t[REPS];
	int i, r;

	if (!a || !b || !c)
		return 1;
	for (i = 0; i < N * N; i++) {
		a[i] = (float)((i * 7) % 13) / 13 - 0.5f;
		b[i] = (float)((i * 5) % 11) / 11 - 0.5f;
	}
	for (i = 1; i < argc; i++) {
		void *h = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
		sgemm_fn f;

		if (!h) {
			printf("%s: %s\n", argv[i], dlerror());
			continue;
		}
		printf("%s\n", argv[i]);
		SYM(h, "cblas_sgemm", f);
		if (!f) {
			printf("  no cblas_sgemm\n");
			continue;
		}
		one_thread(h);
		f(ROW_MAJOR, NO_TRANS, NO_TRANS, N, N, N, 1, a, N, b, N, 0, c,
		  N);
		for (r = 0; r < REPS; r++) {
			double t0 = bench_now();

			f(ROW_MAJOR, NO_TRANS, NO_TRANS, N, N, N, 1, a, N, b, N,
			  0, c, N);
			t[r] = bench_now() - t0;
		}
		qsort(t, REPS, sizeof(t[0]), cmp_d);
		printf("  sgemm 1024^3, 1 thread: median %.1f GFLOP/s, best %.1f GFLOP/s\n",
		       2.0 * N * N * N / t[REPS / 2] / 1e9,
		       2.0 * N * N * N / t[0] / 1e9);
	}
	free(a);
	free(b);
	free(c);
	return 0;
}
