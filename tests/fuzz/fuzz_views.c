// SPDX-License-Identifier: MIT
/*
 * libFuzzer target: hostile shape, stride and dim arguments for the view
 * and reduction ops.  Each input is a program: a small tensor, then up to
 * eight views or reductions with fuzzed arguments (sizes near INT64_MAX,
 * negative dims, zero steps, huge expands), then a forward and backward
 * through what is left.  Any error must be a clean return; nothing may be
 * left live.  Compute runs only on results of at most 2^16 elements: a
 * valid view of 2^40 elements is fine to make but not to fill.
 */
#include "fuzz.h"

#define COMPUTE_MAX (1 << 16)

static struct ag_tensor *start(struct fuzz_in *in)
{
	enum ag_dtype dt = fuzz_pick(in, 2) ? AG_F64 : AG_F32;
	int ndim = fuzz_pick(in, 5);
	int64_t shape[4];
	struct ag_tensor *t;

	for (int d = 0; d < ndim; d++)
		shape[d] = fuzz_pick(in, 5);
	t = ag_full(dt, ndim, shape, 0.5);
	if (t && fuzz_pick(in, 2))
		ag_tensor_set_requires_grad(t, true);
	return t;
}

static void shape_arg(struct fuzz_in *in, int *ndim, int64_t *shape)
{
	*ndim = fuzz_pick(in, AG_MAX_DIMS + 2) - 1; /* -1 .. 9 */
	for (int d = 0; d < AG_MAX_DIMS + 1; d++)
		shape[d] = fuzz_i64(in);
}

static struct ag_tensor *step(struct fuzz_in *in, struct ag_tensor *t)
{
	int64_t shape[AG_MAX_DIMS + 1];
	int perm[AG_MAX_DIMS];
	int ndim, dim = fuzz_dim(in);
	bool keep = fuzz_pick(in, 2);
	bool small = ag_tensor_numel(t) <= COMPUTE_MAX;

	switch (fuzz_pick(in, 16)) {
	case 0:
		shape_arg(in, &ndim, shape);
		return ag_reshape(t, ndim, shape);
	case 1:
		return ag_transpose(t, dim, fuzz_dim(in));
	case 2:
		for (int d = 0; d < AG_MAX_DIMS; d++)
			perm[d] = fuzz_dim(in);
		return ag_tensor_ndim(t) ? ag_permute(t, perm) : NULL;
	case 3:
		return ag_slice(t, dim, fuzz_i64(in), fuzz_i64(in),
				fuzz_i64(in));
	case 4:
		shape_arg(in, &ndim, shape);
		return ag_expand(t, ndim, shape);
	case 5:
		return ag_unsqueeze(t, dim);
	case 6:
		return ag_squeeze(t, dim);
	case 7:
		return small ? ag_sum_dim(t, dim, keep) : NULL;
	case 8:
		return small ? ag_mean_dim(t, dim, keep) : NULL;
	case 9:
		return small ? ag_max_dim(t, dim, keep) : NULL;
	case 10:
		return small ? ag_logsumexp(t, dim, keep) : NULL;
	case 11:
		return small ? ag_var_dim(t, dim, fuzz_pick(in, 2), keep) :
			       NULL;
	case 12:
		return small ? ag_softmax(t, dim) : NULL;
	case 13:
		return small ? ag_log_softmax(t, dim) : NULL;
	case 14:
		return small ? ag_contiguous(t) : NULL;
	default:
		return small ? ag_exp(t) : NULL;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *t = start(&in), *x = t;
	int nsteps = fuzz_pick(&in, 9);

	for (int i = 0; i < nsteps && t; i++) {
		struct ag_tensor *r = step(&in, t);

		if (r)
			t = r;
		ag_clear_error();
	}
	if (t && ag_tensor_numel(t) <= COMPUTE_MAX) {
		struct ag_tensor *loss = ag_sum(ag_tanh(t));

		if (loss && ag_tensor_requires_grad(loss))
			ag_backward(loss, NULL, NULL);
		if (x && ag_tensor_grad(x))
			(void)ag_tensor_item(ag_sum(ag_tensor_grad(x)));
	}
	ag_clear_error();
	ag_scope_end(s);
	fuzz_check_no_leaks();
	return 0;
}
