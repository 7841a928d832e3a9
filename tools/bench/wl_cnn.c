// SPDX-License-Identifier: MIT
/*
 * cnn: SGD steps of a Fashion-MNIST-sized convolutional network on a fixed
 * random batch (docs/benchmarks.md):
 *
 *   x [B, 1, 28, 28] -> conv 1->32 3x3 pad 1 -> ReLU -> maxpool 2
 *   -> conv 32->64 3x3 pad 1 -> BatchNorm2d (training) -> ReLU -> maxpool 2
 *   -> flatten [B, 3136] -> linear 3136->128 -> ReLU -> linear 128->10
 *   -> cross-entropy against random targets
 *
 * then, under no-grad, p -= 0.01 p.grad and the grads dropped.  Weights
 * and biases are uniform in +-1/sqrt(fan_in) (torch's default bound), the
 * BatchNorm scale 1 and shift 0.  --quick shrinks the image to 8x8 (the
 * first linear to 256->128) and the batch to 4.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum { CNN_NPARAM = 10 };

struct cnn {
	enum ag_dtype dt;
	int64_t b, hw;
	/* conv1 w b, conv2 w b, bn weight bias, fc1 w b, fc2 w b */
	struct ag_tensor *p[CNN_NPARAM];
	struct ag_tensor *running_mean, *running_var;
	struct ag_tensor *x, *targets;
	char case_name[64];
};

static void cnn_init(struct cnn *m, enum ag_dtype dt, int64_t b, int64_t hw,
		     struct ag_generator *g)
{
	int64_t q = hw / 4, flat = 64 * q * q;
	int64_t c1[4] = { 32, 1, 3, 3 }, c2[4] = { 64, 32, 3, 3 };
	int64_t f1[2] = { 128, flat }, f2[2] = { 10, 128 }, ch = 64;
	int64_t xs[4] = { b, 1, hw, hw };

	memset(m, 0, sizeof(*m));
	m->dt = dt;
	m->b = b;
	m->hw = hw;
	if (hw == 28)
		snprintf(m->case_name, sizeof(m->case_name),
			 "fmnist-cnn,B=%lld", (long long)b);
	else
		snprintf(m->case_name, sizeof(m->case_name),
			 "fmnist-cnn,B=%lld,%lldx%lld", (long long)b,
			 (long long)hw, (long long)hw);
	weight_bias(m->p + 0, g, m->dt, 4, c1);
	weight_bias(m->p + 2, g, m->dt, 4, c2);
	m->p[4] = uniform(g, dt, 1, &ch, 1, 1, true);
	m->p[5] = uniform(g, dt, 1, &ch, 0, 0, true);
	weight_bias(m->p + 6, g, m->dt, 2, f1);
	weight_bias(m->p + 8, g, m->dt, 2, f2);
	m->running_mean = uniform(g, dt, 1, &ch, 0, 0, false);
	m->running_var = uniform(g, dt, 1, &ch, 1, 1, false);
	m->x = uniform(g, dt, 4, xs, 0, 1, false);
	m->targets = random_targets(g, b, 10);
}

static void cnn_free(struct cnn *m)
{
	for (int i = 0; i < CNN_NPARAM; i++)
		ag_tensor_put(m->p[i]);
	ag_tensor_put(m->running_mean);
	ag_tensor_put(m->running_var);
	ag_tensor_put(m->x);
	ag_tensor_put(m->targets);
}

/* The loss inside the caller's scope; NULL (with ag_errmsg) on error. */
static struct ag_tensor *cnn_loss(struct cnn *m)
{
	struct ag_tensor *h =
		cnn_logits(m->x, m->p, m->running_mean, m->running_var, true);

	return h ? ag_cross_entropy(h, m->targets) : NULL;
}

/* One training step; returns the loss before the update. */
static double cnn_step(struct cnn *m, double lr)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *loss = must(cnn_loss(m));
	double v;

	must_ok(ag_backward(loss, NULL, NULL));
	v = ag_tensor_item(loss);
	sgd_step(m->p, CNN_NPARAM, lr);
	ag_scope_end(s);
	return v;
}

static double cnn_loss_value(struct cnn *m)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_mode md = ag_no_grad_enter();
	struct ag_tensor *l = cnn_loss(m);
	double v = l ? ag_tensor_item(l) : NAN;

	ag_mode_exit(md);
	ag_scope_end(s);
	return v;
}

static double cnn_loss_fd(void *m)
{
	return cnn_loss_value(m);
}

/*
 * In f64 at B=3 and 8x8, central finite differences on the largest-gradient
 * element of each parameter against the backward pass (BatchNorm in
 * training mode depends only on the batch, so the loss is a function of
 * the parameters alone; conv2's bias, which BatchNorm cancels, has a zero
 * gradient, and the difference must find it too); then, in f32 at the
 * benchmark's layout, the loss must fall over SGD steps on the fixed batch.
 */
static void cnn_check(void *arg, const struct config *c, int threads,
		      struct ag_generator *g)
{
	struct cnn m;
	struct ag_tensor *loss;
	struct ag_scope *s;
	double first, last = 0;

	(void)arg;
	cnn_init(&m, AG_F64, 3, 8, g);
	s = ag_scope_begin();
	loss = must(cnn_loss(&m));
	must_ok(ag_backward(loss, NULL, NULL));
	for (int i = 0; i < CNN_NPARAM; i++)
		check_param_fd("cnn", threads, i, m.p[i], cnn_loss_fd, &m);
	ag_scope_end(s);
	cnn_free(&m);

	cnn_init(&m, AG_F32, c->cnn_b, c->quick ? 8 : 28, g);
	first = cnn_step(&m, 0.01);
	for (int i = 0; i < 10; i++)
		last = cnn_step(&m, 0.01);
	check_report(
		last < first && isfinite(last),
		"cnn f32 %s threads=%d: loss falls over 11 SGD steps (%.6g -> %.6g)",
		m.case_name, threads, first, last);
	cnn_free(&m);
}

static void *cnn_setup(const struct config *c, struct ag_generator *g)
{
	struct cnn *m = xmalloc(sizeof(*m));

	cnn_init(m, AG_F32, c->cnn_b, c->quick ? 8 : 28, g);
	return m;
}

static void cnn_run(void *arg, const struct config *c, int threads)
{
	struct cnn *m = arg;
	double t0, t;

	t0 = bench_now();
	for (int i = 0; i < c->cnn_steps; i++)
		cnn_step(m, 0.01);
	t = (bench_now() - t0) / c->cnn_steps;
	record("cnn", m->case_name, threads, "steps_per_s", "steps/s", 1 / t);
	record("cnn", m->case_name, threads, "step_ms", "ms", t * 1e3);
}

static void cnn_free_wl(void *arg)
{
	cnn_free(arg);
	free(arg);
}

const struct workload wl_cnn = {
	.name = "cnn",
	.description =
		"Fashion-MNIST-sized CNN (conv, BatchNorm, pool, linear), B=128: SGD steps per second",
	.needs_libag = true,
	.setup = cnn_setup,
	.check = cnn_check,
	.run = cnn_run,
	.free = cnn_free_wl,
};
