// SPDX-License-Identifier: MIT
/*
 * serve: many request threads running one shared model at once, the way a
 * C service links libag (issue 16).  The model (the mlp's 784-512-512-10
 * or the cnn, BatchNorm in eval mode) is made once; T request threads each
 * run R requests, every request copying its input into a fresh tensor:
 *
 *   infer  under inference mode, logits -> softmax, probabilities copied out
 *          (batch 1 and 32);
 *   grad   grad mode on, cross-entropy against a class, and the gradient
 *          with respect to the input only (the saliency/attack pattern; no
 *          parameter's .grad is touched), batch 1.
 *
 * Each request is timed on its own; each thread keeps a histogram, merged
 * at the end: requests_per_s (all threads' requests over the wall time from
 * a common start to the last finish), p50_us, p99_us, p999_us, and rss_mib
 * (resident set after the case).  The case "<model>,rss" runs a mixed load
 * (the three request kinds in turn) on 8 threads and reports the resident
 * set after 10^4 requests, after 10^6 with --serve-soak, and the peak.
 *
 * Request threads are separate from libag's pool: the pool keeps the size
 * of the last --threads entry (the CPUs by default) and every request
 * thread shares it, which is what the workload measures.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common.h"

enum serve_model { SERVE_MLP, SERVE_CNN };
enum { MLP_NP = 6, CNN_NP = 10, MAX_NP = 10 };

struct model {
	enum serve_model kind;
	const char *name;
	int np;
	struct ag_tensor *p[MAX_NP];
	struct ag_tensor *running_mean, *running_var; /* cnn */
	int64_t dims[4]; /* mlp */
	int64_t hw; /* cnn: image side */
	int64_t in; /* input elements per example */
};

/* --------------------------------------------------------- the models */

static void mlp_make(struct model *m, const int64_t *dims,
		     struct ag_generator *g)
{
	memset(m, 0, sizeof(*m));
	m->kind = SERVE_MLP;
	m->name = "mlp";
	m->np = MLP_NP;
	memcpy(m->dims, dims, sizeof(m->dims));
	for (int l = 0; l < 3; l++) {
		int64_t ws[2] = { dims[l + 1], dims[l] };

		weight_bias(m->p + 2 * l, g, AG_F32, 2, ws);
	}
	m->in = dims[0];
}

static void cnn_make(struct model *m, int64_t hw, struct ag_generator *g)
{
	int64_t q = hw / 4, ch = 64;
	int64_t c1[4] = { 32, 1, 3, 3 }, c2[4] = { 64, 32, 3, 3 };
	int64_t f1[2] = { 128, 64 * q * q }, f2[2] = { 10, 128 };

	memset(m, 0, sizeof(*m));
	m->kind = SERVE_CNN;
	m->name = "cnn";
	m->np = CNN_NP;
	m->hw = hw;
	weight_bias(m->p + 0, g, AG_F32, 4, c1);
	weight_bias(m->p + 2, g, AG_F32, 4, c2);
	m->p[4] = uniform(g, AG_F32, 1, &ch, 0.5, 1.5, true);
	m->p[5] = uniform(g, AG_F32, 1, &ch, -0.1, 0.1, true);
	weight_bias(m->p + 6, g, AG_F32, 2, f1);
	weight_bias(m->p + 8, g, AG_F32, 2, f2);
	m->running_mean = uniform(g, AG_F32, 1, &ch, -0.1, 0.1, false);
	m->running_var = uniform(g, AG_F32, 1, &ch, 0.5, 1.5, false);
	m->in = hw * hw;
}

/* The linear layers' weights packed once, as a service would. */
static void model_prepack(struct model *m)
{
	int first = m->kind == SERVE_MLP ? 0 : 6;

	for (int i = first; i < m->np; i += 2)
		if (ag_linear_prepack(m->p[i]) < 0)
			die("ag_linear_prepack: %s", ag_errmsg());
}

static void model_free(struct model *m)
{
	for (int i = 0; i < m->np; i++)
		ag_tensor_put(m->p[i]);
	ag_tensor_put(m->running_mean);
	ag_tensor_put(m->running_var);
}

/* The input tensor of b examples from data, in the caller's scope. */
static struct ag_tensor *model_input(const struct model *m, int64_t b,
				     const float *data)
{
	int64_t mlp[2] = { b, m->in }, cnn[4] = { b, 1, m->hw, m->hw };

	if (m->kind == SERVE_MLP)
		return ag_from_data(AG_F32, 2, mlp, data);
	return ag_from_data(AG_F32, 4, cnn, data);
}

/* Logits [b, 10] in the caller's scope; NULL (with ag_errmsg) on error. */
static struct ag_tensor *model_forward(const struct model *m,
				       struct ag_tensor *x)
{
	struct ag_tensor *h = x;

	if (m->kind == SERVE_MLP) {
		for (int l = 0; l < 3 && h; l++) {
			h = ag_linear(h, m->p[2 * l], m->p[2 * l + 1]);
			if (h && l < 2)
				h = ag_relu(h);
		}
		return h;
	}
	return cnn_logits(x, m->p, m->running_mean, m->running_var, false);
}

/* -------------------------------------------------------- one request */

enum serve_mode { MODE_INFER, MODE_GRAD };

/*
 * One request: b examples from in; out gets the probabilities [b, 10]
 * (infer) or the input gradient [b, in] (grad).  targets: i64 [b], grad
 * only.  Returns 0, or -1 with ag_errmsg.
 */
static int serve_request(const struct model *m, enum serve_mode mode, int64_t b,
			 const float *in, struct ag_tensor *targets, float *out)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x, *y;
	int rc = -1;

	if (!s)
		return -1;
	if (mode == MODE_INFER) {
		struct ag_mode md = ag_inference_mode_enter();

		x = model_input(m, b, in);
		y = x ? model_forward(m, x) : NULL;
		y = y ? ag_softmax(y, 1) : NULL;
		if (y && !ag_tensor_copy_to(y, out, (size_t)b * 10 * 4))
			rc = 0;
		ag_mode_exit(md);
	} else {
		struct ag_mode md = ag_enable_grad_enter();
		struct ag_tensor *gx = NULL;

		x = model_input(m, b, in);
		if (x && !ag_tensor_set_requires_grad(x, true)) {
			y = model_forward(m, x);
			y = y ? ag_cross_entropy(y, targets) : NULL;
			if (y && !ag_grad(&y, NULL, 1, &x, 1, &gx, NULL) &&
			    !ag_tensor_copy_to(gx, out,
					       (size_t)(b * m->in) * 4))
				rc = 0;
		}
		ag_mode_exit(md);
	}
	ag_scope_end(s);
	return rc;
}

/* ------------------------------------------------------- latency clocks */

/*
 * Log-linear histogram of nanoseconds: exact below 64, then 32 buckets per
 * power of two (at most 3% apart) up to 2^40 ns.
 */
#define H_SUB 32
#define H_BUCKETS (64 + 35 * H_SUB)

struct hist {
	uint64_t n[H_BUCKETS];
	uint64_t count;
};

static int h_index(uint64_t ns)
{
	int msb, i;

	if (ns < 64)
		return (int)ns;
	msb = 63 - __builtin_clzll(ns);
	i = 64 + (msb - 6) * H_SUB + (int)((ns >> (msb - 5)) & (H_SUB - 1));
	return i < H_BUCKETS ? i : H_BUCKETS - 1;
}

/* The upper edge of bucket i, in ns. */
static double h_value(int i)
{
	int msb;

	if (i < 64)
		return i;
	msb = (i - 64) / H_SUB + 6;
	return ldexp(1.0 + ((i - 64) % H_SUB + 1) / (double)H_SUB, msb);
}

static void h_add(struct hist *h, double seconds)
{
	h->n[h_index((uint64_t)(seconds * 1e9))]++;
	h->count++;
}

static void h_merge(struct hist *into, const struct hist *h)
{
	for (int i = 0; i < H_BUCKETS; i++)
		into->n[i] += h->n[i];
	into->count += h->count;
}

/* The q-quantile, in microseconds. */
static double h_quantile(const struct hist *h, double q)
{
	uint64_t want = (uint64_t)ceil(q * (double)h->count), seen = 0;

	if (!want)
		want = 1;
	for (int i = 0; i < H_BUCKETS; i++) {
		seen += h->n[i];
		if (seen >= want)
			return h_value(i) * 1e-3;
	}
	return NAN;
}

/* ----------------------------------------------------------- resident */

static double rss_mib(void)
{
	long pages = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return NAN;
	if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? NAN :
			      (double)resident * (double)sysconf(_SC_PAGESIZE) /
				      (1 << 20);
}

static double peak_rss_mib(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_maxrss / 1024;
}

/* -------------------------------------------------------- the threads */

/*
 * --serve-gate N: the request threads run behind an ag_gate of N places
 * (include/ag/pool.h), as a service with more request threads than cores
 * would: each thread enters before its first request, calls
 * ag_gate_yield() at the start of every later one (inside the clock: the
 * wait for a place is part of the request's latency) and leaves after its
 * last.  --serve-quantum sets how long a thread keeps its place.
 */

/* A kind of request: which mode at which batch. */
struct kind {
	enum serve_mode mode;
	int64_t b;
};

static const struct kind kinds[] = {
	{ MODE_INFER, 1 },
	{ MODE_INFER, 32 },
	{ MODE_GRAD, 1 },
};

struct worker {
	const struct model *m;
	const struct kind *k; /* NULL: the kinds in turn */
	long requests;
	double deadline; /* no request starts after it (bench_now()) */
	pthread_barrier_t *start;
	struct ag_gate *gate; /* NULL: none */
	float *in, *out;
	struct ag_tensor *targets[3]; /* per kind: i64 [b] */
	struct hist h;
	double t_end;
	int failed;
	char err[160];
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;

	pthread_barrier_wait(w->start);
	for (long i = 0; i < w->requests && !w->failed &&
			 (!i || bench_now() <= w->deadline);
	     i++) {
		int ki = w->k ? (int)(w->k - kinds) : (int)(i % 3);
		const struct kind *k = &kinds[ki];
		double t0 = bench_now();

		if (w->gate &&
		    (i ? ag_gate_yield(w->gate) : ag_gate_enter(w->gate)))
			die("serve: %s", ag_errmsg());
		if (serve_request(w->m, k->mode, k->b, w->in, w->targets[ki],
				  w->out)) {
			snprintf(w->err, sizeof(w->err), "%s", ag_errmsg());
			w->failed = 1;
		}
		h_add(&w->h, bench_now() - t0);
	}
	if (w->gate && ag_gate_leave(w->gate))
		die("serve: %s", ag_errmsg());
	w->t_end = bench_now();
	return NULL;
}

static void worker_init(struct worker *w, const struct model *m,
			struct ag_generator *g)
{
	int64_t n = 32 * m->in;

	memset(w, 0, sizeof(*w));
	w->m = m;
	w->in = xmalloc((size_t)n * sizeof(float));
	w->out = xmalloc((size_t)n * sizeof(float));
	for (int64_t i = 0; i < n; i++)
		w->in[i] = (float)(ag_generator_next(g) >> 40) / (1 << 24);
	for (size_t k = 0; k < ARRAY_SIZE(kinds); k++)
		w->targets[k] = random_targets(g, kinds[k].b, 10);
}

static void worker_free(struct worker *w)
{
	for (size_t k = 0; k < ARRAY_SIZE(kinds); k++)
		ag_tensor_put(w->targets[k]);
	free(w->in);
	free(w->out);
}

struct serve {
	struct model m[2];
	int nm;
	struct worker *w; /* MAX_THREADS */
	struct ag_gate *gate; /* --serve-gate; NULL: none */
	bool soaked;
};

/*
 * Runs t threads of requests requests each (kind k, or mixed if NULL),
 * each thread starting no request after seconds (0: no limit) but at least
 * one, through gate if not NULL; merges their clocks into h; returns the
 * wall time.
 */
static double run_case(struct serve *st, const struct model *m,
		       const struct kind *k, int t, long requests,
		       double seconds, struct ag_gate *gate, struct hist *h)
{
	pthread_t tid[MAX_THREADS];
	pthread_barrier_t start;
	double t0, t1 = 0;

	pthread_barrier_init(&start, NULL, (unsigned)t + 1);
	for (int i = 0; i < t; i++) {
		struct worker *w = &st->w[i];

		w->m = m;
		w->k = k;
		w->gate = gate;
		w->requests = requests;
		w->start = &start;
		memset(&w->h, 0, sizeof(w->h));
		w->failed = 0;
		if (pthread_create(&tid[i], NULL, worker_run, w))
			die("serve: pthread_create failed");
	}
	t0 = bench_now();
	/* one deadline for all: the barrier publishes it */
	for (int i = 0; i < t; i++)
		st->w[i].deadline = seconds > 0 ? t0 + seconds : INFINITY;
	pthread_barrier_wait(&start);
	for (int i = 0; i < t; i++) {
		struct worker *w = &st->w[i];

		pthread_join(tid[i], NULL);
		if (w->failed)
			die("serve: %s request failed: %s", m->name, w->err);
		h_merge(h, &w->h);
		if (w->t_end > t1)
			t1 = w->t_end;
	}
	pthread_barrier_destroy(&start);
	return t1 - t0;
}

/*
 * Requests per thread: --serve-requests, else a budget per case that
 * keeps each case near a second on two cores, split over the threads (at
 * least 50 each, so that the quantiles of one thread mean something).
 * --serve-seconds bounds the case's time whatever the budget: a slower
 * library (or 64 threads times 50 batch-32 cnn requests) stops early and
 * reports what it served in that time.  torch_bench's serve_budget and
 * its deadline are the same rule.
 */
static long requests_for(const struct config *c, const struct model *m,
			 const struct kind *k, int t)
{
	long budget;

	if (c->serve_requests)
		return c->serve_requests;
	if (m->kind == SERVE_MLP)
		budget = k->b == 1 ? (k->mode == MODE_INFER ? 20000 : 8000) :
				     2000;
	else
		budget = k->b == 1 ? (k->mode == MODE_INFER ? 2000 : 800) : 100;
	budget /= t;
	return budget < 50 ? 50 : budget;
}

static void serve_case(struct serve *st, const struct config *c,
		       const struct model *m, const struct kind *k, int t)
{
	struct hist *h = calloc(1, sizeof(*h));
	long r = requests_for(c, m, k, t);
	char name[64];
	double wall;

	if (!h)
		die("out of memory");
	wall = run_case(st, m, k, t, r, c->serve_seconds, st->gate, h);
	snprintf(name, sizeof(name), "%s,B=%lld,T=%d,%s%s%s", m->name,
		 (long long)k->b, t, k->mode == MODE_INFER ? "infer" : "grad",
		 c->serve_gate ? ",gate" : "",
		 c->serve_unpacked ? ",unpacked" : "");
	record("serve", name, t, "requests_per_s", "req/s",
	       (double)h->count / wall);
	record("serve", name, t, "requests", "req", (double)h->count);
	record("serve", name, t, "p50_us", "us", h_quantile(h, 0.5));
	record("serve", name, t, "p99_us", "us", h_quantile(h, 0.99));
	record("serve", name, t, "p999_us", "us", h_quantile(h, 0.999));
	record("serve", name, t, "rss_mib", "MiB", rss_mib());
	free(h);
}

/*
 * Resident set under a long mixed load on 8 threads (behind the gate if
 * there is one): after 10^4 requests and, with --serve-soak, after 10^6;
 * growth_pct compares the two.
 */
static void serve_soak(struct serve *st, const struct config *c,
		       const struct model *m)
{
	struct hist *h = calloc(1, sizeof(*h));
	int t = 8;
	long first = c->quick ? 240 : 10000;
	char name[64];
	double r4, r6;

	if (!h)
		die("out of memory");
	snprintf(name, sizeof(name), "%s,rss,T=%d,mixed%s", m->name, t,
		 st->gate ? ",gate" : "");
	run_case(st, m, NULL, t, first / t, 0, st->gate, h);
	r4 = rss_mib();
	record("serve", name, t, "rss_mib_1e4", "MiB", r4);
	if (c->serve_soak) {
		run_case(st, m, NULL, t, (1000000 - first) / t, 0, st->gate, h);
		r6 = rss_mib();
		record("serve", name, t, "rss_mib_1e6", "MiB", r6);
		record("serve", name, t, "rss_growth_pct", "%",
		       100 * (r6 - r4) / r4);
	}
	record("serve", name, t, "peak_rss_mib", "MiB", peak_rss_mib());
	free(h);
}

static void *serve_setup(const struct config *c, struct ag_generator *g)
{
	static const int64_t quick_dims[4] = { 32, 64, 64, 10 };
	static const int64_t dims[4] = { 784, 512, 512, 10 };
	struct serve *st = xmalloc(sizeof(*st));

	memset(st, 0, sizeof(*st));
	if (c->serve_gate &&
	    !(st->gate = ag_gate_new(c->serve_gate, c->serve_quantum_us)))
		die("serve: %s", ag_errmsg());
	if (!c->serve_models || !strcmp(c->serve_models, "mlp"))
		mlp_make(&st->m[st->nm++], c->quick ? quick_dims : dims, g);
	if (!c->serve_models || !strcmp(c->serve_models, "cnn"))
		cnn_make(&st->m[st->nm++], c->quick ? 8 : 28, g);
	for (int mi = 0; mi < st->nm && !c->serve_unpacked; mi++)
		model_prepack(&st->m[mi]);
	st->w = xmalloc(MAX_THREADS * sizeof(*st->w));
	/* every thread's input is the first model's size or bigger */
	for (int i = 0; i < MAX_THREADS; i++)
		worker_init(&st->w[i],
			    &st->m[st->nm > 1 && st->m[1].in > st->m[0].in], g);
	return st;
}

static void serve_run(void *arg, const struct config *c, int threads)
{
	struct serve *st = arg;

	/* request threads share one pool: its size is the last --threads */
	if (threads != c->threads[c->n_threads - 1])
		return;
	for (int mi = 0; mi < st->nm; mi++)
		for (size_t k = 0; k < ARRAY_SIZE(kinds); k++)
			for (int ti = 0; ti < c->n_serve_threads; ti++)
				serve_case(st, c, &st->m[mi], &kinds[k],
					   c->serve_threads[ti]);
	if (recording && !st->soaked) {
		st->soaked = true;
		for (int mi = 0; mi < st->nm; mi++)
			if (st->m[mi].kind == SERVE_MLP)
				serve_soak(st, c, &st->m[mi]);
	}
}

/*
 * Every request thread's answers must equal one thread's answers to the
 * same inputs: T threads of each kind each serve their own input and
 * compare against the serial forward (or input gradient) computed first.
 */
static void serve_check(void *arg, const struct config *c, int threads,
			struct ag_generator *g)
{
	struct serve *st = arg;
	enum { T = 8 };

	(void)g;
	if (threads != c->threads[c->n_threads - 1])
		return;
	for (int mi = 0; mi < st->nm; mi++) {
		const struct model *m = &st->m[mi];

		for (size_t ki = 0; ki < ARRAY_SIZE(kinds); ki++) {
			const struct kind *k = &kinds[ki];
			size_t n = (size_t)(k->mode == MODE_INFER ?
						    k->b * 10 :
						    k->b * m->in);
			float *want[T];
			double worst = 0;
			struct hist *h = calloc(1, sizeof(*h));

			if (!h)
				die("out of memory");
			for (int i = 0; i < T; i++) {
				struct worker *w = &st->w[i];

				want[i] = xmalloc(n * sizeof(float));
				if (serve_request(m, k->mode, k->b, w->in,
						  w->targets[ki], want[i]))
					die("serve: %s", ag_errmsg());
			}
			run_case(st, m, k, T, 3, 0, NULL, h);
			for (int i = 0; i < T; i++) {
				int64_t where;
				double *got = xmalloc(n * sizeof(double));
				double *ref = xmalloc(n * sizeof(double));
				double r;

				for (size_t j = 0; j < n; j++) {
					got[j] = st->w[i].out[j];
					ref[j] = want[i][j];
				}
				r = worst_ratio(got, ref, (int64_t)n, 1e-4,
						1e-6, &where);
				worst = r > worst ? r : worst;
				free(got);
				free(ref);
				free(want[i]);
			}
			check_report(
				worst <= 1,
				"serve %s B=%lld %s: %d request threads answer as one thread does (worst error %.3g of tolerance)",
				m->name, (long long)k->b,
				k->mode == MODE_INFER ? "infer" : "grad", T,
				worst);
			free(h);
		}
	}
}

static void serve_free(void *arg)
{
	struct serve *st = arg;

	for (int i = 0; i < MAX_THREADS; i++)
		worker_free(&st->w[i]);
	free(st->w);
	for (int mi = 0; mi < st->nm; mi++)
		model_free(&st->m[mi]);
	if (ag_gate_free(st->gate))
		die("serve: %s", ag_errmsg());
	free(st);
}

const struct workload wl_serve = {
	.name = "serve",
	.description =
		"T request threads on a shared mlp / cnn: batch 1 and 32 inference, batch 1 input gradients",
	.needs_libag = true,
	.only_by_name = true, /* minutes per run */
	.setup = serve_setup,
	.check = serve_check,
	.run = serve_run,
	.free = serve_free,
};
