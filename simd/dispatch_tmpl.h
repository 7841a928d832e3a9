/* SPDX-License-Identifier: MIT */
/*
 * The elementwise entry points and their parallel split, written once.
 * dispatch.c includes this file twice, with
 *   T     the element type (float, double)
 *   F(x)  x with the type suffix (x_f32, x_f64)
 * No include guard on purpose.
 *
 * The pieces of a split are independent spans, so a stride-0 (reducing)
 * gradient output is never split.
 */

struct F(unary_args) {
	enum ag_k_unary op;
	const T *x;
	int64_t incx;
	T *y;
	int64_t incy;
	const struct ag_k_params *p;
	const struct ag_k_isa *k;
};

static void F(unary_part)(int64_t b, int64_t e, void *arg)
{
	struct F(unary_args) *u = arg;

	u->k->F(unary)(u->op, e - b, u->x + b * u->incx, u->incx,
		       u->y + b * u->incy, u->incy, u->p);
}

void F(ag_k_unary)(enum ag_k_unary op, int64_t n, const T *x, int64_t incx,
		   T *y, int64_t incy, const struct ag_k_params *p)
{
	const struct ag_k_isa *k = ag_k_isa_current();
	ag_k_parallel_for_fn pf = ag_k_get_parallel_for();
	int64_t grain = unary_grain(op);

	if (pf && n >= 2 * grain) {
		struct F(unary_args) u = { op, x, incx, y, incy, p, k };

		pf(n, grain, F(unary_part), &u);
		return;
	}
	k->F(unary)(op, n, x, incx, y, incy, p);
}

struct F(unary_bwd_args) {
	enum ag_k_unary op;
	const T *g, *x, *y;
	int64_t incg, incx, incy;
	T *gx;
	int64_t incgx;
	const struct ag_k_params *p;
	const struct ag_k_isa *k;
};

static void F(unary_bwd_part)(int64_t b, int64_t e, void *arg)
{
	struct F(unary_bwd_args) *u = arg;

	u->k->F(unary_bwd)(u->op, e - b, u->g + b * u->incg, u->incg,
			   u->x ? u->x + b * u->incx : NULL, u->incx,
			   u->y ? u->y + b * u->incy : NULL, u->incy,
			   u->gx + b * u->incgx, u->incgx, u->p);
}

void F(ag_k_unary_bwd)(enum ag_k_unary op, int64_t n, const T *g, int64_t incg,
		       const T *x, int64_t incx, const T *y, int64_t incy,
		       T *gx, int64_t incgx, const struct ag_k_params *p)
{
	const struct ag_k_isa *k = ag_k_isa_current();
	ag_k_parallel_for_fn pf = ag_k_get_parallel_for();
	int64_t grain = unary_grain(op);

	if (pf && n >= 2 * grain && incgx != 0) {
		struct F(unary_bwd_args)
			u = { op, g, x, y, incg, incx, incy, gx, incgx, p, k };

		pf(n, grain, F(unary_bwd_part), &u);
		return;
	}
	k->F(unary_bwd)(op, n, g, incg, x, incx, y, incy, gx, incgx, p);
}

struct F(binary_args) {
	enum ag_k_binary op;
	const T *a, *b;
	int64_t inca, incb;
	T *y;
	int64_t incy;
	const struct ag_k_isa *k;
};

static void F(binary_part)(int64_t b, int64_t e, void *arg)
{
	struct F(binary_args) *u = arg;

	u->k->F(binary)(u->op, e - b, u->a + b * u->inca, u->inca,
			u->b + b * u->incb, u->incb, u->y + b * u->incy,
			u->incy);
}

void F(ag_k_binary)(enum ag_k_binary op, int64_t n, const T *a, int64_t inca,
		    const T *b, int64_t incb, T *y, int64_t incy)
{
	const struct ag_k_isa *k = ag_k_isa_current();
	ag_k_parallel_for_fn pf = ag_k_get_parallel_for();
	int64_t grain = binary_grain(op);

	if (pf && n >= 2 * grain) {
		struct F(binary_args) u = { op, a, b, inca, incb, y, incy, k };

		pf(n, grain, F(binary_part), &u);
		return;
	}
	k->F(binary)(op, n, a, inca, b, incb, y, incy);
}

struct F(binary_bwd_args) {
	enum ag_k_binary op;
	const T *g, *a, *b;
	int64_t incg, inca, incb;
	T *ga, *gb;
	int64_t incga, incgb;
	const struct ag_k_isa *k;
};

static void F(binary_bwd_part)(int64_t b, int64_t e, void *arg)
{
	struct F(binary_bwd_args) *u = arg;

	u->k->F(binary_bwd)(u->op, e - b, u->g + b * u->incg, u->incg,
			    u->a + b * u->inca, u->inca, u->b + b * u->incb,
			    u->incb, u->ga ? u->ga + b * u->incga : NULL,
			    u->incga, u->gb ? u->gb + b * u->incgb : NULL,
			    u->incgb);
}

void F(ag_k_binary_bwd)(enum ag_k_binary op, int64_t n, const T *g,
			int64_t incg, const T *a, int64_t inca, const T *b,
			int64_t incb, T *ga, int64_t incga, T *gb,
			int64_t incgb)
{
	const struct ag_k_isa *k = ag_k_isa_current();
	ag_k_parallel_for_fn pf = ag_k_get_parallel_for();
	int64_t grain = binary_grain(op);

	if (pf && n >= 2 * grain && (!ga || incga != 0) &&
	    (!gb || incgb != 0)) {
		struct F(binary_bwd_args)
			u = { op,   g,	a,  b,	   incg,  inca,
			      incb, ga, gb, incga, incgb, k };

		pf(n, grain, F(binary_bwd_part), &u);
		return;
	}
	k->F(binary_bwd)(op, n, g, incg, a, inca, b, incb, ga, incga, gb,
			 incgb);
}

double F(ag_k_sum)(int64_t n, const T *x, int64_t incx)
{
	return ag_k_isa_current()->F(sum)(n, x, incx);
}

double F(ag_k_dot)(int64_t n, const T *a, int64_t inca, const T *b,
		   int64_t incb)
{
	return ag_k_isa_current()->F(dot)(n, a, inca, b, incb);
}

void F(ag_k_axpy)(int64_t n, T alpha, const T *x, int64_t incx, T *y,
		  int64_t incy)
{
	ag_k_isa_current()->F(axpy)(n, alpha, x, incx, y, incy);
}

/* y + 1 * x under one fma rounds once, exactly as y + x */
void F(ag_k_acc)(int64_t n, const T *x, int64_t incx, T *y, int64_t incy)
{
	ag_k_isa_current()->F(axpy)(n, 1, x, incx, y, incy);
}

void F(ag_k_fill)(int64_t n, T v, T *y, int64_t incy)
{
	int64_t i;

	if (incy == 1) {
		for (i = 0; i < n; i++)
			y[i] = v;
		return;
	}
	for (i = 0; i < n; i++)
		y[i * incy] = v;
}

double F(ag_k_max)(int64_t n, const T *x, int64_t incx, int64_t *argmax)
{
	return ag_k_isa_current()->F(max)(n, x, incx, argmax);
}

double F(ag_k_logsumexp)(int64_t n, const T *x, int64_t incx)
{
	return ag_k_isa_current()->F(logsumexp)(n, x, incx);
}

void F(ag_k_softmax)(int64_t n, const T *x, int64_t incx, T *y, int64_t incy)
{
	ag_k_isa_current()->F(softmax)(n, x, incx, y, incy);
}

void F(ag_k_log_softmax)(int64_t n, const T *x, int64_t incx, T *y,
			 int64_t incy)
{
	ag_k_isa_current()->F(log_softmax)(n, x, incx, y, incy);
}

void F(ag_k_softmax_bwd)(int64_t n, const T *g, int64_t incg, const T *y,
			 int64_t incy, T *gx, int64_t incgx)
{
	ag_k_isa_current()->F(softmax_bwd)(n, g, incg, y, incy, gx, incgx);
}

void F(ag_k_log_softmax_bwd)(int64_t n, const T *g, int64_t incg, const T *y,
			     int64_t incy, T *gx, int64_t incgx)
{
	ag_k_isa_current()->F(log_softmax_bwd)(n, g, incg, y, incy, gx, incgx);
}

double F(ag_k_var)(int64_t n, const T *x, int64_t incx, int64_t correction,
		   double *mean)
{
	return ag_k_isa_current()->F(var)(n, x, incx, correction, mean);
}
