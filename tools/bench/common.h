/* SPDX-License-Identifier: MIT */
/*
 * What ag-bench's workloads share: checked calls, tensors from a
 * generator, the recorded series, the configuration, the gradient-check
 * reports and POSIX threads for the limits.  The machine report (JSON and
 * table) is in report.c.
 */
#ifndef AG_BENCH_COMMON_H
#define AG_BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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

#include "clock.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_THREADS 64

void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
struct ag_tensor *must_check(struct ag_tensor *t, const char *what, int line);
void must_ok_check(int rc, const char *what, int line);

/*
 * must(): a tensor-returning call that must succeed, else ag-bench dies
 * naming the call; must_ok(): the same for an int-returning one.
 */
#define must(x) must_check((x), #x, __LINE__)
#define must_ok(x) must_ok_check((x), #x, __LINE__)

void *xmalloc(size_t n);
int cmp_double(const void *a, const void *b);
double *to_f64(struct ag_tensor *t);
/*
 * Checks backward against a central finite difference at the element of
 * f64 parameter p with the largest gradient (not a dead ReLU); loss(model)
 * recomputes the loss.  what names the model and parameter in the report.
 */
void check_param_fd(const char *what, int threads, int i, struct ag_tensor *p,
		    double (*loss)(void *model), void *model);
struct ag_tensor *uniform(struct ag_generator *g, enum ag_dtype dt, int ndim,
			  const int64_t *shape, double lo, double hi,
			  bool requires_grad);
/*
 * A weight [shape] in wb[0] and its bias [shape[0]] in wb[1], uniform in
 * +-1/sqrt(fan_in) (fan_in: the product of shape[1..]), requiring grad.
 */
void weight_bias(struct ag_tensor **wb, struct ag_generator *g,
		 enum ag_dtype dt, int ndim, const int64_t *shape);
struct ag_tensor *random_targets(struct ag_generator *g, int64_t n,
				 int64_t classes);
void sgd_step(struct ag_tensor **p, int n, double lr);
/*
 * fashion_mnist's cnn on x [B, 1, hw, hw] (wl_cnn, wl_serve): the logits
 * [B, 10] in the caller's scope, NULL with ag_errmsg on error.  p: conv1
 * w b, conv2 w b, batch-norm weight bias, fc1 w b, fc2 w b.
 */
struct ag_tensor *cnn_logits(struct ag_tensor *x, struct ag_tensor *const *p,
			     struct ag_tensor *running_mean,
			     struct ag_tensor *running_var, bool training);
void set_threads(int n);

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

extern struct series *all_series;
extern int n_series;
/* Whether figures are recorded (false during warm-up). */
extern bool recording;
/* This process reports nothing (an MPI rank other than 0). */
extern bool bench_silent;

void record(const char *workload, const char *case_name, int threads,
	    const char *metric, const char *unit, double v);
void series_stats(const struct series *s, double *med, double *mn, double *mx);
double series_median(const char *workload, const char *metric, int threads);
void series_free_all(void);

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
	int64_t cnn_b;
	int cnn_steps; /* steps timed per repetition */
	size_t triad_bytes; /* per array */
	int64_t gemm_n;

	/* serve: request threads, requests per thread (0: by case) */
	int serve_threads[8];
	int n_serve_threads;
	int serve_requests;
	bool serve_soak; /* also RSS after 10^6 requests */
	double serve_seconds; /* no request starts later in a case; 0: none */
	int serve_gate; /* requests running at once, the rest queue; 0: any */
	int serve_quantum_us; /* how long a thread keeps its place at the gate */
	bool serve_unpacked; /* no ag_linear_prepack */
	const char *serve_models; /* "mlp", "cnn" or NULL: both */
};

void config_sizes(struct config *c);

/* ------------------------------------------------------------- checks */

/* Set by the checks; the exit status. */
extern int check_failures;

void check_report(bool ok, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
double worst_ratio(const double *got, const double *want, int64_t n,
		   double rtol, double atol, int64_t *where);

/* ------------------------------------------------------------ threads */

void run_threads(int n, void *(*fn)(void *), void *args, size_t size);

/* ------------------------------------------------------------- report */

#define CPU_PROBE_MAX 64

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

void machine_probe(struct machine *mc);
double load_avg(void);
void cpu_speeds(double *ns, int n);
double cpu_seconds(void);
void write_json(const char *path, const struct machine *mc,
		const struct config *c);
void print_table(const struct machine *mc, const struct config *c);

/* ---------------------------------------------------------- workloads */

/*
 * One workload: setup makes its state from the configuration; check runs
 * it once at tiny sizes (--quick) and reports its gradient checks; run
 * records one repetition's figures; trace (optional) runs it once under
 * ag_trace; free drops the state.  needs_libag: it runs on libag's pool,
 * so at more than one thread only when the build has one.
 */
struct workload {
	const char *name;
	const char *description;
	bool needs_libag;
	bool only_by_name; /* not in the default "every workload" */
	void *(*setup)(const struct config *c, struct ag_generator *g);
	void (*check)(void *st, const struct config *c, int threads,
		      struct ag_generator *g);
	void (*run)(void *st, const struct config *c, int threads);
	void (*trace)(void *st, const char *path);
	void (*free)(void *st);
};

#endif /* AG_BENCH_COMMON_H */
