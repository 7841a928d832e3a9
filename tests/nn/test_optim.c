// SPDX-License-Identifier: MIT
/*
 * Optimisers against torch 1.13: 5 steps of each configuration on two f64
 * parameters, every value within 1e-12 relative (torch_refs_optim.h, made
 * by gen_refs_optim.py, which describes the inputs).
 */
#include "common.h"
#include "torch_refs_optim.h"

#define STEPS 5
#define N0 12
#define N1 5

static struct ag_tensor *P[2];

static void make_params(void)
{
	double a[N0], b[N1];
	int64_t s0[2] = { 3, 4 }, s1 = N1;

	for (int i = 0; i < N0; i++)
		a[i] = sin(i + 1) / 2;
	for (int i = 0; i < N1; i++)
		b[i] = cos(2 * i) - 0.3;
	P[0] = ag_from_data(AG_F64, 2, s0, a);
	P[1] = ag_from_data(AG_F64, 1, &s1, b);
	cr_assert(P[0] && P[1]);
	cr_assert_eq(ag_tensor_set_requires_grad(P[0], true), 0);
	cr_assert_eq(ag_tensor_set_requires_grad(P[1], true), 0);
}

static void put_params(void)
{
	ag_tensor_put(P[0]);
	ag_tensor_put(P[1]);
}

/* p.grad = cos(1.7 i + 0.9 s + k) * 2, through backward of p * 1 */
static void set_grads(int s)
{
	for (int k = 0; k < 2; k++) {
		int64_t n = ag_tensor_numel(P[k]);
		double g[N0];
		struct ag_tensor *gt, *y;

		for (int64_t i = 0; i < n; i++)
			g[i] = cos(1.7 * (double)i + 0.9 * s + k) * 2;
		ag_tensor_zero_grad(P[k]);
		gt = ag_from_data(AG_F64, ag_tensor_ndim(P[k]),
				  ag_tensor_shape(P[k]), g);
		y = ag_mul_scalar(P[k], 1.0);
		cr_assert_eq(ag_backward(y, gt, NULL), 0, "%s", ag_errmsg());
		ag_tensor_put(y);
		ag_tensor_put(gt);
	}
}

static void assert_close(const double *got, const double *want, int n,
			 const char *what, int step)
{
	for (int i = 0; i < n; i++) {
		double tol = 1e-12 * fmax(fabs(want[i]), 1e-300);

		cr_assert(fabs(got[i] - want[i]) <= tol,
			  "%s step %d [%d]: %.17g, torch %.17g", what, step, i,
			  got[i], want[i]);
	}
}

static void check_step(const double *ref, int s, const char *what)
{
	const double *want = ref + s * (N0 + N1);

	assert_close(ag_tensor_data(P[0]), want, N0, what, s);
	assert_close(ag_tensor_data(P[1]), want + N0, N1, what, s);
}

/* 5 steps; lrs (NULL: none) holds each step's group lrs after sched */
static void run(struct ag_optim *o, struct ag_lr_scheduler *sc,
		const double *ref, const double *lrs, int ngroups,
		const char *what)
{
	cr_assert(o, "%s: %s", what, ag_errmsg());
	for (int s = 0; s < STEPS; s++) {
		uint64_t v = ag_tensor_version(P[0]);

		set_grads(s);
		cr_assert_eq(ag_optim_step(o), 0, "%s", ag_errmsg());
		cr_assert_gt(ag_tensor_version(P[0]), v, "no version bump");
		if (sc)
			cr_assert_eq(ag_scheduler_step(sc), 0);
		check_step(ref, s, what);
		for (int k = 0; lrs && k < ngroups; k++)
			assert_close((double[]){ ag_optim_group_get_lr(o, k) },
				     &lrs[s * ngroups + k], 1, what, s);
	}
}

/* the second parameter in a group of its own: lr 0.05, weight decay 0.02 */
static void split_groups(struct ag_tensor **first)
{
	*first = P[0];
}

#define SGD_TEST(tname, REF, ...)                        \
	Test(nn_optim, tname)                            \
	{                                                \
		struct ag_sgd_opts so = { __VA_ARGS__ }; \
		struct ag_optim *o;                      \
                                                         \
		make_params();                           \
		o = ag_sgd_new_ex(P, 2, &so);            \
		run(o, NULL, REF, NULL, 0, #tname);      \
		ag_optim_free(o);                        \
		put_params();                            \
		AG_ASSERT_NO_LEAKS();                    \
	}

SGD_TEST(sgd_plain, REF_SGD_PLAIN, .lr = 0.1)
SGD_TEST(sgd_momentum, REF_SGD_MOMENTUM, .lr = 0.1, .momentum = 0.9)
SGD_TEST(sgd_dampening, REF_SGD_DAMPENING, .lr = 0.1, .momentum = 0.9,
	 .dampening = 0.3)
SGD_TEST(sgd_nesterov, REF_SGD_NESTEROV, .lr = 0.1, .momentum = 0.9,
	 .nesterov = true)
SGD_TEST(sgd_weight_decay, REF_SGD_WD, .lr = 0.1, .momentum = 0.9,
	 .weight_decay = 0.01)

#define ADAM_TEST(tname, REF, ctor, ...)                  \
	Test(nn_optim, tname)                             \
	{                                                 \
		struct ag_adam_opts ao = { __VA_ARGS__ }; \
		struct ag_optim *o;                       \
                                                          \
		make_params();                            \
		o = ctor(P, 2, &ao);                      \
		run(o, NULL, REF, NULL, 0, #tname);       \
		ag_optim_free(o);                         \
		put_params();                             \
		AG_ASSERT_NO_LEAKS();                     \
	}

ADAM_TEST(adam_wd, REF_ADAM_WD, ag_adam_new_ex, .lr = 0.01, .beta1 = 0.9,
	  .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1)
ADAM_TEST(adam_amsgrad, REF_ADAM_AMSGRAD, ag_adam_new_ex, .lr = 0.01,
	  .beta1 = 0.5, .beta2 = 0.9, .eps = 1e-8, .amsgrad = true)
ADAM_TEST(adamw_amsgrad, REF_ADAMW_AMSGRAD, ag_adamw_new_ex, .lr = 0.01,
	  .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1,
	  .amsgrad = true)

Test(nn_optim, adamw)
{
	struct ag_optim *o;

	make_params();
	o = ag_adamw_new(P, 2, 0.01, 0.9, 0.999, 1e-8, 0.1);
	run(o, NULL, REF_ADAMW, NULL, 0, "adamw");
	ag_optim_free(o);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

/* Adam, and its state under torch's names with torch's values */
Test(nn_optim, adam_and_state)
{
	const char *const *names;
	struct ag_tensor *const *ts;
	struct ag_optim *o;
	int n;

	make_params();
	o = ag_adam_new(P, 2, 0.01, 0.9, 0.999, 1e-8, 0);
	cr_assert_eq(ag_optim_state(o, &names, &ts, &n), 0);
	cr_assert_eq(n, 0, "no state before the first step");
	run(o, NULL, REF_ADAM, NULL, 0, "adam");
	cr_assert_eq(ag_optim_state(o, &names, &ts, &n), 0);
	cr_assert_eq(n, 6);
	const char *want[] = { "state.0.step",	     "state.0.exp_avg",
			       "state.0.exp_avg_sq", "state.1.step",
			       "state.1.exp_avg",    "state.1.exp_avg_sq" };
	for (int i = 0; i < 6; i++)
		cr_assert_str_eq(names[i], want[i]);
	cr_assert_eq(ag_tensor_ndim(ts[0]), 0);
	cr_assert_eq(ag_tensor_dtype(ts[0]), AG_F32);
	cr_assert_eq(ag_tensor_item(ts[0]), REF_ADAM_STEP[0]);
	assert_close(ag_tensor_data(ts[5]), REF_ADAM_EXP_AVG_SQ1, N1,
		     "exp_avg_sq", 5);
	ag_optim_free(o);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

/*
 * State saved after 2 steps and loaded into a fresh optimiser continues
 * exactly as the original: steps 3..5 match torch.
 */
Test(nn_optim, load_state_resumes)
{
	const char *const *names;
	struct ag_tensor *const *ts;
	struct ag_tensor *copy[8];
	const char *cnames[8];
	struct ag_optim *o, *o2;
	int n;

	make_params();
	o = ag_adam_new_ex(P, 2,
			   &(struct ag_adam_opts){ .lr = 0.01,
						   .beta1 = 0.5,
						   .beta2 = 0.9,
						   .eps = 1e-8,
						   .amsgrad = true });
	for (int s = 0; s < 2; s++) {
		set_grads(s);
		cr_assert_eq(ag_optim_step(o), 0);
	}
	cr_assert_eq(ag_optim_state(o, &names, &ts, &n), 0);
	cr_assert_eq(n, 8);
	for (int i = 0; i < n; i++) {
		copy[i] = ag_clone(ts[i]);
		cnames[i] = strdup(names[i]);
	}
	ag_optim_free(o);
	o2 = ag_adam_new_ex(P, 2,
			    &(struct ag_adam_opts){ .lr = 0.01,
						    .beta1 = 0.5,
						    .beta2 = 0.9,
						    .eps = 1e-8,
						    .amsgrad = true });
	/* a wrong shape is refused and changes nothing */
	struct ag_tensor *bad = copy[2];
	copy[2] = copy[6];
	cr_assert_eq(ag_optim_load_state(o2, cnames, copy, n), -AG_ESHAPE);
	ag_clear_error();
	copy[2] = bad;
	cr_assert_eq(ag_optim_load_state(o2, cnames, copy, n), 0, "%s",
		     ag_errmsg());
	for (int s = 2; s < STEPS; s++) {
		set_grads(s);
		cr_assert_eq(ag_optim_step(o2), 0);
		check_step(REF_ADAM_AMSGRAD, s, "resumed");
	}
	for (int i = 0; i < n; i++) {
		ag_tensor_put(copy[i]);
		free((char *)cnames[i]);
	}
	ag_optim_free(o2);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

Test(nn_optim, sgd_groups)
{
	struct ag_tensor *first;
	struct ag_optim *o;

	make_params();
	split_groups(&first);
	o = ag_sgd_new(&first, 1, 0.1, 0.9, 0);
	cr_assert_eq(ag_optim_add_param_group(o, &P[1], 1, 0.05, 0.02), 1);
	run(o, NULL, REF_SGD_GROUPS, NULL, 0, "sgd_groups");
	ag_optim_free(o);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

Test(nn_optim, adam_groups)
{
	struct ag_optim *o;

	make_params();
	o = ag_adam_new(P, 1, 0.01, 0.9, 0.999, 1e-8, 0);
	cr_assert_eq(ag_optim_add_param_group(o, &P[1], 1, 0.05, 0.02), 1);
	run(o, NULL, REF_ADAM_GROUPS, NULL, 0, "adam_groups");
	ag_optim_free(o);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

Test(nn_optim, step_lr)
{
	struct ag_lr_scheduler *sc;
	struct ag_optim *o;

	make_params();
	o = ag_sgd_new(P, 2, 0.1, 0.9, 0);
	sc = ag_step_lr_new(o, 2, 0.5);
	run(o, sc, REF_SGD_STEPLR, REF_SGD_STEPLR_LR, 1, "step_lr");
	ag_scheduler_free(sc);
	ag_optim_free(o);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

Test(nn_optim, cosine_lr_groups)
{
	struct ag_lr_scheduler *sc;
	struct ag_optim *o;

	make_params();
	o = ag_adam_new(P, 1, 0.01, 0.9, 0.999, 1e-8, 0);
	cr_assert_eq(ag_optim_add_param_group(o, &P[1], 1, 0.05, 0.02), 1);
	sc = ag_cosine_lr_new(o, 3, 0.001);
	run(o, sc, REF_ADAM_COSINE, REF_ADAM_COSINE_LR, 2, "cosine");
	ag_scheduler_free(sc);
	ag_optim_free(o);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

static void clip_case(double nt, const double *total, const double *grads,
		      const char *what)
{
	struct ag_tensor *g[2];
	double got;

	make_params();
	set_grads(0);
	got = ag_clip_grad_norm(P, 2, 1.5, nt);
	assert_close(&got, total, 1, what, 0);
	g[0] = ag_tensor_grad(P[0]);
	g[1] = ag_tensor_grad(P[1]);
	assert_close(ag_tensor_data(g[0]), grads, N0, what, 0);
	assert_close(ag_tensor_data(g[1]), grads + N0, N1, what, 0);
	ag_tensor_put(g[0]);
	ag_tensor_put(g[1]);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

Test(nn_optim, clip_grad_norm)
{
	clip_case(2, REF_CLIP_TOTAL_2, REF_CLIP_GRADS_2, "norm 2");
	clip_case(1, REF_CLIP_TOTAL_1, REF_CLIP_GRADS_1, "norm 1");
	clip_case(INFINITY, REF_CLIP_TOTAL_INF, REF_CLIP_GRADS_INF, "norm inf");
	clip_case(3, REF_CLIP_TOTAL_3, REF_CLIP_GRADS_3, "norm 3");
}

/* f32 parameters take the same path in f32: close to the f64 result */
Test(nn_optim, f32_adam_close)
{
	struct ag_tensor *q[2];
	struct ag_optim *o, *o32;

	make_params();
	for (int k = 0; k < 2; k++) {
		struct ag_tensor *d = ag_detach(P[k]);

		q[k] = ag_to(d, AG_F32);
		ag_tensor_put(d);
	}
	ag_tensor_set_requires_grad(q[0], true);
	ag_tensor_set_requires_grad(q[1], true);
	o = ag_adam_new(P, 2, 0.01, 0.9, 0.999, 1e-8, 0);
	o32 = ag_adam_new(q, 2, 0.01, 0.9, 0.999, 1e-8, 0);
	cr_assert(o && o32, "%s", ag_errmsg());
	for (int s = 0; s < STEPS; s++) {
		set_grads(s);
		for (int k = 0; k < 2; k++) {
			struct ag_tensor *g = ag_tensor_grad(P[k]);
			struct ag_tensor *g32 = ag_to(g, AG_F32);
			struct ag_tensor *y = ag_mul_scalar(q[k], 1.0);

			ag_tensor_zero_grad(q[k]);
			cr_assert_eq(ag_backward(y, g32, NULL), 0);
			ag_tensor_put(y);
			ag_tensor_put(g32);
			ag_tensor_put(g);
		}
		cr_assert_eq(ag_optim_step(o), 0);
		cr_assert_eq(ag_optim_step(o32), 0);
	}
	for (int i = 0; i < N0; i++)
		cr_assert_float_eq(((float *)ag_tensor_data(q[0]))[i],
				   ((double *)ag_tensor_data(P[0]))[i], 1e-5);
	ag_optim_free(o);
	ag_optim_free(o32);
	ag_tensor_put(q[0]);
	ag_tensor_put(q[1]);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

Test(nn_optim, errors)
{
	struct ag_tensor *i64 = ag_zeros(AG_I64, 0, NULL);

	make_params();
	cr_assert_null(ag_sgd_new(&i64, 1, 0.1, 0, 0));
	AG_ASSERT_ERR(AG_EDTYPE, "f32 or f64");
	cr_assert_null(ag_sgd_new_ex(
		P, 2, &(struct ag_sgd_opts){ .lr = 0.1, .nesterov = true }));
	AG_ASSERT_ERR(AG_EINVAL, "nesterov");
	cr_assert_null(ag_adam_new(P, 2, 0.1, 1.0, 0.9, 1e-8, 0));
	AG_ASSERT_ERR(AG_EINVAL, "betas");
	struct ag_optim *o = ag_sgd_new(P, 2, 0.1, 0.9, 0);
	cr_assert_eq(ag_optim_add_param_group(o, P, 1, 0.1, 0), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "already in a group");
	cr_assert_eq(ag_optim_load_state(o, (const char *[]){ "state.9.step" },
					 &i64, 1),
		     -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "not a state entry");
	/* a parameter without a grad is skipped */
	cr_assert_eq(ag_optim_step(o), 0);
	cr_assert_eq(((double *)ag_tensor_data(P[1]))[0], cos(0) - 0.3);
	ag_optim_free(o);
	ag_tensor_put(i64);
	put_params();
	AG_ASSERT_NO_LEAKS();
}

/* the same f32 values in two fresh leaves that require grad */
static void twin_params(struct ag_tensor **a, struct ag_tensor **b, int64_t n)
{
	float v[40];

	cr_assert(n <= 40);
	for (int64_t i = 0; i < n; i++)
		v[i] = (float)sin((double)i + 0.5);
	*a = ag_from_data(AG_F32, 1, &n, v);
	*b = ag_from_data(AG_F32, 1, &n, v);
	cr_assert(*a && *b);
	cr_assert_eq(ag_tensor_set_requires_grad(*a, true), 0);
	cr_assert_eq(ag_tensor_set_requires_grad(*b, true), 0);
}

static struct ag_tensor *grad_for(int64_t n, int s)
{
	float v[40];

	for (int64_t i = 0; i < n; i++)
		v[i] = (float)cos(1.3 * (double)i + s);
	return ag_from_data(AG_F32, 1, &n, v);
}

/*
 * ag_sgd_update_ and ag_adam_update_ on state kept by the caller give
 * ag_optim_step's values bit for bit (f32, 37 elements: whole vectors and
 * a tail on every path), and bump only p's version.
 */
Test(nn_optim, update_ops)
{
	const int64_t n = 37;
	struct ag_tensor *a, *b, *a2, *b2, *buf, *m, *v, *vmax;
	struct ag_optim *sgd, *adam;

	twin_params(&a, &b, n);
	twin_params(&a2, &b2, n);
	sgd = ag_sgd_new_ex(&a, 1,
			    &(struct ag_sgd_opts){ .lr = 0.1,
						   .momentum = 0.9,
						   .weight_decay = 1e-2,
						   .nesterov = true });
	adam = ag_adam_new_ex(&a2, 1,
			      &(struct ag_adam_opts){ .lr = 1e-2,
						      .beta1 = 0.9,
						      .beta2 = 0.999,
						      .eps = 1e-8,
						      .weight_decay = 1e-2,
						      .amsgrad = true });
	buf = ag_zeros(AG_F32, 1, &n);
	m = ag_zeros(AG_F32, 1, &n);
	v = ag_zeros(AG_F32, 1, &n);
	vmax = ag_zeros(AG_F32, 1, &n);
	cr_assert(sgd && adam && buf && m && v && vmax);
	for (int s = 0; s < 3; s++) {
		struct ag_tensor *g = grad_for(n, s);
		struct ag_mode md;
		uint64_t ver = ag_tensor_version(b),
			 mver = ag_tensor_version(m);

		cr_assert_eq(ag_tensor_set_grad(a, g), 0);
		cr_assert_eq(ag_tensor_set_grad(a2, g), 0);
		cr_assert_eq(ag_optim_step(sgd), 0, "%s", ag_errmsg());
		cr_assert_eq(ag_optim_step(adam), 0, "%s", ag_errmsg());
		md = ag_no_grad_enter();
		cr_assert_eq(ag_sgd_update_(b, g, buf,
					    &(struct ag_sgd_update){
						    .lr = 0.1,
						    .momentum = 0.9,
						    .weight_decay = 1e-2,
						    .nesterov = true,
						    .first = s == 0 }),
			     0, "%s", ag_errmsg());
		cr_assert_eq(ag_adam_update_(b2, g, m, v, vmax,
					     &(struct ag_adam_update){
						     .lr = 1e-2,
						     .beta1 = 0.9,
						     .beta2 = 0.999,
						     .eps = 1e-8,
						     .weight_decay = 1e-2,
						     .step = s + 1 }),
			     0, "%s", ag_errmsg());
		ag_mode_exit(md);
		cr_assert_eq(ag_tensor_version(b), ver + 1);
		cr_assert_eq(ag_tensor_version(m), mver);
		cr_assert(!memcmp(ag_tensor_data(a), ag_tensor_data(b),
				  (size_t)n * sizeof(float)),
			  "sgd step %d", s);
		cr_assert(!memcmp(ag_tensor_data(a2), ag_tensor_data(b2),
				  (size_t)n * sizeof(float)),
			  "adam step %d", s);
		ag_tensor_put(g);
	}
	ag_optim_free(sgd);
	ag_optim_free(adam);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(a2);
	ag_tensor_put(b2);
	ag_tensor_put(buf);
	ag_tensor_put(m);
	ag_tensor_put(v);
	ag_tensor_put(vmax);
	AG_ASSERT_NO_LEAKS();
}

/* Bad arguments are refused before anything is written. */
Test(nn_optim, update_ops_errors)
{
	const int64_t n = 6, n2[2] = { 2, 3 }, n5 = 5;
	struct ag_tensor *p = ag_ones(AG_F32, 1, &n);
	struct ag_tensor *g = ag_ones(AG_F32, 1, &n);
	struct ag_tensor *g64 = ag_ones(AG_F64, 1, &n);
	struct ag_tensor *g5 = ag_ones(AG_F32, 1, &n5);
	struct ag_tensor *g2 = ag_ones(AG_F32, 2, n2);
	struct ag_tensor *gt = ag_transpose(g2, 0, 1);
	struct ag_tensor *pi = ag_zeros(AG_I64, 1, &n);
	const struct ag_sgd_update su = { .lr = 0.1 };
	const struct ag_adam_update au = {
		.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .step = 1
	};
	uint64_t ver;

	cr_assert(p && g && g64 && g5 && gt && pi);
	ver = ag_tensor_version(p);
	cr_assert_eq(ag_sgd_update_(NULL, g, NULL, &su), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_sgd_update_");
	cr_assert_eq(ag_sgd_update_(p, g, NULL, NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_sgd_update_");
	cr_assert_eq(ag_adam_update_(p, g, g, NULL, NULL, &au), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "exp_avg_sq");
	cr_assert_eq(ag_sgd_update_(p, g64, NULL, &su), -AG_EDTYPE);
	AG_ASSERT_ERR(AG_EDTYPE, "grad has dtype f64");
	cr_assert_eq(ag_sgd_update_(p, g, g5, &su), -AG_ESHAPE);
	AG_ASSERT_ERR(AG_ESHAPE, "buf has 5 elements, p has 6");
	cr_assert_eq(ag_sgd_update_(p, gt, NULL, &su), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "grad is not contiguous");
	cr_assert_eq(ag_sgd_update_(pi, pi, NULL, &su), -AG_EDTYPE);
	AG_ASSERT_ERR(AG_EDTYPE, "floating point");
	cr_assert_eq(ag_tensor_set_requires_grad(p, true), 0);
	cr_assert_eq(ag_adam_update_(p, g, g5, g, NULL, &au), -AG_ESHAPE);
	AG_ASSERT_ERR(AG_ESHAPE, "exp_avg has 5");
	cr_assert_eq(ag_sgd_update_(p, g, NULL, &su), -AG_ELEAF);
	AG_ASSERT_ERR(AG_ELEAF, "in-place");
	cr_assert_eq(ag_tensor_version(p), ver);
	cr_assert_eq(((float *)ag_tensor_data(p))[0], 1.0f);
	ag_tensor_put(p);
	ag_tensor_put(g);
	ag_tensor_put(g64);
	ag_tensor_put(g5);
	ag_tensor_put(g2);
	ag_tensor_put(gt);
	ag_tensor_put(pi);
	AG_ASSERT_NO_LEAKS();
}
