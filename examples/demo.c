// SPDX-License-Identifier: MIT
/* The main demo: tensors, views, modes and a backward pass. */
#include <stdio.h>

#include <ag/ag.h>

int main(void)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(42);
	int64_t shape[2] = { 2, 3 };
	struct ag_tensor *x = ag_rand(g, AG_F32, 2, shape);
	struct ag_tensor *y, *loss;

	ag_tensor_set_requires_grad(x, true);
	printf("x = ");
	ag_tensor_print(x, stdout);
	y = ag_tanh(ag_mul_scalar(x, 2.0));
	loss = ag_sum(y);
	printf("loss = ");
	ag_tensor_print(loss, stdout);
	if (ag_backward(loss, NULL, NULL)) {
		fprintf(stderr, "backward failed: %s\n", ag_errmsg());
		return 1;
	}
	printf("dloss/dx = ");
	ag_tensor_print(ag_tensor_grad(x), stdout);
	{
		AG_NO_GRAD_SCOPE();
		printf("under no-grad, grad mode is %s\n",
		       ag_is_grad_enabled() ? "on" : "off");
	}
	printf("after the block, grad mode is %s\n",
	       ag_is_grad_enabled() ? "on" : "off");
	ag_scope_end(s);
	ag_generator_free(g);
	return 0;
}
