/* SPDX-License-Identifier: MIT */
/*
 * The inline short-span loops of small.h, written once.  small.h includes
 * this file twice, with
 *   T     the element type (float, double)
 *   F(x)  x with the type suffix (x_f32, x_f64)
 * No include guard on purpose.
 */

static inline bool F(ag_k_small_unary)(enum ag_k_unary op, int64_t n,
				       const T *x, int64_t incx, T *y,
				       int64_t incy,
				       const struct ag_k_params *p)
{
	T p0 = p ? (T)p->p0 : 0;

	if (n > AG_K_SMALL_MAX || !incy)
		return false;
	switch (op) {
	case AG_K_NEG:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = -x[i * incx];
		return true;
	case AG_K_ADD_SCALAR:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = x[i * incx] + p0;
		return true;
	case AG_K_MUL_SCALAR:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = x[i * incx] * p0;
		return true;
	case AG_K_RSUB_SCALAR:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = p0 - x[i * incx];
		return true;
	default:
		return false;
	}
}

/* reads g and, per op, y (the forward output) as the kernel does */
static inline bool F(ag_k_small_unary_bwd)(enum ag_k_unary op, int64_t n,
					   const T *g, int64_t incg, const T *y,
					   int64_t incy, T *gx, int64_t incgx,
					   const struct ag_k_params *p)
{
	T p0 = p ? (T)p->p0 : 0;

	/* a stride-0 gx is a reduction: the kernel's */
	if (n > AG_K_SMALL_MAX || !incgx)
		return false;
	if (!y && (op == AG_K_EXP || op == AG_K_TANH || op == AG_K_SIGMOID))
		return false;
	switch (op) {
	case AG_K_NEG:
	case AG_K_RSUB_SCALAR:
		for (int64_t i = 0; i < n; i++)
			gx[i * incgx] = -g[i * incg];
		return true;
	case AG_K_ADD_SCALAR:
		for (int64_t i = 0; i < n; i++)
			gx[i * incgx] = g[i * incg];
		return true;
	case AG_K_MUL_SCALAR:
		for (int64_t i = 0; i < n; i++)
			gx[i * incgx] = g[i * incg] * p0;
		return true;
	case AG_K_EXP:
		for (int64_t i = 0; i < n; i++)
			gx[i * incgx] = g[i * incg] * y[i * incy];
		return true;
	case AG_K_TANH:
		for (int64_t i = 0; i < n; i++) {
			T t = y[i * incy] * y[i * incy];
			t = (T)1 - t;
			gx[i * incgx] = g[i * incg] * t;
		}
		return true;
	case AG_K_SIGMOID:
		for (int64_t i = 0; i < n; i++) {
			T t = (T)1 - y[i * incy];
			t = y[i * incy] * t;
			gx[i * incgx] = g[i * incg] * t;
		}
		return true;
	default:
		return false;
	}
}

static inline bool F(ag_k_small_binary)(enum ag_k_binary op, int64_t n,
					const T *a, int64_t inca, const T *b,
					int64_t incb, T *y, int64_t incy)
{
	if (n > AG_K_SMALL_MAX || !incy)
		return false;
	switch (op) {
	case AG_K_ADD:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = a[i * inca] + b[i * incb];
		return true;
	case AG_K_SUB:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = a[i * inca] - b[i * incb];
		return true;
	case AG_K_MUL:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = a[i * inca] * b[i * incb];
		return true;
	case AG_K_DIV:
		for (int64_t i = 0; i < n; i++)
			y[i * incy] = a[i * inca] / b[i * incb];
		return true;
	default:
		return false;
	}
}
