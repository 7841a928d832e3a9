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
void ag_k_unary_f32(enum ag_k_unary op, int64_t n, const float *x, int64_t incx,
		    float *y, int64_t incy, const struct ag_k_params *p);
void ag_k_unary_f64(enum ag_k_unary op, int64_t n, const double *x,
		    int64_t incx, double *y, int64_t incy,
		    const struct ag_k_params *p);

/* gx = g * f'(x), reading x and/or y as ag_k_unary_bwd_needs() says (the
 * other pointer may be NULL).  In every derivative kernel an output with
 * stride 0 is a broadcast operand's gradient: the span's contributions are
 * summed (pairwise, in f64) and ADDED to that one element, so the caller
 * zeroes it first; outputs with any other stride are overwritten. */
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
			 const float *b, int64_t incb, float *ga, int64_t incga,
			 float *gb, int64_t incgb);
void ag_k_binary_bwd_f64(enum ag_k_binary op, int64_t n, const double *g,
			 int64_t incg, const double *a, int64_t inca,
			 const double *b, int64_t incb, double *ga,
			 int64_t incga, double *gb, int64_t incgb);

/* Accurate sums (pairwise; see docs/simd.md for the bound). */
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
/*
 * The same on the calling thread only, never split over the pool, so the
 * result does not depend on the thread count: the BLAS may compute a part
 * of a split product with other kernels, which round differently.
 */
void ag_k_gemm_serial_f32(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			  float alpha, const float *a, int64_t lda,
			  const float *b, int64_t ldb, float beta, float *c,
			  int64_t ldc);
void ag_k_gemm_serial_f64(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			  double alpha, const double *a, int64_t lda,
			  const double *b, int64_t ldb, double beta, double *c,
			  int64_t ldc);

/*
 * Rows per part when a product of len rows of per multiply-adds each is
 * worth splitting over the pool, else 0: the one rule for ag_k_gemm and
 * packed products.
 */
int64_t ag_k_gemm_grain(int64_t len, int64_t per);

/*
 * Memory for what simd/ keeps (packs): the engine's allocator, the one
 * choke point for out-of-memory and fault injection (tests/layers.sh).
 */
struct ag_k_mem {
	void *(*aligned_alloc)(size_t align, size_t size);
	void (*free)(void *p); /* NULL is fine */
};

/*
 * A fixed right operand op(B) (k x n, f32: a layer's weight) packed once
 * for many products C = op(A) op(B) + beta C (simd/gemm_pack.c).  Returns
 * 0 with *out set; 1 when f32 products do not run on oneDNN here (then
 * multiply unpacked); -1 out of memory.  b must stay valid and unchanged
 * while the pack lives: a product oneDNN declines is computed from it.
 * mem must outlive the pack and every thread that multiplied with it.
 */
struct ag_k_gemm_pack;
int ag_k_gemm_pack_f32(const struct ag_k_mem *mem, bool tb, int64_t k,
		       int64_t n, const float *b, int64_t ldb,
		       struct ag_k_gemm_pack **out);
/* C[m, n] (dense, row length n) = op(A) op(B) + beta C */
void ag_k_gemm_packed_f32(struct ag_k_gemm_pack *p, bool ta, int64_t m,
			  const float *a, int64_t lda, float beta, float *c);
void ag_k_gemm_pack_free(struct ag_k_gemm_pack *p); /* NULL is fine */
long ag_k_gemm_packs_live(void); /* packs made and not freed */

/* "avx512", "avx2", "generic": the path chosen at first use (AG_ISA). */
const char *ag_k_isa_name(void);

/* "openblas", "blis", "cblas" or "reference loops": the build's BLAS. */
const char *ag_k_blas_name(void);
/*
 * What f32 products of more than one row and column run on: "onednn"
 * (chosen at first use unless AG_GEMM=blas), else ag_k_blas_name().
 * Matrix-vector products and f64 always use the BLAS.
 */
const char *ag_k_gemm_f32_name(void);

/* Added beyond the first contract: reductions over one span (a row along
 * the reduced dim) and helpers the ops and optimisers need. */

/* sum(a * b), products rounded in the data type, summed pairwise in f64 */
double ag_k_dot_f32(int64_t n, const float *a, int64_t inca, const float *b,
		    int64_t incb);
double ag_k_dot_f64(int64_t n, const double *a, int64_t inca, const double *b,
		    int64_t incb);

/* y += alpha * x (one fma per element) */
void ag_k_axpy_f32(int64_t n, float alpha, const float *x, int64_t incx,
		   float *y, int64_t incy);
void ag_k_axpy_f64(int64_t n, double alpha, const double *x, int64_t incx,
		   double *y, int64_t incy);

/* Max of the span, NaN if any element is NaN (as torch.max); *argmax (may
 * be NULL) gets the index of the first maximum or first NaN. n >= 1. */
double ag_k_max_f32(int64_t n, const float *x, int64_t incx, int64_t *argmax);
double ag_k_max_f64(int64_t n, const double *x, int64_t incx, int64_t *argmax);

/* log(sum(exp(x))), shifted by the max; -inf for an all -inf span */
double ag_k_logsumexp_f32(int64_t n, const float *x, int64_t incx);
double ag_k_logsumexp_f64(int64_t n, const double *x, int64_t incx);

/* y = softmax(x), y = log_softmax(x) over the span; y may be x */
void ag_k_softmax_f32(int64_t n, const float *x, int64_t incx, float *y,
		      int64_t incy);
void ag_k_softmax_f64(int64_t n, const double *x, int64_t incx, double *y,
		      int64_t incy);
void ag_k_log_softmax_f32(int64_t n, const float *x, int64_t incx, float *y,
			  int64_t incy);
void ag_k_log_softmax_f64(int64_t n, const double *x, int64_t incx, double *y,
			  int64_t incy);

/* softmax: gx = y * (g - sum(g * y)); log_softmax: gx = g - exp(y) sum(g),
 * y the forward output.  gx may be g. */
void ag_k_softmax_bwd_f32(int64_t n, const float *g, int64_t incg,
			  const float *y, int64_t incy, float *gx,
			  int64_t incgx);
void ag_k_softmax_bwd_f64(int64_t n, const double *g, int64_t incg,
			  const double *y, int64_t incy, double *gx,
			  int64_t incgx);
void ag_k_log_softmax_bwd_f32(int64_t n, const float *g, int64_t incg,
			      const float *y, int64_t incy, float *gx,
			      int64_t incgx);
void ag_k_log_softmax_bwd_f64(int64_t n, const double *g, int64_t incg,
			      const double *y, int64_t incy, double *gx,
			      int64_t incgx);

/* Two-pass variance sum((x - mean)^2) / max(0, n - correction) in f64
 * (correction 1 = unbiased); *mean (may be NULL) gets the mean.  Its
 * gradient, g * 2 (x - mean) / (n - correction), is ag_k_unary with
 * AG_K_ADD_SCALAR then AG_K_MUL_SCALAR, or one ag_k_axpy. */
double ag_k_var_f32(int64_t n, const float *x, int64_t incx, int64_t correction,
		    double *mean);
double ag_k_var_f64(int64_t n, const double *x, int64_t incx,
		    int64_t correction, double *mean);

/*
 * Kernels of single ops (kern_ops.h), dispatched as the rest; results are
 * the same bits on every path.
 */

/*
 * Max pool over the 2x2 windows at stride 2 of one plane: y [oh, ow] dense,
 * x's rows ldx apart (columns dense).  idx (may be NULL) gets each window's
 * flat position row * w + column in the plane; ties take the first largest
 * of (0,0) (0,1) (1,0) (1,1), a NaN the last NaN, as torch.
 */
void ag_k_maxpool2_f32(int64_t oh, int64_t ow, const float *x, int64_t ldx,
		       int64_t w, float *y, int64_t *idx);
void ag_k_maxpool2_f64(int64_t oh, int64_t ow, const double *x, int64_t ldx,
		       int64_t w, double *y, int64_t *idx);
/*
 * Its derivative: dx [h, w] dense, g + 0 where idx [h / 2, w / 2] points,
 * 0 elsewhere (a last odd row or column too); dx needs no zeroing first.
 */
void ag_k_maxpool2_bwd_f32(int64_t h, int64_t w, const float *g,
			   const int64_t *idx, float *dx);
void ag_k_maxpool2_bwd_f64(int64_t h, int64_t w, const double *g,
			   const int64_t *idx, double *dx);

/*
 * Batch norm over one channel's runs of len elements, ld apart (x, y, g,
 * dx alike): y = x a + b (rounded as written: x a, then + b), and its
 * derivative dx = g A + (x - m) B + C, computed in f64.
 */
void ag_k_bn_affine_f32(int64_t runs, int64_t len, int64_t ld, const float *x,
			float *y, float a, float b);
void ag_k_bn_affine_f64(int64_t runs, int64_t len, int64_t ld, const double *x,
			double *y, double a, double b);
void ag_k_bn_dx_f32(int64_t runs, int64_t len, int64_t ld, const float *g,
		    const float *x, float *dx, double m, double A, double B,
		    double C);
void ag_k_bn_dx_f64(int64_t runs, int64_t len, int64_t ld, const double *g,
		    const double *x, double *dx, double m, double A, double B,
		    double C);
/*
 * And its sums over the runs, in f64: *sg = sum(g), *sgx = sum(g (x - m));
 * the order of the additions differs between the paths.
 */
void ag_k_bn_sums_f32(int64_t runs, int64_t len, int64_t ld, const float *g,
		      const float *x, double m, double *sg, double *sgx);
void ag_k_bn_sums_f64(int64_t runs, int64_t len, int64_t ld, const double *g,
		      const double *x, double m, double *sg, double *sgx);

/*
 * Dropout's mask: bit b of bits[w] is set when draw first + 64 w + b of the
 * SplitMix64 stream keyed by key, its top 53 bits, is below below; n draws
 * into (n + 63) / 64 words, the last word's bits from n on clear.  Draw i
 * is the generator's output after i + 1 steps from key.
 */
void ag_k_dropout_bits(uint64_t key, int64_t first, int64_t n, uint64_t below,
		       uint64_t *bits);

/*
 * The optimisers' fused updates in place, torch 1.13's single-tensor SGD
 * and Adam/AdamW (kern_optim.h), over n dense elements.  The constants are
 * computed in f64 by the caller and rounded to the data type once.
 */
struct ag_k_sgd {
	double wd, momentum, damp1, nlr; /* damp1 = 1 - dampening, nlr = -lr */
	bool nesterov;
	bool first; /* buf (if any) starts as this step's d */
};
/* buf NULL: no momentum */
void ag_k_sgd_f32(int64_t n, float *p, const float *g, float *buf,
		  const struct ag_k_sgd *a);
void ag_k_sgd_f64(int64_t n, double *p, const double *g, double *buf,
		  const struct ag_k_sgd *a);

struct ag_k_adam {
	/* nss = -lr / (1 - beta1^t), bc2s = sqrt(1 - beta2^t), w = 1 - beta1,
	 * c2 = 1 - beta2, decay = 1 - lr wd */
	double nss, bc2s, w, beta2, c2, eps, wd, decay;
	bool decoupled; /* AdamW: p *= decay, else wd != 0 adds wd p to g */
	bool lerp_hi; /* beta1 > 0.5: torch's lerp takes its other form */
};
/* vmax NULL: no amsgrad */
void ag_k_adam_f32(int64_t n, float *p, const float *g, float *m, float *v,
		   float *vmax, const struct ag_k_adam *a);
void ag_k_adam_f64(int64_t n, double *p, const double *g, double *m, double *v,
		   double *vmax, const struct ag_k_adam *a);

/*
 * Intra-op parallelism.  The engine registers its ag_parallel_for() here
 * once the pool exists (simd/ does not link against the engine).  Large
 * elementwise spans and GEMMs are then split into parts [begin, end) run
 * on the pool.  The function must have run every part when it returns
 * (inline if it cannot do better); its return value is ignored.  NULL
 * switches splitting off.
 */
typedef int (*ag_k_parallel_for_fn)(int64_t n, int64_t grain,
				    void (*fn)(int64_t begin, int64_t end,
					       void *arg),
				    void *arg);
void ag_k_set_parallel_for(ag_k_parallel_for_fn fn);
ag_k_parallel_for_fn ag_k_get_parallel_for(void);

#endif /* AG_SIMD_H */
