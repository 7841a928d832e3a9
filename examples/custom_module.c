// SPDX-License-Identifier: MIT
/*
 * A user-defined module: a residual block y = x + tanh(x W^T + b) * scale,
 * built as the library builds its own, with a child module, a parameter, a
 * buffer and an ops table; then trained for a few Adam steps to fit
 * y = 0 from random x.  Exits non-zero if anything fails or the loss does
 * not fall.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <ag/ag.h>

#define container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

struct residual {
	struct ag_module m; /* the library's part */
	int calls; /* the user's own state */
};

static struct ag_tensor *residual_forward(struct ag_module *m,
					  struct ag_tensor *x)
{
	struct residual *r = container_of(m, struct residual, m);
	struct ag_tensor *h, *t, *s, *y;

	r->calls++;
	h = ag_module_forward(ag_module_get_child(m, "fc"), x);
	t = ag_tanh(h);
	s = ag_mul(t, ag_module_get_parameter(m, "scale"));
	y = ag_add(x, s);
	ag_tensor_put(h);
	ag_tensor_put(t);
	ag_tensor_put(s);
	return y;
}

static void residual_destroy(struct ag_module *m)
{
	free(container_of(m, struct residual, m));
}

static const struct ag_module_ops residual_ops = {
	.name = "Residual",
	.forward = residual_forward,
	.destroy = residual_destroy,
};

static struct ag_module *residual_new(int64_t dim, struct ag_generator *g)
{
	struct residual *r = calloc(1, sizeof(*r));
	struct ag_tensor *scale, *p;
	int err;

	if (!r)
		return NULL;
	ag_module_init(&r->m, &residual_ops);
	scale = ag_full(AG_F32, 1, &dim, 0.5);
	p = ag_parameter(scale);
	ag_tensor_put(scale);
	err = ag_module_add_child(&r->m, "fc",
				  ag_linear_new(dim, dim, true, g));
	if (!err)
		err = ag_module_add_parameter(&r->m, "scale", p);
	ag_tensor_put(p);
	if (err) {
		ag_module_put(&r->m);
		return NULL;
	}
	return &r->m;
}

int main(void)
{
	struct ag_generator *g = ag_generator_new(2024);
	struct ag_module *mods[2], *net;
	const char *const *names;
	struct ag_tensor *const *ts;
	struct ag_tensor **ps, *x, *zero;
	struct ag_optim *opt;
	int64_t xs[2] = { 16, 4 };
	double first = 0, last = 0;
	int n, status = 1;

	mods[0] = residual_new(4, g);
	mods[1] = ag_linear_new(4, 2, true, g);
	net = ag_sequential_new(mods, 2);
	if (!net)
		goto out;
	ag_module_named_parameters(net, &names, &ts, &n);
	for (int i = 0; i < n; i++)
		printf("%s %s\n", names[i],
		       ag_dtype_name(ag_tensor_dtype(ts[i])));
	ag_module_parameters(net, &ps, &n);
	opt = ag_adam_new(ps, n, 0.05, 0.9, 0.999, 1e-8, 0);
	x = ag_randn(g, AG_F32, 2, xs);
	zero = ag_zeros(AG_F32, 0, NULL);
	for (int step = 0; step < 20 && opt && x; step++) {
		struct ag_tensor *y = ag_module_forward(net, x);
		struct ag_tensor *loss = ag_mse_loss(y, zero);

		if (!loss || ag_backward(loss, NULL, NULL) ||
		    ag_optim_step(opt)) {
			fprintf(stderr, "step %d: %s\n", step, ag_errmsg());
			ag_tensor_put(y);
			ag_tensor_put(loss);
			goto done;
		}
		last = ag_tensor_item(loss);
		if (!step)
			first = last;
		ag_optim_zero_grad(opt);
		ag_tensor_put(y);
		ag_tensor_put(loss);
	}
	printf("loss %.4f -> %.4f, residual forward ran %d times\n", first,
	       last,
	       container_of(ag_module_get_child(net, "0"), struct residual, m)
		       ->calls);
	status = last < 0.5 * first ? 0 : 1;
done:
	ag_tensor_put(x);
	ag_tensor_put(zero);
	ag_optim_free(opt);
out:
	ag_module_put(net);
	ag_generator_free(g);
	return status;
}
