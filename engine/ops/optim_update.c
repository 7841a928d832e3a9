// SPDX-License-Identifier: MIT
/*
 * The optimisers' fused updates as public in-place ops (include/ag/optim.h):
 * nn/ builds on the public API only, so its optimisers reach the simd
 * kernels (simd/kern_optim.h) through these.  The constants of torch's
 * formulas are computed here in f64; the kernels round each to the data
 * type once.
 */
#include <math.h>

#include <ag/optim.h>

#include "ops.h"

/* t is dense with p's dtype and element count */
static int check_like(const char *fn, const char *name,
		      const struct ag_tensor *p, const struct ag_tensor *t)
{
	if (t->dtype != p->dtype)
		return ag__err(AG_EDTYPE, "%s: %s has dtype %s, p has %s", fn,
			       name, ag_dtype_name(t->dtype),
			       ag_dtype_name(p->dtype));
	if (t->numel != p->numel)
		return ag__err(AG_ESHAPE,
			       "%s: %s has %lld elements, p has %lld", fn, name,
			       (long long)t->numel, (long long)p->numel);
	if (!ag_tensor_is_contiguous(t))
		return ag__err(AG_EINVAL, "%s: %s is not contiguous", fn, name);
	return 0;
}

/* names[i] of tensors[i]; optional ones (NULL) are skipped */
static int check_all(const char *fn, struct ag_tensor *p,
		     struct ag_tensor *const *t, const char *const *names,
		     int n)
{
	int err;

	if (p->dtype != AG_F32 && p->dtype != AG_F64)
		return ag__err(AG_EDTYPE,
			       "%s: expected a floating point p, but got %s",
			       fn, ag_dtype_name(p->dtype));
	for (int i = 0; i < n; i++) {
		if (!t[i])
			continue;
		err = check_like(fn, names[i], p, t[i]);
		if (err)
			return err;
	}
	return ag__inplace_check(fn, p, true);
}

int ag_sgd_update_(struct ag_tensor *p, struct ag_tensor *grad,
		   struct ag_tensor *buf, const struct ag_sgd_update *u)
{
	static const char *const names[] = { "p", "grad", "buf" };
	static const char fn[] = "ag_sgd_update_";
	struct ag_tensor *t[] = { p, grad, buf };
	struct ag_k_sgd a;
	int err;

	if (!p)
		return ag__err_null(fn, "p");
	if (!grad)
		return ag__err_null(fn, "grad");
	if (!u)
		return ag__err_null(fn, "u");
	err = check_all(fn, p, t, names, 3);
	if (err)
		return err;
	a = (struct ag_k_sgd){ u->weight_decay, u->momentum, 1 - u->dampening,
			       -u->lr,		u->nesterov, u->first };
	if (p->dtype == AG_F32)
		ag_k_sgd_f32(p->numel, ag__data(p), ag__data(grad),
			     buf ? ag__data(buf) : NULL, &a);
	else
		ag_k_sgd_f64(p->numel, ag__data(p), ag__data(grad),
			     buf ? ag__data(buf) : NULL, &a);
	ag__storage_bump(p->storage, fn);
	return 0;
}

int ag_adam_update_(struct ag_tensor *p, struct ag_tensor *grad,
		    struct ag_tensor *exp_avg, struct ag_tensor *exp_avg_sq,
		    struct ag_tensor *max_exp_avg_sq,
		    const struct ag_adam_update *u)
{
	static const char *const names[] = { "p", "grad", "exp_avg",
					     "exp_avg_sq", "max_exp_avg_sq" };
	static const char fn[] = "ag_adam_update_";
	struct ag_tensor *t[] = { p, grad, exp_avg, exp_avg_sq,
				  max_exp_avg_sq };
	struct ag_k_adam a;
	double bc1, bc2;
	int err;

	for (int i = 0; i < 4; i++)
		if (!t[i])
			return ag__err_null(fn, names[i]);
	if (!u)
		return ag__err_null(fn, "u");
	err = check_all(fn, p, t, names, 5);
	if (err)
		return err;
	bc1 = 1 - pow(u->beta1, u->step);
	bc2 = 1 - pow(u->beta2, u->step);
	a = (struct ag_k_adam){ .nss = -(u->lr / bc1),
				.bc2s = sqrt(bc2),
				.w = 1 - u->beta1,
				.beta2 = u->beta2,
				.c2 = 1 - u->beta2,
				.eps = u->eps,
				.wd = u->weight_decay,
				.decay = 1 - u->lr * u->weight_decay,
				.decoupled = u->decoupled,
				.lerp_hi = u->beta1 > 0.5 };
	if (p->dtype == AG_F32)
		ag_k_adam_f32(p->numel, ag__data(p), ag__data(grad),
			      ag__data(exp_avg), ag__data(exp_avg_sq),
			      max_exp_avg_sq ? ag__data(max_exp_avg_sq) : NULL,
			      &a);
	else
		ag_k_adam_f64(p->numel, ag__data(p), ag__data(grad),
			      ag__data(exp_avg), ag__data(exp_avg_sq),
			      max_exp_avg_sq ? ag__data(max_exp_avg_sq) : NULL,
			      &a);
	ag__storage_bump(p->storage, fn);
	return 0;
}
