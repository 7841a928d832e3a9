/* SPDX-License-Identifier: MIT */
#ifndef AG_SIMD_H
#define AG_SIMD_H

/*
 * simd/: the compute kernels.  Knows nothing of autograd or tensors: every
 * kernel works on one 1-D span given as a base pointer and a stride in
 * elements (stride 0 broadcasts one element; negative strides are allowed).
 * The ops layer walks the outer dims and calls a kernel per inner row.
 * All kernels are hidden (internal to libag).
 */
#include <stdbool.h>
#include <stdint.h>

enum ag_k_unary {
	AG_K_NEG,
	AG_K_ABS,
	AG_K_EXP,
	AG_K_EXPM1,
	AG_K_LOG,
	AG_K_LOG1P,
	AG_K_SQRT,
	AG_K_RSQRT,
	AG_K_SQUARE,
	AG_K_RECIPROCAL,
	AG_K_SIN,
	AG_K_COS,
	AG_K_TAN,
	AG_K_TANH,
	AG_K_SIGMOID,
	AG_K_RELU,
	AG_K_GELU, /* exact (erf) form, as torch's default */
	AG_K_SILU,
	AG_K_SOFTPLUS, /* beta 1, threshold 20, as torch's default */
	AG_K_ERF,
	AG_K_ATAN,
	AG_K_CLAMP, /* p0 = lo, p1 = hi */
	AG_K_LEAKY_RELU, /* p0 = slope */
	AG_K_POW_SCALAR, /* x ^ p0 */
	AG_K_ADD_SCALAR, /* x + p0 */
	AG_K_MUL_SCALAR, /* x * p0 */
	AG_K_RSUB_SCALAR, /* p0 - x */
	AG_K_UNARY_COUNT
};

enum ag_k_binary {
	AG_K_ADD,
	AG_K_SUB,
	AG_K_MUL,
	AG_K_DIV,
	AG_K_POW,
	AG_K_MAXIMUM,
	AG_K_MINIMUM,
	AG_K_BINARY_COUNT
};

struct ag_k_params {
	double p0, p1;
};

/* What a unary derivative kernel reads besides g. */
#define AG_K_NEEDS_X 1u /* the forward input */
#define AG_K_NEEDS_Y 2u /* the forward output */
unsigned ag_k_unary_bwd_needs(enum ag_k_unary op);

/* y = f(x) */
void ag_k_unary_f32(enum ag_k_unary op, int64_t n, const float *x,
		    int64_t incx, float *y, int64_t incy,
		    const struct ag_k_params *p);
void ag_k_unary_f64(enum ag_k_unary op, int64_t n, const double *x,
		    int64_t incx, double *y, int64_t incy,
		    const struct ag_k_params *p);

/* gx = g * f'(x), reading x and/or y as ag_k_unary_bwd_needs() says (the
 * other pointer may be NULL). */
void ag_k_unary_bwd_f32(enum ag_k_unary op, int64_t n, const float *g,
			int64_t incg, const float *x, int64_t incx,
			const float *y, int64_t incy, float *gx, int64_t incgx,
			const struct ag_k_params *p);
void ag_k_unary_bwd_f64(enum ag_k_unary op, int64_t n, const double *g,
			int64_t incg, const double *x, int64_t incx,
			const double *y, int64_t incy, double *gx,
			int64_t incgx, const struct ag_k_params *p);

/* y = a op b */
void ag_k_binary_f32(enum ag_k_binary op, int64_t n, const float *a,
		     int64_t inca, const float *b, int64_t incb, float *y,
		     int64_t incy);
void ag_k_binary_f64(enum ag_k_binary op, int64_t n, const double *a,
		     int64_t inca, const double *b, int64_t incb, double *y,
		     int64_t incy);

/* ga = g * d(a op b)/da, gb = g * d(a op b)/db; ga or gb may be NULL. */
void ag_k_binary_bwd_f32(enum ag_k_binary op, int64_t n, const float *g,
			 int64_t incg, const float *a, int64_t inca,
			 const float *b, int64_t incb, float *ga,
			 int64_t incga, float *gb, int64_t incgb);
void ag_k_binary_bwd_f64(enum ag_k_binary op, int64_t n, const double *g,
			 int64_t incg, const double *a, int64_t inca,
			 const double *b, int64_t incb, double *ga,
			 int64_t incga, double *gb, int64_t incgb);

/* Accurate sums (pairwise; see simd/README for the bound). */
double ag_k_sum_f32(int64_t n, const float *x, int64_t incx);
double ag_k_sum_f64(int64_t n, const double *x, int64_t incx);

/* y += x (gradient accumulation) */
void ag_k_acc_f32(int64_t n, const float *x, int64_t incx, float *y,
		  int64_t incy);
void ag_k_acc_f64(int64_t n, const double *x, int64_t incx, double *y,
		  int64_t incy);

/* y = v */
void ag_k_fill_f32(int64_t n, float v, float *y, int64_t incy);
void ag_k_fill_f64(int64_t n, double v, double *y, int64_t incy);

/*
 * Row-major GEMM: C = alpha * op(A) * op(B) + beta * C, op(A) m x k,
 * op(B) k x n; ta/tb transpose without a copy.
 */
void ag_k_gemm_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
		   float alpha, const float *a, int64_t lda, const float *b,
		   int64_t ldb, float beta, float *c, int64_t ldc);
void ag_k_gemm_f64(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
		   double alpha, const double *a, int64_t lda, const double *b,
		   int64_t ldb, double beta, double *c, int64_t ldc);

/* "avx512", "avx2", "generic": the path chosen at first use (AG_ISA). */
const char *ag_k_isa_name(void);

#endif /* AG_SIMD_H */
