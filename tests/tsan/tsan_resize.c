// SPDX-License-Identifier: MIT
/*
 * ag_set_num_threads() while other threads run backward and nested
 * ag_parallel_for(): it may refuse (AG_EBUSY) but must never hang, and a
 * resize from inside parallel work on the calling thread is refused with
 * AG_EINVAL instead of waiting for itself.  Every wait is bounded by a
 * watchdog, so a deadlock fails the test instead of hanging it.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "tap.h"
#include "watchdog.h"
#include "internal.h"
#include "../pool/util.h"

#define N 64
#define K 6
#define PF 16

/* Counts the innermost chunks' elements, so the work is checked. */
static atomic_long inner_elems;

static void inner_chunk(int64_t b, int64_t e, void *arg)
{
	(void)arg;
	burn(5000);
	atomic_fetch_add(&inner_elems, (long)(e - b));
}

/*
 * Each outer chunk runs a nested ag_parallel_for: the shape of the
 * deadlock, where a worker waits for an outer chunk that the caller took
 * and the caller, inside it, starts the nested call.
 */
static void outer_chunk(int64_t b, int64_t e, void *arg)
{
	(void)arg;
	for (int64_t i = b; i < e; i++)
		ag_parallel_for(PF, 1, inner_chunk, NULL);
}

static int ident_fwd(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, int nout)
{
	(void)ctx;
	(void)nin;
	(void)nout;
	out[0] = ag_mul_scalar(in[0], 1.0);
	return out[0] ? 0 : -ag_errcode();
}

/* The identity, with a nested parallel_for in backward (on a worker). */
static int pf_bwd(struct ag_ctx *ctx, struct ag_tensor *const *g, int nout,
		  struct ag_tensor **gi, int nin)
{
	(void)ctx;
	(void)nout;
	(void)nin;
	ag_parallel_for(PF, 1, outer_chunk, NULL);
	gi[0] = ag_tensor_get(g[0]);
	return 0;
}

static const struct ag_function_ops pf_ident = {
	.name = "ParallelIdentity",
	.forward = ident_fwd,
	.backward = pf_bwd,
};

static struct ag_tensor *leaf(void)
{
	int64_t n = N;
	struct ag_tensor *t = ag_ones(AG_F64, 1, &n);

	ag_tensor_set_requires_grad(t, true);
	return t;
}

/* sum_k sum(f(x)) over K branches: dloss/dx = K everywhere. */
static int backward_once(const struct ag_function_ops *f)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x = leaf(), *loss = NULL, *g;
	int rc = 0;

	for (int k = 0; k < K && !rc; k++) {
		struct ag_tensor *y = NULL;

		rc = ag_function_apply(f, &x, 1, &y, 1, NULL);
		if (!rc)
			loss = loss ? ag_add(loss, ag_sum(y)) : ag_sum(y);
	}
	if (!rc)
		rc = ag_backward(loss, NULL, NULL);
	g = rc ? NULL : ag_tensor_grad(x);
	for (int i = 0; g && i < N; i++)
		if (ag__get(g, i) != K)
			rc = -AG_EINTERNAL;
	ag_scope_end(s);
	return rc;
}

struct job {
	int reps, rc;
	atomic_int *stop;
	int ok, busy; /* resizer: results */
};

static void *backward_loop(void *arg)
{
	struct job *j = arg;

	for (int r = 0; r < j->reps && !j->rc; r++)
		j->rc = backward_once(&pf_ident);
	return NULL;
}

static void *pf_loop(void *arg)
{
	struct job *j = arg;

	for (int r = 0; r < j->reps; r++)
		ag_parallel_for(PF, 1, outer_chunk, NULL);
	return NULL;
}

static void *resize_loop(void *arg)
{
	struct job *j = arg;

	for (int i = 0; !atomic_load(j->stop); i++) {
		int rc = ag_set_num_threads(1 + i % 4);

		if (rc == 0)
			j->ok++;
		else if (rc == -AG_EBUSY && ag_errcode() == AG_EBUSY)
			j->busy++;
		else
			j->rc = rc ? rc : -AG_EINTERNAL;
		burn(2000);
	}
	return NULL;
}

/*
 * Issue 12, item 2: this hung in 3 of 3 runs when the resize held the pool
 * lock while it joined a worker.
 */
static int test_resize_during_backward(void)
{
	enum { B = 2, P = 1 };
	struct job bj[B], pj[P], rj;
	pthread_t bt[B], pt[P], rt;
	atomic_int stop = 0;
	long want;

	watchdog_arm("resize during backward", 60);
	atomic_store(&inner_elems, 0);
	TAP_CHECK(ag_set_num_threads(4) == 0);
	rj = (struct job){ .stop = &stop };
	TAP_CHECK(pthread_create(&rt, NULL, resize_loop, &rj) == 0);
	for (int i = 0; i < B; i++) {
		bj[i] = (struct job){ .reps = SCALE(200) };
		TAP_CHECK(pthread_create(&bt[i], NULL, backward_loop, &bj[i]) ==
			  0);
	}
	for (int i = 0; i < P; i++) {
		pj[i] = (struct job){ .reps = SCALE(1000) };
		TAP_CHECK(pthread_create(&pt[i], NULL, pf_loop, &pj[i]) == 0);
	}
	for (int i = 0; i < B; i++)
		pthread_join(bt[i], NULL);
	for (int i = 0; i < P; i++)
		pthread_join(pt[i], NULL);
	atomic_store(&stop, 1);
	pthread_join(rt, NULL);
	watchdog_disarm();
	printf("# resizes: %d done, %d refused as busy\n", rj.ok, rj.busy);
	for (int i = 0; i < B; i++)
		TAP_CHECKF(bj[i].rc == 0, "backward thread %d: %d", i,
			   bj[i].rc);
	TAP_CHECKF(rj.rc == 0, "resize returned %d: %s", rj.rc, ag_errmsg());
	want = (long)PF * PF * (B * SCALE(200) * K + P * SCALE(1000));
	TAP_CHECK(atomic_load(&inner_elems) == want);
	/* Idle again: a resize succeeds and takes effect. */
	TAP_CHECK(ag_set_num_threads(3) == 0);
	ag_parallel_for(PF, 1, outer_chunk, NULL);
	TAP_CHECK(ag_get_num_threads() == 3);
	TAP_CHECK(ag__live_nodes() == 0);
	TAP_CHECK(ag__live_tensors() == 0);
	return 0;
}

/* ---- busy: another thread is inside ag_parallel_for ---- */

static atomic_int entered, release;

static void blocking_chunk(int64_t b, int64_t e, void *arg)
{
	(void)arg;
	(void)e;
	if (b == 0) {
		atomic_store(&entered, 1);
		while (!atomic_load(&release))
			usleep(1000);
	}
}

static void *blocking_caller(void *arg)
{
	(void)arg;
	ag_parallel_for(4, 1, blocking_chunk, NULL);
	return NULL;
}

static int test_busy_is_reported(void)
{
	pthread_t th;
	int rc;

	watchdog_arm("resize while busy", 60);
	TAP_CHECK(ag_set_num_threads(2) == 0);
	atomic_store(&entered, 0);
	atomic_store(&release, 0);
	TAP_CHECK(pthread_create(&th, NULL, blocking_caller, NULL) == 0);
	while (!atomic_load(&entered))
		usleep(1000);
	ag_clear_error();
	rc = ag_set_num_threads(3);
	atomic_store(&release, 1);
	pthread_join(th, NULL);
	TAP_CHECKF(rc == -AG_EBUSY, "got %d", rc);
	TAP_CHECK(ag_errcode() == AG_EBUSY);
	TAP_CHECKF(strstr(ag_errmsg(), "ag_set_num_threads") &&
			   strstr(ag_errmsg(), "busy"),
		   "message: %s", ag_errmsg());
	TAP_CHECK(!strcmp(ag_strerror(AG_EBUSY), "AG_EBUSY"));
	/* Refused means unchanged. */
	TAP_CHECK(ag_get_num_threads() == 2);
	/* The same size while busy is no change, hence no error. */
	TAP_CHECK(pthread_create(&th, NULL, blocking_caller, NULL) == 0);
	atomic_store(&release, 0);
	while (!atomic_load(&entered))
		usleep(1000);
	rc = ag_set_num_threads(2);
	atomic_store(&release, 1);
	pthread_join(th, NULL);
	TAP_CHECKF(rc == 0, "got %d: %s", rc, ag_errmsg());
	TAP_CHECK(ag_set_num_threads(3) == 0);
	watchdog_disarm();
	return 0;
}

/* ---- from inside parallel work on the calling thread ---- */

static atomic_int inside_rc;

static void resizing_chunk(int64_t b, int64_t e, void *arg)
{
	int rc = ag_set_num_threads(1 + (int)(b % 3));

	(void)e;
	(void)arg;
	if (rc != -AG_EINVAL)
		atomic_store(&inside_rc, rc ? rc : 1);
}

static int resizing_bwd(struct ag_ctx *ctx, struct ag_tensor *const *g,
			int nout, struct ag_tensor **gi, int nin)
{
	int rc = ag_set_num_threads(3);

	(void)ctx;
	(void)nout;
	(void)nin;
	if (rc != -AG_EINVAL)
		atomic_store(&inside_rc, rc ? rc : 1);
	else if (!strstr(ag_errmsg(), "inside"))
		atomic_store(&inside_rc, 2);
	gi[0] = ag_tensor_get(g[0]);
	return 0;
}

static const struct ag_function_ops resizing_ident = {
	.name = "ResizingIdentity",
	.forward = ident_fwd,
	.backward = resizing_bwd,
};

static int test_resize_inside_parallel_work(void)
{
	static const int sizes[] = { 1, 4 };

	watchdog_arm("resize inside parallel work", 60);
	for (int s = 0; s < 2; s++) {
		TAP_CHECK(ag_set_num_threads(sizes[s]) == 0);
		atomic_store(&inside_rc, 0);
		/* custom backward, on the caller or on a worker */
		TAP_CHECK(backward_once(&resizing_ident) == 0);
		TAP_CHECKF(atomic_load(&inside_rc) == 0, "backward: %d",
			   atomic_load(&inside_rc));
		/* parallel_for chunks, the caller's own included */
		TAP_CHECK(ag_parallel_for(64, 1, resizing_chunk, NULL) == 0);
		TAP_CHECKF(atomic_load(&inside_rc) == 0, "chunk: %d",
			   atomic_load(&inside_rc));
		TAP_CHECK(ag_get_num_threads() == sizes[s]);
	}
	watchdog_disarm();
	TAP_CHECK(ag__live_nodes() == 0);
	TAP_CHECK(ag__live_tensors() == 0);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(test_busy_is_reported),
	TAP_TEST(test_resize_inside_parallel_work),
	TAP_TEST(test_resize_during_backward),
	{ 0 },
};

int main(void)
{
	return tap_run(tests);
}
