// SPDX-License-Identifier: MIT
/*
 * ag-bench: the workloads of docs/benchmarks.md (chain, elementwise, wide, mlp)
 * and the machine limits (STREAM-style triad, 1024^3 SGEMM, and wide's
 * backward memory traffic as a bare loop), written against libag's public
 * API only.  See docs/perf.md for what each figure
 * measures, the byte counts behind the GB/s figures and the MLP step.
 *
 * Repetitions are interleaved: for each repetition, every selected workload
 * runs once at every thread count before the next repetition starts, so a
 * slow phase of a shared machine spreads over all figures instead of
 * hitting one.  Median, min and max are reported.
 */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <ag/error.h>
#include <ag/tensor.h>
#include <ag/ops.h>
#include <ag/autograd.h>
#include <ag/mode.h>

#if __has_include(<ag/pool.h>)
#include <ag/pool.h>
#define HAVE_POOL 1
#else
#define HAVE_POOL 0
#endif

#if __has_include(<ag/trace.h>)
#include <ag/trace.h>
#define HAVE_TRACE 1
#else
#define HAVE_TRACE 0
#endif

#ifndef AG_BENCH_VERSION
#define AG_BENCH_VERSION "unknown"
#endif

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_THREADS 64

/* ---------------------------------------------------------------- utils */

static void die(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("ag-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static struct ag_tensor *nn_check(struct ag_tensor *t, const char *what,
				  int line)
{
	if (!t)
		die("line %d: %s failed: %s", line, what, ag_errmsg());
	return t;
}

static void ok_check(int rc, const char *what, int line)
{
	if (rc)
		die("line %d: %s failed (%d): %s", line, what, rc, ag_errmsg());
}

/* NN(): a tensor-returning call that must succeed; OK(): an int one. */
#define NN(x) nn_check((x), #x, __LINE__)
#define OK(x) ok_check((x), #x, __LINE__)

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory (%zu bytes)", n);
	return p;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* A dense f64 copy of any f32/f64 tensor; the caller frees it. */
static double *to_f64(struct ag_tensor *t)
{
	int64_t n = ag_tensor_numel(t);
	double *d = xmalloc((size_t)n * sizeof(double));

	if (ag_tensor_dtype(t) == AG_F64) {
		OK(ag_tensor_copy_to(t, d, (size_t)n * sizeof(double)));
	} else {
		float *f = xmalloc((size_t)n * sizeof(float));

		OK(ag_tensor_copy_to(t, f, (size_t)n * sizeof(float)));
		for (int64_t i = 0; i < n; i++)
			d[i] = f[i];
		free(f);
	}
	return d;
}

/*
 * A leaf filled uniformly in [lo, hi), built under no-grad and returned as
 * a reference the caller owns (not recorded in any open scope).
 */
static struct ag_tensor *uniform(struct ag_generator *g, enum ag_dtype dt,
				 int ndim, const int64_t *shape, double lo,
				 double hi, bool requires_grad)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode m = ag_no_grad_enter();
	struct ag_tensor *r, *t;

	r = NN(ag_rand(g, dt, ndim, shape));
	t = NN(ag_add_scalar(NN(ag_mul_scalar(r, hi - lo)), lo));
	ag_mode_exit(m);
	ag_tensor_get(t);
	ag_scope_end(s);
	if (requires_grad)
		OK(ag_tensor_set_requires_grad(t, true));
	return t;
}

static void set_threads(int n)
{
#if HAVE_POOL
	OK(ag_set_num_threads(n));
#else
	(void)n;
#endif
}

/* ------------------------------------------------------------ results */

struct series {
	const char *workload;
	char case_name[64];
	int threads;
	const char *metric;
	const char *unit;
	double *v;
	int n, cap;
};

static struct series *all_series;
static int n_series, cap_series;

static struct series *series_get(const char *workload, const char *case_name,
				 int threads, const char *metric,
				 const char *unit)
{
	struct series *s;

	for (int i = 0; i < n_series; i++) {
		s = &all_series[i];
		if (!strcmp(s->workload, workload) &&
		    !strcmp(s->case_name, case_name) && s->threads == threads &&
		    !strcmp(s->metric, metric))
			return s;
	}
	if (n_series == cap_series) {
		cap_series = cap_series ? 2 * cap_series : 64;
		all_series = realloc(all_series,
				     (size_t)cap_series * sizeof(*all_series));
		if (!all_series)
			die("out of memory");
	}
	s = &all_series[n_series++];
	memset(s, 0, sizeof(*s));
	s->workload = workload;
	snprintf(s->case_name, sizeof(s->case_name), "%s", case_name);
	s->threads = threads;
	s->metric = metric;
	s->unit = unit;
	return s;
}

/* Whether figures are recorded (false during warm-up). */
static bool recording;

static void record(const char *workload, const char *case_name, int threads,
		   const char *metric, const char *unit, double v)
{
	struct series *s =
		series_get(workload, case_name, threads, metric, unit);

	if (!recording)
		return;
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 16;
		s->v = realloc(s->v, (size_t)s->cap * sizeof(double));
		if (!s->v)
			die("out of memory");
	}
	s->v[s->n++] = v;
}

static void series_stats(const struct series *s, double *med, double *mn,
			 double *mx)
{
	double *v = xmalloc((size_t)s->n * sizeof(double));

	memcpy(v, s->v, (size_t)s->n * sizeof(double));
	qsort(v, (size_t)s->n, sizeof(double), cmp_double);
	*mn = v[0];
	*mx = v[s->n - 1];
	if (s->n % 2)
		*med = v[s->n / 2];
	else
		*med = 0.5 * (v[s->n / 2 - 1] + v[s->n / 2]);
	free(v);
}

/* ------------------------------------------------------------- config */

struct config {
	bool quick;
	int reps, warmup;
	int threads[MAX_THREADS];
	int n_threads;
	const char *json_path, *trace_path;

	int64_t chain_n;
	int64_t chain_s[2];
	int64_t ew_n;
	int64_t wide_k, wide_l, wide_n;
	int64_t mlp_dims[4], mlp_b;
	int mlp_steps; /* steps timed per repetition */
	size_t triad_bytes; /* per array */
	int64_t gemm_n;
};

static void config_sizes(struct config *c)
{
	if (c->quick) {
		c->chain_n = 1000;
		c->chain_s[0] = 1;
		c->chain_s[1] = 16;
		c->ew_n = 4096;
		c->wide_k = 16;
		c->wide_l = 32;
		c->wide_n = 256;
		c->mlp_dims[0] = 32;
		c->mlp_dims[1] = 64;
		c->mlp_dims[2] = 64;
		c->mlp_dims[3] = 10;
		c->mlp_b = 16;
		c->mlp_steps = 2;
		c->triad_bytes = 1 << 20;
		c->gemm_n = 96;
	} else {
		c->chain_n = 10000;
		c->chain_s[0] = 1;
		c->chain_s[1] = 1024;
		c->ew_n = (int64_t)1 << 22;
		c->wide_k = 16;
		c->wide_l = 32;
		c->wide_n = 65536;
		c->mlp_dims[0] = 784;
		c->mlp_dims[1] = 512;
		c->mlp_dims[2] = 512;
		c->mlp_dims[3] = 10;
		c->mlp_b = 128;
		c->mlp_steps = 5;
		c->triad_bytes = (size_t)64 << 20;
		c->gemm_n = 1024;
	}
}

/* Set by the checks; the exit status. */
static int check_failures;

static void check_report(bool ok, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void check_report(bool ok, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "check %s: ", ok ? "ok  " : "FAIL");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (!ok)
		check_failures++;
}

/*
 * Compares got against want elementwise with |got - want| <= atol +
 * rtol * |want|; returns the largest violation ratio (<= 1 passes).
 */
static double worst_ratio(const double *got, const double *want, int64_t n,
			  double rtol, double atol, int64_t *where)
{
	double worst = 0;

	*where = 0;
	for (int64_t i = 0; i < n; i++) {
		double r =
			fabs(got[i] - want[i]) / (atol + rtol * fabs(want[i]));

		if (!(r <= worst)) { /* NaN counts as the worst */
			worst = isnan(r) ? INFINITY : r;
			*where = i;
		}
	}
	return worst;
}

/* -------------------------------------------------------------- chain */

/*
 * y = x; N times y = y + 0.001 * tanh(y); loss = sum(y); backward.
 * 3N + 1 nodes.
 */
static void chain_once(struct ag_tensor *x, int64_t n, double *fwd_s,
		       double *bwd_s)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *y = x, *loss;
	double t0, t1, t2;

	t0 = now_s();
	for (int64_t i = 0; i < n; i++)
		y = NN(ag_add(y, NN(ag_mul_scalar(NN(ag_tanh(y)), 0.001))));
	loss = NN(ag_sum(y));
	t1 = now_s();
	OK(ag_backward(loss, NULL, NULL));
	t2 = now_s();
	ag_scope_end(s);
	*fwd_s = t1 - t0;
	*bwd_s = t2 - t1;
}

struct chain_state {
	struct ag_tensor *x[2];
};

static void chain_setup(struct chain_state *st, const struct config *c,
			struct ag_generator *g)
{
	for (int i = 0; i < 2; i++)
		st->x[i] = uniform(g, AG_F32, 1, &c->chain_s[i], -1, 1, true);
}

static void chain_run(struct chain_state *st, const struct config *c,
		      int threads)
{
	for (int i = 0; i < 2; i++) {
		char name[32];
		double f, b, nodes = 3.0 * (double)c->chain_n + 1;

		/* a length other than docs/benchmarks.md's is part of the case */
		if (c->chain_n == 10000 || c->quick)
			snprintf(name, sizeof(name), "S=%lld",
				 (long long)c->chain_s[i]);
		else
			snprintf(name, sizeof(name), "S=%lld,N=%lld",
				 (long long)c->chain_s[i],
				 (long long)c->chain_n);
		chain_once(st->x[i], c->chain_n, &f, &b);
		OK(ag_tensor_zero_grad(st->x[i]));
		record("chain", name, threads, "fwd_ns_per_node", "ns",
		       f * 1e9 / nodes);
		record("chain", name, threads, "bwd_ns_per_node", "ns",
		       b * 1e9 / nodes);
	}
}

/* d loss / d x_i = prod_k (1 + 0.001 * (1 - tanh(y_k)^2)), in f64. */
static void chain_check(struct chain_state *st, const struct config *c,
			int threads)
{
	for (int i = 0; i < 2; i++) {
		struct ag_tensor *x = st->x[i];
		int64_t n = ag_tensor_numel(x), at;
		double f, b, *xs, *got, *want, w;
		struct ag_tensor *gr;

		chain_once(x, c->chain_n, &f, &b);
		gr = ag_tensor_grad(x);
		if (!gr) {
			check_report(false, "chain S=%lld: x has no grad",
				     (long long)n);
			continue;
		}
		xs = to_f64(x);
		got = to_f64(gr);
		ag_tensor_put(gr);
		want = xmalloc((size_t)n * sizeof(double));
		for (int64_t j = 0; j < n; j++) {
			double y = xs[j], d = 1;

			for (int64_t k = 0; k < c->chain_n; k++) {
				double t = tanh(y);

				d *= 1 + 0.001 * (1 - t * t);
				y += 0.001 * t;
			}
			want[j] = d;
		}
		w = worst_ratio(got, want, n, 1e-3, 1e-6, &at);
		check_report(
			w <= 1,
			"chain S=%lld N=%lld threads=%d: dloss/dx vs f64 recurrence (x[%lld]: %.7g vs %.7g)",
			(long long)n, (long long)c->chain_n, threads,
			(long long)at, got[at], want[at]);
		free(xs);
		free(got);
		free(want);
		OK(ag_tensor_zero_grad(x));
	}
}

/* -------------------------------------------------------- elementwise */

struct ew_op {
	const char *name;
	struct ag_tensor *(*fn)(struct ag_tensor *a); /* NULL: x * w */
	double lo, hi; /* input range */
	/* nominal bytes per element of the op's own kernels, f32 */
	int fwd_bytes, bwd_bytes;
};

/*
 * Bytes: a unary forward reads x and writes y (8 B/element); its backward
 * reads the incoming gradient and one saved tensor (x or the result) and
 * writes the input gradient (12 B).  mul reads x and w and writes y (12 B)
 * forward; backward runs two such kernels, g * w and g * x (24 B).
 */
static struct ew_op ew_ops[] = {
	{ "exp", ag_exp, -1, 1, 8, 12 },
	{ "log", ag_log, 0.5, 2, 8, 12 },
	{ "sin", ag_sin, -1, 1, 8, 12 },
	{ "tanh", ag_tanh, -1, 1, 8, 12 },
	{ "sigmoid", ag_sigmoid, -1, 1, 8, 12 },
	{ "mul", NULL, -1, 1, 12, 24 },
};

struct ew_state {
	struct ag_tensor *x[ARRAY_SIZE(ew_ops)];
	struct ag_tensor *w;
};

static void ew_setup(struct ew_state *st, const struct config *c,
		     struct ag_generator *g)
{
	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++)
		st->x[i] = uniform(g, AG_F32, 1, &c->ew_n, ew_ops[i].lo,
				   ew_ops[i].hi, true);
	st->w = uniform(g, AG_F32, 1, &c->ew_n, -1, 1, true);
}

static void ew_once(struct ew_state *st, size_t i, double *fwd_s, double *bwd_s)
{
	struct ag_scope *s = ag_scope_begin();
	const struct ew_op *op = &ew_ops[i];
	struct ag_tensor *x = st->x[i], *y, *loss;
	double t0, t1, t2;

	t0 = now_s();
	if (op->fn)
		y = NN(op->fn(x));
	else
		y = NN(ag_mul(x, st->w));
	t1 = now_s();
	loss = NN(ag_sum(y));
	t2 = now_s();
	OK(ag_backward(loss, NULL, NULL));
	*bwd_s = now_s() - t2;
	*fwd_s = t1 - t0;
	ag_scope_end(s);
}

static void ew_run(struct ew_state *st, const struct config *c, int threads)
{
	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++) {
		const struct ew_op *op = &ew_ops[i];
		double f, b, n = (double)c->ew_n;

		ew_once(st, i, &f, &b);
		OK(ag_tensor_zero_grad(st->x[i]));
		if (!op->fn)
			OK(ag_tensor_zero_grad(st->w));
		record("elementwise", op->name, threads, "fwd_ms", "ms",
		       f * 1e3);
		record("elementwise", op->name, threads, "bwd_ms", "ms",
		       b * 1e3);
		record("elementwise", op->name, threads, "fwd_gbps", "GB/s",
		       op->fwd_bytes * n / f * 1e-9);
		record("elementwise", op->name, threads, "bwd_gbps", "GB/s",
		       op->bwd_bytes * n / b * 1e-9);
	}
}

static double ew_deriv(const char *name, double x)
{
	if (!strcmp(name, "exp"))
		return exp(x);
	if (!strcmp(name, "log"))
		return 1 / x;
	if (!strcmp(name, "sin"))
		return cos(x);
	if (!strcmp(name, "tanh"))
		return 1 - tanh(x) * tanh(x);
	if (!strcmp(name, "sigmoid")) {
		double s = 1 / (1 + exp(-x));

		return s * (1 - s);
	}
	return NAN;
}

/* d sum(op(x)) / dx in closed form; for mul, dx = w and dw = x. */
static void ew_check(struct ew_state *st, const struct config *c, int threads)
{
	int64_t n = c->ew_n, at;

	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++) {
		const struct ew_op *op = &ew_ops[i];
		struct ag_tensor *gx, *gw = NULL;
		double f, b, *xs, *ws, *got, *want, worst;

		ew_once(st, i, &f, &b);
		gx = ag_tensor_grad(st->x[i]);
		if (!op->fn)
			gw = ag_tensor_grad(st->w);
		if (!gx || (!op->fn && !gw)) {
			check_report(false, "elementwise %s: missing grad",
				     op->name);
			ag_tensor_put(gx);
			ag_tensor_put(gw);
			continue;
		}
		xs = to_f64(st->x[i]);
		ws = to_f64(st->w);
		got = to_f64(gx);
		want = xmalloc((size_t)n * sizeof(double));
		for (int64_t j = 0; j < n; j++)
			want[j] = op->fn ? ew_deriv(op->name, xs[j]) : ws[j];
		worst = worst_ratio(got, want, n, 1e-5, 1e-6, &at);
		if (gw && worst <= 1) {
			free(got);
			got = to_f64(gw);
			worst = worst_ratio(got, xs, n, 1e-6, 0, &at);
		}
		check_report(
			worst <= 1,
			"elementwise %s n=%lld threads=%d: closed-form gradient (worst at %lld: %.7g vs %.7g)",
			op->name, (long long)n, threads, (long long)at, got[at],
			gw ? xs[at] : want[at]);
		free(xs);
		free(ws);
		free(got);
		free(want);
		ag_tensor_put(gx);
		ag_tensor_put(gw);
		OK(ag_tensor_zero_grad(st->x[i]));
		OK(ag_tensor_zero_grad(st->w));
	}
}

/* --------------------------------------------------------------- wide */

struct wide_state {
	struct ag_tensor *x;
	struct ag_tensor **w;
	int64_t k, l, n;
	char case_name[64];
};

static void wide_setup(struct wide_state *st, const struct config *c,
		       struct ag_generator *g)
{
	st->k = c->wide_k;
	st->l = c->wide_l;
	st->n = c->wide_n;
	snprintf(st->case_name, sizeof(st->case_name), "K=%lld,L=%lld,n=%lld",
		 (long long)st->k, (long long)st->l, (long long)st->n);
	st->x = uniform(g, AG_F32, 1, &st->n, -1, 1, true);
	st->w = xmalloc((size_t)st->k * sizeof(*st->w));
	for (int64_t i = 0; i < st->k; i++)
		st->w[i] = uniform(g, AG_F32, 1, &st->n, -1, 1, true);
}

static void wide_zero(struct wide_state *st)
{
	OK(ag_tensor_zero_grad(st->x));
	for (int64_t i = 0; i < st->k; i++)
		OK(ag_tensor_zero_grad(st->w[i]));
}

static void wide_once(struct wide_state *st, double *fwd_s, double *bwd_s,
		      const char *trace_path)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = NULL;
	double t0, t1, t2;

	t0 = now_s();
	for (int64_t k = 0; k < st->k; k++) {
		struct ag_tensor *h = NN(ag_mul(st->x, st->w[k]));

		for (int64_t j = 0; j < st->l; j++)
			h = NN(ag_tanh(h));
		h = NN(ag_sum(h));
		loss = loss ? NN(ag_add(loss, h)) : h;
	}
	t1 = now_s();
#if HAVE_TRACE
	if (trace_path)
		OK(ag_trace_start(trace_path));
#else
	(void)trace_path;
#endif
	OK(ag_backward(loss, NULL, NULL));
	t2 = now_s();
#if HAVE_TRACE
	if (trace_path)
		OK(ag_trace_stop());
#endif
	ag_scope_end(s);
	*fwd_s = t1 - t0;
	*bwd_s = t2 - t1;
}

static void wide_run(struct wide_state *st, const struct config *c, int threads)
{
	double f, b;

	(void)c;
	wide_once(st, &f, &b, NULL);
	wide_zero(st);
	record("wide", st->case_name, threads, "fwd_ms", "ms", f * 1e3);
	record("wide", st->case_name, threads, "bwd_ms", "ms", b * 1e3);
}

/*
 * Closed form: with h_0 = x w_k and h_j = tanh(h_{j-1}),
 * dloss/dx = sum_k w_k prod_j (1 - h_j^2) and dloss/dw_k = x prod_j (...).
 */
static void wide_check(struct wide_state *st, const struct config *c,
		       int threads)
{
	int64_t n = st->n, at;
	double f, b, *xs, *got, *want, *want_w0, *w, worst, worst_w0;
	struct ag_tensor *gx, *gw0;

	(void)c;
	wide_once(st, &f, &b, NULL);
	gx = ag_tensor_grad(st->x);
	gw0 = ag_tensor_grad(st->w[0]);
	if (!gx || !gw0) {
		check_report(false, "wide: missing grad");
		ag_tensor_put(gx);
		ag_tensor_put(gw0);
		wide_zero(st);
		return;
	}
	xs = to_f64(st->x);
	want = calloc((size_t)n, sizeof(double));
	want_w0 = xmalloc((size_t)n * sizeof(double));
	if (!want)
		die("out of memory");
	for (int64_t k = 0; k < st->k; k++) {
		w = to_f64(st->w[k]);
		for (int64_t i = 0; i < n; i++) {
			double h = xs[i] * w[i], d = 1;

			for (int64_t j = 0; j < st->l; j++) {
				h = tanh(h);
				d *= 1 - h * h;
			}
			want[i] += w[i] * d;
			if (k == 0)
				want_w0[i] = xs[i] * d;
		}
		free(w);
	}
	got = to_f64(gx);
	worst = worst_ratio(got, want, n, 1e-4, 1e-6, &at);
	check_report(
		worst <= 1,
		"wide %s threads=%d: dloss/dx closed form (x[%lld]: %.7g vs %.7g)",
		st->case_name, threads, (long long)at, got[at], want[at]);
	free(got);
	got = to_f64(gw0);
	worst_w0 = worst_ratio(got, want_w0, n, 1e-4, 1e-6, &at);
	check_report(
		worst_w0 <= 1,
		"wide %s threads=%d: dloss/dw_0 closed form (w_0[%lld]: %.7g vs %.7g)",
		st->case_name, threads, (long long)at, got[at], want_w0[at]);
	free(got);
	free(xs);
	free(want);
	free(want_w0);
	ag_tensor_put(gx);
	ag_tensor_put(gw0);
	wide_zero(st);
}

/* ---------------------------------------------------------------- mlp */

/*
 * 784-512-512-10 with ReLU; cross-entropy composed from the available ops:
 *   logp = z - log(sum_dim(exp(z), 1, keepdim))
 *   loss = sum(logp * mask),  mask = -(1/B) * onehot(targets)
 * (no max subtraction: there is no max op yet; the logits stay small).
 * The -1/B lives in the constant mask rather than in a mul_scalar on the
 * 0-d sum: the same loss with one node fewer.  (It first kept the step
 * clear of a bug, fixed by "walk: a 0-d walk has increment 1, not 0",
 * where a unary backward on a 0-d tensor added into an uninitialised
 * buffer; the f64 finite-difference check below caught it.)
 * SGD: under no-grad, g *= lr; p -= g; then p.grad is dropped.
 */
struct mlp {
	enum ag_dtype dt;
	int64_t dims[4], b;
	struct ag_tensor *p[6]; /* W1 b1 W2 b2 W3 b3; W is [in, out] */
	struct ag_tensor *x, *onehot; /* onehot: scaled by -1/B */
	char case_name[64];
};

static void mlp_init(struct mlp *m, enum ag_dtype dt, const int64_t *dims,
		     int64_t b, struct ag_generator *g)
{
	int64_t xs[2] = { b, dims[0] }, os[2] = { b, dims[3] };
	double *oh;

	m->dt = dt;
	memcpy(m->dims, dims, sizeof(m->dims));
	m->b = b;
	snprintf(m->case_name, sizeof(m->case_name),
		 "%lld-%lld-%lld-%lld,B=%lld", (long long)dims[0],
		 (long long)dims[1], (long long)dims[2], (long long)dims[3],
		 (long long)b);
	for (int l = 0; l < 3; l++) {
		int64_t ws[2] = { dims[l], dims[l + 1] };
		double r = 1 / sqrt((double)dims[l]);

		m->p[2 * l] = uniform(g, dt, 2, ws, -r, r, true);
		m->p[2 * l + 1] = uniform(g, dt, 1, &ws[1], -r, r, true);
	}
	m->x = uniform(g, dt, 2, xs, -1, 1, false);
	oh = calloc((size_t)(b * dims[3]), sizeof(double));
	if (!oh)
		die("out of memory");
	for (int64_t i = 0; i < b; i++)
		oh[i * dims[3] +
		   (int64_t)(ag_generator_next(g) % (uint64_t)dims[3])] = 1;
	for (int64_t i = 0; i < b * dims[3]; i++)
		oh[i] *= -1.0 / (double)b;
	if (dt == AG_F64) {
		m->onehot = NN(ag_from_data(AG_F64, 2, os, oh));
	} else {
		float *f = xmalloc((size_t)(b * dims[3]) * sizeof(float));

		for (int64_t i = 0; i < b * dims[3]; i++)
			f[i] = (float)oh[i];
		m->onehot = NN(ag_from_data(AG_F32, 2, os, f));
		free(f);
	}
	free(oh);
}

static void mlp_free(struct mlp *m)
{
	for (int i = 0; i < 6; i++)
		ag_tensor_put(m->p[i]);
	ag_tensor_put(m->x);
	ag_tensor_put(m->onehot);
}

/* The loss inside the caller's scope; NULL (with ag_errmsg) on error. */
static struct ag_tensor *mlp_loss(struct mlp *m)
{
	struct ag_tensor *h = m->x, *lse, *logp, *t;

	for (int l = 0; l < 3; l++) {
		t = ag_matmul(h, m->p[2 * l]);
		if (!t)
			return NULL;
		h = ag_add(t, m->p[2 * l + 1]);
		if (!h)
			return NULL;
		if (l < 2 && !(h = ag_relu(h)))
			return NULL;
	}
	t = ag_exp(h);
	t = t ? ag_sum_dim(t, 1, true) : NULL;
	lse = t ? ag_log(t) : NULL;
	logp = lse ? ag_sub(h, lse) : NULL;
	t = logp ? ag_mul(logp, m->onehot) : NULL;
	return t ? ag_sum(t) : NULL;
}

/* One training step; returns the loss before the update. */
static double mlp_step(struct mlp *m, double lr)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = NN(mlp_loss(m));
	double v;

	OK(ag_backward(loss, NULL, NULL));
	v = ag_tensor_item(loss);
	{
		AG_NO_GRAD_SCOPE();
		for (int i = 0; i < 6; i++) {
			struct ag_tensor *g = NN(ag_tensor_grad(m->p[i]));

			OK(ag_mul_scalar_(g, lr));
			OK(ag_sub_(m->p[i], g));
			OK(ag_tensor_zero_grad(m->p[i]));
		}
	}
	ag_scope_end(s);
	return v;
}

static void mlp_run(struct mlp *m, const struct config *c, int threads)
{
	double t0, t;

	t0 = now_s();
	for (int i = 0; i < c->mlp_steps; i++)
		mlp_step(m, 0.01);
	t = (now_s() - t0) / c->mlp_steps;
	record("mlp", m->case_name, threads, "steps_per_s", "steps/s", 1 / t);
	record("mlp", m->case_name, threads, "step_ms", "ms", t * 1e3);
}

/*
 * The GEMMs of one step, alone: the same shapes and operand layouts
 * (transposes as strided views, which ag_matmul hands to the BLAS as
 * flags) as the step's forward and backward, on operands of the step's
 * sizes.  Per layer l with input h [B, in], weight W [in, out] and output
 * gradient g [B, out]: h W forward; g W^T (except for the first layer,
 * whose input needs no gradient) and h^T g backward.  This is the GEMM
 * rate the step gets, to hold against limits' 1024^3 figure.
 */
struct mlp_gemm {
	struct ag_tensor *h[3], *g[3], *ht[3], *wt[3];
	double flops;
};

static void mlp_gemm_init(struct mlp_gemm *mg, struct mlp *m,
			  struct ag_generator *g)
{
	struct ag_mode md = ag_no_grad_enter();

	mg->flops = 0;
	for (int l = 0; l < 3; l++) {
		int64_t in = m->dims[l], out = m->dims[l + 1];
		int64_t hs[2] = { m->b, in }, gs[2] = { m->b, out };

		mg->h[l] = l ? uniform(g, m->dt, 2, hs, 0, 1, false) :
			       ag_tensor_get(m->x);
		mg->g[l] = uniform(g, m->dt, 2, gs, -1, 1, false);
		mg->ht[l] = NN(ag_transpose(mg->h[l], 0, 1));
		mg->wt[l] = NN(ag_transpose(m->p[2 * l], 0, 1));
		mg->flops += 2.0 * (double)(m->b * in * out) * (l ? 3 : 2);
	}
	ag_mode_exit(md);
}

static void mlp_gemm_free(struct mlp_gemm *mg)
{
	for (int l = 0; l < 3; l++) {
		ag_tensor_put(mg->h[l]);
		ag_tensor_put(mg->g[l]);
		ag_tensor_put(mg->ht[l]);
		ag_tensor_put(mg->wt[l]);
	}
}

static void mlp_gemm_run(struct mlp_gemm *mg, struct mlp *m,
			 const struct config *c, int threads)
{
	struct ag_mode md = ag_no_grad_enter();
	double t0, t;

	t0 = now_s();
	for (int i = 0; i < c->mlp_steps; i++) {
		struct ag_scope *s = ag_scope_begin();

		for (int l = 0; l < 3; l++) {
			NN(ag_matmul(mg->h[l], m->p[2 * l]));
			if (l)
				NN(ag_matmul(mg->g[l], mg->wt[l]));
			NN(ag_matmul(mg->ht[l], mg->g[l]));
		}
		ag_scope_end(s);
	}
	t = (now_s() - t0) / c->mlp_steps;
	ag_mode_exit(md);
	record("mlp", m->case_name, threads, "gemm_ms", "ms", t * 1e3);
	record("mlp", m->case_name, threads, "gemm_gflops", "GFLOP/s",
	       mg->flops / t * 1e-9);
}

static double mlp_loss_value(struct mlp *m)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode md = ag_no_grad_enter();
	struct ag_tensor *l = mlp_loss(m);
	double v = l ? ag_tensor_item(l) : NAN;

	ag_mode_exit(md);
	ag_scope_end(s);
	return v;
}

/*
 * In f64, central finite differences on one element of each parameter
 * against the backward pass; then, in f32 at the benchmark's layout, the
 * loss must fall over SGD steps on the fixed batch.
 */
static void mlp_check(const struct config *c, int threads,
		      struct ag_generator *g)
{
	static const int64_t small[4] = { 12, 16, 8, 10 };
	struct mlp m;
	struct ag_tensor *loss;
	struct ag_scope *s;
	double first, last = 0;

	mlp_init(&m, AG_F64, small, 6, g);
	s = ag_scope_begin();
	loss = mlp_loss(&m);
	if (!loss) {
		fprintf(stderr,
			"check skip: mlp f64 finite differences (f64 forward failed: %s)\n",
			ag_errmsg());
		ag_clear_error();
	} else {
		OK(ag_backward(loss, NULL, NULL));
		for (int i = 0; i < 6; i++) {
			struct ag_tensor *p = m.p[i], *gr;
			int64_t n = ag_tensor_numel(p), e = 0;
			double *d = ag_tensor_data(p), keep, lp, lm, fd, an,
			       *ga;

			/* the element with the largest gradient: not a dead ReLU */
			gr = NN(ag_tensor_grad(p));
			ga = to_f64(gr);
			for (int64_t j = 1; j < n; j++)
				if (fabs(ga[j]) > fabs(ga[e]))
					e = j;
			an = ga[e];
			free(ga);
			keep = d[e];
			d[e] = keep + 1e-6;
			lp = mlp_loss_value(&m);
			d[e] = keep - 1e-6;
			lm = mlp_loss_value(&m);
			d[e] = keep;
			fd = (lp - lm) / 2e-6;
			check_report(
				fabs(fd - an) <= 1e-6 + 1e-5 * fabs(fd),
				"mlp f64 threads=%d: param %d elem %lld: backward %.10g vs finite difference %.10g",
				threads, i, (long long)e, an, fd);
		}
	}
	ag_scope_end(s);
	mlp_free(&m);

	mlp_init(&m, AG_F32, c->mlp_dims, c->mlp_b, g);
	first = mlp_step(&m, 0.01);
	for (int i = 0; i < 30; i++)
		last = mlp_step(&m, 0.01);
	check_report(
		last < first && isfinite(last),
		"mlp f32 %s threads=%d: loss falls over 31 SGD steps (%.6g -> %.6g)",
		m.case_name, threads, first, last);
	mlp_free(&m);
}

/* ------------------------------------------------------------- limits */

/*
 * fn(args[i]) on n POSIX threads, the calling thread being thread 0, for
 * the limits that must not depend on libag's pool.  args is an array of n
 * elements of size bytes.
 */
static void run_threads(int n, void *(*fn)(void *), void *args, size_t size)
{
	pthread_t tid[MAX_THREADS];

	for (int i = 1; i < n; i++)
		if (pthread_create(&tid[i], NULL, fn, (char *)args + i * size))
			die("pthread_create failed");
	fn(args);
	for (int i = 1; i < n; i++)
		pthread_join(tid[i], NULL);
}

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

static void triad_setup(struct triad_state *st, const struct config *c)
{
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
	t0 = now_s();
	run_threads(nthreads, triad_thread, arg, sizeof(arg[0]));
	return now_s() - t0;
}

static void triad_run(struct triad_state *st, int threads)
{
	double t = triad_once(st, threads);

	record("limits", st->case_name, threads, "triad_gbps", "GB/s",
	       3.0 * (double)(st->n * sizeof(double)) / t * 1e-9);
}

static void triad_check(struct triad_state *st, int threads)
{
	size_t bad = 0;

	triad_once(st, threads);
	for (size_t i = 0; i < st->n; i++)
		bad += st->a[i] != st->b[i] + 3.0 * st->c[i];
	check_report(!bad, "triad %s threads=%d: a = b + 3c everywhere",
		     st->case_name, threads);
}

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

static void wloop_setup(struct wloop_state *st, const struct config *c)
{
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
	t0 = now_s();
	run_threads(nthreads, wloop_thread, arg, sizeof(arg[0]));
	t0 = now_s() - t0;
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

static void wloop_run(struct wloop_state *st, int threads)
{
	float **g = wloop_grads(st, threads);

	record("limits", st->case_name, threads, "wide_loop_ms", "ms",
	       wloop_once(st, threads, g, NULL) * 1e3);
	wloop_free_grads(g, threads);
}

/* The last branch each thread did, against the product in f64. */
static void wloop_check(struct wloop_state *st, int threads)
{
	float **g = wloop_grads(st, threads);
	int64_t last_k[MAX_THREADS];
	double worst = 0;
	int seen = 0;

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

struct gemm_state {
	struct ag_tensor *a, *b;
	int64_t n;
	char case_name[32];
};

static void gemm_setup(struct gemm_state *st, const struct config *c,
		       struct ag_generator *g)
{
	int64_t sh[2] = { c->gemm_n, c->gemm_n };

	st->n = c->gemm_n;
	st->a = uniform(g, AG_F32, 2, sh, -1, 1, false);
	st->b = uniform(g, AG_F32, 2, sh, -1, 1, false);
	snprintf(st->case_name, sizeof(st->case_name), "%lld^3",
		 (long long)st->n);
}

static void gemm_run(struct gemm_state *st, int threads)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode m = ag_no_grad_enter();
	double t0 = now_s(), t, n = (double)st->n;

	NN(ag_matmul(st->a, st->b));
	t = now_s() - t0;
	ag_mode_exit(m);
	ag_scope_end(s);
	record("limits", st->case_name, threads, "gemm_gflops", "GFLOP/s",
	       2 * n * n * n / t * 1e-9);
}

static void gemm_check(struct gemm_state *st, int threads)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *cm = NN(ag_matmul(st->a, st->b));
	double *a = to_f64(st->a), *b = to_f64(st->b), *c = to_f64(cm);
	double worst = 0;
	int64_t n = st->n;

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

/* -------------------------------------------------------- the machine */

static void cpu_model(char *buf, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];

	snprintf(buf, len, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *p;

		if (strncmp(line, "model name", 10))
			continue;
		p = strchr(line, ':');
		if (!p)
			break;
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		p[strcspn(p, "\n")] = 0;
		snprintf(buf, len, "%s", p);
		break;
	}
	fclose(f);
}

/*
 * libag does not report its BLAS; the process is asked instead: OpenBLAS
 * exports openblas_get_config() and openblas_get_corename().
 */
static void blas_name(char *buf, size_t len)
{
	char *(*cfg)(void);
	char *(*core)(void);

	*(void **)&cfg = dlsym(RTLD_DEFAULT, "openblas_get_config");
	*(void **)&core = dlsym(RTLD_DEFAULT, "openblas_get_corename");
	if (cfg)
		snprintf(buf, len, "OpenBLAS (%s; core %s)", cfg(),
			 core ? core() : "?");
	else if (dlsym(RTLD_DEFAULT, "bli_info_get_version_str"))
		snprintf(buf, len, "BLIS");
	else if (dlsym(RTLD_DEFAULT, "cblas_sgemm"))
		snprintf(buf, len, "CBLAS (unknown vendor)");
	else
		snprintf(buf, len, "none (libag's own GEMM loops)");
}

static long peak_rss_kib(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		return -1;
	return ru.ru_maxrss;
}

/* The 1-minute load average, or -1: a busy machine explains slow figures. */
static double load_avg(void)
{
	FILE *f = fopen("/proc/loadavg", "r");
	double v = -1;

	if (f) {
		if (fscanf(f, "%lf", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/*
 * How fast each CPU runs a plain C loop right now (ns per iteration, best
 * of 3; 0 where a thread could not be pinned there).  On a shared host
 * one virtual CPU can be much slower than another for minutes at a time
 * (its physical core busy with another guest), and every figure then
 * depends on which CPU each thread happened to run on.  The loop is
 * throughput-bound (independent chains, L1 loads and stores), like libag's
 * per-node code, which a latency-bound loop would not show.
 */
#define CPU_PROBE_MAX 64

static void *cpu_probe(void *arg)
{
	static _Thread_local uint64_t buf[512];
	uint64_t a[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	double *best = arg;

	*best = 0;
	for (int r = 0; r < 3; r++) {
		double t = now_s();

		for (long i = 0; i < 1000000; i++) {
			for (int k = 0; k < 8; k++) {
				a[k] = (a[k] ^ (a[k] >> 3)) +
				       buf[(i + k) & 511];
				buf[(i * 7 + k) & 511] = a[k];
			}
		}
		t = (now_s() - t) * 1e9 / 1000000;
		if (!*best || t < *best)
			*best = t;
	}
	if (a[0] == 42)
		*best += 1e-9; /* the result is used */
	return NULL;
}

static void cpu_speeds(double *ns, int n)
{
	for (int i = 0; i < n; i++) {
		pthread_attr_t attr;
		cpu_set_t set;
		pthread_t t;

		ns[i] = 0;
		CPU_ZERO(&set);
		CPU_SET(i, &set);
		if (pthread_attr_init(&attr))
			continue;
		if (!pthread_attr_setaffinity_np(&attr, sizeof(set), &set) &&
		    !pthread_create(&t, &attr, cpu_probe, &ns[i]))
			pthread_join(t, NULL);
		pthread_attr_destroy(&attr);
	}
}

static void print_cpu_speeds(const char *when, const double *ns, int n, int cpu)
{
	double fast = 0, slow = 0;

	printf("cpu speed %s: ns per iteration of a plain C loop,", when);
	for (int i = 0; i < n; i++) {
		if (ns[i] > 0)
			printf(" cpu%d %.2f", i, ns[i]);
		else
			printf(" cpu%d -", i); /* not ours to run on */
		if (ns[i] > 0 && (!fast || ns[i] < fast))
			fast = ns[i];
		if (ns[i] > slow)
			slow = ns[i];
	}
	if (fast > 0 && slow > 1.15 * fast)
		printf(" (the slowest is %.0f%% slower: a shared host; figures depend on the CPUs threads ran on, see taskset)",
		       100 * (slow / fast - 1));
	printf("; the main thread was on cpu%d\n", cpu);
}

/* CPU time used by this process so far, user + system, in seconds. */
static double cpu_seconds(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		return 0;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

struct machine {
	double load_start, load_end; /* 1-minute load averages */
	double cpu_ns[2][CPU_PROBE_MAX]; /* cpu_speeds at start and end */
	int ncpu_probed;
	int main_cpu[2]; /* where the main thread was then */
	double cpu_s, wall_s; /* of the timed repetitions */
	char cpu[256];
	char blas[512];
	const char *isa;
	const char *coretype;
	long cores;
};

static void write_json(const char *path, const struct machine *mc,
		       const struct config *c)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
	char date[64];
	time_t now = time(NULL);

	if (!f)
		die("cannot write %s: %s", path, strerror(errno));
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fputs("{\n  \"machine\": {\"cpu\": ", f);
	json_str(f, mc->cpu);
	fprintf(f, ", \"cores\": %ld, \"isa\": ", mc->cores);
	json_str(f, mc->isa);
	fputs(", \"blas\": ", f);
	json_str(f, mc->blas);
	fputs(", \"version\": ", f);
	json_str(f, AG_BENCH_VERSION);
	for (int w = 0; w < 2; w++) {
		fprintf(f, ", \"cpu_loop_ns_%s\": [", w ? "end" : "start");
		for (int i = 0; i < mc->ncpu_probed; i++)
			fprintf(f, "%s%.3f", i ? ", " : "", mc->cpu_ns[w][i]);
		fputs("]", f);
	}
	fputs("},\n  \"run\": {\"date\": ", f);
	json_str(f, date);
	fprintf(f,
		", \"quick\": %s, \"reps\": %d, \"warmup\": %d, \"pool\": %s, \"openblas_coretype\": ",
		c->quick ? "true" : "false", c->reps, c->warmup,
		HAVE_POOL ? "true" : "false");
	json_str(f, mc->coretype ? mc->coretype : "");
	fprintf(f,
		", \"peak_rss_kib\": %ld, \"load_avg_start\": %.2f, \"load_avg_end\": %.2f, \"cpu_per_wall\": %.3f},\n  \"results\": [",
		peak_rss_kib(), mc->load_start, mc->load_end,
		mc->wall_s > 0 ? mc->cpu_s / mc->wall_s : 0);
	for (int i = 0; i < n_series; i++) {
		const struct series *s = &all_series[i];

		fputs(i ? ",\n    {" : "\n    {", f);
		fputs("\"workload\": ", f);
		json_str(f, s->workload);
		fputs(", \"case\": ", f);
		json_str(f, s->case_name);
		fprintf(f, ", \"threads\": %d, \"metric\": ", s->threads);
		json_str(f, s->metric);
		fputs(", \"unit\": ", f);
		json_str(f, s->unit);
		if (!s->n) {
			fputs(", \"median\": null, \"min\": null, \"max\": null, \"reps\": 0, \"status\": \"unavailable\", \"reason\": \"no figure recorded\"}",
			      f);
		} else {
			double med, mn, mx;

			series_stats(s, &med, &mn, &mx);
			fprintf(f,
				", \"median\": %.6g, \"min\": %.6g, \"max\": %.6g, \"reps\": %d}",
				med, mn, mx, s->n);
		}
	}
	fputs("\n  ]\n}\n", f);
	if (f != stdout)
		fclose(f);
}

/* The median of a recorded series, or -1 if there is none. */
static double series_median(const char *workload, const char *metric,
			    int threads)
{
	for (int i = 0; i < n_series; i++) {
		const struct series *s = &all_series[i];
		double med, mn, mx;

		if (strcmp(s->workload, workload) ||
		    strcmp(s->metric, metric) || s->threads != threads || !s->n)
			continue;
		series_stats(s, &med, &mn, &mx);
		return med;
	}
	return -1;
}

static void print_table(const struct machine *mc, const struct config *c)
{
	printf("ag-bench %s (libag public API)%s\n", AG_BENCH_VERSION,
	       c->quick ? "  [--quick: tiny sizes, figures not comparable]" :
			  "");
	printf("cpu:      %s, %ld logical CPUs online\n", mc->cpu, mc->cores);
	printf("isa:      %s (AG_ISA=%s; libag has no public ISA query yet, so 'auto' is the dispatcher's own pick)\n",
	       mc->isa, getenv("AG_ISA") ? getenv("AG_ISA") : "unset");
	printf("blas:     %s\n", mc->blas);
	printf("OPENBLAS_CORETYPE: %s\n",
	       mc->coretype ? mc->coretype : "unset");
	printf("threads:  ");
	for (int i = 0; i < c->n_threads; i++)
		printf("%s%d", i ? "," : "", c->threads[i]);
	if (!HAVE_POOL)
		printf(" (ag/pool.h not in this build: libag runs on 1 thread; only the triad uses more)");
	printf("\nreps:     %d after %d warm-up, interleaved across workloads and thread counts\n\n",
	       c->reps, c->warmup);
	printf("%-12s %-22s %3s %-16s %-8s %10s %10s %10s %4s\n", "workload",
	       "case", "thr", "metric", "unit", "median", "min", "max", "reps");
	for (int i = 0; i < n_series; i++) {
		const struct series *s = &all_series[i];
		double med, mn, mx;

		printf("%-12s %-22s %3d %-16s %-8s ", s->workload, s->case_name,
		       s->threads, s->metric, s->unit);
		if (!s->n) {
			printf("no figure recorded\n");
			continue;
		}
		series_stats(s, &med, &mn, &mx);
		printf("%10.4g %10.4g %10.4g %4d\n", med, mn, mx, s->n);
	}
	/*
	 * wide: backward speedup from 1 thread to each other count, beside
	 * the same for the bare loop over wide's memory (the machine's share)
	 */
	for (int i = 0; i < c->n_threads; i++) {
		int t = c->threads[i];
		double w1 = series_median("wide", "bwd_ms", 1);
		double wt = series_median("wide", "bwd_ms", t);
		double l1 = series_median("limits", "wide_loop_ms", 1);
		double lt = series_median("limits", "wide_loop_ms", t);

		if (t == 1 || w1 <= 0 || wt <= 0)
			continue;
		printf("wide backward speedup, 1 -> %d threads: %.2fx (medians)",
		       t, w1 / wt);
		if (l1 > 0 && lt > 0)
			printf("; a bare loop over the same memory: %.2fx (limits wide_loop_ms)",
			       l1 / lt);
		printf("\n");
	}
	/* mlp: its GEMMs' rate against the 1024^3 rate at the same count */
	for (int i = 0; i < n_series; i++) {
		const struct series *mg = &all_series[i];
		double gm, lm, a, b;

		if (strcmp(mg->workload, "mlp") ||
		    strcmp(mg->metric, "gemm_gflops") || !mg->n)
			continue;
		series_stats(mg, &gm, &a, &b);
		for (int j = 0; j < n_series; j++) {
			const struct series *l = &all_series[j];

			if (strcmp(l->workload, "limits") ||
			    strcmp(l->metric, "gemm_gflops") ||
			    l->threads != mg->threads || !l->n)
				continue;
			series_stats(l, &lm, &a, &b);
			printf("mlp GEMMs, %d thread(s): %.0f%% of the %s rate (medians)\n",
			       mg->threads, 100 * gm / lm, l->case_name);
		}
	}
	printf("peak RSS: %.1f MiB (getrusage; includes the triad's arrays)\n",
	       (double)peak_rss_kib() / 1024);
	print_cpu_speeds("at start", mc->cpu_ns[0], mc->ncpu_probed,
			 mc->main_cpu[0]);
	print_cpu_speeds("at end", mc->cpu_ns[1], mc->ncpu_probed,
			 mc->main_cpu[1]);
	printf("machine load: 1-min load average %.2f at start, %.2f at end on %ld CPUs; this process got %.2f CPU-s per wall-s while measuring%s\n",
	       mc->load_start, mc->load_end, mc->cores,
	       mc->wall_s > 0 ? mc->cpu_s / mc->wall_s : 0,
	       mc->load_start > (double)mc->cores ||
			       mc->load_end > (double)mc->cores ?
		       " (busy machine: figures are pessimistic)" :
		       "");
}

/* ---------------------------------------------------------- main loop */

enum {
	W_CHAIN = 1 << 0,
	W_ELEMENTWISE = 1 << 1,
	W_WIDE = 1 << 2,
	W_MLP = 1 << 3,
	W_TRIAD = 1 << 4,
	W_GEMM = 1 << 5,
	W_WLOOP = 1 << 6,
	W_ALL = (1 << 7) - 1,
};

static const struct {
	const char *name;
	unsigned mask;
} workload_names[] = {
	{ "chain", W_CHAIN },
	{ "elementwise", W_ELEMENTWISE },
	{ "wide", W_WIDE },
	{ "mlp", W_MLP },
	{ "limits", W_TRIAD | W_GEMM | W_WLOOP },
	{ "triad", W_TRIAD },
	{ "gemm", W_GEMM },
	{ "wide-loop", W_WLOOP },
};

static void usage(FILE *f)
{
	fputs("usage: ag-bench [options]\n"
	      "Runs the workloads of docs/benchmarks.md with libag and prints median/min/max.\n"
	      "  --workload NAME   chain, elementwise, wide, mlp, limits (= triad + gemm\n"
	      "                    + wide-loop), triad, gemm or wide-loop; repeatable\n"
	      "                    (default: all)\n"
	      "  --threads LIST    thread counts, e.g. 1 or 1,2 (default: 1 and all CPUs)\n"
	      "  --reps N          timed repetitions (default 7; 2 with --quick)\n"
	      "  --warmup N        untimed repetitions first (default 1; 0 with --quick)\n"
	      "  --json FILE       also write the figures as JSON ('-' = stdout)\n"
	      "  --trace FILE      Perfetto/Chrome trace of one wide backward (needs ag/trace.h)\n"
	      "  --quick           tiny sizes plus gradient checks (exit 1 on a mismatch)\n"
	      "  --chain-steps N   chain length (default 10000, docs/benchmarks.md): shows\n"
	      "                    how the cost per node depends on the graph's footprint\n"
	      "  --help            this text\n",
	      f);
}

static int parse_threads(struct config *c, const char *arg)
{
	const char *p = arg;

	c->n_threads = 0;
	while (*p) {
		char *end;
		long v = strtol(p, &end, 10);

		if (end == p || v < 0 || v > 4096 ||
		    c->n_threads == MAX_THREADS)
			return -1;
		if (v == 0)
			v = sysconf(_SC_NPROCESSORS_ONLN);
		if (v > MAX_THREADS)
			v = MAX_THREADS;
		c->threads[c->n_threads++] = (int)v;
		p = end;
		if (*p == ',')
			p++;
		else if (*p)
			return -1;
	}
	return c->n_threads ? 0 : -1;
}

/* An integer option in [lo, 1000000]; says which option was bad. */
static int parse_int(const char *opt, const char *s, int lo, int *out)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (end == s || *end || v < lo || v > 1000000) {
		fprintf(stderr, "ag-bench: bad --%s '%s'\n", opt, s);
		return -1;
	}
	*out = (int)v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "workload", required_argument, NULL, 'w' },
		{ "threads", required_argument, NULL, 't' },
		{ "reps", required_argument, NULL, 'r' },
		{ "warmup", required_argument, NULL, 'u' },
		{ "json", required_argument, NULL, 'j' },
		{ "trace", required_argument, NULL, 'T' },
		{ "quick", no_argument, NULL, 'q' },
		{ "chain-steps", required_argument, NULL, 'N' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct config c = { 0 };
	struct machine mc = { 0 };
	struct chain_state chain = { 0 };
	struct ew_state ew = { 0 };
	struct wide_state wide = { 0 };
	struct mlp mlp = { 0 };
	struct mlp_gemm mlp_gemm = { 0 };
	struct triad_state triad = { 0 };
	struct wloop_state wloop = { 0 };
	struct gemm_state gemm = { 0 };
	struct ag_generator *g;
	unsigned sel = 0;
	int reps = -1, warmup = -1, chain_steps = 0, opt, total, done = 0;
	bool tty = isatty(STDERR_FILENO);
	double t_start = now_s();

	mc.cores = sysconf(_SC_NPROCESSORS_ONLN);
	while ((opt = getopt_long(argc, argv, "w:t:r:u:j:T:N:qh", opts,
				  NULL)) != -1) {
		size_t i;

		switch (opt) {
		case 'w':
			for (i = 0; i < ARRAY_SIZE(workload_names); i++)
				if (!strcmp(optarg, workload_names[i].name))
					break;
			if (i == ARRAY_SIZE(workload_names)) {
				fprintf(stderr,
					"ag-bench: unknown workload '%s'\n",
					optarg);
				usage(stderr);
				return 2;
			}
			sel |= workload_names[i].mask;
			break;
		case 't':
			if (parse_threads(&c, optarg)) {
				fprintf(stderr,
					"ag-bench: bad --threads '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'r':
			if (parse_int("reps", optarg, 1, &reps))
				return 2;
			break;
		case 'u':
			if (parse_int("warmup", optarg, 0, &warmup))
				return 2;
			break;
		case 'j':
			c.json_path = optarg;
			break;
		case 'T':
			c.trace_path = optarg;
			break;
		case 'q':
			c.quick = true;
			break;
		case 'N':
			if (parse_int("chain-steps", optarg, 1, &chain_steps))
				return 2;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ag-bench: unexpected argument '%s'\n",
			argv[optind]);
		usage(stderr);
		return 2;
	}
	if (!sel)
		sel = W_ALL;
	if (!c.n_threads) {
		c.threads[c.n_threads++] = 1;
		if (mc.cores > 1)
			c.threads[c.n_threads++] = mc.cores > MAX_THREADS ?
							   MAX_THREADS :
							   (int)mc.cores;
	}
	c.reps = reps >= 0 ? reps : c.quick ? 2 : 7;
	c.warmup = warmup >= 0 ? warmup : c.quick ? 0 : 1;
	config_sizes(&c);
	if (chain_steps)
		c.chain_n = chain_steps;

	cpu_model(mc.cpu, sizeof(mc.cpu));
	blas_name(mc.blas, sizeof(mc.blas));
	mc.isa = getenv("AG_ISA") ? getenv("AG_ISA") : "auto";
	mc.coretype = getenv("OPENBLAS_CORETYPE");
	if (c.trace_path && !HAVE_TRACE) {
		fprintf(stderr,
			"ag-bench: --trace unavailable: ag/trace.h is not in this libag build; running without a trace\n");
		c.trace_path = NULL;
	}

	g = ag_generator_new(20260101);
	if (!g)
		die("ag_generator_new: %s", ag_errmsg());
	if (sel & W_CHAIN)
		chain_setup(&chain, &c, g);
	if (sel & W_ELEMENTWISE)
		ew_setup(&ew, &c, g);
	if (sel & W_WIDE)
		wide_setup(&wide, &c, g);
	if (sel & W_MLP) {
		mlp_init(&mlp, AG_F32, c.mlp_dims, c.mlp_b, g);
		mlp_gemm_init(&mlp_gemm, &mlp, g);
	}
	if (sel & W_TRIAD)
		triad_setup(&triad, &c);
	if (sel & W_WLOOP)
		wloop_setup(&wloop, &c);
	if (sel & W_GEMM)
		gemm_setup(&gemm, &c, g);

	if (c.quick) {
		for (int ti = 0; ti < c.n_threads; ti++) {
			int t = c.threads[ti];

			if (!HAVE_POOL && t != 1) {
				if (sel & W_TRIAD)
					triad_check(&triad, t);
				if (sel & W_WLOOP)
					wloop_check(&wloop, t);
				continue;
			}
			set_threads(t);
			if (sel & W_CHAIN)
				chain_check(&chain, &c, t);
			if (sel & W_ELEMENTWISE)
				ew_check(&ew, &c, t);
			if (sel & W_WIDE)
				wide_check(&wide, &c, t);
			if (sel & W_MLP)
				mlp_check(&c, t, g);
			if (sel & W_TRIAD)
				triad_check(&triad, t);
			if (sel & W_WLOOP)
				wloop_check(&wloop, t);
			if (sel & W_GEMM)
				gemm_check(&gemm, t);
		}
	}

	mc.ncpu_probed = mc.cores < CPU_PROBE_MAX ? (int)mc.cores :
						    CPU_PROBE_MAX;
	cpu_speeds(mc.cpu_ns[0], mc.ncpu_probed);
	mc.main_cpu[0] = sched_getcpu();
	mc.load_start = load_avg();
	mc.cpu_s = cpu_seconds();
	mc.wall_s = now_s();
	total = (c.warmup + c.reps) * c.n_threads;
	for (int rep = -c.warmup; rep < c.reps; rep++) {
		recording = rep >= 0;
		for (int ti = 0; ti < c.n_threads; ti++) {
			int t = c.threads[ti];
			bool lib = HAVE_POOL || t == 1;

			fprintf(stderr,
				"%s[%3d/%d] %s %d/%d, threads %d, %.0f s elapsed%s",
				tty ? "\r" : "", ++done, total,
				rep < 0 ? "warm-up" : "rep",
				rep < 0 ? rep + c.warmup + 1 : rep + 1,
				rep < 0 ? c.warmup : c.reps, t,
				now_s() - t_start, tty ? "   " : "\n");
			if (lib)
				set_threads(t);
			if (lib && (sel & W_CHAIN))
				chain_run(&chain, &c, t);
			if (lib && (sel & W_ELEMENTWISE))
				ew_run(&ew, &c, t);
			if (lib && (sel & W_WIDE))
				wide_run(&wide, &c, t);
			if (lib && (sel & W_MLP)) {
				mlp_run(&mlp, &c, t);
				mlp_gemm_run(&mlp_gemm, &mlp, &c, t);
			}
			if (sel & W_TRIAD)
				triad_run(&triad, t);
			if (sel & W_WLOOP)
				wloop_run(&wloop, t);
			if (lib && (sel & W_GEMM))
				gemm_run(&gemm, t);
		}
	}
	mc.cpu_s = cpu_seconds() - mc.cpu_s;
	mc.wall_s = now_s() - mc.wall_s;
	mc.load_end = load_avg();
	cpu_speeds(mc.cpu_ns[1], mc.ncpu_probed);
	mc.main_cpu[1] = sched_getcpu();
	if (tty)
		fputc('\n', stderr);

	if (c.trace_path && (sel & W_WIDE)) {
		double f, b;

		set_threads(c.threads[c.n_threads - 1]);
		wide_once(&wide, &f, &b, c.trace_path);
		wide_zero(&wide);
		fprintf(stderr, "ag-bench: trace of one wide backward in %s\n",
			c.trace_path);
	} else if (c.trace_path) {
		fprintf(stderr,
			"ag-bench: --trace traces a wide backward; wide was not selected\n");
	}

	print_table(&mc, &c);
	if (c.json_path)
		write_json(c.json_path, &mc, &c);

	for (int i = 0; i < 2; i++)
		ag_tensor_put(chain.x[i]);
	for (size_t i = 0; i < ARRAY_SIZE(ew_ops); i++)
		ag_tensor_put(ew.x[i]);
	ag_tensor_put(ew.w);
	ag_tensor_put(wide.x);
	for (int64_t i = 0; i < wide.k; i++)
		ag_tensor_put(wide.w[i]);
	free(wide.w);
	if (sel & W_MLP) {
		mlp_gemm_free(&mlp_gemm);
		mlp_free(&mlp);
	}
	free(triad.a);
	free(triad.b);
	free(triad.c);
	ag_tensor_put(gemm.a);
	ag_tensor_put(gemm.b);
	ag_generator_free(g);
	for (int i = 0; i < n_series; i++)
		free(all_series[i].v);
	free(all_series);

	if (check_failures) {
		fprintf(stderr, "ag-bench: %d check(s) FAILED\n",
			check_failures);
		return 1;
	}
	if (c.quick)
		fprintf(stderr, "ag-bench: all checks passed\n");
	return 0;
}
