/* SPDX-License-Identifier: MIT */
#ifndef AG_SIMD_SMALL_H
#define AG_SIMD_SMALL_H

/*
 * Spans of a few elements, computed in place of a kernel call.  For a
 * one-element op the ISA table, the parallel check and a masked vector
 * loop cost ten times the arithmetic (docs/engine.md).  Only ops that are
 * one IEEE operation per step, or a fixed sequence of them, come here, and
 * each is written one operation per statement so that no compiler fuses
 * two into an FMA: the result is bit for bit what the vector kernels give,
 * whatever the size.  Everything else returns false and takes the kernel.
 */
#include <stdbool.h>

#include "simd.h"

#define AG_K_SMALL_MAX 8

#define AG_K_SMALL(T, S)                                                       \
	static inline bool ag_k_small_unary_##S(enum ag_k_unary op, int64_t n, \
						const T *x, int64_t incx,      \
						T *y, int64_t incy,            \
						const struct ag_k_params *p)   \
	{                                                                      \
		T p0 = p ? (T)p->p0 : 0;                                       \
                                                                               \
		if (n > AG_K_SMALL_MAX || !incy)                               \
			return false;                                          \
		switch (op) {                                                  \
		case AG_K_NEG:                                                 \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = -x[i * incx];                    \
			return true;                                           \
		case AG_K_ADD_SCALAR:                                          \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = x[i * incx] + p0;                \
			return true;                                           \
		case AG_K_MUL_SCALAR:                                          \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = x[i * incx] * p0;                \
			return true;                                           \
		case AG_K_RSUB_SCALAR:                                         \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = p0 - x[i * incx];                \
			return true;                                           \
		default:                                                       \
			return false;                                          \
		}                                                              \
	}                                                                      \
                                                                               \
	/* reads g and, per op, y (the forward output) as the kernel does */   \
	static inline bool ag_k_small_unary_bwd_##S(                           \
		enum ag_k_unary op, int64_t n, const T *g, int64_t incg,       \
		const T *y, int64_t incy, T *gx, int64_t incgx,                \
		const struct ag_k_params *p)                                   \
	{                                                                      \
		T p0 = p ? (T)p->p0 : 0;                                       \
                                                                               \
		/* a stride-0 gx is a reduction: the kernel's */               \
		if (n > AG_K_SMALL_MAX || !incgx)                              \
			return false;                                          \
		if (!y &&                                                      \
		    (op == AG_K_EXP || op == AG_K_TANH || op == AG_K_SIGMOID)) \
			return false;                                          \
		switch (op) {                                                  \
		case AG_K_NEG:                                                 \
		case AG_K_RSUB_SCALAR:                                         \
			for (int64_t i = 0; i < n; i++)                        \
				gx[i * incgx] = -g[i * incg];                  \
			return true;                                           \
		case AG_K_ADD_SCALAR:                                          \
			for (int64_t i = 0; i < n; i++)                        \
				gx[i * incgx] = g[i * incg];                   \
			return true;                                           \
		case AG_K_MUL_SCALAR:                                          \
			for (int64_t i = 0; i < n; i++)                        \
				gx[i * incgx] = g[i * incg] * p0;              \
			return true;                                           \
		case AG_K_EXP:                                                 \
			for (int64_t i = 0; i < n; i++)                        \
				gx[i * incgx] = g[i * incg] * y[i * incy];     \
			return true;                                           \
		case AG_K_TANH:                                                \
			for (int64_t i = 0; i < n; i++) {                      \
				T t = y[i * incy] * y[i * incy];               \
				t = (T)1 - t;                                  \
				gx[i * incgx] = g[i * incg] * t;               \
			}                                                      \
			return true;                                           \
		case AG_K_SIGMOID:                                             \
			for (int64_t i = 0; i < n; i++) {                      \
				T t = (T)1 - y[i * incy];                      \
				t = y[i * incy] * t;                           \
				gx[i * incgx] = g[i * incg] * t;               \
			}                                                      \
			return true;                                           \
		default:                                                       \
			return false;                                          \
		}                                                              \
	}                                                                      \
                                                                               \
	static inline bool ag_k_small_binary_##S(                              \
		enum ag_k_binary op, int64_t n, const T *a, int64_t inca,      \
		const T *b, int64_t incb, T *y, int64_t incy)                  \
	{                                                                      \
		if (n > AG_K_SMALL_MAX || !incy)                               \
			return false;                                          \
		switch (op) {                                                  \
		case AG_K_ADD:                                                 \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = a[i * inca] + b[i * incb];       \
			return true;                                           \
		case AG_K_SUB:                                                 \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = a[i * inca] - b[i * incb];       \
			return true;                                           \
		case AG_K_MUL:                                                 \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = a[i * inca] * b[i * incb];       \
			return true;                                           \
		case AG_K_DIV:                                                 \
			for (int64_t i = 0; i < n; i++)                        \
				y[i * incy] = a[i * inca] / b[i * incb];       \
			return true;                                           \
		default:                                                       \
			return false;                                          \
		}                                                              \
	}

AG_K_SMALL(float, f32)
AG_K_SMALL(double, f64)

#undef AG_K_SMALL

/*
 * y = a op b over n elements at the given increments, in doubles when f64
 * else floats: the inline loop for short spans, the vector kernel past
 * them.  The one entry point for callers that hold a dtype flag (the ops'
 * drivers and the engine's gradient sums).
 */
static inline void ag_k_binary_span(bool f64, enum ag_k_binary op, int64_t n,
				    const void *a, int64_t ia, const void *b,
				    int64_t ib, void *y, int64_t iy)
{
	if (!f64) {
		if (!ag_k_small_binary_f32(op, n, a, ia, b, ib, y, iy))
			ag_k_binary_f32(op, n, a, ia, b, ib, y, iy);
	} else {
		if (!ag_k_small_binary_f64(op, n, a, ia, b, ib, y, iy))
			ag_k_binary_f64(op, n, a, ia, b, ib, y, iy);
	}
}

#endif /* AG_SIMD_SMALL_H */
