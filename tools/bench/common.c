// SPDX-License-Identifier: MIT
/* ag-bench's shared helpers; common.h says what each is for. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* ---------------------------------------------------------------- utils */

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("ag-bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

struct ag_tensor *must_check(struct ag_tensor *t, const char *what, int line)
{
	if (!t)
		die("line %d: %s failed: %s", line, what, ag_errmsg());
	return t;
}

void must_ok_check(int rc, const char *what, int line)
{
	if (rc)
		die("line %d: %s failed (%d): %s", line, what, rc, ag_errmsg());
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory (%zu bytes)", n);
	return p;
}

int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* A dense f64 copy of any f32/f64 tensor; the caller frees it. */
double *to_f64(struct ag_tensor *t)
{
	int64_t n = ag_tensor_numel(t);
	double *d = xmalloc((size_t)n * sizeof(double));

	if (ag_tensor_dtype(t) == AG_F64) {
		must_ok(ag_tensor_copy_to(t, d, (size_t)n * sizeof(double)));
	} else {
		float *f = xmalloc((size_t)n * sizeof(float));

		must_ok(ag_tensor_copy_to(t, f, (size_t)n * sizeof(float)));
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
struct ag_tensor *uniform(struct ag_generator *g, enum ag_dtype dt, int ndim,
			  const int64_t *shape, double lo, double hi,
			  bool requires_grad)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode m = ag_no_grad_enter();
	struct ag_tensor *r, *t;

	r = must(ag_rand(g, dt, ndim, shape));
	t = must(ag_add_scalar(must(ag_mul_scalar(r, hi - lo)), lo));
	ag_mode_exit(m);
	ag_tensor_get(t);
	ag_scope_end(s);
	if (requires_grad)
		must_ok(ag_tensor_set_requires_grad(t, true));
	return t;
}

void weight_bias(struct ag_tensor **wb, struct ag_generator *g,
		 enum ag_dtype dt, int ndim, const int64_t *shape)
{
	int64_t fan_in = 1;
	double r;

	for (int d = 1; d < ndim; d++)
		fan_in *= shape[d];
	r = 1 / sqrt((double)fan_in);
	wb[0] = uniform(g, dt, ndim, shape, -r, r, true);
	wb[1] = uniform(g, dt, 1, shape, -r, r, true);
}

/*
 * Class targets, i64 [n], uniform over [0, classes) by g; the caller
 * owns the reference.
 */
struct ag_tensor *random_targets(struct ag_generator *g, int64_t n,
				 int64_t classes)
{
	int64_t *t = xmalloc((size_t)n * sizeof(*t));
	struct ag_tensor *r;

	for (int64_t i = 0; i < n; i++)
		t[i] = (int64_t)(ag_generator_next(g) % (uint64_t)classes);
	r = must(ag_from_data(AG_I64, 1, &n, t));
	free(t);
	return r;
}

/*
 * Plain SGD on n leaves, under no-grad: g = p.grad; g *= lr; p -= g; then
 * the grad is dropped (torch's zero_grad(set_to_none=True)).  Inside the
 * caller's scope, which takes the grads' references.
 */
void sgd_step(struct ag_tensor **p, int n, double lr)
{
	struct ag_mode m = ag_no_grad_enter();

	for (int i = 0; i < n; i++) {
		struct ag_tensor *g = must(ag_tensor_grad(p[i]));

		must_ok(ag_mul_scalar_(g, lr));
		must_ok(ag_sub_(p[i], g));
		must_ok(ag_tensor_zero_grad(p[i]));
	}
	ag_mode_exit(m);
}

void set_threads(int n)
{
#if HAVE_POOL
	must_ok(ag_set_num_threads(n));
#else
	(void)n;
#endif
}

/* ------------------------------------------------------------ results */

bool bench_silent;
struct series *all_series;
int n_series;
static int cap_series;

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

bool recording;

void record(const char *workload, const char *case_name, int threads,
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

void series_stats(const struct series *s, double *med, double *mn, double *mx)
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

/* The median of a recorded series, or -1 if there is none. */
double series_median(const char *workload, const char *metric, int threads)
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

void series_free_all(void)
{
	for (int i = 0; i < n_series; i++)
		free(all_series[i].v);
	free(all_series);
	all_series = NULL;
	n_series = cap_series = 0;
}

/* ------------------------------------------------------------- config */

void config_sizes(struct config *c)
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
		c->cnn_b = 4;
		c->cnn_steps = 1;
		c->triad_bytes = 1 << 20;
		c->gemm_n = 96;
		c->serve_requests = c->serve_requests ? c->serve_requests : 4;
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
		c->cnn_b = 128;
		c->cnn_steps = 2;
		c->triad_bytes = (size_t)64 << 20;
		c->gemm_n = 1024;
	}
}

int check_failures;

void check_report(bool ok, const char *fmt, ...)
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
double worst_ratio(const double *got, const double *want, int64_t n,
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
/* ------------------------------------------------------------ threads */

/*
 * fn(args[i]) on n POSIX threads, the calling thread being thread 0, for
 * the limits that must not depend on libag's pool.  args is an array of n
 * elements of size bytes.
 */
void run_threads(int n, void *(*fn)(void *), void *args, size_t size)
{
	pthread_t tid[MAX_THREADS];

	for (int i = 1; i < n; i++)
		if (pthread_create(&tid[i], NULL, fn, (char *)args + i * size))
			die("pthread_create failed");
	fn(args);
	for (int i = 1; i < n; i++)
		pthread_join(tid[i], NULL);
}

void check_param_fd(const char *what, int threads, int i, struct ag_tensor *p,
		    double (*loss)(void *model), void *model)
{
	struct ag_tensor *gr = must(ag_tensor_grad(p));
	int64_t n = ag_tensor_numel(p), e = 0;
	double *d = ag_tensor_data(p), *ga = to_f64(gr), keep, lp, lm, fd, an;

	for (int64_t j = 1; j < n; j++)
		if (fabs(ga[j]) > fabs(ga[e]))
			e = j;
	an = ga[e];
	free(ga);
	keep = d[e];
	d[e] = keep + 1e-6;
	lp = loss(model);
	d[e] = keep - 1e-6;
	lm = loss(model);
	d[e] = keep;
	fd = (lp - lm) / 2e-6;
	check_report(
		fabs(fd - an) <= 1e-6 + 1e-5 * fabs(fd),
		"%s f64 threads=%d: param %d elem %lld: backward %.10g vs finite difference %.10g",
		what, threads, i, (long long)e, an, fd);
}

struct ag_tensor *cnn_logits(struct ag_tensor *x, struct ag_tensor *const *p,
			     struct ag_tensor *running_mean,
			     struct ag_tensor *running_var, bool training)
{
	static const struct ag_conv2d_opts pad1 = { .padding = { 1, 1 } };
	static const int64_t k2[2] = { 2, 2 };
	int64_t flat[2] = { ag_tensor_shape(x)[0], -1 };
	struct ag_tensor *h;

	h = ag_conv2d(x, p[0], p[1], &pad1);
	h = h ? ag_relu(h) : NULL;
	h = h ? ag_max_pool2d(h, k2, NULL, NULL) : NULL;
	h = h ? ag_conv2d(h, p[2], p[3], &pad1) : NULL;
	h = h ? ag_batch_norm(h, running_mean, running_var, p[4], p[5],
			      training, 0.1, 1e-5) :
		NULL;
	h = h ? ag_relu(h) : NULL;
	h = h ? ag_max_pool2d(h, k2, NULL, NULL) : NULL;
	h = h ? ag_reshape(h, 2, flat) : NULL;
	h = h ? ag_linear(h, p[6], p[7]) : NULL;
	h = h ? ag_relu(h) : NULL;
	return h ? ag_linear(h, p[8], p[9]) : NULL;
}
