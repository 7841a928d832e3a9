// SPDX-License-Identifier: MIT
/*
 * A custom autograd function: the Legendre polynomial P3,
 *
 *   forward   y = 0.5 * (5 x^3 - 3 x)
 *   backward  dx = grad * 1.5 * (5 x^2 - 1)
 *
 * forward saves its input for backward.  The gradient is checked against
 * central finite differences of the forward in f64 (and against
 * ag_gradcheck when the library has it); the program prints x, y and the
 * gradient and exits non-zero on a mismatch.
 */
#include <math.h>
#include <stdio.h>

#include <ag/ag.h>

static int legendre_forward(struct ag_ctx *ctx, struct ag_tensor *const *in,
			    int nin, struct ag_tensor **out, int nout)
{
	struct ag_tensor *x = in[0];
	struct ag_tensor *x3 = ag_pow_scalar(x, 3.0);
	struct ag_tensor *a = ag_mul_scalar(x3, 5.0);
	struct ag_tensor *b = ag_mul_scalar(x, 3.0);
	struct ag_tensor *d = ag_sub(a, b);

	(void)nin;
	(void)nout;
	out[0] = ag_mul_scalar(d, 0.5);
	ag_tensor_put(x3);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(d);
	if (!out[0])
		return -ag_errcode();
	return ag_ctx_save_for_backward(ctx, &x, 1);
}

static int legendre_backward(struct ag_ctx *ctx,
			     struct ag_tensor *const *grad_out, int nout,
			     struct ag_tensor **grad_in, int nin)
{
	struct ag_tensor **saved, *x2, *a, *b, *c;
	int n, rc;

	(void)nout;
	(void)nin;
	if (!ag_ctx_needs_input_grad(ctx, 0))
		return 0;
	rc = ag_ctx_saved_tensors(ctx, &saved, &n);
	if (rc)
		return rc;
	x2 = ag_pow_scalar(saved[0], 2.0);
	a = ag_mul_scalar(x2, 5.0);
	b = ag_add_scalar(a, -1.0);
	c = ag_mul_scalar(b, 1.5);
	grad_in[0] = ag_mul(grad_out[0], c);
	ag_tensor_put(x2);
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(c);
	return grad_in[0] ? 0 : -ag_errcode();
}

static const struct ag_function_ops legendre = {
	.name = "LegendrePolynomial",
	.forward = legendre_forward,
	.backward = legendre_backward,
};

static int p3(struct ag_tensor *const *in, int nin, struct ag_tensor **out,
	      void *arg)
{
	return ag_function_apply(&legendre, in, nin, out, 1, arg);
}

/* d sum(P3(x)) / dx_i by central differences, through the forward. */
static int numeric_grad(const double *x, int n, double eps, double *g)
{
	for (int i = 0; i < n; i++) {
		double v[2];

		for (int s = 0; s < 2; s++) {
			double xi = x[i] + (s ? -eps : eps);
			int64_t one = 1;
			struct ag_tensor *t =
				ag_from_data(AG_F64, 1, &one, &xi);
			struct ag_tensor *y = NULL;

			if (!t || p3(&t, 1, &y, NULL)) {
				ag_tensor_put(t);
				return -1;
			}
			v[s] = ag_tensor_item(y);
			ag_tensor_put(y);
			ag_tensor_put(t);
		}
		g[i] = (v[0] - v[1]) / (2 * eps);
	}
	return 0;
}

int main(void)
{
	enum { N = 7 };
	double xs[N], num[N], y[N], gx[N];
	int64_t n = N;
	struct ag_tensor *x, *out = NULL, *loss = NULL, *grad = NULL;
	int bad = 0;

	for (int i = 0; i < N; i++)
		xs[i] = -1.0 + 2.0 * i / (N - 1) + 0.01;
	x = ag_from_data(AG_F64, 1, &n, xs);
	if (!x || ag_tensor_set_requires_grad(x, true) ||
	    p3(&x, 1, &out, NULL) || !(loss = ag_sum(out)) ||
	    ag_backward(loss, NULL, NULL) || !(grad = ag_tensor_grad(x)) ||
	    ag_tensor_copy_to(out, y, sizeof(y)) ||
	    ag_tensor_copy_to(grad, gx, sizeof(gx)) ||
	    numeric_grad(xs, N, 1e-6, num)) {
		fprintf(stderr, "legendre: %s\n", ag_errmsg());
		return 1;
	}
	printf("y = P3(x) via %s\n", ag_node_name(ag_tensor_grad_fn(out)));
	printf("%10s %12s %12s %12s\n", "x", "y", "dy/dx", "numeric");
	for (int i = 0; i < N; i++) {
		double want = 1.5 * (5 * xs[i] * xs[i] - 1);
		bool ok = fabs(gx[i] - num[i]) <= 1e-5 + 1e-3 * fabs(num[i]) &&
			  fabs(gx[i] - want) <= 1e-12 &&
			  fabs(y[i] - 0.5 * (5 * pow(xs[i], 3) - 3 * xs[i])) <=
				  1e-12;

		printf("%10.4f %12.6f %12.6f %12.6f%s\n", xs[i], y[i], gx[i],
		       num[i], ok ? "" : "  MISMATCH");
		bad += !ok;
	}
#ifdef AG_HAVE_GRADCHECK
	if (ag_gradcheck(p3, NULL, &x, 1, NULL)) {
		fprintf(stderr, "legendre: ag_gradcheck: %s\n", ag_errmsg());
		bad++;
	} else {
		printf("ag_gradcheck: ok\n");
	}
#endif
	ag_tensor_put(grad);
	ag_tensor_put(loss);
	ag_tensor_put(out);
	ag_tensor_put(x);
	if (bad) {
		fprintf(stderr, "legendre: %d gradient(s) disagree\n", bad);
		return 1;
	}
	printf("gradients agree with finite differences\n");
	return 0;
}
