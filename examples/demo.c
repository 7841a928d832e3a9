// SPDX-License-Identifier: MIT
/*
 * The main demo: fit y = tanh(x W1) W2 to a target with SGD.  Each step's
 * forward records a graph, backward runs it on the pool, the update runs
 * under no-grad (bumping the parameters' versions), and a scope frees the
 * step's tensors.
 */
#include <stdio.h>

#include <ag/ag.h>
#include <ag/pool.h>

#define B 64
#define IN 8
#define HID 32

static struct ag_tensor *param(struct ag_generator *g, int64_t r, int64_t c,
			       double scale)
{
	int64_t shape[2] = { r, c };
	struct ag_tensor *t = ag_randn(g, AG_F32, 2, shape);

	ag_mul_scalar_(t, scale);
	ag_tensor_set_requires_grad(t, true);
	return t;
}

static int sgd(struct ag_tensor *p, double lr)
{
	struct ag_tensor *g = ag_tensor_grad(p);
	struct ag_tensor *step = ag_mul_scalar(g, lr);
	int rc;

	{
		AG_NO_GRAD_SCOPE();
		rc = ag_sub_(p, step);
	}
	ag_tensor_zero_grad(p);
	return rc;
}

int main(void)
{
	struct ag_generator *g = ag_generator_new(42);
	int64_t xs[2] = { B, IN };
	struct ag_tensor *x = ag_randn(g, AG_F32, 2, xs), *target;
	struct ag_tensor *w1 = param(g, IN, HID, 0.3);
	struct ag_tensor *w2 = param(g, HID, 1, 0.3);
	struct ag_scope *setup = ag_scope_begin();
	int rc = 0;

	/* the scope frees the temporaries; ag_tensor_get keeps the target */
	target = ag_tensor_get(ag_sum_dim(ag_tanh(x), 1, true));
	printf("libag demo: %d pool threads\n", ag_get_num_threads());
	printf("target[0:3] = ");
	ag_tensor_print(ag_slice(target, 0, 0, 3, 1), stdout);
	ag_scope_end(setup);
	for (int step = 0; step <= 200 && !rc; step++) {
		struct ag_scope *s = ag_scope_begin();
		struct ag_tensor *h = ag_tanh(ag_matmul(x, w1));
		struct ag_tensor *y = ag_matmul(h, w2);
		struct ag_tensor *d = ag_sub(y, target);
		struct ag_tensor *loss = ag_mean(ag_mul(d, d));

		rc = ag_backward(loss, NULL, NULL);
		if (!rc)
			rc = sgd(w1, 0.1);
		if (!rc)
			rc = sgd(w2, 0.1);
		if (step % 50 == 0)
			printf("step %3d  loss %.6f  (w1 at version %llu)\n",
			       step, ag_tensor_item(loss),
			       (unsigned long long)ag_tensor_version(w1));
		if (step == 0) {
			printf("the loss came from %s <- %s\n",
			       ag_node_name(ag_tensor_grad_fn(loss)),
			       ag_node_name(ag_node_next(
				       ag_tensor_grad_fn(loss), 0, NULL)));
		}
		ag_scope_end(s);
	}
	if (rc)
		fprintf(stderr, "demo failed: %s\n", ag_errmsg());
	{
		AG_NO_GRAD_SCOPE();
		printf("inside AG_NO_GRAD_SCOPE grad mode is %s;",
		       ag_is_grad_enabled() ? "on" : "off");
	}
	printf(" after it, %s\n", ag_is_grad_enabled() ? "on" : "off");
	ag_tensor_put(w1);
	ag_tensor_put(w2);
	ag_tensor_put(target);
	ag_tensor_put(x);
	ag_generator_free(g);
	return rc ? 1 : 0;
}
