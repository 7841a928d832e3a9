// SPDX-License-Identifier: MIT
/*
 * Post-accumulate-grad hooks and ag_queue_callback(): what data-parallel
 * training builds on (issue 17).  Run on 1 and 4 pool threads.
 */
#include <stdatomic.h>

#include <ag/pool.h>

#include "common.h"

#define NLEAF 16
#define LEN 8

/* x[k] (NLEAF leaves of LEN elements); loss = sum_k sum((k+1) * x[k]^2) */
struct net {
	struct ag_tensor *x[NLEAF];
	struct ag_tensor *loss;
};

static void net_build(struct net *n)
{
	int64_t len = LEN;

	n->loss = NULL;
	for (int k = 0; k < NLEAF; k++) {
		double v[LEN];
		struct ag_tensor *sq, *ss, *s, *l;

		for (int i = 0; i < LEN; i++)
			v[i] = 0.25 * (i + 1) - 0.1 * k;
		n->x[k] = ag_from_data(AG_F64, 1, &len, v);
		cr_assert(n->x[k]);
		cr_assert_eq(ag_tensor_set_requires_grad(n->x[k], true), 0);
		sq = ag_mul(n->x[k], n->x[k]);
		ss = ag_sum(sq);
		s = ag_mul_scalar(ss, k + 1);
		l = n->loss ? ag_add(n->loss, s) : ag_tensor_get(s);
		cr_assert(l, "%s", ag_errmsg());
		ag_tensor_put(n->loss);
		n->loss = l;
		ag_tensor_put(sq);
		ag_tensor_put(ss);
		ag_tensor_put(s);
	}
}

static void net_free(struct net *n)
{
	for (int k = 0; k < NLEAF; k++)
		ag_tensor_put(n->x[k]);
	ag_tensor_put(n->loss);
}

/* d loss / d x[k][i] = 2 (k+1) x[k][i], times `times` backward calls */
static double want_grad(int k, int i, int times)
{
	return times * 2.0 * (k + 1) * (0.25 * (i + 1) - 0.1 * k);
}

struct seen {
	atomic_int hooks;
	atomic_int order; /* hooks seen when the callback ran */
	double copy[NLEAF][LEN]; /* .grad as each hook saw it */
	atomic_int callbacks;
	atomic_bool queued;
	int fail_at; /* leaf whose hook fails; -1: none */
};

struct leaf_arg {
	struct seen *s;
	int k;
};

static int check_in_callback(void *arg)
{
	struct seen *s = arg;

	atomic_fetch_add(&s->callbacks, 1);
	atomic_store(&s->order, atomic_load(&s->hooks));
	return 0;
}

static int post_hook(struct ag_tensor *grad, void *arg)
{
	struct leaf_arg *a = arg;
	struct seen *s = a->s;

	if (a->k == s->fail_at)
		return ag_set_error(AG_EIO, "leaf %d: simulated failure", a->k);
	for (int i = 0; i < LEN; i++)
		s->copy[a->k][i] = ag__get(grad, i);
	if (!atomic_exchange(&s->queued, true) &&
	    ag_queue_callback(check_in_callback, s))
		return -ag_errcode();
	atomic_fetch_add(&s->hooks, 1);
	return 0;
}

/* post_hook on every leaf of n, args[k] telling it s and k; h gets them */
static void hook_leaves(struct net *n, struct seen *s,
			struct leaf_arg args[NLEAF], struct ag_hook *h[NLEAF])
{
	for (int k = 0; k < NLEAF; k++) {
		args[k] = (struct leaf_arg){ s, k };
		h[k] = ag_tensor_register_post_accumulate_grad_hook(
			n->x[k], post_hook, &args[k]);
		cr_assert(h[k], "%s", ag_errmsg());
	}
}

/* Removes the hooks, frees n, and checks nothing is left. */
static void unhook_leaves(struct net *n, struct ag_hook *h[NLEAF])
{
	for (int k = 0; k < NLEAF; k++)
		ag_hook_remove(h[k]);
	net_free(n);
	cr_assert_eq(ag_set_num_threads(1), 0);
	AG_ASSERT_NO_LEAKS();
}

static void run_post_hooks(int threads)
{
	struct leaf_arg args[NLEAF];
	struct ag_hook *h[NLEAF];
	struct seen s = { .fail_at = -1 };
	struct net n;

	cr_assert_eq(ag_set_num_threads(threads), 0);
	net_build(&n);
	hook_leaves(&n, &s, args, h);
	for (int round = 1; round <= 3; round++) {
		struct ag_backward_opts keep = { .retain_graph = true };

		atomic_store(&s.hooks, 0);
		atomic_store(&s.queued, false);
		cr_assert_eq(ag_backward(n.loss, NULL, &keep), 0, "%s",
			     ag_errmsg());
		cr_assert_eq(atomic_load(&s.hooks), NLEAF);
		/* the callback ran once, after every hook, before return */
		cr_assert_eq(atomic_load(&s.callbacks), round);
		cr_assert_eq(atomic_load(&s.order), NLEAF);
		/* each hook saw the accumulated .grad, rounds summed */
		for (int k = 0; k < NLEAF; k++)
			for (int i = 0; i < LEN; i++)
				cr_assert_float_eq(s.copy[k][i],
						   want_grad(k, i, round),
						   1e-12, "leaf %d elem %d", k,
						   i);
	}
	unhook_leaves(&n, h);
}

Test(callbacks, post_hooks_see_accumulated_grad_1_thread)
{
	run_post_hooks(1);
}

Test(callbacks, post_hooks_see_accumulated_grad_4_threads)
{
	run_post_hooks(4);
}

static void run_failing_hook(int threads)
{
	struct leaf_arg args[NLEAF];
	struct ag_hook *h[NLEAF];
	struct seen s = { .fail_at = 5 };
	struct net n;

	cr_assert_eq(ag_set_num_threads(threads), 0);
	net_build(&n);
	hook_leaves(&n, &s, args, h);
	ag_clear_error();
	cr_assert_eq(ag_backward(n.loss, NULL, NULL), -AG_EIO);
	AG_ASSERT_ERR(
		AG_EIO,
		"a post-accumulate-grad hook on AccumulateGrad failed: leaf 5: simulated failure");
	/* a failed backward runs no callback */
	cr_assert_eq(atomic_load(&s.callbacks), 0);
	unhook_leaves(&n, h);
}

Test(callbacks, failing_post_hook_fails_backward_1_thread)
{
	run_failing_hook(1);
}

Test(callbacks, failing_post_hook_fails_backward_4_threads)
{
	run_failing_hook(4);
}

static int count_hook(struct ag_tensor *grad, void *arg)
{
	(void)grad;
	(*(int *)arg)++;
	return 0;
}

Test(callbacks, removed_post_hook_does_not_run)
{
	int64_t n = 3;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *loss;
	struct ag_hook *h;
	int calls = 0;

	ag_tensor_set_requires_grad(x, true);
	h = ag_tensor_register_post_accumulate_grad_hook(x, count_hook, &calls);
	loss = ag_sum(x);
	cr_assert_eq(
		ag_backward(loss, NULL,
			    &(struct ag_backward_opts){ .retain_graph = true }),
		0);
	cr_assert_eq(calls, 1);
	ag_hook_remove(h);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0);
	cr_assert_eq(calls, 1);
	ag_tensor_put(loss);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(callbacks, ag_grad_runs_no_post_hook)
{
	int64_t n = 3;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *loss, *g = NULL;
	struct ag_hook *h;
	int calls = 0;

	ag_tensor_set_requires_grad(x, true);
	h = ag_tensor_register_post_accumulate_grad_hook(x, count_hook, &calls);
	loss = ag_sum(x);
	cr_assert_eq(ag_grad(&loss, NULL, 1, &x, 1, &g, NULL), 0);
	cr_assert_eq(calls, 0);
	ag_tensor_put(g);
	ag_hook_remove(h);
	ag_tensor_put(loss);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(callbacks, registration_errors)
{
	int64_t n = 3;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *y;
	int calls = 0;

	cr_assert_null(ag_tensor_register_post_accumulate_grad_hook(
		x, count_hook, &calls));
	AG_ASSERT_ERR(AG_EINVAL, "doesn't require gradient");
	ag_tensor_set_requires_grad(x, true);
	y = ag_mul_scalar(x, 2);
	cr_assert_null(ag_tensor_register_post_accumulate_grad_hook(
		y, count_hook, &calls));
	AG_ASSERT_ERR(AG_EINVAL, "non-leaf");
	cr_assert_null(
		ag_tensor_register_post_accumulate_grad_hook(x, NULL, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "fn is NULL");
	cr_assert_null(ag_tensor_register_post_accumulate_grad_hook(
		NULL, count_hook, &calls));
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

static int noop_cb(void *arg)
{
	(void)arg;
	return 0;
}

Test(callbacks, queue_outside_a_backward_fails)
{
	cr_assert_eq(ag_queue_callback(noop_cb, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "no backward is running");
	cr_assert_eq(ag_queue_callback(NULL, NULL), -AG_EINVAL);
}

/* log of what ran, in order */
struct trail {
	char s[16];
	int n;
	int fail; /* the callback 'c' fails */
};

static int cb_b(void *arg)
{
	struct trail *t = arg;

	t->s[t->n++] = 'b';
	return 0;
}

static int cb_c(void *arg)
{
	struct trail *t = arg;

	t->s[t->n++] = 'c';
	if (t->fail)
		return ag_set_error(AG_EBUSY, "c gave up");
	return 0;
}

static int cb_a(void *arg)
{
	struct trail *t = arg;

	t->s[t->n++] = 'a';
	/* queued from a callback: runs after b */
	return ag_queue_callback(cb_c, t);
}

static struct ag_tensor *queue_hook(struct ag_tensor *g, void *arg)
{
	struct trail *t = arg;

	(void)g;
	t->s[t->n++] = 'h';
	/* a failure to queue sets an error: NULL then fails the backward */
	if (!ag_queue_callback(cb_a, t))
		ag_queue_callback(cb_b, t);
	return NULL;
}

static void run_trail(struct trail *t, int want_rc)
{
	int64_t n = 2;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *y, *loss;
	struct ag_hook *h;

	ag_tensor_set_requires_grad(x, true);
	y = ag_mul_scalar(x, 3);
	h = ag_tensor_register_hook(y, queue_hook, t);
	loss = ag_sum(y);
	ag_clear_error();
	cr_assert_eq(ag_backward(loss, NULL, NULL), want_rc, "%s", ag_errmsg());
	/* outside the backward again */
	if (!want_rc)
		cr_assert_eq(ag_queue_callback(noop_cb, NULL), -AG_EINVAL);
	ag_hook_remove(h);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(callbacks, callbacks_run_in_order_and_may_queue_more)
{
	struct trail t = { 0 };

	run_trail(&t, 0);
	cr_assert_str_eq(t.s, "habc");
}

Test(callbacks, failing_callback_fails_backward)
{
	struct trail t = { .fail = 1 };

	run_trail(&t, -AG_EBUSY);
	cr_assert_str_eq(t.s, "habc");
	AG_ASSERT_ERR(AG_EBUSY, "a backward callback failed: c gave up");
}

Test(callbacks, set_grad_then_backward_accumulates_into_it)
{
	int64_t n = 3, m = 2;
	double v[3] = { 1, 2, 3 };
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *g, *bad, *y, *loss, *got;

	ag_tensor_set_requires_grad(x, true);
	g = ag_from_data(AG_F64, 1, &n, v);
	bad = ag_ones(AG_F64, 1, &m);
	cr_assert_eq(ag_tensor_set_grad(x, bad), -AG_ESHAPE);
	AG_ASSERT_ERR(AG_ESHAPE, "ag_tensor_set_grad");
	cr_assert_eq(ag_tensor_set_grad(x, g), 0);
	y = ag_mul_scalar(x, 2);
	loss = ag_sum(y);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	got = ag_tensor_grad(x);
	for (int i = 0; i < 3; i++)
		cr_assert_float_eq(ag__get(got, i), v[i] + 2, 1e-15);
	ag_tensor_put(got);
	cr_assert_eq(ag_tensor_set_grad(x, NULL), 0);
	cr_assert_null(ag_tensor_grad(x));
	ag_tensor_put(bad);
	ag_tensor_put(g);
	ag_tensor_put(y);
	ag_tensor_put(loss);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/*
 * A leaf with a post-accumulate hook is accumulated as soon as its
 * gradient is ready, not after the chain that continues on the same
 * thread: what lets a data-parallel all-reduce overlap the backward.
 */
static int mark_post(struct ag_tensor *grad, void *arg)
{
	(void)grad;
	*(int *)arg = 1;
	return 0;
}

static struct ag_tensor *check_post_ran(struct ag_tensor *g, void *arg)
{
	(void)g;
	*(int *)arg += 10;
	return NULL;
}

Test(callbacks, post_hooked_leaf_runs_before_the_rest_of_the_chain)
{
	int64_t n = 4;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n);
	struct ag_tensor *w = ag_ones(AG_F64, 1, &n);
	struct ag_tensor *h1, *h2, *h3, *y, *loss;
	struct ag_hook *ph, *th;
	int flag = 0;

	cr_assert_eq(ag_set_num_threads(1), 0);
	ag_tensor_set_requires_grad(x, true);
	ag_tensor_set_requires_grad(w, true);
	h1 = ag_tanh(x);
	h2 = ag_tanh(h1);
	h3 = ag_tanh(h2);
	y = ag_mul(h3, w); /* the chain is the first edge, w's the second */
	loss = ag_sum(y);
	ph = ag_tensor_register_post_accumulate_grad_hook(w, mark_post, &flag);
	th = ag_tensor_register_hook(h1, check_post_ran, &flag);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	/* 11: w's post hook ran, then the hook deep in the chain */
	cr_assert_eq(flag, 11, "flag %d", flag);
	ag_hook_remove(ph);
	ag_hook_remove(th);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(h3);
	ag_tensor_put(h2);
	ag_tensor_put(h1);
	ag_tensor_put(w);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

static int silent_failure(void *arg)
{
	(void)arg;
	return 1; /* forgot to say why */
}

static struct ag_tensor *queue_silent(struct ag_tensor *g, void *arg)
{
	(void)g;
	ag_queue_callback(arg ? silent_failure : noop_cb, NULL);
	return NULL;
}

/* An error set before the backward is neither cleared nor taken as a
 * callback's own. */
Test(callbacks, stale_error_is_not_a_callbacks)
{
	for (int fail = 0; fail < 2; fail++) {
		int64_t n = 2;
		struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *y, *loss;
		struct ag_hook *h;
		int rc;

		ag_tensor_set_requires_grad(x, true);
		y = ag_mul_scalar(x, 3);
		h = ag_tensor_register_hook(y, queue_silent,
					    fail ? (void *)1 : NULL);
		loss = ag_sum(y);
		ag_set_error(AG_EIO, "stale");
		rc = ag_backward(loss, NULL, NULL);
		if (fail) {
			cr_assert_eq(rc, -AG_EINVAL);
			AG_ASSERT_ERR(
				AG_EINVAL,
				"a backward callback failed: returned non-zero with no error set");
		} else {
			cr_assert_eq(rc, 0, "%s", ag_errmsg());
			/* like errno: a success leaves the error alone */
			AG_ASSERT_ERR(AG_EIO, "stale");
		}
		ag_hook_remove(h);
		ag_tensor_put(loss);
		ag_tensor_put(y);
		ag_tensor_put(x);
	}
	ag_clear_error();
	AG_ASSERT_NO_LEAKS();
}
