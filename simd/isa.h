/* SPDX-License-Identifier: MIT */
#ifndef AG_SIMD_ISA_H
#define AG_SIMD_ISA_H

/*
 * One table of kernels per ISA.  kernels.c is compiled once per ISA and
 * each copy defines one of the tables below; dispatch.c picks one at first
 * use and the public ag_k_* entry points call through it.
 */
#include "simd.h"

#define AG_K_ISA_FNS(T, S)                                                     \
	void (*unary_##S)(enum ag_k_unary op, int64_t n, const T *x,           \
			  int64_t incx, T *y, int64_t incy,                    \
			  const struct ag_k_params *p);                        \
	void (*unary_bwd_##S)(enum ag_k_unary op, int64_t n, const T *g,       \
			      int64_t incg, const T *x, int64_t incx,          \
			      const T *y, int64_t incy, T *gx, int64_t incgx,  \
			      const struct ag_k_params *p);                    \
	void (*binary_##S)(enum ag_k_binary op, int64_t n, const T *a,         \
			   int64_t inca, const T *b, int64_t incb, T *y,       \
			   int64_t incy);                                      \
	void (*binary_bwd_##S)(enum ag_k_binary op, int64_t n, const T *g,     \
			       int64_t incg, const T *a, int64_t inca,         \
			       const T *b, int64_t incb, T *ga, int64_t incga, \
			       T *gb, int64_t incgb);                          \
	double (*sum_##S)(int64_t n, const T *x, int64_t incx);                \
	double (*dot_##S)(int64_t n, const T *a, int64_t inca, const T *b,     \
			  int64_t incb);                                       \
	void (*axpy_##S)(int64_t n, T alpha, const T *x, int64_t incx, T *y,   \
			 int64_t incy);                                        \
	double (*max_##S)(int64_t n, const T *x, int64_t incx,                 \
			  int64_t *argmax);                                    \
	double (*logsumexp_##S)(int64_t n, const T *x, int64_t incx);          \
	void (*softmax_##S)(int64_t n, const T *x, int64_t incx, T *y,         \
			    int64_t incy);                                     \
	void (*log_softmax_##S)(int64_t n, const T *x, int64_t incx, T *y,     \
				int64_t incy);                                 \
	void (*softmax_bwd_##S)(int64_t n, const T *g, int64_t incg,           \
				const T *y, int64_t incy, T *gx,               \
				int64_t incgx);                                \
	void (*log_softmax_bwd_##S)(int64_t n, const T *g, int64_t incg,       \
				    const T *y, int64_t incy, T *gx,           \
				    int64_t incgx);                            \
	double (*var_##S)(int64_t n, const T *x, int64_t incx,                 \
			  int64_t correction, double *mean);

/* kern_ops.h: kernels of single ops */
#define AG_K_ISA_OPS(T, S)                                                     \
	void (*maxpool2_##S)(int64_t oh, int64_t ow, const T *x, int64_t ldx,  \
			     int64_t w, T *y, int64_t *idx);                   \
	void (*maxpool2_bwd_##S)(int64_t h, int64_t w, const T *g,             \
				 const int64_t *idx, T *dx);                   \
	void (*bn_affine_##S)(int64_t runs, int64_t len, int64_t ld,           \
			      const T *x, T *y, T a, T b);                     \
	void (*bn_dx_##S)(int64_t runs, int64_t len, int64_t ld, const T *g,   \
			  const T *x, T *dx, double m, double A, double B,     \
			  double C);                                           \
	void (*bn_sums_##S)(int64_t runs, int64_t len, int64_t ld, const T *g, \
			    const T *x, double m, double *sg, double *sgx);    \
	void (*sgd_##S)(int64_t n, T *restrict p, const T *g, T *buf,          \
			const struct ag_k_sgd *a);                             \
	void (*adam_##S)(int64_t n, T *restrict p, const T *g, T *m, T *v,     \
			 T *vmax, const struct ag_k_adam *a);

struct ag_k_isa {
	const char *name;
	AG_K_ISA_FNS(float, f32)
	AG_K_ISA_FNS(double, f64)
	AG_K_ISA_OPS(float, f32)
	AG_K_ISA_OPS(double, f64)
	void (*dropout_bits)(uint64_t key, int64_t first, int64_t n,
			     uint64_t below, uint64_t *bits);
};

extern const struct ag_k_isa ag_k_isa_generic;
extern const struct ag_k_isa ag_k_isa_avx2;
extern const struct ag_k_isa ag_k_isa_avx512;

/* The table in use; for tests, which compare every path with generic. */
const struct ag_k_isa *ag_k_isa_current(void);
const struct ag_k_isa *ag_k_isa_by_name(const char *name);

#endif /* AG_SIMD_ISA_H */
