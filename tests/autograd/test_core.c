// SPDX-License-Identifier: MIT
/* The autograd core: recording, backward, saved tensors and versions. */
#include "common.h"

static struct ag_tensor *leaf(double *v, int64_t n)
{
	struct ag_tensor *t = ag_from_data(AG_F64, 1, &n, v);

	ag_tensor_set_requires_grad(t, true);
	return t;
}

Test(core, tanh_chain_gradient)
{
	double v[3] = { -0.5, 0.25, 1.0 };
	struct ag_tensor *x = leaf(v, 3);
	struct ag_tensor *y = ag_tanh(x);
	struct ag_tensor *l = ag_sum(y);
	struct ag_tensor *g;

	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)), "TanhBackward");
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	for (int i = 0; i < 3; i++) {
		double t = tanh(v[i]);

		cr_assert_float_eq(ag__get(g, i), 1 - t * t, 1e-15);
	}
	ag_tensor_put(g);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, pow_saves_self)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[2] = { 1.5, -2.0 };
	struct ag_tensor *x = leaf(v, 2);
	struct ag_tensor *y = ag_pow_scalar(x, 2);
	struct ag_tensor *s = ag_node_saved(ag_tensor_grad_fn(y), "self");

	cr_assert(ag_equal(x, s));
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/*
 * A unary node saves one slot.  An output that is all of its storage is
 * kept as the storage and rebuilt on unpack; it must read the same values,
 * outlive the output tensor, and see in-place writes as version errors.
 */
Test(core, saved_result_outlives_output)
{
	double v[3] = { 0.5, -1.0, 2.0 };
	const char *const *names;
	struct ag_tensor *x = leaf(v, 3);
	struct ag_tensor *y = ag_tanh(x);
	struct ag_tensor *z = ag_sum(y), *s, *g;
	struct ag_node *n = ag_tensor_grad_fn(y);

	cr_assert_eq(ag_node_saved_names(n, &names), 1);
	cr_assert_str_eq(names[0], "result");
	cr_assert_null(ag_node_saved(n, "self"));
	AG_ASSERT_ERR(AG_EINVAL,
		      "TanhBackward has no saved tensor named 'self'");
	s = ag_node_saved(n, "result");
	cr_assert(s && ag_equal(s, y));
	cr_assert_eq(ag_tensor_ndim(s), 1);
	cr_assert_eq(ag_tensor_shape(s)[0], 3);
	ag_tensor_put(s);
	ag_tensor_put(y); /* z's graph keeps the node, the node the values */
	cr_assert_eq(ag_backward(z, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	for (int i = 0; i < 3; i++) {
		double t = tanh(v[i]);

		cr_assert_float_eq(ag__get(g, i), 1 - t * t, 1e-15);
	}
	ag_tensor_put(g);
	ag_tensor_put(z);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, saved_result_version_error)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[2] = { 0.5, -1.0 };
	struct ag_tensor *x = leaf(v, 2);
	struct ag_tensor *y = ag_exp(x);
	struct ag_tensor *z = ag_sum(y);

	{
		AG_NO_GRAD_SCOPE();
		cr_assert_eq(ag_mul_scalar_(y, 2), 0);
	}
	cr_assert_eq(ag_backward(z, NULL, NULL), -AG_EVERSION);
	AG_ASSERT_ERR(
		AG_EVERSION,
		"[f64 [2]], which is output 0 of ExpBackward, is at version 1; expected version 0 instead. It was last modified in place by ag_mul_scalar_");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(core, fan_out_accumulates)
{
	double v[1] = { 0.3 };
	struct ag_tensor *x = leaf(v, 1);
	struct ag_tensor *a = ag_mul(x, x); /* x used twice */
	struct ag_tensor *b = ag_exp(x);
	struct ag_tensor *y = ag_add(a, b);
	struct ag_tensor *l = ag_sum(y), *g;

	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	cr_assert_float_eq(ag__get(g, 0), 2 * 0.3 + exp(0.3), 1e-14);
	ag_tensor_put(g);
	/* .grad accumulates across calls: a second graph adds 2x + e^x */
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(a);
	ag_tensor_put(b);
	a = ag_mul(x, x);
	b = ag_exp(x);
	y = ag_add(a, b);
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	cr_assert_float_eq(ag__get(g, 0), 2 * (2 * 0.3 + exp(0.3)), 1e-14);
	ag_tensor_put(g);
	cr_assert_eq(ag_tensor_zero_grad(x), 0);
	cr_assert_null(ag_tensor_grad(x));
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, version_error_after_optimizer_update)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[3] = { 0.1, 0.2, 0.3 };
	struct ag_tensor *w = leaf(v, 3);
	struct ag_tensor *y = ag_tanh(w);
	struct ag_tensor *z = ag_mul(y, w);
	struct ag_tensor *l = ag_sum(z);

	{
		AG_NO_GRAD_SCOPE();
		cr_assert_eq(ag_mul_scalar_(w, 0.5), 0, "%s", ag_errmsg());
	}
	cr_assert_eq(ag_tensor_version(w), 1);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EVERSION);
	cr_assert(strstr(ag_errmsg(), "[f64 [3]]"), "%s", ag_errmsg());
	cr_assert(strstr(ag_errmsg(), "is at version 1; expected version 0"),
		  "%s", ag_errmsg());
	AG_ASSERT_ERR(AG_EVERSION, "ag_mul_scalar_");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(core, version_error_names_producer)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[3] = { 0.1, 0.2, 0.3 };
	struct ag_tensor *x = leaf(v, 3);
	struct ag_tensor *y = ag_tanh(x); /* saves its result */
	struct ag_tensor *l;

	cr_assert_eq(ag_add_scalar_(y, 1.0), 0, "%s", ag_errmsg());
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)), "AddBackward");
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EVERSION);
	AG_ASSERT_ERR(AG_EVERSION, "output 0 of TanhBackward");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(core, retain_graph_twice_then_freed)
{
	double v[2] = { 0.5, 1.5 };
	struct ag_tensor *x = leaf(v, 2);
	struct ag_tensor *y = ag_add_scalar(x, 1.0); /* saves nothing */
	struct ag_tensor *l = ag_sum(y), *g;
	struct ag_backward_opts keep = { .retain_graph = true };

	cr_assert_eq(ag_backward(l, NULL, &keep), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	cr_assert_float_eq(ag__get(g, 1), 2.0, 1e-15);
	ag_tensor_put(g);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_EFREED);
	AG_ASSERT_ERR(AG_EFREED, "retain_graph");
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, root_errors)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[2] = { 0.5, 1.5 };
	struct ag_tensor *x = leaf(v, 2),
			 *c = ag_from_data(AG_F64, 1, (int64_t[]){ 2 }, v);
	struct ag_tensor *y = ag_exp(x);

	cr_assert_eq(ag_backward(y, NULL, NULL), -AG_ESCALAR);
	AG_ASSERT_ERR(AG_ESCALAR, "scalar outputs");
	cr_assert_eq(ag_backward(c, NULL, NULL), -AG_ENOGRAD);
	AG_ASSERT_ERR(AG_ENOGRAD, "does not require grad");
	cr_assert_eq(ag_backward(NULL, NULL, NULL), -AG_EINVAL);
	ag_clear_error();
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/* A seed gradient of the wrong dtype is a dtype error, not a shape one. */
Test(core, root_grad_dtype_mismatch)
{
	double v[2] = { 0.5, 1.5 };
	float g32[2] = { 1, 1 }, g3[3] = { 1, 1, 1 };
	struct ag_tensor *x = leaf(v, 2), *y = ag_exp(x);
	struct ag_tensor *g = ag_from_data(AG_F32, 1, (int64_t[]){ 2 }, g32);
	struct ag_tensor *h = ag_from_data(AG_F32, 1, (int64_t[]){ 3 }, g3);

	cr_assert_eq(ag_backward(y, g, NULL), -AG_EDTYPE);
	AG_ASSERT_ERR(
		AG_EDTYPE,
		"ag_backward: mismatch in dtype: grad_output[0] has a dtype of f32 and output[0] has a dtype of f64");
	cr_assert_eq(ag_backward(y, h, NULL), -AG_ESHAPE); /* shape first */
	AG_ASSERT_ERR(AG_ESHAPE, "mismatch in shape");
	cr_assert_null(ag_tensor_grad(x));
	ag_tensor_put(h);
	ag_tensor_put(g);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, grad_returns_without_touching_dot_grad)
{
	double v[2] = { 0.5, 1.5 }, u[2] = { 2.0, 3.0 };
	struct ag_tensor *x = leaf(v, 2), *z = leaf(u, 2), *w = leaf(u, 2);
	struct ag_tensor *y = ag_mul(x, z), *l = ag_sum(y);
	struct ag_tensor *in[2] = { x, w }, *g[2];
	struct ag_grad_opts unused = { .allow_unused = true };

	cr_assert_eq(ag_grad(&l, NULL, 1, in, 2, g, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "allow_unused");
	cr_assert_eq(ag_grad(&l, NULL, 1, in, 2, g, &unused), 0, "%s",
		     ag_errmsg());
	cr_assert_float_eq(ag__get(g[0], 0), 2.0, 1e-15);
	cr_assert_float_eq(ag__get(g[0], 1), 3.0, 1e-15);
	cr_assert_null(g[1]);
	cr_assert_null(ag_tensor_grad(x));
	cr_assert_null(ag_tensor_grad(z));
	ag_tensor_put(g[0]);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(z);
	ag_tensor_put(w);
	AG_ASSERT_NO_LEAKS();
}

Test(core, double_backward_of_tanh)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[1] = { 0.7 };
	struct ag_tensor *x = leaf(v, 1);
	struct ag_tensor *y = ag_tanh(x), *l = ag_sum(y), *g1, *l2, *g2;
	struct ag_grad_opts cg = { .create_graph = true };
	double t = tanh(0.7);

	cr_assert_eq(ag_grad(&l, NULL, 1, &x, 1, &g1, &cg), 0, "%s",
		     ag_errmsg());
	cr_assert_float_eq(ag__get(g1, 0), 1 - t * t, 1e-15);
	cr_assert(ag_tensor_requires_grad(g1));
	l2 = ag_sum(g1);
	cr_assert_eq(ag_grad(&l2, NULL, 1, &x, 1, &g2, NULL), 0, "%s",
		     ag_errmsg());
	cr_assert_float_eq(ag__get(g2, 0), -2 * t * (1 - t * t), 1e-14);
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(core, inplace_rules)
{
	double v[2] = { -0.5, 1.5 };
	struct ag_tensor *x = leaf(v, 2), *y, *l, *g, *s;
	int64_t two = 2;

	cr_assert_eq(ag_add_scalar_(x, 1.0), -AG_ELEAF);
	AG_ASSERT_ERR(AG_ELEAF, "leaf");
	y = ag_mul_scalar(x, 3.0);
	cr_assert_eq(ag_relu_(y), 0, "%s", ag_errmsg());
	cr_assert_str_eq(ag_node_name(ag_tensor_grad_fn(y)), "ReluBackward");
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	cr_assert_float_eq(ag__get(g, 0), 0.0, 1e-15);
	cr_assert_float_eq(ag__get(g, 1), 3.0, 1e-15);
	ag_tensor_put(g);
	/* through a view of a tracked tensor: refused, never a wrong grad */
	ag_tensor_put(l);
	l = ag_mul_scalar(x, 1.0);
	s = ag_slice(l, 0, 0, 1, 1);
	cr_assert_eq(ag_mul_scalar_(s, 2.0), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "CopySlices");
	ag_tensor_put(s);
	/* inference tensors */
	{
		AG_INFERENCE_MODE_SCOPE();
		s = ag_ones(AG_F64, 1, &two);
	}
	cr_assert(ag_tensor_is_inference(s));
	cr_assert_eq(ag_add_scalar_(s, 1.0), -AG_EINFERENCE);
	AG_ASSERT_ERR(AG_EINFERENCE, "inference");
	g = ag_mul(x, s);
	cr_assert_null(g);
	AG_ASSERT_ERR(AG_EINFERENCE, "saved for backward");
	ag_tensor_put(s);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, million_node_chain)
{
	double v[1] = { 0.5 };
	struct ag_tensor *x = leaf(v, 1), *y = ag_tensor_get(x), *l, *g;

	for (int i = 0; i < 1000000; i++) {
		struct ag_tensor *n = ag_mul_scalar(y, 1.0);

		ag_tensor_put(y);
		y = n;
	}
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(x);
	cr_assert_float_eq(ag__get(g, 0), 1.0, 1e-15);
	ag_tensor_put(g);
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(core, anomaly_names_forward_op)
{
	struct ag_scope *scope = ag_scope_begin();
	double v[1] = { 0.0 };
	struct ag_tensor *x = leaf(v, 1);
	struct ag_tensor *y = ag_log(x), *l = ag_sum(y);

	ag_set_detect_anomaly(true);
	cr_assert_eq(ag_backward(l, NULL, NULL), -AG_ENAN);
	ag_set_detect_anomaly(false);
	AG_ASSERT_ERR(AG_ENAN, "ag_log");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/*
 * a.mul_(a) on a tensor in a graph saves a, which becomes the output of
 * the very node that saves it: held strongly, that was a reference cycle
 * and a leak (fuzz_ops).  Backward fails with the version error, as
 * torch 1.13's does.
 */
Test(core, inplace_mul_by_itself_holds_no_cycle)
{
	int64_t n = 3;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &n), *a, *s;

	cr_assert_eq(ag_tensor_set_requires_grad(x, true), 0);
	a = ag_mul_scalar(x, 2.0);
	cr_assert_eq(ag_mul_(a, a), 0, "%s", ag_errmsg());
	cr_expect_eq(ag__get(a, 0), 4.0);
	s = ag_sum(a);
	cr_expect_eq(ag_backward(s, NULL, NULL), -AG_EVERSION);
	AG_ASSERT_ERR(AG_EVERSION, "modified by an inplace operation");
	ag_tensor_put(s);
	ag_tensor_put(a);
	/* and with no backward at all, dropping a frees its graph */
	a = ag_mul_scalar(x, 2.0);
	cr_assert_eq(ag_mul_(a, a), 0, "%s", ag_errmsg());
	ag_tensor_put(a);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

/* A write through the data pointer, declared with ag_tensor_bump_version,
 * is caught by the saved-tensor check like an in-place op. */
Test(core, bump_version_catches_a_raw_write)
{
	int64_t s3 = 3;
	struct ag_tensor *x = ag_ones(AG_F64, 1, &s3);
	struct ag_tensor *a = ag_full(AG_F64, 1, &s3, 2.0);
	struct ag_tensor *v = ag_slice(a, 0, 1, 3, 1);
	struct ag_tensor *y, *s;
	uint64_t before = ag_tensor_version(a);

	ag_tensor_set_requires_grad(x, true);
	y = ag_mul(x, a); /* saves a for x's gradient */
	s = ag_sum(y);
	((double *)ag_tensor_data(a))[0] = 5.0;
	cr_assert_eq(ag_tensor_bump_version(v), 0); /* a view shares it */
	cr_assert_eq(ag_tensor_version(a), before + 1);
	cr_assert_eq(ag_backward(s, NULL, NULL), -AG_EVERSION);
	AG_ASSERT_ERR(
		AG_EVERSION,
		"last modified in place by a write through ag_tensor_data");
	cr_assert_eq(ag_tensor_bump_version(NULL), -AG_EINVAL);
	ag_tensor_put(s);
	ag_tensor_put(y);
	ag_tensor_put(v);
	ag_tensor_put(a);
	ag_tensor_put(x);
	{
		struct ag_mode m = ag_inference_mode_enter();

		a = ag_zeros(AG_F64, 1, &s3);
		cr_assert_eq(ag_tensor_bump_version(a), 0);
		cr_assert_eq(ag_tensor_version(a), 0);
		ag_tensor_put(a);
		ag_mode_exit(m);
	}
	AG_ASSERT_NO_LEAKS();
}
