// SPDX-License-Identifier: MIT
/*
 * The backward of index_select and embedding (index_add) split over pool
 * threads, with many duplicate indices: every element of the weight's
 * gradient must be bitwise the sum a serial loop in index order gives, on
 * 2 and 8 threads; and several threads running backward at once into one
 * shared weight must lose no contribution.
 */
#include <pthread.h>
#include <string.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "tap.h"
#include "internal.h"

enum { V = 13, D = 192, N = 1536, JOBS = 4 };

static uint64_t next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Indices skewed to a few rows (heavy duplicates), and a gradient. */
static void fill(uint64_t seed, int64_t *idx, double *g, bool dyadic)
{
	uint64_t s = seed;

	for (int i = 0; i < N; i++)
		idx[i] = next(&s) % 4 ? (int64_t)(next(&s) % 3) :
					(int64_t)(next(&s) % V);
	for (int i = 0; i < N * D; i++) {
		double u = (double)(next(&s) >> 11) * 0x1p-53 - 0.5;

		/* multiples of 1/64 sum exactly in any order */
		g[i] = dyadic ? (double)(int)(u * 64) / 64 : u;
	}
}

/* The serial sum, in index order. */
static void reference(const int64_t *idx, const double *g, double *ref)
{
	memset(ref, 0, sizeof(double) * V * D);
	for (int i = 0; i < N; i++)
		for (int k = 0; k < D; k++)
			ref[idx[i] * D + k] += g[i * D + k];
}

static int same(struct ag_tensor *t, const double *want)
{
	static double got[V * D];

	if (!t || ag_tensor_copy_to(t, got, sizeof(got)))
		return 0;
	return !memcmp(got, want, sizeof(got));
}

static struct ag_tensor *weight(void)
{
	struct ag_tensor *w = ag_zeros(AG_F64, 2, (const int64_t[]){ V, D });

	ag_tensor_set_requires_grad(w, true);
	return w;
}

/* d(out)/d(w) for out = op(w, idx) with grad_output g, through ag_grad. */
static struct ag_tensor *grad_of(struct ag_tensor *w, bool embedding,
				 const int64_t *iv, const double *gv)
{
	const int64_t n = N, gs[2] = { N, D };
	struct ag_tensor *idx = ag_from_data(AG_I64, 1, &n, iv);
	struct ag_tensor *g = ag_from_data(AG_F64, 2, gs, gv);
	struct ag_tensor *y = embedding ? ag_embedding(w, idx) :
					  ag_index_select(w, 0, idx);
	struct ag_tensor *gw = NULL;

	if (y && ag_grad(&y, &g, 1, &w, 1, &gw, NULL))
		gw = NULL;
	ag_tensor_put(y);
	ag_tensor_put(g);
	ag_tensor_put(idx);
	return gw;
}

static int64_t iv[N];
static double gv[N * D], ref[V * D];

static int exact_on(int threads, bool embedding)
{
	struct ag_tensor *w = weight(), *gw;

	TAP_CHECK(ag_set_num_threads(threads) == 0);
	for (uint64_t seed = 1; seed <= 3; seed++) {
		fill(0x9e3779b97f4a7c15ULL * seed, iv, gv, false);
		reference(iv, gv, ref);
		gw = grad_of(w, embedding, iv, gv);
		TAP_CHECKF(gw, "%s", ag_errmsg());
		TAP_CHECKF(same(gw, ref),
			   "%d threads, seed %d: not the serial sum", threads,
			   (int)seed);
		ag_tensor_put(gw);
	}
	ag_tensor_put(w);
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

static int test_index_select_2_threads(void)
{
	return exact_on(2, false);
}

static int test_index_select_8_threads(void)
{
	return exact_on(8, false);
}

static int test_embedding_2_threads(void)
{
	return exact_on(2, true);
}

static int test_embedding_8_threads(void)
{
	return exact_on(8, true);
}

struct job {
	struct ag_tensor *w;
	int64_t idx[N];
	double g[N * D], ref[V * D];
	int rc;
};

static struct job jobs[JOBS];

/* Its own gradient exactly (ag_grad), then a backward into w's .grad. */
static void *job_run(void *arg)
{
	struct job *j = arg;
	const int64_t n = N, gs[2] = { N, D };
	struct ag_tensor *gw = grad_of(j->w, true, j->idx, j->g);
	struct ag_tensor *idx, *g, *y;

	j->rc = !same(gw, j->ref);
	ag_tensor_put(gw);
	idx = ag_from_data(AG_I64, 1, &n, j->idx);
	g = ag_from_data(AG_F64, 2, gs, j->g);
	y = ag_embedding(j->w, idx);
	if (!y || ag_backward(y, g, NULL))
		j->rc = 2;
	ag_tensor_put(y);
	ag_tensor_put(g);
	ag_tensor_put(idx);
	return NULL;
}

static int test_concurrent_backward_shared_weight(void)
{
	struct ag_tensor *w = weight(), *total;
	pthread_t th[JOBS];

	TAP_CHECK(ag_set_num_threads(8) == 0);
	memset(ref, 0, sizeof(ref));
	for (int t = 0; t < JOBS; t++) {
		jobs[t].w = w;
		fill(0xbf58476d1ce4e5b9ULL * (t + 1), jobs[t].idx, jobs[t].g,
		     true);
		reference(jobs[t].idx, jobs[t].g, jobs[t].ref);
		for (int k = 0; k < V * D; k++)
			ref[k] += jobs[t].ref[k]; /* exact: dyadic */
	}
	for (int t = 0; t < JOBS; t++)
		pthread_create(&th[t], NULL, job_run, &jobs[t]);
	for (int t = 0; t < JOBS; t++)
		pthread_join(th[t], NULL);
	for (int t = 0; t < JOBS; t++) {
		TAP_CHECKF(jobs[t].rc == 0, "job %d: rc %d (%s)", t, jobs[t].rc,
			   ag_errmsg());
	}
	total = ag_tensor_grad(w);
	TAP_CHECK(same(total, ref));
	ag_tensor_put(total);
	ag_tensor_put(w);
	ag_set_num_threads(0);
	TAP_CHECK(ag__live_nodes() == 0 && ag__live_tensors() == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_index_select_2_threads),
	TAP_TEST(test_index_select_8_threads),
	TAP_TEST(test_embedding_2_threads),
	TAP_TEST(test_embedding_8_threads),
	TAP_TEST(test_concurrent_backward_shared_weight),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
