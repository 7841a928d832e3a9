// SPDX-License-Identifier: MIT
/*
 * optim-bench: the optimisers' fused update loops (nn/optim.c) alone.
 * One parameter of N elements with a fixed .grad; ag_optim_step() timed
 * over many steps, reported as ns per element and GB/s of the arrays
 * each step reads and writes (Adam: p, g, m, v read, p, m, v written).
 *
 *   optim-bench [N] [steps]      (default 1048576 elements, 200 steps)
 *
 * Public API only; the median of 5 repetitions.  Not a test.
 */
#include <stdio.h>
#include <stdlib.h>

#include <ag/ag.h>
#include <ag/optim.h>

#include "clock.h"

struct cfg {
	const char *name;
	enum ag_dtype dt;
	int kind; /* 0 SGD momentum, 1 Adam, 2 AdamW, 3 Adam amsgrad + wd */
	int arrays; /* read + written per element */
};

static struct ag_optim *make(const struct cfg *c, struct ag_tensor *p)
{
	switch (c->kind) {
	case 0:
		return ag_sgd_new(&p, 1, 1e-3, 0.9, 0);
	case 1:
		return ag_adam_new(&p, 1, 1e-3, 0.9, 0.999, 1e-8, 0);
	case 2:
		return ag_adamw_new(&p, 1, 1e-3, 0.9, 0.999, 1e-8, 1e-2);
	default:
		return ag_adam_new_ex(
			&p, 1,
			&(struct ag_adam_opts){ .lr = 1e-3,
						.beta1 = 0.9,
						.beta2 = 0.999,
						.eps = 1e-8,
						.weight_decay = 1e-2,
						.amsgrad = true });
	}
}

static int set_grad(struct ag_tensor *p, struct ag_tensor *gr)
{
	struct ag_scope *s = ag_scope_begin();
	int rc = ag_backward(ag_sum(ag_mul(p, gr)), NULL, NULL);

	ag_scope_end(s);
	return rc;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	static const struct cfg cfgs[] = {
		{ "sgd-momentum f32", AG_F32, 0, 5 },
		{ "adam f32", AG_F32, 1, 7 },
		{ "adamw f32", AG_F32, 2, 7 },
		{ "adam-amsgrad-wd f32", AG_F32, 3, 9 },
		{ "adam f64", AG_F64, 1, 7 },
	};
	int64_t n = argc > 1 ? atoll(argv[1]) : 1 << 20;
	int steps = argc > 2 ? atoi(argv[2]) : 200;
	struct ag_generator *g = ag_generator_new(1);

	if (n < 1 || steps < 1) {
		fprintf(stderr, "usage: optim-bench [N] [steps]\n");
		return 2;
	}
	ag_set_num_threads(1);
	printf("%-22s %12s %10s  (N = %lld, %d steps, median of 5)\n",
	       "optimiser", "ns/element", "GB/s", (long long)n, steps);
	for (size_t k = 0; k < sizeof(cfgs) / sizeof(cfgs[0]); k++) {
		const struct cfg *c = &cfgs[k];
		struct ag_tensor *p = ag_rand(g, c->dt, 1, &n);
		struct ag_tensor *gr = ag_randn(g, c->dt, 1, &n);
		struct ag_optim *o = NULL;
		double t[5], ns;

		/* p.grad = gr, kept over the steps */
		if (!p || !gr || ag_tensor_set_requires_grad(p, true) ||
		    set_grad(p, gr) || !(o = make(c, p))) {
			fprintf(stderr, "optim-bench: %s\n", ag_errmsg());
			return 1;
		}
		if (ag_optim_step(o)) /* the state's first allocation */
			return 1;
		for (int r = 0; r < 5; r++) {
			double t0 = bench_now();

			for (int s = 0; s < steps; s++)
				if (ag_optim_step(o)) {
					fprintf(stderr, "optim-bench: %s\n",
						ag_errmsg());
					return 1;
				}
			t[r] = bench_now() - t0;
		}
		qsort(t, 5, sizeof(t[0]), cmp);
		ns = t[2] * 1e9 / ((double)steps * (double)n);
		printf("%-22s %12.3f %10.2f\n", c->name, ns,
		       c->arrays * ag_dtype_size(c->dt) / ns);
		ag_optim_free(o);
		ag_tensor_put(gr);
		ag_tensor_put(p);
	}
	ag_generator_free(g);
	return 0;
}
