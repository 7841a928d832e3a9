// SPDX-License-Identifier: MIT
/*
 * The machine's limits, reported as workload "limits": a STREAM-style
 * triad and wide's backward as a bare loop, both on POSIX threads (not
 * libag's pool), and one large SGEMM through libag.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

struct triad_arg {
	double *a, *b, *c;
	size_t lo, hi;
	double s;
};

static void *triad_thread(void *p)
{
	struct triad_arg *t = p;
	double *restrict a = t->a;
	const double *restrict b = t->b, *restrict c = t->c;

	for (size_t i = t->lo; i < t->hi; i++)
		a[i] = b[i] + t->s * c[i];
	return NULL;
}

struct triad_state {
	double *a, *b, *c;
	size_t n;
	char case_name[32];
};

static void *triad_setup(const struct config *c, struct ag_generator *g)
{
	struct triad_state *st = xmalloc(sizeof(*st));

	(void)g;
	st->n = c->triad_bytes / sizeof(double);
	st->a = xmalloc(st->n * sizeof(double));
	st->b = xmalloc(st->n * sizeof(double));
	st->c = xmalloc(st->n * sizeof(double));
	for (size_t i = 0; i < st->n; i++) {
		st->a[i] = 0;
		st->b[i] = 1;
		st->c[i] = 2;
	}
	snprintf(st->case_name, sizeof(st->case_name), "3x%zuMiB",
		 c->triad_bytes >> 20);
	return st;
}

/* One pass of a = b + s c over nthreads POSIX threads; seconds. */
static double triad_once(struct triad_state *st, int nthreads)
{
	struct triad_arg arg[MAX_THREADS];
	double t0;

	for (int i = 0; i < nthreads; i++) {
		arg[i].a = st->a;
		arg[i].b = st->b;
		arg[i].c = st->c;
		arg[i].lo = st->n * (size_t)i / (size_t)nthreads;
		arg[i].hi = st->n * (size_t)(i + 1) / (size_t)nthreads;
		arg[i].s = 3.0;
	}
	t0 = bench_now();
	run_threads(nthreads, triad_thread, arg, sizeof(arg[0]));
	return bench_now() - t0;
}

static void triad_run(void *arg, const struct config *c, int threads)
{
	struct triad_state *st = arg;
	double t = triad_once(st, threads);

	(void)c;
	record("limits", st->case_name, threads, "triad_gbps", "GB/s",
	       3.0 * (double)(st->n * sizeof(double)) / t * 1e-9);
}

static void triad_check(void *arg, const struct config *c, int threads,
			struct ag_generator *g)
{
	struct triad_state *st = arg;
	size_t bad = 0;

	(void)c;
	(void)g;
	triad_once(st, threads);
	for (size_t i = 0; i < st->n; i++)
		bad += st->a[i] != st->b[i] + 3.0 * st->c[i];
	check_report(!bad, "triad %s threads=%d: a = b + 3c everywhere",
		     st->case_name, threads);
}

static void triad_free(void *arg)
{
	struct triad_state *st = arg;

	free(st->a);
	free(st->b);
	free(st->c);
	free(st);
}

const struct workload wl_triad = {
	.name = "triad",
	.description =
		"STREAM-style a = b + s c over POSIX threads: the memory's GB/s",
	.setup = triad_setup,
	.check = triad_check,
	.run = triad_run,
	.free = triad_free,
};

/*
 * wide-loop: what wide's backward must do to memory, with no autograd: for
 * each branch, g = 1, then g *= 1 - y_j^2 for j = L-1 .. 0 over saved
 * arrays y_j that a forward pass wrote just before.  Branches are split
 * over POSIX threads like the triad.  The y reads (K L n floats) are the
 * traffic no engine can avoid, so this loop's 1 -> N speedup is the most
 * wide can show on the machine at that moment.
 */
/*
 * One layer, g *= 1 - y^2, in vectors of the widest the CPU has, as
 * libag's kernels are: in narrower ones the loop is partly bound by
 * instructions and would understate the machine.
 */
#define WLOOP_LAYER(name, bytes, attr)                                 \
	attr static void name(float *g, const float *y, int64_t n)     \
	{                                                              \
		typedef float vec __attribute__((vector_size(bytes))); \
		int64_t i;                                             \
                                                                       \
		for (i = 0; i + (bytes) / 4 <= n; i += (bytes) / 4) {  \
			vec gv, yv;                                    \
                                                                       \
			memcpy(&gv, g + i, sizeof(gv));                \
			memcpy(&yv, y + i, sizeof(yv));                \
			gv *= 1 - yv * yv;                             \
			memcpy(g + i, &gv, sizeof(gv));                \
		}                                                      \
		for (; i < n; i++)                                     \
			g[i] *= 1 - y[i] * y[i];                       \
	}

WLOOP_LAYER(wloop_layer_16, 16, )
#if defined(__x86_64__)
WLOOP_LAYER(wloop_layer_32, 32, __attribute__((target("avx2"))))
WLOOP_LAYER(wloop_layer_64, 64, __attribute__((target("avx512f"))))
#endif

static void (*wloop_layer)(float *g, const float *y, int64_t n);

struct wloop_state {
	float **y; /* k * l arrays of n */
	int64_t k, l, n;
	_Atomic int64_t next; /* the next branch a thread takes */
	char case_name[64];
};

struct wloop_arg {
	struct wloop_state *st;
	float *g;
	int64_t last_k; /* the branch whose gradient is left in g, or -1 */
	double sum; /* of g[0] per branch: the result is used */
};

static void *wloop_thread(void *p)
{
	struct wloop_arg *a = p;
	struct wloop_state *st = a->st;
	float *g = a->g;

	/*
	 * Branches are taken one at a time, not split in fixed shares: on a
	 * shared machine one thread is often slowed, and a fixed split would
	 * charge that to the loop (libag's pool balances it by stealing).
	 */
	for (;;) {
		int64_t k = atomic_fetch_add_explicit(&st->next, 1,
						      memory_order_relaxed);

		if (k >= st->k)
			break;
		for (int64_t i = 0; i < st->n; i++)
			g[i] = 1;
		for (int64_t j = st->l - 1; j >= 0; j--)
			wloop_layer(g, st->y[k * st->l + j], st->n);
		a->sum += g[0];
		a->last_k = k;
	}
	return NULL;
}

static void *wloop_setup(const struct config *c, struct ag_generator *g)
{
	struct wloop_state *st = xmalloc(sizeof(*st));

	(void)g;
	st->k = c->wide_k;
	st->l = c->wide_l;
	st->n = c->wide_n;
	snprintf(st->case_name, sizeof(st->case_name), "K=%lld,L=%lld,n=%lld",
		 (long long)st->k, (long long)st->l, (long long)st->n);
	wloop_layer = wloop_layer_16;
#if defined(__x86_64__)
	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx512f"))
		wloop_layer = wloop_layer_64;
	else if (__builtin_cpu_supports("avx2"))
		wloop_layer = wloop_layer_32;
#endif
	st->y = xmalloc((size_t)(st->k * st->l) * sizeof(*st->y));
	for (int64_t i = 0; i < st->k * st->l; i++)
		st->y[i] = xmalloc((size_t)st->n * sizeof(float));
	return st;
}

/* The forward: each y_j from y_{j-1}, in the order wide records them. */
static void wloop_forward(struct wloop_state *st)
{
	for (int64_t k = 0; k < st->k; k++) {
		for (int64_t j = 0; j < st->l; j++) {
			float *y = st->y[k * st->l + j];
			const float *x = j ? st->y[k * st->l + j - 1] : NULL;

			for (int64_t i = 0; i < st->n; i++)
				y[i] = x ? 0.75f * x[i] :
					   (float)((i + k) % 15 - 7) / 8;
		}
	}
}

/*
 * One backward over nthreads threads; seconds.  g[t] holds the gradient of
 * branch last_k[t] (-1: thread t got no branch).
 */
static double wloop_once(struct wloop_state *st, int nthreads, float **g,
			 int64_t *last_k)
{
	struct wloop_arg arg[MAX_THREADS];
	double t0;

	for (int i = 0; i < nthreads; i++)
		arg[i] = (struct wloop_arg){ st, g[i], -1, 0 };
	atomic_store_explicit(&st->next, 0, memory_order_relaxed);
	wloop_forward(st);
	t0 = bench_now();
	run_threads(nthreads, wloop_thread, arg, sizeof(arg[0]));
	t0 = bench_now() - t0;
	for (int i = 0; i < nthreads; i++) {
		if (i)
			arg[0].sum += arg[i].sum;
		if (last_k)
			last_k[i] = arg[i].last_k;
	}
	if (!isfinite(arg[0].sum))
		die("wide-loop: non-finite result");
	return t0;
}

static float **wloop_grads(struct wloop_state *st, int nthreads)
{
	float **g = xmalloc((size_t)nthreads * sizeof(*g));

	/* touched here, so that no page faults in the timed loop */
	for (int i = 0; i < nthreads; i++)
		g[i] = memset(xmalloc((size_t)st->n * sizeof(float)), 0,
			      (size_t)st->n * sizeof(float));
	return g;
}

static void wloop_free_grads(float **g, int nthreads)
{
	for (int i = 0; i < nthreads; i++)
		free(g[i]);
	free(g);
}

static void wloop_run(void *arg, const struct config *c, int threads)
{
	struct wloop_state *st = arg;
	float **g = wloop_grads(st, threads);

	(void)c;
	record("limits", st->case_name, threads, "wide_loop_ms", "ms",
	       wloop_once(st, threads, g, NULL) * 1e3);
	wloop_free_grads(g, threads);
}

/* The last branch each thread did, against the product in f64. */
static void wloop_check(void *arg, const struct config *c, int threads,
			struct ag_generator *gen)
{
	struct wloop_state *st = arg;
	float **g = wloop_grads(st, threads);
	int64_t last_k[MAX_THREADS];
	double worst = 0;
	int seen = 0;

	(void)c;
	(void)gen;
	wloop_once(st, threads, g, last_k);
	for (int t = 0; t < threads; t++) {
		int64_t k = last_k[t];

		if (k < 0)
			continue; /* this thread got no branch */
		seen++;
		for (int64_t i = 0; i < st->n; i++) {
			double want = 1;

			for (int64_t j = 0; j < st->l; j++) {
				double y = st->y[k * st->l + j][i];

				want *= 1 - y * y;
			}
			if (fabs(g[t][i] - want) > worst)
				worst = fabs(g[t][i] - want);
		}
	}
	check_report(
		seen && worst < 1e-5,
		"wide-loop %s threads=%d: g = prod (1 - y^2) (worst error %.3g over %d branches)",
		st->case_name, threads, worst, seen);
	wloop_free_grads(g, threads);
}

static void wloop_free(void *arg)
{
	struct wloop_state *st = arg;

	for (int64_t i = 0; i < st->k * st->l; i++)
		free(st->y[i]);
	free(st->y);
	free(st);
}

const struct workload wl_wide_loop = {
	.name = "wide-loop",
	.description =
		"wide's backward memory traffic as a bare loop on POSIX threads",
	.setup = wloop_setup,
	.check = wloop_check,
	.run = wloop_run,
	.free = wloop_free,
};

/* gemm: one 1024^3 f32 matmul, libag's GEMM rate (the BLAS's). */
struct gemm_state {
	struct ag_tensor *a, *b;
	int64_t n;
	char case_name[32];
};

static void *gemm_setup(const struct config *c, struct ag_generator *g)
{
	struct gemm_state *st = xmalloc(sizeof(*st));
	int64_t sh[2] = { c->gemm_n, c->gemm_n };

	st->n = c->gemm_n;
	st->a = uniform(g, AG_F32, 2, sh, -1, 1, false);
	st->b = uniform(g, AG_F32, 2, sh, -1, 1, false);
	snprintf(st->case_name, sizeof(st->case_name), "%lld^3",
		 (long long)st->n);
	return st;
}

static void gemm_run(void *arg, const struct config *c, int threads)
{
	struct gemm_state *st = arg;
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode m = ag_no_grad_enter();
	double t0 = bench_now(), t, n = (double)st->n;

	(void)c;
	must(ag_matmul(st->a, st->b));
	t = bench_now() - t0;
	ag_mode_exit(m);
	ag_scope_end(s);
	record("limits", st->case_name, threads, "gemm_gflops", "GFLOP/s",
	       2 * n * n * n / t * 1e-9);
}

static void gemm_check(void *arg, const struct config *cfg, int threads,
		       struct ag_generator *g)
{
	struct gemm_state *st = arg;
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *cm = must(ag_matmul(st->a, st->b));
	double *a = to_f64(st->a), *b = to_f64(st->b), *c = to_f64(cm);
	double worst = 0;
	int64_t n = st->n;

	(void)cfg;
	(void)g;
	for (int64_t i = 0; i < n; i += 7) {
		for (int64_t j = 0; j < n; j += 5) {
			double d = 0, r;

			for (int64_t k = 0; k < n; k++)
				d += a[i * n + k] * b[k * n + j];
			r = fabs(c[i * n + j] - d) / (1e-4 * (1 + fabs(d)));
			worst = r > worst || isnan(r) ? r : worst;
		}
	}
	check_report(worst <= 1, "gemm %s threads=%d: matmul vs f64 dot",
		     st->case_name, threads);
	free(a);
	free(b);
	free(c);
	ag_scope_end(s);
}

static void gemm_free(void *arg)
{
	struct gemm_state *st = arg;

	ag_tensor_put(st->a);
	ag_tensor_put(st->b);
	free(st);
}

const struct workload wl_gemm = {
	.name = "gemm",
	.description = "one 1024^3 f32 matmul through libag: the GEMM rate",
	.needs_libag = true,
	.setup = gemm_setup,
	.check = gemm_check,
	.run = gemm_run,
	.free = gemm_free,
};
