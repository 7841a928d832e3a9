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
