// SPDX-License-Identifier: MIT
/*
 * Modules: each against the functional op it wraps, train/eval, the
 * requires_grad recursion, torch's parameter names and order
 * (torch_refs_optim.h), initialisation bounds, and no leaks after put.
 */
#include "common.h"
#include "torch_refs_optim.h"

static struct ag_tensor *randn(struct ag_generator *g, int nd,
			       const int64_t *shape)
{
	struct ag_tensor *t = ag_randn(g, AG_F32, nd, shape);

	cr_assert(t);
	return t;
}

/* y (from the module) equals want (from the op), then both are put */
static void assert_same(struct ag_tensor *y, struct ag_tensor *want)
{
	cr_assert(y, "%s", ag_errmsg());
	cr_assert(want, "%s", ag_errmsg());
	cr_assert(ag_equal(y, want), "module and op differ");
	ag_tensor_put(y);
	ag_tensor_put(want);
}

Test(nn_modules, linear_matches_op_and_init_bounds)
{
	struct ag_generator *g = ag_generator_new(1);
	struct ag_module *m = ag_linear_new(50, 7, true, g);
	int64_t xs[2] = { 4, 50 };
	struct ag_tensor *x = randn(g, 2, xs), *w, *b;
	const float *wd;
	double bound = 1 / sqrt(50.0), mx = 0, sum = 0;

	cr_assert(m, "%s", ag_errmsg());
	cr_assert_str_eq(ag_module_name(m), "Linear");
	w = ag_module_get_parameter(m, "weight");
	b = ag_module_get_parameter(m, "bias");
	cr_assert(ag_tensor_requires_grad(w) && ag_tensor_is_leaf(w));
	cr_assert_eq(ag_tensor_shape(w)[0], 7);
	cr_assert_eq(ag_tensor_shape(w)[1], 50);
	wd = ag_tensor_data(w);
	for (int i = 0; i < 350; i++) {
		cr_assert(fabs(wd[i]) <= bound);
		mx = fmax(mx, fabs(wd[i]));
		sum += wd[i];
	}
	/* uniform on +-bound: the max is near the bound, the mean near 0 */
	cr_assert_gt(mx, 0.95 * bound);
	cr_assert_lt(fabs(sum / 350), 0.2 * bound);
	for (int i = 0; i < 7; i++)
		cr_assert(fabs(((float *)ag_tensor_data(b))[i]) <= bound);
	assert_same(ag_module_forward(m, x), ag_linear(x, w, b));
	ag_tensor_put(x);
	ag_module_put(m);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

/* a seed fixes a model */
Test(nn_modules, seed_fixes_init)
{
	struct ag_generator *g1 = ag_generator_new(42),
			    *g2 = ag_generator_new(42);
	struct ag_module *a = ag_conv2d_new(3, 4, 3, 3, NULL, true, g1);
	struct ag_module *b = ag_conv2d_new(3, 4, 3, 3, NULL, true, g2);

	cr_assert(ag_equal(ag_module_get_parameter(a, "weight"),
			   ag_module_get_parameter(b, "weight")));
	cr_assert(ag_equal(ag_module_get_parameter(a, "bias"),
			   ag_module_get_parameter(b, "bias")));
	ag_module_put(a);
	ag_module_put(b);
	ag_generator_free(g1);
	ag_generator_free(g2);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_modules, conv_and_pools_match_ops)
{
	struct ag_generator *g = ag_generator_new(2);
	struct ag_conv2d_opts o = { .stride = { 2, 1 }, .padding = { 1, 1 } };
	struct ag_module *c = ag_conv2d_new(2, 3, 3, 2, &o, true, g);
	int64_t xs[4] = { 2, 2, 8, 8 }, k[2] = { 2, 2 }, st[2] = { 1, 2 };
	struct ag_tensor *x = randn(g, 4, xs);
	struct ag_tensor *w = ag_module_get_parameter(c, "weight");
	double bound = 1 / sqrt(2.0 * 3 * 2);
	struct ag_module *mp = ag_maxpool2d_new(k, NULL, NULL);
	struct ag_module *ap = ag_avgpool2d_new(k, st, NULL);
	struct ag_module *aa = ag_adaptive_avgpool2d_new(3, 2);

	cr_assert(c && mp && ap && aa, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_shape(w)[1], 2);
	for (int i = 0; i < 36; i++)
		cr_assert(fabs(((float *)ag_tensor_data(w))[i]) <= bound);
	assert_same(ag_module_forward(c, x),
		    ag_conv2d(x, w, ag_module_get_parameter(c, "bias"), &o));
	assert_same(ag_module_forward(mp, x), ag_max_pool2d(x, k, k, NULL));
	assert_same(ag_module_forward(ap, x), ag_avg_pool2d(x, k, st, NULL));
	assert_same(ag_module_forward(aa, x), ag_adaptive_avg_pool2d(x, 3, 2));
	ag_tensor_put(x);
	ag_module_put(c);
	ag_module_put(mp);
	ag_module_put(ap);
	ag_module_put(aa);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_modules, activations_flatten_embedding)
{
	struct ag_generator *g = ag_generator_new(3);
	int64_t xs[3] = { 2, 3, 4 }, fl[2] = { 2, 12 }, is = 3;
	struct ag_tensor *x = randn(g, 3, xs), *y;
	struct ag_module *m;
	int64_t idx[3] = { 4, 0, 4 };
	struct ag_tensor *it = ag_from_data(AG_I64, 1, &is, idx);

	assert_same(ag_module_forward(m = ag_relu_new(), x), ag_relu(x));
	ag_module_put(m);
	assert_same(ag_module_forward(m = ag_gelu_new(), x), ag_gelu(x));
	ag_module_put(m);
	assert_same(ag_module_forward(m = ag_tanh_new(), x), ag_tanh(x));
	ag_module_put(m);
	assert_same(ag_module_forward(m = ag_sigmoid_new(), x), ag_sigmoid(x));
	ag_module_put(m);
	assert_same(ag_module_forward(m = ag_leaky_relu_new(0.2), x),
		    ag_leaky_relu(x, 0.2));
	ag_module_put(m);
	assert_same(ag_module_forward(m = ag_flatten_new(1, -1), x),
		    ag_reshape(x, 2, fl));
	ag_module_put(m);
	m = ag_embedding_new(5, 6, g);
	cr_assert(m);
	y = ag_module_forward(m, it);
	cr_assert_eq(ag_tensor_shape(y)[1], 6);
	assert_same(y, ag_embedding(ag_module_get_parameter(m, "weight"), it));
	ag_module_put(m);
	ag_tensor_put(it);
	ag_tensor_put(x);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_modules, dropout_train_eval)
{
	struct ag_generator *g = ag_generator_new(4), *g2 = ag_generator_new(9);
	int64_t xs[2] = { 8, 16 };
	struct ag_tensor *x = randn(g, 2, xs), *y, *want;
	struct ag_module *d = ag_dropout_new(0.5, g2);
	struct ag_generator *g3 = ag_generator_new(9);

	cr_assert(ag_module_is_training(d));
	y = ag_module_forward(d, x);
	want = ag_dropout(x, 0.5, true, g3);
	assert_same(y, want);
	ag_module_eval(d);
	cr_assert(!ag_module_is_training(d));
	y = ag_module_forward(d, x);
	cr_assert(ag_equal(y, x), "eval dropout is the identity");
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_module_put(d);
	ag_generator_free(g);
	ag_generator_free(g2);
	ag_generator_free(g3);
	AG_ASSERT_NO_LEAKS();
}

/* training updates the running stats and counts batches; eval uses them */
Test(nn_modules, batchnorm_train_eval)
{
	struct ag_generator *g = ag_generator_new(5);
	int64_t xs[4] = { 4, 3, 2, 2 }, c = 3;
	struct ag_tensor *x = randn(g, 4, xs);
	struct ag_module *bn = ag_batchnorm2d_new(3, 1e-5, 0.1);
	struct ag_tensor *rm = ag_zeros(AG_F32, 1, &c),
			 *rv = ag_ones(AG_F32, 1, &c);
	struct ag_tensor *nbt = ag_module_get_buffer(bn, "num_batches_tracked");
	struct ag_tensor *w = ag_module_get_parameter(bn, "weight");
	struct ag_tensor *b = ag_module_get_parameter(bn, "bias");

	cr_assert_eq(ag_tensor_dtype(nbt), AG_I64);
	cr_assert_eq(ag_tensor_ndim(nbt), 0);
	cr_assert_eq(((float *)ag_tensor_data(w))[2], 1.0f);
	assert_same(ag_module_forward(bn, x),
		    ag_batch_norm(x, rm, rv, w, b, true, 0.1, 1e-5));
	cr_assert_eq(ag_tensor_item_i64(nbt), 1);
	cr_assert(ag_equal(ag_module_get_buffer(bn, "running_mean"), rm));
	cr_assert(ag_equal(ag_module_get_buffer(bn, "running_var"), rv));
	ag_module_eval(bn);
	assert_same(ag_module_forward(bn, x),
		    ag_batch_norm(x, rm, rv, w, b, false, 0.1, 1e-5));
	cr_assert_eq(ag_tensor_item_i64(nbt), 1, "eval counts no batch");
	/* BatchNorm2d wants 4-d input */
	cr_assert_null(ag_module_forward(bn, rm));
	AG_ASSERT_ERR(AG_ESHAPE, "BatchNorm2d");
	ag_tensor_put(rm);
	ag_tensor_put(rv);
	ag_tensor_put(x);
	ag_module_put(bn);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

/* a stand-in normalisation: counts its calls, returns -x */
static int bn_fn_calls;
static struct ag_tensor *counting_norm(struct ag_tensor *x,
				       struct ag_tensor *running_mean,
				       struct ag_tensor *running_var,
				       struct ag_tensor *weight,
				       struct ag_tensor *bias, bool training,
				       double momentum, double eps)
{
	cr_assert(running_mean && running_var && weight && bias);
	cr_assert(training && momentum == 0.3 && eps == 1e-3);
	bn_fn_calls++;
	return ag_neg(x);
}

/*
 * The function BatchNorm modules normalise with is set on every one in a
 * tree (libag-dist's ag_dist_sync_batchnorm), and NULL restores
 * ag_batch_norm.
 */
Test(nn_modules, batchnorm_fn_swapped_recursively)
{
	struct ag_generator *g = ag_generator_new(8);
	int64_t xs[2] = { 4, 3 };
	struct ag_tensor *x = randn(g, 2, xs), *y, *want, *nx;
	struct ag_module *inner[2] = { ag_tanh_new(),
				       ag_batchnorm1d_new(3, 1e-3, 0.3) };
	struct ag_module *mods[2] = { ag_batchnorm1d_new(3, 1e-3, 0.3),
				      ag_sequential_new(inner, 2) };
	struct ag_module *m = ag_sequential_new(mods, 2);

	cr_assert(m, "%s", ag_errmsg());
	cr_assert_eq(ag_module_set_batch_norm_fn(m, counting_norm), 2);
	cr_assert_eq(ag_module_set_batch_norm_fn(ag_module_get_child(m, "1"),
						 counting_norm),
		     1);
	cr_assert_eq(
		ag_module_set_batch_norm_fn(
			ag_module_get_child(ag_module_get_child(m, "1"), "0"),
			counting_norm),
		0, "Tanh is no BatchNorm");
	y = ag_module_forward(m, x); /* -tanh(-x) */
	nx = ag_neg(x);
	want = ag_tanh(nx);
	ag_tensor_put(nx);
	nx = ag_neg(y);
	ag_tensor_put(y);
	assert_same(nx, want);
	cr_assert_eq(bn_fn_calls, 2);
	cr_assert_eq(ag_module_set_batch_norm_fn(m, NULL), 2);
	y = ag_module_forward(ag_module_get_child(m, "0"), x);
	assert_same(y,
		    ag_batch_norm(x, NULL, NULL, NULL, NULL, true, 0.3, 1e-3));
	cr_assert_eq(bn_fn_calls, 2);
	cr_assert_eq(ag_module_set_batch_norm_fn(NULL, NULL), -AG_EINVAL);
	ag_tensor_put(x);
	ag_module_put(m);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

static struct ag_module *torch_seq(struct ag_generator *g)
{
	struct ag_module *mods[7] = {
		ag_conv2d_new(1, 2, 3, 3, NULL, true, g),
		ag_batchnorm2d_new(2, 1e-5, 0.1),
		ag_relu_new(),
		ag_flatten_new(1, -1),
		ag_linear_new(8, 3, true, g),
		ag_dropout_new(0.5, g),
		ag_batchnorm1d_new(3, 1e-5, 0.1),
	};

	return ag_sequential_new(mods, 7);
}

Test(nn_modules, named_in_torch_order)
{
	struct ag_generator *g = ag_generator_new(6);
	struct ag_module *m = torch_seq(g);
	const char *const *names;
	struct ag_tensor *const *ts;
	struct ag_tensor **ps;
	int n, np = sizeof(REF_SEQ_PARAM_NAMES) /
		    sizeof(REF_SEQ_PARAM_NAMES[0]);
	int nb = sizeof(REF_SEQ_BUFFER_NAMES) / sizeof(REF_SEQ_BUFFER_NAMES[0]);

	cr_assert(m, "%s", ag_errmsg());
	cr_assert_eq(ag_module_named_parameters(m, &names, &ts, &n), 0);
	cr_assert_eq(n, np);
	for (int i = 0; i < n; i++)
		cr_assert_str_eq(names[i], REF_SEQ_PARAM_NAMES[i]);
	cr_assert_eq(ts[0], ag_module_get_parameter(ag_module_get_child(m, "0"),
						    "weight"));
	cr_assert_eq(ag_module_parameters(m, &ps, &n), 0);
	cr_assert_eq(n, np);
	cr_assert_eq(ps[7], ag_module_get_parameter(ag_module_get_child(m, "6"),
						    "bias"));
	cr_assert_eq(ag_module_named_buffers(m, &names, &ts, &n), 0);
	cr_assert_eq(n, nb);
	for (int i = 0; i < n; i++)
		cr_assert_str_eq(names[i], REF_SEQ_BUFFER_NAMES[i]);
	cr_assert_eq(ag_tensor_dtype(ts[2]), AG_I64);
	ag_module_put(m);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

/* train/eval and requires_grad reach every descendant; zero_grad too */
Test(nn_modules, recursion_and_forward_backward)
{
	struct ag_generator *g = ag_generator_new(7);
	struct ag_module *m = torch_seq(g);
	int64_t xs[4] = { 4, 1, 4, 4 };
	struct ag_tensor *x = randn(g, 4, xs), *y, *loss, **ps;
	int n;

	ag_module_eval(m);
	for (int i = 0; i < 7; i++) {
		char nm[4];

		snprintf(nm, sizeof(nm), "%d", i);
		cr_assert(!ag_module_is_training(ag_module_get_child(m, nm)));
	}
	ag_module_train(m, true);
	cr_assert(ag_module_is_training(ag_module_get_child(m, "5")));
	y = ag_module_forward(m, x);
	cr_assert(y, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_shape(y)[1], 3);
	loss = ag_sum(y);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	ag_module_parameters(m, &ps, &n);
	for (int i = 0; i < n; i++) {
		struct ag_tensor *gr = ag_tensor_grad(ps[i]);

		cr_assert(gr, "parameter %d has a grad", i);
		ag_tensor_put(gr);
	}
	ag_module_zero_grad(m);
	for (int i = 0; i < n; i++)
		cr_assert_null(ag_tensor_grad(ps[i]));
	ag_module_requires_grad(m, false);
	for (int i = 0; i < n; i++)
		cr_assert(!ag_tensor_requires_grad(ps[i]));
	ag_tensor_put(loss);
	ag_tensor_put(y);
	/* under inference mode a forward records nothing */
	ag_module_requires_grad(m, true);
	ag_module_eval(m);
	struct ag_mode prev = ag_inference_mode_enter();
	y = ag_module_forward(m, x);
	ag_mode_exit(prev);
	cr_assert(y, "%s", ag_errmsg());
	cr_assert_null(ag_tensor_grad_fn(y));
	cr_assert(!ag_tensor_requires_grad(y));
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_module_put(m);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_modules, registration_errors_and_refs)
{
	struct ag_generator *g = ag_generator_new(8);
	struct ag_module *l = ag_linear_new(2, 2, false, g);
	struct ag_module *bad[2];
	const char *const *names;
	int n;

	cr_assert_null(ag_module_get_parameter(l, "bias"));
	ag_module_named_parameters(l, &names, NULL, &n);
	cr_assert_eq(n, 1);
	cr_assert_eq(ag_module_add_parameter(l, "weight", NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "already has");
	cr_assert_eq(ag_module_add_buffer(l, "a.b", NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "without '.'");
	/* a NULL module in Sequential: the others are put, nothing leaks */
	bad[0] = ag_module_get(l);
	bad[1] = NULL;
	cr_assert_null(ag_sequential_new(bad, 2));
	AG_ASSERT_ERR(AG_EINVAL, "module 1 is NULL");
	cr_assert_null(ag_linear_new(0, 2, true, g));
	AG_ASSERT_ERR(AG_EINVAL, "positive");
	cr_assert_null(ag_linear_new(2, 2, true, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "generator");
	cr_assert_null(ag_dropout_new(1.5, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "[0, 1]");
	ag_module_put(l);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

/* Sequential runs its children in order; BatchNorm1d takes [N, C] */
Test(nn_modules, sequential_matches_chain)
{
	struct ag_generator *g = ag_generator_new(10);
	struct ag_module *mods[3] = { ag_linear_new(5, 4, true, g),
				      ag_batchnorm1d_new(4, 1e-3, 0.3),
				      ag_tanh_new() };
	struct ag_module *seq = ag_sequential_new(mods, 3);
	int64_t xs[2] = { 6, 5 }, c = 4;
	struct ag_tensor *x = randn(g, 2, xs), *h, *b, *want;
	struct ag_tensor *rm = ag_zeros(AG_F32, 1, &c),
			 *rv = ag_ones(AG_F32, 1, &c);

	cr_assert(seq, "%s", ag_errmsg());
	/* one more reference keeps the module alive across a put */
	cr_assert_eq(ag_module_get(seq), seq);
	ag_module_put(seq);
	h = ag_linear(x, ag_module_get_parameter(mods[0], "weight"),
		      ag_module_get_parameter(mods[0], "bias"));
	b = ag_batch_norm(h, rm, rv, ag_module_get_parameter(mods[1], "weight"),
			  ag_module_get_parameter(mods[1], "bias"), true, 0.3,
			  1e-3);
	want = ag_tanh(b);
	ag_tensor_put(h);
	assert_same(ag_module_forward(seq, x), want);
	cr_assert(ag_equal(ag_module_get_buffer(mods[1], "running_var"), rv));
	cr_assert_eq(ag_tensor_item_i64(ag_module_get_buffer(
			     mods[1], "num_batches_tracked")),
		     1);
	/* a replaced parameter is the one the forward and the lists use */
	struct ag_tensor *zw = ag_zeros(AG_F32, 1, &c);
	struct ag_tensor *const *ts;
	const char *const *names;
	int n;

	cr_assert_eq(ag_module_set_parameter(mods[1], "weight", zw), 0);
	cr_assert_eq(ag_module_named_parameters(seq, &names, &ts, &n), 0);
	cr_assert_str_eq(names[2], "1.weight");
	cr_assert_eq(ts[2], zw);
	ag_module_eval(seq);
	h = ag_module_forward(seq, x);
	for (int i = 0; i < 24; i++)
		cr_assert_eq(
			((float *)ag_tensor_data(h))[i],
			tanhf(((float *)ag_tensor_data(ag_module_get_parameter(
				mods[1], "bias")))[i % 4]));
	ag_tensor_put(h);
	ag_tensor_put(zw);
	ag_tensor_put(b);
	ag_tensor_put(rm);
	ag_tensor_put(rv);
	ag_tensor_put(x);
	ag_module_put(seq);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

/*
 * A model made, trained and stepped inside scopes, as a service writes it:
 * what nn/ gets for itself (Sequential's intermediates, an optimiser's
 * state, a constructor's parameters) is not the caller's scope's to put.
 * Before ag_module_forward and the nn/ entry points suspended the scope,
 * the scope put those a second time.
 */
Test(modules, trained_inside_scopes)
{
	struct ag_scope *outer = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(3);
	struct ag_module *mods[3] = { ag_linear_new(4, 8, true, g),
				      ag_relu_new(),
				      ag_linear_new(8, 2, true, g) };
	struct ag_module *m = ag_sequential_new(mods, 3);
	struct ag_tensor **p;
	struct ag_optim *o;
	int np;

	cr_assert_not_null(m, "%s", ag_errmsg());
	cr_assert_eq(ag_module_parameters(m, &p, &np), 0);
	o = ag_adam_new(p, np, 1e-2, 0.9, 0.999, 1e-8, 0);
	cr_assert_not_null(o, "%s", ag_errmsg());
	for (int step = 0; step < 3; step++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *x =
			ag_randn(g, AG_F32, 2, (int64_t[]){ 5, 4 });
		struct ag_tensor *y = ag_module_forward(m, x);

		cr_assert_not_null(y, "%s", ag_errmsg());
		/* x and y only: the hidden activations are not the scope's */
		cr_expect_eq(ag__scope_count(s), 2);
		cr_assert_eq(ag_backward(ag_sum(y), NULL, NULL), 0, "%s",
			     ag_errmsg());
		cr_assert_eq(ag_optim_step(o), 0, "%s", ag_errmsg());
		ag_optim_zero_grad(o);
		ag_scope_end(s);
	}
	ag_scope_end(outer);
	/* the model and the optimiser's state outlive both scopes */
	cr_expect_gt(ag__live_tensors(), 0);
	ag_optim_free(o);
	ag_module_put(m);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}
