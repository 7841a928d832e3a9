// SPDX-License-Identifier: MIT
/* Tensor hooks, retain_grad and .grad accumulation. */
#include <stdatomic.h>
#include <unistd.h>

#include <ag/pool.h>

#include "common.h"
#include "pool/pool.h"
#include "torch_refs.h"

static struct ag_tensor *leaf_of(const double *v, int64_t n)
{
	struct ag_tensor *t = ag_from_data(AG_F64, 1, &n, v);

	cr_assert(t);
	cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

static void assert_values(struct ag_tensor *t, const double *want, int64_t n,
			  double tol)
{
	cr_assert(t, "no tensor");
	cr_assert_eq(ag_tensor_numel(t), n);
	for (int64_t i = 0; i < n; i++)
		cr_assert(fabs(ag__get(t, i) - want[i]) <=
				  tol * (1 + fabs(want[i])),
			  "element %lld: %.17g, want %.17g", (long long)i,
			  ag__get(t, i), want[i]);
}

struct calls {
	int n;
	double scale;
};

static struct ag_tensor *scale_hook(struct ag_tensor *g, void *arg)
{
	struct calls *c = arg;

	c->n++;
	return ag_mul_scalar(g, c->scale);
}

static struct ag_tensor *keep_hook(struct ag_tensor *g, void *arg)
{
	struct calls *c = arg;

	(void)g;
	c->n++;
	return NULL;
}

/* y = tanh(x) * 3; loss = sum(y * y), as in gen_refs.py */
static struct ag_tensor *forward(struct ag_tensor *x, struct ag_tensor **yp)
{
	struct ag_tensor *t = ag_tanh(x);
	struct ag_tensor *y = ag_mul_scalar(t, 3);
	struct ag_tensor *yy = ag_mul(y, y);
	struct ag_tensor *loss = ag_sum(yy);

	ag_tensor_put(t);
	ag_tensor_put(yy);
	*yp = y;
	return loss;
}

Test(hooks, nonleaf_hook_doubles_and_retain_grad)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g;
	struct calls c = { 0, 2.0 };
	struct ag_hook *h;

	loss = forward(x, &y);
	h = ag_tensor_register_hook(y, scale_hook, &c);
	cr_assert(h, "%s", ag_errmsg());
	/* retain_grad registered after the hook sees the doubled gradient */
	cr_assert_eq(ag_tensor_retain_grad(y), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(c.n, 1);
	g = ag_tensor_grad(x);
	assert_values(g, REF_NONLEAF_HOOK_XGRAD, 4, 1e-12);
	ag_tensor_put(g);
	g = ag_tensor_grad(y);
	assert_values(g, REF_NONLEAF_HOOK_YGRAD, 4, 1e-12);
	ag_tensor_put(g);
	ag_hook_remove(h);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, leaf_hook_runs_before_accumulation)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g;
	struct calls c = { 0, 2.0 };
	struct ag_hook *h = ag_tensor_register_hook(x, scale_hook, &c);

	cr_assert(h, "%s", ag_errmsg());
	loss = forward(x, &y);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(c.n, 1);
	g = ag_tensor_grad(x);
	assert_values(g, REF_LEAF_HOOK_XGRAD, 4, 1e-12);
	ag_tensor_put(g);
	/* retain_grad on a leaf is a no-op; its .grad is there anyway */
	cr_assert_eq(ag_tensor_retain_grad(x), 0);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	/* the leaf's hook outlives the graph: remove after it is gone */
	ag_hook_remove(h);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, null_return_keeps_gradient)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g;
	struct calls c = { 0, 0 };
	struct ag_hook *h = ag_tensor_register_hook(x, keep_hook, &c);
	struct ag_hook *h2;

	loss = forward(x, &y);
	h2 = ag_tensor_register_hook(y, keep_hook, &c);
	cr_assert(h && h2);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(c.n, 2);
	g = ag_tensor_grad(x);
	/* the plain gradient: half the doubled one */
	for (int i = 0; i < 4; i++)
		cr_assert_float_eq(ag__get(g, i), REF_LEAF_HOOK_XGRAD[i] / 2,
				   1e-12);
	ag_tensor_put(g);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	/* both graphs gone: removing is still safe and frees the handles */
	ag_hook_remove(h2);
	ag_hook_remove(h);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, removed_hook_does_not_run)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g;
	struct calls c = { 0, 100.0 }, c2 = { 0, 2.0 };
	struct ag_hook *h, *h2;

	loss = forward(x, &y);
	h = ag_tensor_register_hook(y, scale_hook, &c);
	h2 = ag_tensor_register_hook(x, scale_hook, &c2);
	cr_assert(h && h2);
	ag_hook_remove(h);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(c.n, 0);
	cr_assert_eq(c2.n, 1);
	g = ag_tensor_grad(x);
	assert_values(g, REF_LEAF_HOOK_XGRAD, 4, 1e-12);
	ag_tensor_put(g);
	ag_hook_remove(h2);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

struct self_remove {
	struct ag_hook *h;
	int n;
};

static struct ag_tensor *remove_self_hook(struct ag_tensor *g, void *arg)
{
	struct self_remove *s = arg;

	(void)g;
	s->n++;
	ag_hook_remove(s->h); /* while the backward runs, under the lock */
	s->h = NULL;
	return NULL;
}

Test(hooks, remove_from_inside_a_hook)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss;
	struct ag_backward_opts keep = { .retain_graph = true };
	struct self_remove s = { NULL, 0 };

	loss = forward(x, &y);
	s.h = ag_tensor_register_hook(y, remove_self_hook, &s);
	cr_assert(s.h);
	cr_assert_eq(ag_backward(loss, NULL, &keep), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(s.n, 1, "the hook ran %d times", s.n);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, grad_accumulates_and_zero_grad_drops_it)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g;
	struct ag_backward_opts keep = { .retain_graph = true };

	loss = forward(x, &y);
	cr_assert_eq(ag_tensor_retain_grad(y), 0);
	cr_assert_eq(ag_tensor_retain_grad(y), 0); /* twice: one hook */
	cr_assert_eq(ag_backward(loss, NULL, &keep), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	assert_values(g, REF_TWICE_XGRAD, 4, 1e-12);
	ag_tensor_put(g);
	g = ag_tensor_grad(y);
	assert_values(g, REF_TWICE_YGRAD, 4, 1e-12);
	ag_tensor_put(g);
	cr_assert_eq(ag_tensor_zero_grad(x), 0);
	cr_assert_null(ag_tensor_grad(x));
	cr_assert_eq(ag_tensor_zero_grad(y), 0);
	cr_assert_null(ag_tensor_grad(y));
	cr_assert_eq(ag_errcode(), 0);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, retain_grad_with_create_graph_is_differentiable)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g, *s, *gx;
	struct ag_backward_opts cg = { .create_graph = true };

	loss = forward(x, &y);
	cr_assert_eq(ag_tensor_retain_grad(y), 0);
	cr_assert_eq(ag_backward(loss, NULL, &cg), 0, "%s", ag_errmsg());
	/* dloss/dy = 2y: its gradient w.r.t. x is 2 * dy/dx = 6 (1 - t^2) */
	g = ag_tensor_grad(y);
	cr_assert(ag_tensor_requires_grad(g));
	s = ag_sum(g);
	cr_assert_eq(ag_grad(&s, NULL, 1, &x, 1, &gx, NULL), 0, "%s",
		     ag_errmsg());
	for (int i = 0; i < 4; i++) {
		double t = tanh(REF_X[i]);

		cr_assert_float_eq(ag__get(gx, i), 6 * (1 - t * t), 1e-12);
	}
	ag_tensor_put(gx);
	ag_tensor_put(s);
	ag_tensor_put(g);
	ag_tensor_zero_grad(x); /* .grad holds a graph through x's node */
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, errors)
{
	double v[2] = { 1, 2 };
	int64_t n = 2;
	struct ag_tensor *c = ag_from_data(AG_F64, 1, &n, v);
	struct ag_tensor *x = leaf_of(v, 2);
	struct calls k = { 0, 1 };

	cr_assert_null(ag_tensor_register_hook(c, scale_hook, &k));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"cannot register a hook on a tensor that doesn't require gradient");
	cr_assert_eq(ag_tensor_retain_grad(c), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "doesn't require gradient");
	cr_assert_null(ag_tensor_register_hook(x, NULL, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "fn is NULL");
	cr_assert_null(ag_tensor_register_hook(NULL, scale_hook, &k));
	AG_ASSERT_ERR(AG_EINVAL, "t");
	ag_hook_remove(NULL);
	ag_tensor_put(c);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

static struct ag_tensor *bad_shape_hook(struct ag_tensor *g, void *arg)
{
	(void)g;
	(void)arg;
	return ag_sum(g);
}

Test(hooks, hook_returning_a_wrong_shape_fails_backward)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss;
	struct ag_hook *h;

	loss = forward(x, &y);
	h = ag_tensor_register_hook(y, bad_shape_hook, NULL);
	cr_assert_eq(ag_backward(loss, NULL, NULL), -AG_ESHAPE);
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"a tensor hook on MulBackward (gradient slot 0) returned an invalid gradient: got f64 [] but expected f64 [4]");
	ag_hook_remove(h);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

struct seen_grad {
	int n;
	double first;
};

static struct ag_tensor *record_hook(struct ag_tensor *g, void *arg)
{
	struct seen_grad *s = arg;

	s->n++;
	s->first = ag__get(g, 0);
	return NULL;
}

Test(hooks, fan_out_hook_sees_the_summed_gradient_once)
{
	double v[2] = { 1.5, -2 };
	struct ag_tensor *x = leaf_of(v, 2);
	struct ag_tensor *y = ag_mul_scalar(x, 2);
	struct ag_tensor *a = ag_mul_scalar(y, 3), *b = ag_mul(y, y);
	struct ag_tensor *s = ag_add(a, b), *l = ag_sum(s);
	struct seen_grad sy = { 0, 0 }, sx = { 0, 0 };
	struct ag_hook *hy = ag_tensor_register_hook(y, record_hook, &sy);
	struct ag_hook *hx = ag_tensor_register_hook(x, record_hook, &sx);

	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	/* dl/dy = 3 + 2y, y = 3 */
	cr_assert_eq(sy.n, 1);
	cr_assert_float_eq(sy.first, 9.0, 1e-12);
	cr_assert_eq(sx.n, 1);
	cr_assert_float_eq(sx.first, 18.0, 1e-12);
	ag_hook_remove(hy);
	ag_hook_remove(hx);
	ag_tensor_put(l);
	ag_tensor_put(s);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, replacement_is_differentiable_under_create_graph)
{
	double v[2] = { 0.5, -1 };
	struct ag_tensor *x = leaf_of(v, 2), *y, *l, *g, *gs, *gg;
	struct ag_grad_opts cg = { .create_graph = true };
	struct calls c = { 0, 2.0 };
	struct ag_hook *h;

	y = ag_pow_scalar(x, 3);
	l = ag_sum(y);
	h = ag_tensor_register_hook(y, scale_hook, &c);
	/* g = 2 * 3x^2; d(sum g)/dx = 12x */
	cr_assert_eq(ag_grad(&l, NULL, 1, &x, 1, &g, &cg), 0, "%s",
		     ag_errmsg());
	gs = ag_sum(g);
	cr_assert_eq(ag_grad(&gs, NULL, 1, &x, 1, &gg, NULL), 0, "%s",
		     ag_errmsg());
	for (int i = 0; i < 2; i++) {
		cr_assert_float_eq(ag__get(g, i), 6 * v[i] * v[i], 1e-12);
		cr_assert_float_eq(ag__get(gg, i), 12 * v[i], 1e-12);
	}
	ag_hook_remove(h);
	ag_tensor_put(gg);
	ag_tensor_put(gs);
	ag_tensor_put(g);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- a hook that fails (issue 12, item 9) ---- */

#define FK 8

struct fail_ctx {
	int branch; /* the branch this hook hangs on */
	int fail_branch; /* it fails there; -1: on a pool worker only */
	atomic_int *worker_failed;
};

static struct ag_tensor *failing_hook(struct ag_tensor *g, void *arg)
{
	struct fail_ctx *f = arg;

	(void)g;
	if (f->fail_branch >= 0) {
		if (f->branch == f->fail_branch)
			ag_set_error(AG_ENOMEM,
				     "hook %d: out of memory (simulated)",
				     f->branch);
		return NULL;
	}
	if (ag__pool_is_worker()) {
		atomic_store(f->worker_failed, 1);
		ag_set_error(AG_ENOMEM, "hook %d: out of memory (simulated)",
			     f->branch);
		return NULL;
	}
	/*
	 * On the calling thread: hold on until a worker's hook has failed
	 * (the other branches wait on this thread's deque for a thief), so
	 * the error surely comes from a worker.  Bounded: 5 s at most.
	 */
	for (int i = 0; i < 50000 && !atomic_load(f->worker_failed); i++)
		usleep(100);
	return NULL;
}

/*
 * loss = sum_k sum(x * (k + 1)) with a failing hook on each x * (k + 1):
 * backward fails with the hook's code and message, from any thread; x's
 * AccumulateGrad (which waits for every branch) never runs, so x.grad is
 * untouched; nothing leaks; with retain_graph the same graph then runs
 * once the hooks are removed.
 */
static void hook_failure_case(int threads, int fail_branch, bool retain)
{
	struct ag_backward_opts o = { .retain_graph = retain };
	struct ag_tensor *x, *loss = NULL, *g;
	struct ag_hook *h[FK];
	struct fail_ctx fc[FK];
	atomic_int worker_failed = 0;
	int64_t n = 4;
	double want = 0;

	cr_assert_eq(ag_set_num_threads(threads), 0);
	x = ag_ones(AG_F64, 1, &n);
	cr_assert_eq(ag_tensor_set_requires_grad(x, true), 0);
	for (int k = 0; k < FK; k++) {
		struct ag_tensor *y = ag_mul_scalar(x, k + 1), *s = ag_sum(y);

		fc[k] = (struct fail_ctx){ k, fail_branch, &worker_failed };
		h[k] = ag_tensor_register_hook(y, failing_hook, &fc[k]);
		cr_assert(h[k]);
		if (loss) {
			struct ag_tensor *t = ag_add(loss, s);

			ag_tensor_put(loss);
			ag_tensor_put(s);
			loss = t;
		} else {
			loss = s;
		}
		ag_tensor_put(y);
		want += k + 1;
	}
	ag_clear_error();
	cr_assert_eq(ag_backward(loss, NULL, &o), -AG_ENOMEM, "got: %s",
		     ag_errmsg());
	cr_assert(
		strstr(ag_errmsg(),
		       "a tensor hook on MulBackward (gradient slot 0) failed: hook "),
		"message: %s", ag_errmsg());
	AG_ASSERT_ERR(AG_ENOMEM, "out of memory (simulated)");
	if (fail_branch < 0)
		cr_assert(atomic_load(&worker_failed));
	cr_assert_null(ag_tensor_grad(x));
	for (int k = 0; k < FK; k++)
		ag_hook_remove(h[k]);
	if (retain) {
		cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s",
			     ag_errmsg());
		g = ag_tensor_grad(x);
		cr_assert(g);
		for (int i = 0; i < n; i++)
			cr_assert_eq(ag__get(g, i), want);
		ag_tensor_put(g);
	} else {
		/* the nodes that ran (the root at least) freed their buffers */
		cr_assert_eq(ag_backward(loss, NULL, NULL), -AG_EFREED);
		ag_clear_error();
		cr_assert_null(ag_tensor_grad(x));
	}
	ag_tensor_put(loss);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(hooks, failing_hook_fails_backward_1_thread)
{
	hook_failure_case(1, 3, true);
}

Test(hooks, failing_hook_fails_backward_1_thread_graph_freed)
{
	hook_failure_case(1, 0, false);
}

Test(hooks, failing_hook_on_a_worker_fails_backward_4_threads)
{
	hook_failure_case(4, -1, true);
}

Test(hooks, failing_hook_fails_backward_4_threads_graph_freed)
{
	hook_failure_case(4, 5, false);
}

/* Returning NULL with no error of its own keeps the gradient. */
static struct ag_tensor *recovering_hook(struct ag_tensor *g, void *arg)
{
	struct calls *c = arg;

	(void)g;
	c->n++;
	/* a failure the hook handles itself, then clears */
	ag_set_error(AG_ENOMEM, "recovered");
	ag_clear_error();
	return NULL;
}

Test(hooks, null_return_with_no_error_of_its_own_keeps_gradient)
{
	struct ag_tensor *x = leaf_of(REF_X, 4), *y, *loss, *g;
	struct calls c = { 0, 0 };
	struct ag_hook *h, *h2;

	loss = forward(x, &y);
	h = ag_tensor_register_hook(y, recovering_hook, &c);
	h2 = ag_tensor_register_hook(x, keep_hook, &c);
	/* an error from before backward is not the hooks' */
	cr_assert_eq(ag_set_error(-AG_ESHAPE, "stale %d", 7), -AG_ESHAPE);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(c.n, 2);
	g = ag_tensor_grad(x);
	for (int i = 0; i < 4; i++)
		cr_assert_float_eq(ag__get(g, i), REF_LEAF_HOOK_XGRAD[i] / 2,
				   1e-12);
	ag_tensor_put(g);
	ag_hook_remove(h);
	ag_hook_remove(h2);
	ag_tensor_put(loss);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}
