// SPDX-License-Identifier: MIT
/*
 * Gradient checks: the analytical Jacobian that backward computes against
 * a numerical one from central differences, in f64.
 *
 * The core checks a function of n inputs with one or more outputs.  Column
 * j of the analytical Jacobian comes from ag_grad() with a one-hot
 * grad_output at output element j; row i of the numerical one from
 * perturbing input element i by +-eps in place (through the tensor's
 * strides, so non-contiguous inputs work) and calling the function again.
 * Every output is copied out right after a call: an output may alias an
 * input that the next perturbation changes.
 *
 * ag_gradgradcheck runs the same core on the first derivatives: the
 * function (inputs, v) -> d(sum(f(inputs) * v))/d(inputs), computed with
 * create_graph, with a grad_output v drawn from a fixed seed and itself
 * checked as an input, as torch.autograd.gradgradcheck does.  That alone
 * only shows the second derivatives agree with the first ones as computed
 * under create_graph, which may take another path (ops composed instead of
 * a fused kernel); so it first checks those first derivatives against the
 * numerical ones too.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>
#include <ag/ops.h>

#include "graph.h"

/* Computes the outputs for in[nin]: fills out[] (new references), *nout. */
typedef int (*gc_call_fn)(void *ctx, struct ag_tensor *const *in, int nin,
			  struct ag_tensor **out, int *nout);

struct gc {
	const char *who;
	bool create_graph; /* analytical Jacobians as double backward sees them */
	gc_call_fn call;
	void *ctx;
	int maxout;
	double eps, atol, rtol;
	struct ag_tensor *const *in;
	int nin;
	int nreq;
	int *req; /* indices of the inputs that require grad */
	struct ag_tensor **diff; /* those inputs */
	int nout;
	int64_t *numel; /* per output */
	int64_t *col; /* first Jacobian column of each output */
	int64_t ncols;
	double **ana; /* per required input: numel x ncols, row major */
	double *plus, *minus; /* ncols: outputs at +eps and -eps */
	struct ag_tensor **outs; /* maxout */
	struct ag_tensor **grads; /* nreq */
};

static void put_all(struct ag_tensor **ts, int n)
{
	for (int i = 0; i < n; i++) {
		ag_tensor_put(ts[i]);
		ts[i] = NULL;
	}
}

/* Calls the function with grad mode on; outputs land in gc->outs. */
static int call(struct gc *gc, int *nout)
{
	struct ag_mode prev = ag_enable_grad_enter();
	int rc;

	*nout = 0;
	rc = gc->call(gc->ctx, gc->in, gc->nin, gc->outs, nout);
	ag_mode_exit(prev);
	if (rc) {
		put_all(gc->outs, *nout);
		return rc < 0 ? rc : -AG_EINVAL;
	}
	for (int o = 0; o < *nout; o++) {
		if (!gc->outs[o]) {
			put_all(gc->outs, *nout);
			return ag__err(
				AG_EINVAL,
				"%s: the function returned no tensor for output %d",
				gc->who, o);
		}
		if (gc->outs[o]->dtype != AG_F64) {
			rc = ag__err(
				AG_EDTYPE,
				"%s: output %d is %s; gradient checks need f64 outputs",
				gc->who, o, ag_dtype_name(gc->outs[o]->dtype));
			put_all(gc->outs, *nout);
			return rc;
		}
	}
	return 0;
}

/* Calls the function and copies its outputs into vals[ncols]. */
static int call_values(struct gc *gc, double *vals)
{
	int nout, rc = call(gc, &nout);

	if (rc)
		return rc;
	if (nout != gc->nout)
		rc = ag__err(
			AG_EINVAL,
			"%s: the function returned %d outputs, then %d; it must be deterministic",
			gc->who, gc->nout, nout);
	for (int o = 0; o < nout && !rc; o++) {
		if (gc->outs[o]->numel != gc->numel[o]) {
			rc = ag__err(
				AG_EINVAL,
				"%s: output %d had %lld elements, then %lld; it must be deterministic",
				gc->who, o, (long long)gc->numel[o],
				(long long)gc->outs[o]->numel);
			break;
		}
		for (int64_t j = 0; j < gc->numel[o]; j++)
			vals[gc->col[o] + j] = ag__get(gc->outs[o], j);
	}
	put_all(gc->outs, nout);
	return rc;
}

/* Element i (row-major logical index) of t, found through its strides. */
static double *elem_ptr(struct ag_tensor *t, int64_t i)
{
	int64_t off = 0;

	for (int d = t->ndim - 1; d >= 0; d--) {
		off += i % t->shape[d] * t->strides[d];
		i /= t->shape[d];
	}
	return (double *)ag_tensor_data(t) + off;
}

static int check_inputs(struct gc *gc)
{
	for (int i = 0; i < gc->nin; i++) {
		struct ag_tensor *t = gc->in[i];

		if (!t)
			return ag__err(AG_EINVAL, "%s: input %d is NULL",
				       gc->who, i);
		if (!ag_tensor_requires_grad(t))
			continue;
		if (t->dtype != AG_F64)
			return ag__err(
				AG_EDTYPE,
				"%s: input %d is %s; gradient checks need f64 inputs (finite differences in lower precision are not accurate enough)",
				gc->who, i, ag_dtype_name(t->dtype));
		for (int d = 0; d < t->ndim; d++)
			if (t->strides[d] == 0 && t->shape[d] > 1)
				return ag__err(
					AG_EINVAL,
					"%s: input %d has overlapping memory (stride 0 in dim %d): one perturbation would move several elements; pass a contiguous copy",
					gc->who, i, d);
		gc->req[gc->nreq] = i;
		gc->diff[gc->nreq++] = t;
	}
	if (!gc->nreq)
		return ag__err(AG_EINVAL,
			       "%s: at least one input must require grad",
			       gc->who);
	return 0;
}

/* Fills the analytical Jacobians, one ag_grad per output element. */
static int analytical(struct gc *gc)
{
	struct ag_grad_opts go = { .retain_graph = true,
				   .create_graph = gc->create_graph,
				   .allow_unused = true };
	int nout, rc = call(gc, &nout);

	if (rc)
		return rc;
	gc->nout = nout;
	gc->numel = ag__calloc(nout, sizeof(*gc->numel));
	gc->col = ag__calloc(nout, sizeof(*gc->col));
	if (!gc->numel || !gc->col) {
		rc = -AG_ENOMEM;
		goto out;
	}
	for (int o = 0; o < nout; o++) {
		gc->numel[o] = gc->outs[o]->numel;
		gc->col[o] = gc->ncols;
		gc->ncols += gc->numel[o];
	}
	for (int k = 0; k < gc->nreq; k++) {
		int64_t jac[2] = { gc->diff[k]->numel, gc->ncols }, n;

		/* the Jacobian of input k: numel x ncols doubles */
		rc = ag__shape_size(gc->who, 2, jac, AG_F64, &n, NULL);
		if (rc)
			goto out;
		gc->ana[k] = ag__calloc((size_t)n, sizeof(double));
		if (!gc->ana[k]) {
			rc = -AG_ENOMEM;
			goto out;
		}
	}
	for (int o = 0; o < nout && !rc; o++) {
		struct ag_tensor *y = gc->outs[o];

		if (!ag_tensor_requires_grad(y))
			continue; /* constant output: zero Jacobian */
		for (int64_t j = 0; j < y->numel && !rc; j++) {
			struct ag_tensor *onehot = ag__tensor_new(
				gc->who, AG_F64, y->ndim, y->shape);

			if (!onehot) {
				rc = ag__err_last();
				break;
			}
			memset(ag_tensor_data(onehot), 0,
			       sizeof(double) * y->numel);
			((double *)ag_tensor_data(onehot))[j] = 1.0;
			rc = ag_grad(&y, &onehot, 1, gc->diff, gc->nreq,
				     gc->grads, &go);
			ag_tensor_put(onehot);
			for (int k = 0; k < gc->nreq && !rc; k++) {
				struct ag_tensor *g = gc->grads[k];

				for (int64_t i = 0; g && i < g->numel; i++)
					gc->ana[k][i * gc->ncols + gc->col[o] +
						   j] = ag__get(g, i);
			}
			if (!rc)
				put_all(gc->grads, gc->nreq);
		}
	}
out:
	put_all(gc->outs, nout);
	return rc;
}

static int mismatch(struct gc *gc, int k, int64_t i, int64_t c, double num,
		    double ana)
{
	int o = 0;

	while (o + 1 < gc->nout && gc->col[o + 1] <= c)
		o++;
	return ag__err(
		AG_EINVAL,
		"%s: Jacobian mismatch for output %d with respect to input %d, element %lld: numerical %.10g, analytical %.10g (output element %lld; tolerance atol %g + rtol %g * |numerical|)",
		gc->who, o, gc->req[k], (long long)i, num, ana,
		(long long)(c - gc->col[o]), gc->atol, gc->rtol);
}

/* Central differences, compared row by row with the analytical Jacobian. */
static int numerical(struct gc *gc)
{
	for (int k = 0; k < gc->nreq; k++) {
		struct ag_tensor *t = gc->diff[k];

		for (int64_t i = 0; i < t->numel; i++) {
			double *p = elem_ptr(t, i), orig = *p;
			const double *a = gc->ana[k] + i * gc->ncols;
			int rc;

			*p = orig + gc->eps;
			rc = call_values(gc, gc->plus);
			if (!rc) {
				*p = orig - gc->eps;
				rc = call_values(gc, gc->minus);
			}
			*p = orig;
			if (rc)
				return rc;
			for (int64_t c = 0; c < gc->ncols; c++) {
				double n = (gc->plus[c] - gc->minus[c]) /
					   (2 * gc->eps);

				if (!(fabs(a[c] - n) <=
				      gc->atol + gc->rtol * fabs(n)))
					return mismatch(gc, k, i, c, n, a[c]);
			}
		}
	}
	return 0;
}

static int run_check(const char *who, bool create_graph, gc_call_fn fn,
		     void *ctx, int maxout, struct ag_tensor *const *in,
		     int nin, const struct ag_gradcheck_opts *o)
{
	struct gc gc = {
		.who = who,
		.create_graph = create_graph,
		.call = fn,
		.ctx = ctx,
		.maxout = maxout,
		.eps = o ? o->eps : 1e-6,
		.atol = o ? o->atol : 1e-5,
		.rtol = o ? o->rtol : 1e-3,
		.in = in,
		.nin = nin,
	};
	struct ag_scope *scope;
	int rc;

	if (!(gc.eps > 0) || !isfinite(gc.eps) || !(gc.atol >= 0) ||
	    !(gc.rtol >= 0))
		return ag__err(
			AG_EINVAL,
			"%s: need eps > 0, atol >= 0 and rtol >= 0 (got %g, %g, %g)",
			who, gc.eps, gc.atol, gc.rtol);
	gc.req = ag__calloc(nin, sizeof(*gc.req));
	gc.diff = ag__calloc(nin, sizeof(*gc.diff));
	gc.ana = ag__calloc(nin, sizeof(*gc.ana));
	gc.grads = ag__calloc(nin, sizeof(*gc.grads));
	gc.outs = ag__calloc(maxout, sizeof(*gc.outs));
	if (!gc.req || !gc.diff || !gc.ana || !gc.grads || !gc.outs) {
		rc = -AG_ENOMEM;
		goto out;
	}
	/* our temporaries stay out of the caller's scope */
	scope = ag__scope_suspend();
	rc = check_inputs(&gc);
	if (!rc)
		rc = analytical(&gc);
	if (!rc) {
		gc.plus = ag__calloc((size_t)gc.ncols, sizeof(double));
		gc.minus = ag__calloc((size_t)gc.ncols, sizeof(double));
		rc = gc.plus && gc.minus ? numerical(&gc) : -AG_ENOMEM;
	}
	ag__scope_resume(scope);
out:
	for (int k = 0; gc.ana && k < nin; k++)
		ag__mfree(gc.ana[k]);
	ag__mfree(gc.ana);
	ag__mfree(gc.req);
	ag__mfree(gc.diff);
	ag__mfree(gc.grads);
	ag__mfree(gc.outs);
	ag__mfree(gc.numel);
	ag__mfree(gc.col);
	ag__mfree(gc.plus);
	ag__mfree(gc.minus);
	return rc;
}

struct user_fn {
	ag_fn f;
	void *arg;
	int nin; /* the user's inputs; gradgradcheck adds v after them */
};

static int user_call(void *ctx, struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, int *nout)
{
	struct user_fn *u = ctx;
	int rc;

	(void)nin;
	out[0] = NULL;
	rc = u->f(in, u->nin, &out[0], u->arg);
	if (!rc && !out[0])
		rc = ag__err(
			AG_EINVAL,
			"ag_gradcheck: the function returned 0 but no output");
	if (rc) {
		ag_tensor_put(out[0]);
		out[0] = NULL;
		return rc < 0 ? rc : -rc;
	}
	*nout = 1;
	return 0;
}

static int check_args(const char *who, ag_fn f, struct ag_tensor *const *in,
		      int nin)
{
	if (!f)
		return ag__err(AG_EINVAL, "%s: f is NULL", who);
	if (!in || nin <= 0)
		return ag__err(AG_EINVAL,
			       "%s: need at least one input (got %d)", who,
			       in ? nin : 0);
	return 0;
}

int ag_gradcheck(ag_fn f, void *arg, struct ag_tensor *const *in, int nin,
		 const struct ag_gradcheck_opts *o)
{
	struct user_fn u = { f, arg, nin };
	int rc = check_args("ag_gradcheck", f, in, nin);

	if (rc)
		return rc;
	return run_check("ag_gradcheck", false, user_call, &u, 1, in, nin, o);
}

/* (inputs..., v) -> the non-NULL d(sum(f(inputs) * v))/d(inputs). */
static int grad_call(void *ctx, struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, int *nout)
{
	struct ag_grad_opts go = { .create_graph = true, .allow_unused = true };
	struct user_fn *u = ctx;
	struct ag_tensor *y = NULL, *v = in[u->nin];
	struct ag_tensor **diff = ag__calloc(u->nin, sizeof(*diff));
	int nd = 0, rc;

	(void)nin;
	*nout = 0;
	if (!diff)
		return -AG_ENOMEM;
	rc = user_call(u, in, u->nin, &y, nout);
	*nout = 0;
	if (rc) {
		ag__mfree(diff);
		return rc;
	}
	for (int i = 0; i < u->nin; i++)
		if (ag_tensor_requires_grad(in[i]))
			diff[nd++] = in[i];
	rc = ag_grad(&y, &v, 1, diff, nd, out, &go);
	ag_tensor_put(y);
	ag__mfree(diff);
	if (rc)
		return rc;
	for (int i = 0; i < nd; i++)
		if (out[i])
			out[(*nout)++] = out[i];
	for (int i = *nout; i < nd; i++)
		out[i] = NULL;
	return 0;
}

/* A grad_output like torch's: uniform in [-1, 1), from a fixed seed. */
static struct ag_tensor *random_grad_output(const struct ag_tensor *y)
{
	struct ag_generator *g = ag_generator_new(0x67726164ULL);
	struct ag_tensor *v = NULL;

	if (!g)
		return NULL;
	v = ag_rand(g, AG_F64, y->ndim, y->shape);
	ag_generator_free(g);
	if (!v)
		return NULL;
	for (int64_t i = 0; i < v->numel; i++) {
		double *p = (double *)ag_tensor_data(v) + i;

		*p = 2 * *p - 1;
	}
	if (ag_tensor_set_requires_grad(v, true)) {
		ag_tensor_put(v);
		return NULL;
	}
	return v;
}

int ag_gradgradcheck(ag_fn f, void *arg, struct ag_tensor *const *in, int nin,
		     const struct ag_gradcheck_opts *o)
{
	const char *who = "ag_gradgradcheck";
	struct user_fn u = { f, arg, nin };
	struct ag_tensor **all = NULL, *y = NULL, *v = NULL;
	struct ag_scope *scope;
	struct ag_mode prev;
	int nout = 0, nreq = 0, rc = check_args(who, f, in, nin);

	if (rc)
		return rc;
	for (int i = 0; i < nin; i++) {
		if (!in[i])
			return ag__err(AG_EINVAL, "%s: input %d is NULL", who,
				       i);
		nreq += ag_tensor_requires_grad(in[i]);
	}
	if (!nreq)
		return ag__err(AG_EINVAL,
			       "%s: at least one input must require grad", who);
	scope = ag__scope_suspend();
	prev = ag_enable_grad_enter();
	rc = user_call(&u, in, nin, &y, &nout);
	ag_mode_exit(prev);
	if (!rc && y->dtype != AG_F64)
		rc = ag__err(
			AG_EDTYPE,
			"%s: the output is %s; gradient checks need f64 outputs",
			who, ag_dtype_name(y->dtype));
	if (!rc) {
		v = random_grad_output(y);
		all = ag__calloc(nin + 1, sizeof(*all));
		if (!v || !all)
			rc = ag__err_last();
	}
	ag_tensor_put(y);
	ag__scope_resume(scope);
	if (!rc)
		rc = run_check(who, true, user_call, &u, 1, in, nin, o);
	if (!rc) {
		memcpy(all, in, sizeof(*all) * nin);
		all[nin] = v;
		rc = run_check(who, false, grad_call, &u, nin, all, nin + 1, o);
	}
	ag__mfree(all);
	ag_tensor_put(v);
	return rc;
}
