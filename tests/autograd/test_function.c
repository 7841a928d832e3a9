// SPDX-License-Identifier: MIT
/* Custom functions: ag_function_apply and the ctx. */
#include <stdlib.h>

#include "common.h"

/*
 * The scaffolding of a custom function: FN_FORWARD(x) and FN_BACKWARD(x)
 * open x_fwd and x_bwd with ag_function_ops' signatures (the arity and
 * context arguments may go unused), FN_OPS(var, "Name", x) is the table.
 */
#define FN_FORWARD(x)                                                  \
	static int x##_fwd(struct ag_ctx *ctx __attribute__((unused)), \
			   struct ag_tensor *const *in,                \
			   int nin __attribute__((unused)),            \
			   struct ag_tensor **out,                     \
			   int nout __attribute__((unused)))
#define FN_BACKWARD(x)                                                 \
	static int x##_bwd(struct ag_ctx *ctx __attribute__((unused)), \
			   struct ag_tensor *const *g,                 \
			   int nout __attribute__((unused)),           \
			   struct ag_tensor **gi,                      \
			   int nin __attribute__((unused)))
#define FN_OPS(var, label, x)                                           \
	static const struct ag_function_ops var = { .name = label,      \
						    .forward = x##_fwd, \
						    .backward = x##_bwd }

static struct ag_tensor *vec(const double *v, int64_t n, bool rg)
{
	struct ag_tensor *t = ag_from_data(AG_F64, 1, &n, v);

	cr_assert_not_null(t, "%s", ag_errmsg());
	if (rg)
		cr_assert_eq(ag_tensor_set_requires_grad(t, true), 0);
	return t;
}

static void assert_values(struct ag_tensor *t, const double *want, int n,
			  double tol)
{
	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), n);
	for (int i = 0; i < n; i++)
		cr_assert_float_eq(ag__get(t, i), want[i], tol,
				   "element %d: %g, want %g", i, ag__get(t, i),
				   want[i]);
}

static void assert_grad(struct ag_tensor *x, const double *want, int n)
{
	struct ag_tensor *g = ag_tensor_grad(x);

	assert_values(g, want, n, 1e-12);
	ag_tensor_put(g);
}

/* ---- LegendrePolynomial: saves its input ---- */

FN_FORWARD(legendre)
{
	struct ag_tensor *x = in[0];
	struct ag_tensor *x3 = ag_pow_scalar(x, 3), *a = ag_mul_scalar(x3, 5);
	struct ag_tensor *b = ag_mul_scalar(x, 3), *d = ag_sub(a, b);

	cr_assert_eq(nin, 1);
	cr_assert_eq(nout, 1);
	cr_assert_not(ag_is_grad_enabled(), "forward runs with grad mode off");
	out[0] = ag_mul_scalar(d, 0.5);
	ag_tensor_put(x3);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(d);
	return ag_ctx_save_for_backward(ctx, &x, 1);
}

FN_BACKWARD(legendre)
{
	struct ag_tensor **s, *x2, *a, *b, *c;
	int n, rc;

	cr_assert_eq(nout, 1);
	cr_assert_eq(nin, 1);
	rc = ag_ctx_saved_tensors(ctx, &s, &n);
	if (rc)
		return rc;
	cr_assert_eq(n, 1);
	x2 = ag_pow_scalar(s[0], 2);
	a = ag_mul_scalar(x2, 5);
	b = ag_add_scalar(a, -1);
	c = ag_mul_scalar(b, 1.5);
	gi[0] = ag_mul(g[0], c);
	ag_tensor_put(x2);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(c);
	return 0;
}

FN_OPS(legendre, "LegendrePolynomial", legendre);

static struct ag_tensor *apply1(const struct ag_function_ops *f,
				struct ag_tensor *x, void *arg)
{
	struct ag_tensor *y = NULL;
	int rc = ag_function_apply(f, &x, 1, &y, 1, arg);

	cr_assert_eq(rc, 0, "%s", ag_errmsg());
	return y;
}

Test(function, legendre_gradient)
{
	double v[4] = { -0.8, -0.1, 0.3, 0.9 }, want[4], wy[4];
	struct ag_tensor *x = vec(v, 4, true);
	struct ag_tensor *y = apply1(&legendre, x, NULL);
	struct ag_tensor *l = ag_sum(y);
	int nr = -1;

	for (int i = 0; i < 4; i++) {
		want[i] = 1.5 * (5 * v[i] * v[i] - 1);
		wy[i] = 0.5 * (5 * v[i] * v[i] * v[i] - 3 * v[i]);
	}
	assert_values(y, wy, 4, 1e-15);
	cr_assert(ag_tensor_requires_grad(y));
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)),
			 "LegendrePolynomialBackward");
	cr_assert_eq(ag_node_num_next(ag_tensor_grad_fn(y)), 1);
	cr_assert_str_eq(
		ag_node_name(ag_node_next(ag_tensor_grad_fn(y), 0, &nr)),
		"AccumulateGrad");
	cr_assert_eq(nr, 0);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, want, 4);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, legendre_double_backward)
{
	double v[3] = { -0.5, 0.2, 0.7 }, want[3];
	struct ag_tensor *x = vec(v, 3, true);
	struct ag_tensor *y = apply1(&legendre, x, NULL);
	struct ag_tensor *l = ag_sum(y), *gx = NULL, *gl;
	struct ag_grad_opts o = { .create_graph = true };

	cr_assert_eq(ag_grad(&l, NULL, 1, &x, 1, &gx, &o), 0, "%s",
		     ag_errmsg());
	cr_assert(ag_tensor_requires_grad(gx));
	gl = ag_sum(gx);
	cr_assert_eq(ag_backward(gl, NULL, NULL), 0, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++)
		want[i] = 15 * v[i];
	assert_grad(x, want, 3);
	ag_tensor_put(gl);
	ag_tensor_put(gx);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, no_record_without_grad)
{
	double v[2] = { 0.5, 1.0 };
	struct ag_tensor *x = vec(v, 2, true), *y, *c = vec(v, 2, false);

	{
		AG_NO_GRAD_SCOPE();
		y = apply1(&legendre, x, NULL);
	}
	cr_assert_not(ag_tensor_requires_grad(y));
	cr_assert_null(ag_tensor_grad_fn(y));
	ag_tensor_put(y);
	y = apply1(&legendre, c, NULL); /* no input requires grad */
	cr_assert_not(ag_tensor_requires_grad(y));
	cr_assert(ag_is_grad_enabled());
	ag_tensor_put(y);
	ag_tensor_put(c);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, outputs_go_to_the_scope)
{
	double v[2] = { 0.5, 1.0 };
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x = vec(v, 2, true), *y = NULL;

	cr_assert_eq(ag_function_apply(&legendre, &x, 1, &y, 1, NULL), 0);
	cr_assert_eq(ag_backward(ag_sum(y), NULL, NULL), 0, "%s", ag_errmsg());
	ag_scope_end(s); /* x, y, the sum */
	AG_ASSERT_NO_LEAKS();
}

/* ---- saving an output: exp ---- */

FN_FORWARD(exp)
{
	out[0] = ag_exp(in[0]);
	return ag_ctx_save_for_backward(ctx, out, 1);
}

FN_BACKWARD(exp)
{
	struct ag_tensor **s;
	int n, rc = ag_ctx_saved_tensors(ctx, &s, &n);

	if (rc)
		return rc;
	gi[0] = ag_mul(g[0], s[0]);
	return 0;
}

FN_OPS(exp_fn, "MyExp", exp);

Test(function, save_output_no_cycle)
{
	double v[3] = { -1.0, 0.0, 2.0 }, want[3];
	struct ag_tensor *x = vec(v, 3, true);
	struct ag_tensor *y = apply1(&exp_fn, x, NULL);
	struct ag_tensor *l = ag_sum(y), *s;
	const char *const *names;

	for (int i = 0; i < 3; i++)
		want[i] = exp(v[i]);
	cr_assert_eq(ag_node_saved_names(ag_tensor_grad_fn(y), &names), 1);
	cr_assert_str_eq(names[0], "saved0");
	s = ag_node_saved(ag_tensor_grad_fn(y), "saved0");
	cr_assert(ag_equal(s, y));
	ag_tensor_put(s);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, want, 3);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, save_output_freed_without_backward)
{
	double v[3] = { -1.0, 0.0, 2.0 };
	struct ag_tensor *x = vec(v, 3, true);
	struct ag_tensor *y = apply1(&exp_fn, x, NULL);

	cr_assert_eq(ag__live_nodes(), 2); /* MyExpBackward, AccumulateGrad */
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, save_output_double_backward)
{
	double v[3] = { -1.0, 0.0, 0.5 }, want[3];
	struct ag_tensor *x = vec(v, 3, true);
	struct ag_tensor *y = apply1(&exp_fn, x, NULL);
	struct ag_tensor *l = ag_sum(y), *gx = NULL, *gl;
	struct ag_grad_opts o = { .create_graph = true };

	cr_assert_eq(ag_grad(&l, NULL, 1, &x, 1, &gx, &o), 0, "%s",
		     ag_errmsg());
	for (int i = 0; i < 3; i++)
		want[i] = exp(v[i]);
	assert_values(gx, want, 3, 1e-15);
	/* gx = g * y, and y leads back through MyExpBackward */
	gl = ag_sum(gx);
	cr_assert_eq(ag_backward(gl, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, want, 3);
	ag_tensor_put(gl);
	ag_tensor_put(gx);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* cube: saves 3 x^2, a temporary of forward, and a NULL */
FN_FORWARD(cube)
{
	struct ag_tensor *x2 = ag_mul(in[0], in[0]);
	struct ag_tensor *d = ag_mul_scalar(x2, 3.0);
	struct ag_tensor *keep[2] = { d, NULL };
	int rc;

	out[0] = ag_mul(x2, in[0]);
	rc = ag_ctx_save_for_backward(ctx, keep, 2);
	ag_tensor_put(x2);
	ag_tensor_put(d);
	return rc;
}

FN_BACKWARD(cube)
{
	struct ag_tensor **s, **s2;
	int n, rc = ag_ctx_saved_tensors(ctx, &s, &n);

	if (rc)
		return rc;
	cr_assert_eq(n, 2);
	cr_assert_null(s[1]);
	/* a second call gives the same borrowed array */
	cr_assert_eq(ag_ctx_saved_tensors(ctx, &s2, &n), 0);
	cr_assert_eq(s, s2);
	gi[0] = ag_mul(g[0], s[0]);
	return 0;
}

FN_OPS(cube_fn, "Cube", cube);

Test(function, save_intermediate_and_null)
{
	double v[3] = { -1.0, 0.5, 2.0 }, want[3];
	struct ag_tensor *x = vec(v, 3, true);
	struct ag_tensor *y = apply1(&cube_fn, x, NULL), *l = ag_sum(y);

	for (int i = 0; i < 3; i++)
		want[i] = 3 * v[i] * v[i];
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, want, 3);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- versions ---- */

Test(function, saved_input_modified_in_place)
{
	double v[3] = { 0.1, 0.2, 0.3 };
	struct ag_tensor *x = vec(v, 3, true);
	struct ag_tensor *y = apply1(&legendre, x, NULL);
	struct ag_tensor *l = ag_sum(y);

	{
		AG_NO_GRAD_SCOPE();
		cr_assert_eq(ag_mul_scalar_(x, 2.0), 0, "%s", ag_errmsg());
	}
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EVERSION);
	cr_assert(strstr(ag_errmsg(), "[f64 [3]]"), "%s", ag_errmsg());
	cr_assert(strstr(ag_errmsg(), "is at version 1; expected version 0"),
		  "%s", ag_errmsg());
	AG_ASSERT_ERR(AG_EVERSION, "ag_mul_scalar_");
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, saved_output_modified_in_place)
{
	double v[2] = { 0.1, 0.2 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&exp_fn, x, NULL), *l;

	cr_assert_eq(ag_add_scalar_(y, 1.0), 0, "%s", ag_errmsg());
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EVERSION);
	cr_assert(strstr(ag_errmsg(), "output 0 of MyExpBackward"), "%s",
		  ag_errmsg());
	AG_ASSERT_ERR(AG_EVERSION, "is at version 1; expected version 0");
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- needs_input_grad ---- */

struct needs_rec {
	bool fwd[2], bwd[2];
	int bwd_calls;
};

FN_FORWARD(mul)
{
	struct needs_rec *r = ag_ctx_arg(ctx);

	for (int i = 0; i < nin; i++)
		r->fwd[i] = ag_ctx_needs_input_grad(ctx, i);
	cr_assert_not(ag_ctx_needs_input_grad(ctx, nin));
	cr_assert_not(ag_ctx_needs_input_grad(ctx, -1));
	out[0] = ag_mul(in[0], in[1]);
	return ag_ctx_save_for_backward(ctx, in, 2);
}

FN_BACKWARD(mul)
{
	struct needs_rec *r = ag_ctx_arg(ctx);
	struct ag_tensor **s;
	int n, rc = ag_ctx_saved_tensors(ctx, &s, &n);

	if (rc)
		return rc;
	r->bwd_calls++;
	for (int i = 0; i < nin; i++)
		r->bwd[i] = ag_ctx_needs_input_grad(ctx, i);
	/* both, needed or not: the library drops the unneeded one */
	gi[0] = ag_mul(g[0], s[1]);
	gi[1] = ag_mul(g[0], s[0]);
	return 0;
}

FN_OPS(mul_fn, "MyMul", mul);

Test(function, needs_input_grad)
{
	double va[2] = { 2.0, 3.0 }, vb[2] = { 5.0, 7.0 };
	struct ag_tensor *in[2] = { vec(va, 2, true), vec(vb, 2, false) };
	struct needs_rec r = { 0 };
	struct ag_tensor *y = NULL, *l;

	cr_assert_eq(ag_function_apply(&mul_fn, in, 2, &y, 1, &r), 0, "%s",
		     ag_errmsg());
	cr_assert(r.fwd[0]);
	cr_assert_not(r.fwd[1]);
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(r.bwd_calls, 1);
	cr_assert(r.bwd[0]);
	cr_assert_not(r.bwd[1]);
	assert_grad(in[0], vb, 2);
	cr_assert_null(ag_tensor_grad(in[1]));
	ag_tensor_put(l);
	ag_tensor_put(y);
	/* the other way round */
	cr_assert_eq(ag_tensor_set_requires_grad(in[0], false), 0);
	cr_assert_eq(ag_tensor_set_requires_grad(in[1], true), 0);
	cr_assert_eq(ag_function_apply(&mul_fn, in, 2, &y, 1, &r), 0, "%s",
		     ag_errmsg());
	cr_assert_not(r.fwd[0]);
	cr_assert(r.fwd[1]);
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_not(r.bwd[0]);
	cr_assert(r.bwd[1]);
	assert_grad(in[1], va, 2);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(in[0]);
	ag_tensor_put(in[1]);
	AG_ASSERT_NO_LEAKS();
}

/* ---- several outputs, non-differentiable ones ---- */

struct multi_rec {
	double g1[3];
	bool got;
	bool nondiff;
};

/* out[0] = 2x, out[1] = x^2, out[2] = (x > 0) as i64 */
FN_FORWARD(multi)
{
	struct multi_rec *r = ag_ctx_arg(ctx);
	int64_t n = ag_tensor_numel(in[0]), mask[8];

	cr_assert_eq(nout, 3);
	out[0] = ag_mul_scalar(in[0], 2);
	out[1] = ag_mul(in[0], in[0]);
	for (int64_t i = 0; i < n; i++)
		mask[i] = ag__get(in[0], i) > 0;
	out[2] = ag_from_data(AG_I64, 1, &n, mask);
	if (r->nondiff)
		cr_assert_eq(ag_ctx_mark_non_differentiable(ctx, out[1]), 0);
	return ag_ctx_save_for_backward(ctx, in, 1);
}

FN_BACKWARD(multi)
{
	struct multi_rec *r = ag_ctx_arg(ctx);
	struct ag_tensor **s, *a, *b;
	int n, rc = ag_ctx_saved_tensors(ctx, &s, &n);

	if (rc)
		return rc;
	cr_assert_eq(nout, 3);
	for (int j = 0; j < 3; j++)
		cr_assert_not_null(g[j], "grad_out[%d] is NULL", j);
	cr_assert_eq(ag_tensor_dtype(g[2]), AG_I64);
	for (int i = 0; i < 3; i++)
		r->g1[i] = ag__get(g[1], i);
	r->got = true;
	/* 2 g0 + 2 x g1 */
	a = ag_mul(s[0], g[1]);
	b = ag_add(g[0], a);
	gi[0] = ag_mul_scalar(b, 2);
	ag_tensor_put(a);
	ag_tensor_put(b);
	return 0;
}

FN_OPS(multi_fn, "Multi", multi);

Test(function, unused_output_gets_zeros)
{
	double v[3] = { -1.0, 0.5, 2.0 }, two[3] = { 2, 2, 2 };
	double zero[3] = { 0 };
	struct ag_tensor *x = vec(v, 3, true), *y[3], *l;
	struct multi_rec r = { .g1 = { 9, 9, 9 } };

	cr_assert_eq(ag_function_apply(&multi_fn, &x, 1, y, 3, &r), 0, "%s",
		     ag_errmsg());
	cr_assert(ag_tensor_requires_grad(y[0]));
	cr_assert(ag_tensor_requires_grad(y[1]));
	/* integer outputs are never differentiable */
	cr_assert_not(ag_tensor_requires_grad(y[2]));
	cr_assert_null(ag_tensor_grad_fn(y[2]));
	l = ag_sum(y[0]); /* y[1] unused */
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert(r.got);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(r.g1[i], zero[i]);
	assert_grad(x, two, 3);
	ag_tensor_put(l);
	for (int j = 0; j < 3; j++)
		ag_tensor_put(y[j]);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, both_outputs_used)
{
	double v[3] = { -1.0, 0.5, 2.0 }, want[3];
	struct ag_tensor *x = vec(v, 3, true), *y[3], *l, *a, *b;
	struct multi_rec r = { 0 };

	cr_assert_eq(ag_function_apply(&multi_fn, &x, 1, y, 3, &r), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_node_num_next(ag_tensor_grad_fn(y[1])), 1);
	cr_assert_eq(ag_tensor_grad_fn(y[0]), ag_tensor_grad_fn(y[1]));
	a = ag_sum(y[0]);
	b = ag_sum(y[1]);
	l = ag_add(a, b);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++)
		want[i] = 2 + 2 * v[i];
	assert_grad(x, want, 3);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(l);
	for (int j = 0; j < 3; j++)
		ag_tensor_put(y[j]);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, mark_non_differentiable)
{
	double v[3] = { -1.0, 0.5, 2.0 }, two[3] = { 2, 2, 2 };
	struct ag_tensor *x = vec(v, 3, true), *y[3], *l;
	struct multi_rec r = { .nondiff = true };

	cr_assert_eq(ag_function_apply(&multi_fn, &x, 1, y, 3, &r), 0, "%s",
		     ag_errmsg());
	cr_assert(ag_tensor_requires_grad(y[0]));
	cr_assert_not(ag_tensor_requires_grad(y[1]));
	cr_assert_null(ag_tensor_grad_fn(y[1]));
	cr_assert(ag_tensor_is_leaf(y[1]));
	/* a backward from the non-differentiable output has nothing to do */
	l = ag_sum(y[1]);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_ENOGRAD);
	ag_clear_error();
	ag_tensor_put(l);
	l = ag_sum(y[0]);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, two, 3);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(r.g1[i], 0.0);
	ag_tensor_put(l);
	for (int j = 0; j < 3; j++)
		ag_tensor_put(y[j]);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- mark_dirty: x += 1 in place ---- */

FN_FORWARD(add1)
{
	double *p = ag_tensor_data(in[0]);
	int rc;

	/* a raw write: ag_ctx_mark_dirty is what tells autograd */
	for (int64_t i = 0; i < ag_tensor_numel(in[0]); i++)
		p[i] += 1.0;
	rc = ag_ctx_mark_dirty(ctx, in[0]);
	if (rc)
		return rc;
	if (ag_ctx_arg(ctx)) /* forget to return it */
		out[0] = ag_clone(in[0]);
	else
		out[0] = ag_tensor_get(in[0]);
	return 0;
}

FN_BACKWARD(add1)
{
	gi[0] = ag_tensor_get(g[0]);
	return 0;
}

FN_OPS(add1_fn, "AddOne", add1);

Test(function, mark_dirty_rebases_history)
{
	double v[2] = { 1.0, 2.0 }, w[2] = { 3.0, 5.0 }, want[2] = { 6, 10 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *h = ag_mul_scalar(x, 2.0); /* non-leaf */
	struct ag_tensor *c = vec(w, 2, false);
	struct ag_tensor *z = ag_mul(h, c), *y, *l;

	cr_assert_eq(ag_tensor_version(h), 0);
	y = apply1(&add1_fn, h, NULL);
	cr_assert_eq(y, h, "the dirty input is the output");
	cr_assert_eq(ag_tensor_version(h), 1);
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(h)), "AddOneBackward");
	cr_assert_str_eq(
		ag_node_name(ag_node_next(ag_tensor_grad_fn(h), 0, NULL)),
		"MulBackward");
	cr_assert_float_eq(ag__get(h, 1), 5.0, 0);
	/* d sum(c (2x + 1)) / dx = 2c through the rebased history */
	{
		struct ag_tensor *p = ag_mul(y, c);

		l = ag_sum(p);
		ag_tensor_put(p);
	}
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, want, 2);
	ag_tensor_put(l);
	ag_tensor_put(z);
	ag_tensor_put(y);
	ag_tensor_put(h);
	ag_tensor_put(c);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, mark_dirty_invalidates_saved)
{
	double v[2] = { 1.0, 2.0 }, w[2] = { 3.0, 5.0 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *h = ag_mul_scalar(x, 2.0);
	struct ag_tensor *c = vec(w, 2, true);
	struct ag_tensor *z = ag_mul(h, c), *y, *l; /* saves h for c */

	y = apply1(&add1_fn, h, NULL);
	l = ag_sum(z);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EVERSION);
	AG_ASSERT_ERR(AG_EVERSION, "AddOne (ag_ctx_mark_dirty)");
	ag_tensor_put(l);
	ag_tensor_put(z);
	ag_tensor_put(y);
	ag_tensor_put(h);
	ag_tensor_put(c);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, mark_dirty_leaf_rule)
{
	double v[2] = { 1.0, 2.0 };
	struct ag_tensor *x = vec(v, 2, true), *y = (void *)1;

	cr_assert_eq(ag_function_apply(&add1_fn, &x, 1, &y, 1, NULL),
		     -AG_ELEAF);
	AG_ASSERT_ERR(AG_ELEAF, "AddOne");
	cr_assert_null(y);
	cr_assert(ag_tensor_is_leaf(x));
	/* under no-grad the leaf may be written */
	{
		AG_NO_GRAD_SCOPE();
		y = apply1(&add1_fn, x, NULL);
	}
	cr_assert_eq(y, x);
	cr_assert(ag_tensor_is_leaf(x));
	cr_assert_float_eq(ag__get(x, 0), 3.0, 0);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, mark_dirty_not_returned)
{
	double v[2] = { 1.0, 2.0 };
	struct ag_tensor *x = vec(v, 2, false), *w = vec(v, 2, true);
	struct ag_tensor *h = ag_mul(x, w), *y = NULL;

	cr_assert_eq(ag_function_apply(&add1_fn, &h, 1, &y, 1, (void *)1),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "was not returned as an output");
	cr_assert_null(y);
	ag_tensor_put(h);
	ag_tensor_put(w);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* x += w in place: a plain leaf x takes on the history of w */
FN_FORWARD(addinto)
{
	int rc;

	rc = ag_add_(in[0], in[1]); /* bumps the version itself, no-grad */
	if (!rc)
		rc = ag_ctx_mark_dirty(ctx, in[0]);
	out[0] = ag_tensor_get(in[0]);
	return rc;
}

FN_BACKWARD(addinto)
{
	cr_assert_not(ag_ctx_needs_input_grad(ctx, 0));
	cr_assert(ag_ctx_needs_input_grad(ctx, 1));
	gi[1] = ag_tensor_get(g[0]);
	return 0;
}

FN_OPS(addinto_fn, "AddInto", addinto);

Test(function, mark_dirty_plain_leaf_takes_history)
{
	double v[2] = { 1.0, 2.0 }, w[2] = { 0.5, 0.25 }, want[2];
	struct ag_tensor *in[2] = { vec(v, 2, false), vec(w, 2, true) };
	struct ag_tensor *y = NULL, *sq, *l;

	cr_assert_eq(ag_function_apply(&addinto_fn, in, 2, &y, 1, NULL), 0,
		     "%s", ag_errmsg());
	cr_assert_eq(y, in[0]);
	cr_assert_eq(ag_tensor_version(in[0]), 2, "ag_add_ and mark_dirty");
	cr_assert(ag_tensor_requires_grad(in[0]));
	cr_assert_not(ag_tensor_is_leaf(in[0]));
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(in[0])),
			 "AddIntoBackward");
	sq = ag_mul(y, y);
	l = ag_sum(sq);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	for (int i = 0; i < 2; i++)
		want[i] = 2 * (v[i] + w[i]);
	assert_grad(in[1], want, 2);
	ag_tensor_put(l);
	ag_tensor_put(sq);
	ag_tensor_put(y);
	ag_tensor_put(in[0]);
	ag_tensor_put(in[1]);
	AG_ASSERT_NO_LEAKS();
}

/* ---- an input returned as it is (not dirty) ---- */

FN_FORWARD(ident)
{
	out[0] = ag_tensor_get(in[0]);
	return 0;
}

FN_BACKWARD(ident)
{
	gi[0] = ag_mul_scalar(g[0], 3.0);
	return 0;
}

FN_OPS(ident_fn, "Ident", ident);

Test(function, returned_input_is_aliased)
{
	double v[2] = { 1.0, 2.0 }, three[2] = { 3, 3 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&ident_fn, x, NULL), *l;

	cr_assert_neq(y, x);
	cr_assert(ag_tensor_is_leaf(x));
	cr_assert(ag_equal(x, y));
	cr_assert_eq(ag_tensor_data(x), ag_tensor_data(y), "shares storage");
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, three, 2);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- failures in backward ---- */

FN_BACKWARD(fail)
{
	int mode = *(int *)ag_ctx_arg(ctx);

	switch (mode) {
	case 0: /* an error with a message */
		gi[0] = ag_mul_scalar(g[0], 1.0); /* made, then dropped */
		return ag__err(AG_EDTYPE, "custom failure 42");
	case 1: /* an error without one */
		return -AG_EINTERNAL;
	case 2: /* a gradient of the wrong shape */
	{
		int64_t n = 5;

		gi[0] = ag_zeros(AG_F64, 1, &n);
		return 0;
	}
	case 3: /* of the wrong dtype */
		gi[0] = ag_zeros(AG_F32, 1, (int64_t[]){ 2 });
		return 0;
	default: /* fine: NULL means zero */
		return 0;
	}
}

static const struct ag_function_ops fail_fn = {
	.name = "Failing",
	.forward = ident_fwd,
	.backward = fail_bwd,
};

static void run_failing(int mode, int code, const char *substr)
{
	double v[2] = { 1.0, 2.0 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&fail_fn, x, &mode);
	struct ag_tensor *l = ag_sum(y);

	cr_assert_eq(ag_backward(l, NULL, NULL), -code, "mode %d: %s", mode,
		     ag_errmsg());
	if (code)
		AG_ASSERT_ERR(code, substr);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, backward_error_propagates)
{
	run_failing(0, AG_EDTYPE, "custom failure 42");
}

Test(function, backward_error_without_message)
{
	run_failing(
		1, AG_EINTERNAL,
		"Failing: backward of the custom function returned AG_EINTERNAL");
}

Test(function, wrong_shape_grad_in)
{
	run_failing(
		2, AG_ESHAPE,
		"Failing: backward of the custom function returned an invalid gradient for input 0: got f64 [5] but expected f64 [2]");
}

Test(function, wrong_dtype_grad_in)
{
	run_failing(3, AG_ESHAPE, "got f32 [2] but expected f64 [2]");
}

Test(function, null_grad_in_is_zero)
{
	double v[2] = { 1.0, 2.0 }, w[2] = { 2, 4 };
	int mode = 9;
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&fail_fn, x, &mode);
	struct ag_tensor *a = ag_sum(y), *b = ag_mul(x, x), *c = ag_sum(b);
	struct ag_tensor *l = ag_add(a, c);

	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, w, 2);
	ag_tensor_put(l);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(c);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- retain_graph; the ctx after release ---- */

static struct ag_ctx *stashed;

FN_FORWARD(stash)
{
	stashed = ctx;
	return legendre_fwd(ctx, in, nin, out, nout);
}

static const struct ag_function_ops stash_fn = {
	.name = "Stash",
	.forward = stash_fwd,
	.backward = legendre_bwd,
};

Test(function, retain_graph_twice_then_freed)
{
	double v[2] = { 0.5, -0.5 }, want[2], w3[2];
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&stash_fn, x, NULL);
	struct ag_tensor *l = ag_sum(y), **s;
	struct ag_backward_opts keep = { .retain_graph = true };
	int n;

	for (int i = 0; i < 2; i++) {
		want[i] = 2 * 1.5 * (5 * v[i] * v[i] - 1);
		w3[i] = 1.5 * want[i];
	}
	/* outside backward the saved tensors cannot be read */
	cr_assert_eq(ag_ctx_saved_tensors(stashed, &s, &n), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "only be read during the function's backward");
	cr_assert_eq(ag_backward(l, NULL, &keep), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, want, 2);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EFREED);
	AG_ASSERT_ERR(AG_EFREED, "retain_graph");
	cr_assert_eq(ag_ctx_saved_tensors(stashed, &s, &n), -AG_EFREED);
	AG_ASSERT_ERR(AG_EFREED, "StashBackward");
	/* the failed backward added nothing */
	want[0] = w3[0] / 1.5;
	want[1] = w3[1] / 1.5;
	assert_grad(x, want, 2);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- ag_grad prunes what does not lead to the inputs ---- */

FN_BACKWARD(count)
{
	int *calls = ag_ctx_arg(ctx);

	++*calls;
	gi[0] = ag_mul_scalar(g[0], 3.0);
	return 0;
}

static const struct ag_function_ops count_fn = {
	.name = "Counted",
	.forward = ident_fwd,
	.backward = count_bwd,
};

Test(function, ag_grad_prunes_unused_branch)
{
	double v[2] = { 1.0, 2.0 }, three[2] = { 3, 3 };
	struct ag_tensor *x = vec(v, 2, true), *z = vec(v, 2, true);
	int used = 0, unused = 0;
	struct ag_tensor *a = apply1(&count_fn, x, &used);
	struct ag_tensor *b = apply1(&count_fn, z, &unused);
	struct ag_tensor *s = ag_add(a, b), *y = ag_sum(s), *gx = NULL;

	cr_assert_eq(ag_grad(&y, NULL, 1, &x, 1, &gx, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(used, 1);
	cr_assert_eq(unused, 0, "the branch to z ran");
	assert_values(gx, three, 2, 0);
	cr_assert_null(ag_tensor_grad(x));
	cr_assert_null(ag_tensor_grad(z));
	ag_tensor_put(gx);
	ag_tensor_put(y);
	ag_tensor_put(s);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(z);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- re-entrant backward ---- */

struct nest {
	int depth, max, ran;
	int rc;
};

FN_BACKWARD(nest);

static const struct ag_function_ops nest_fn = {
	.name = "Nested",
	.forward = ident_fwd,
	.backward = nest_bwd,
};

/* A small graph through nest_fn and its backward, from inside a backward. */
static int nest_run(struct nest *st)
{
	double v[2] = { 1.0, -1.0 };
	int64_t n = 2;
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &n, v), *y = NULL;
	struct ag_tensor *l = NULL, *g = NULL;
	int rc;

	AG_ENABLE_GRAD_SCOPE();
	ag_tensor_set_requires_grad(x, true);
	rc = ag_function_apply(&nest_fn, &x, 1, &y, 1, st);
	if (!rc) {
		l = ag_sum(y);
		rc = ag_backward(l, NULL, NULL);
	}
	if (!rc) {
		g = ag_tensor_grad(x);
		if (!g || ag__get(g, 0) != 2.0 || ag__get(g, 1) != 2.0)
			rc = ag__err(AG_EINTERNAL, "wrong inner gradient");
	}
	ag_tensor_put(g);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	return rc;
}

FN_BACKWARD(nest)
{
	struct nest *st = ag_ctx_arg(ctx);
	int rc = 0;

	st->ran++;
	if (st->depth < st->max) {
		st->depth++;
		rc = nest_run(st);
		st->depth--;
		if (rc)
			return rc;
	}
	gi[0] = ag_mul_scalar(g[0], 2.0);
	return 0;
}

Test(function, reentrant_backward_100_deep)
{
	struct nest st = { .max = 100 };

	cr_assert_eq(nest_run(&st), 0, "%s", ag_errmsg());
	cr_assert_eq(st.ran, 101);
	cr_assert_eq(st.depth, 0);
	AG_ASSERT_NO_LEAKS();
}

/* ---- checkpointing: backward recomputes forward and differentiates it ---- */

FN_FORWARD(ckpt)
{
	out[0] = ag_tanh(in[0]); /* nothing recorded: grad mode is off */
	return ag_ctx_save_for_backward(ctx, in, 1);
}

FN_BACKWARD(ckpt)
{
	struct ag_tensor **s, *xd, *y;
	int n, rc = ag_ctx_saved_tensors(ctx, &s, &n);

	if (rc)
		return rc;
	AG_ENABLE_GRAD_SCOPE();
	xd = ag_detach(s[0]);
	ag_tensor_set_requires_grad(xd, true);
	y = ag_tanh(xd);
	rc = ag_grad(&y, g, 1, &xd, 1, &gi[0], NULL);
	ag_tensor_put(y);
	ag_tensor_put(xd);
	return rc;
}

FN_OPS(ckpt_fn, "Checkpoint", ckpt);

Test(function, checkpoint_with_ag_grad_inside_backward)
{
	double v[3] = { -0.5, 0.1, 1.5 }, w[3] = { 2.0, 3.0, 4.0 }, want[3];
	struct ag_tensor *x = vec(v, 3, true), *c = vec(w, 3, false);
	struct ag_tensor *y = apply1(&ckpt_fn, x, NULL), *p = ag_mul(y, c);
	struct ag_tensor *l = ag_sum(p);

	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	for (int i = 0; i < 3; i++)
		want[i] = w[i] * (1 - tanh(v[i]) * tanh(v[i]));
	assert_grad(x, want, 3);
	ag_tensor_put(l);
	ag_tensor_put(p);
	ag_tensor_put(y);
	ag_tensor_put(c);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- anomaly mode names the custom function ---- */

FN_BACKWARD(nan)
{
	gi[0] = ag_mul_scalar(g[0], NAN);
	return 0;
}

static const struct ag_function_ops nan_fn = {
	.name = "MakesNan",
	.forward = ident_fwd,
	.backward = nan_bwd,
};

Test(function, anomaly_names_the_function)
{
	double v[2] = { 1.0, 2.0 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&nan_fn, x, NULL), *l = ag_sum(y);

	ag_set_detect_anomaly(true);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_ENAN);
	ag_set_detect_anomaly(false);
	cr_assert(strstr(ag_errmsg(), "MakesNanBackward"), "%s", ag_errmsg());
	AG_ASSERT_ERR(AG_ENAN, "the forward op that made it was MakesNan");
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- a long chain of custom functions builds, runs and frees ---- */

FN_FORWARD(twice)
{
	out[0] = ag_mul_scalar(in[0], 1.0);
	return 0;
}

FN_BACKWARD(twice)
{
	gi[0] = ag_tensor_get(g[0]);
	return 0;
}

FN_OPS(chain_fn, "Link", twice);

Test(function, chain_of_200000, .timeout = 120)
{
	double v[1] = { 0.5 }, one[1] = { 1.0 };
	struct ag_tensor *x = vec(v, 1, true), *h = ag_tensor_get(x), *y;

	for (int i = 0; i < 200000; i++) {
		y = apply1(&chain_fn, h, NULL);
		ag_tensor_put(h);
		h = y;
	}
	cr_assert_eq(ag_backward(h, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, one, 1);
	ag_tensor_put(h); /* frees 200000 nodes without recursion */
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- per-call data for backward ---- */

static int data_freed;

static void data_free(void *p)
{
	data_freed++;
	free(p);
}

/* y = s x with s chosen in forward (the first element of x) */
FN_FORWARD(scale)
{
	double *s = malloc(sizeof(*s));
	int rc;

	*s = ag__get(in[0], 0);
	rc = ag_ctx_set_data(ctx, s, data_free);
	cr_assert_eq(rc, 0);
	cr_assert_eq(ag_ctx_data(ctx), s);
	if (ag_ctx_arg(ctx))
		return ag__err(AG_EINVAL, "scale: told to fail");
	out[0] = ag_mul_scalar(in[0], *s);
	return 0;
}

FN_BACKWARD(scale)
{
	double *s = ag_ctx_data(ctx);

	cr_assert_eq(ag_ctx_set_data(ctx, NULL, NULL), -AG_EINVAL);
	ag_clear_error();
	gi[0] = ag_mul_scalar(g[0], *s);
	return 0;
}

FN_OPS(scale_fn, "Scale", scale);

Test(function, ctx_data_lives_with_the_node)
{
	double v[2] = { 3.0, 2.0 }, three[2] = { 3, 3 };
	struct ag_tensor *x = vec(v, 2, true), *y, *l;

	data_freed = 0;
	y = apply1(&scale_fn, x, NULL);
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, three, 2);
	cr_assert_eq(data_freed, 0);
	ag_tensor_put(l);
	ag_tensor_put(y);
	cr_assert_eq(data_freed, 1, "freed with the node");
	/* not recorded: freed as apply returns */
	{
		AG_NO_GRAD_SCOPE();
		y = apply1(&scale_fn, x, NULL);
	}
	cr_assert_eq(data_freed, 2);
	ag_tensor_put(y);
	/* a failed forward frees it too */
	y = (void *)1;
	cr_assert_eq(ag_function_apply(&scale_fn, &x, 1, &y, 1, (void *)1),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "told to fail");
	cr_assert_null(y);
	cr_assert_eq(data_freed, 3);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- gradcheck and gradgradcheck through custom functions ---- */

struct gc_arg {
	const struct ag_function_ops *f;
	void *arg;
};

static int gc_call(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
		   void *arg)
{
	struct gc_arg *a = arg;

	return ag_function_apply(a->f, in, nin, out, 1, a->arg);
}

FN_BACKWARD(bad)
{
	int rc = legendre_bwd(ctx, g, nout, gi, nin);
	struct ag_tensor *t;

	if (rc)
		return rc;
	t = gi[0];
	gi[0] = ag_mul_scalar(t, 1.01); /* 1% off */
	ag_tensor_put(t);
	return 0;
}

static const struct ag_function_ops bad_legendre = {
	.name = "BadLegendre",
	.forward = legendre_fwd,
	.backward = bad_bwd,
};

Test(function, gradcheck_and_gradgradcheck)
{
	double v[5] = { -0.9, -0.3, 0.05, 0.4, 1.1 },
	       w[5] = { 2, -1, 3, .5, 1 };
	struct ag_tensor *x = vec(v, 5, true), *in[2] = { x, vec(w, 5, true) };
	struct needs_rec r = { 0 };
	struct gc_arg leg = { &legendre, NULL }, mul = { &mul_fn, &r };
	struct gc_arg bad = { &bad_legendre, NULL };

	cr_assert_eq(ag_gradcheck(gc_call, &leg, &x, 1, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_gradgradcheck(gc_call, &leg, &x, 1, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_gradcheck(gc_call, &mul, in, 2, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_gradgradcheck(gc_call, &mul, in, 2, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_gradcheck(gc_call, &bad, &x, 1, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "with respect to input 0");
	ag_tensor_put(in[1]);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* ---- apply's own checks ---- */

FN_FORWARD(nofill)
{
	cr_assert_eq(nout, 2);
	out[0] = ag_mul_scalar(in[0], 2.0);
	return 0; /* out[1] left NULL */
}

FN_FORWARD(err)
{
	out[0] = ag_mul_scalar(in[0], 2.0);
	if (ag_ctx_arg(ctx))
		return ag__err(AG_EDTYPE, "forward says no");
	return -AG_EDTYPE;
}

static const struct ag_function_ops nofill_fn = {
	.name = "NoFill",
	.forward = nofill_fwd,
	.backward = ident_bwd,
};

static const struct ag_function_ops err_fn = {
	.name = "ErrFwd",
	.forward = err_fwd,
	.backward = ident_bwd,
};

static const struct ag_function_ops no_bwd = {
	.name = "NoBackward",
	.forward = ident_fwd,
};

Test(function, forward_failures_leak_nothing)
{
	double v[2] = { 1.0, 2.0 };
	struct ag_tensor *x = vec(v, 2, true), *y[2] = { (void *)1, (void *)1 };

	cr_assert_eq(ag_function_apply(&nofill_fn, &x, 1, y, 2, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL,
		      "NoFill: forward returned 0 but left out[1] NULL");
	cr_assert_null(y[0]);
	cr_assert_null(y[1]);
	cr_assert_eq(ag_function_apply(&err_fn, &x, 1, y, 1, (void *)1),
		     -AG_EDTYPE);
	AG_ASSERT_ERR(AG_EDTYPE, "forward says no");
	cr_assert_null(y[0]);
	cr_assert_eq(ag_function_apply(&err_fn, &x, 1, y, 1, NULL), -AG_EDTYPE);
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ErrFwd: forward of the custom function returned AG_EDTYPE without setting an error message");
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(function, argument_checks)
{
	double v[2] = { 1.0, 2.0 };
	struct ag_tensor *x = vec(v, 2, true), *y = NULL;
	struct ag_tensor *in2[2] = { x, NULL };
	struct ag_tensor **s;
	int n;

	cr_assert_eq(ag_function_apply(NULL, &x, 1, &y, 1, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "argument 'f' is NULL");
	cr_assert_eq(ag_function_apply(&no_bwd, &x, 1, &y, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "function NoBackward has no backward");
	cr_assert_eq(ag_function_apply(&legendre, &x, -1, &y, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "nin is -1");
	cr_assert_eq(ag_function_apply(&legendre, &x, 1, &y, 0, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "nout is 0");
	cr_assert_eq(ag_function_apply(&legendre, &x, 1, NULL, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "'out' is NULL");
	cr_assert_eq(ag_function_apply(&legendre, NULL, 1, &y, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "in is NULL");
	cr_assert_eq(ag_function_apply(&mul_fn, in2, 2, &y, 1, NULL),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "MyMul: input 1 is NULL");
	/* ctx calls outside forward */
	cr_assert_eq(ag_ctx_save_for_backward(NULL, &x, 1), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "'ctx' is NULL");
	cr_assert_eq(ag_ctx_saved_tensors(NULL, &s, &n), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "must not be NULL");
	cr_assert_not(ag_ctx_needs_input_grad(NULL, 0));
	cr_assert_null(ag_ctx_arg(NULL));
	cr_assert_eq(ag_tensor_version(x), 0);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

FN_BACKWARD(late)
{
	cr_assert_eq(ag_ctx_save_for_backward(ctx, g, 1), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL,
		      "may only be called from the function's forward");
	cr_assert_eq(ag_ctx_mark_dirty(ctx, g[0]), -AG_EINVAL);
	ag_clear_error();
	cr_assert_eq(ag_ctx_mark_non_differentiable(ctx, g[0]), -AG_EINVAL);
	ag_clear_error();
	gi[0] = ag_tensor_get(g[0]);
	return 0;
}

static const struct ag_function_ops late_fn = {
	.name = "Late",
	.forward = ident_fwd,
	.backward = late_bwd,
};

Test(function, ctx_calls_only_in_forward)
{
	double v[2] = { 1.0, 2.0 }, one[2] = { 1, 1 };
	struct ag_tensor *x = vec(v, 2, true);
	struct ag_tensor *y = apply1(&late_fn, x, NULL), *l = ag_sum(y);

	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	assert_grad(x, one, 2);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}
