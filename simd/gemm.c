// SPDX-License-Identifier: MIT
/*
 * GEMM through a tuned BLAS (chosen by simd/meson.build, see docs/simd.md),
 * run one thread per call: libag owns the threads, and a BLAS pool beside
 * libag's pool would fight it for the cores.  Large products are split by
 * rows (or columns) over libag's pool when the engine registered it.
 */
#include <limits.h>
#include <pthread.h>

#include "simd.h"

#if defined(AG_K_BLAS_OPENBLAS) || defined(AG_K_BLAS_BLIS) || \
	defined(AG_K_BLAS_CBLAS)
#define AG_K_HAVE_CBLAS 1
#include <cblas.h>
#endif

#if defined(AG_K_BLAS_OPENBLAS)
/* Declared by OpenBLAS's cblas.h. */
static void blas_one_thread(void)
{
	openblas_set_num_threads(1);
}
#elif defined(AG_K_BLAS_BLIS)
void bli_thread_set_num_threads(long n);

static void blas_one_thread(void)
{
	bli_thread_set_num_threads(1);
}
#else
static void blas_one_thread(void)
{
}
#endif

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

/* A product smaller than this many multiply-adds is not worth splitting;
 * parts are at least this large too. */
#define GEMM_PAR_FLOPS (1L << 21)

static int64_t max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}

#define AG_K_GEMM(T, S, BLASFN)                                                 \
	static void gemm_ref_##S(bool ta, bool tb, int64_t m, int64_t n,        \
				 int64_t k, T alpha, const T *a, int64_t lda,   \
				 const T *b, int64_t ldb, T beta, T *c,         \
				 int64_t ldc)                                   \
	{                                                                       \
		int64_t i, j, l;                                                \
                                                                                \
		for (i = 0; i < m; i++) {                                       \
			for (j = 0; j < n; j++) {                               \
				T s = 0;                                        \
                                                                                \
				for (l = 0; l < k; l++)                         \
					s += (ta ? a[l * lda + i] :             \
						   a[i * lda + l]) *            \
					     (tb ? b[j * ldb + l] :             \
						   b[l * ldb + j]);             \
				/* beta 0 overwrites (NaN in C ignored),      \
				 * as BLAS does */ \
				c[i * ldc + j] =                                \
					alpha * s +                             \
					(beta == 0 ? 0 :                        \
						     beta * c[i * ldc + j]);    \
			}                                                       \
		}                                                               \
	}                                                                       \
                                                                                \
	static void gemm_one_##S(bool ta, bool tb, int64_t m, int64_t n,        \
				 int64_t k, T alpha, const T *a, int64_t lda,   \
				 const T *b, int64_t ldb, T beta, T *c,         \
				 int64_t ldc)                                   \
	{                                                                       \
		int64_t i, j;                                                   \
                                                                                \
		if (m <= 0 || n <= 0)                                           \
			return;                                                 \
		if (k <= 0 || alpha == 0) {                                     \
			for (i = 0; i < m; i++)                                 \
				for (j = 0; j < n; j++)                         \
					c[i * ldc + j] =                        \
						beta == 0 ?                     \
							0 :                     \
							beta * c[i * ldc + j];  \
			return;                                                 \
		}                                                               \
		/* BLAS rejects a leading dimension below the row length     \
		 * even where it is never used (one stored row); one that    \
		 * is really too short (rows overlap) takes the loops. */  \
		if ((ta ? k : m) == 1)                                          \
			lda = max64(lda, ta ? m : k);                           \
		if ((tb ? n : k) == 1)                                          \
			ldb = max64(ldb, tb ? k : n);                           \
		if (m == 1)                                                     \
			ldc = max64(ldc, n);                                    \
		if (lda < (ta ? m : k) || ldb < (tb ? k : n) || ldc < n)        \
			goto ref;                                               \
		if (m > INT_MAX || n > INT_MAX || k > INT_MAX ||                \
		    lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX ||          \
		    !AG_K_HAVE_BLAS)                                            \
			goto ref;                                               \
		BLASFN(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);   \
		return;                                                         \
ref:                                                                            \
		gemm_ref_##S(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,   \
			     ldc);                                              \
	}                                                                       \
                                                                                \
	struct gemm_args_##S {                                                  \
		bool ta, tb, by_rows;                                           \
		int64_t m, n, k;                                                \
		T alpha, beta;                                                  \
		const T *a, *b;                                                 \
		T *c;                                                           \
		int64_t lda, ldb, ldc;                                          \
	};                                                                      \
                                                                                \
	static void gemm_part_##S(int64_t s, int64_t e, void *arg)              \
	{                                                                       \
		struct gemm_args_##S *g = arg;                                  \
                                                                                \
		if (g->by_rows)                                                 \
			gemm_one_##S(g->ta, g->tb, e - s, g->n, g->k,           \
				     g->alpha,                                  \
				     g->a + (g->ta ? s : s * g->lda), g->lda,   \
				     g->b, g->ldb, g->beta, g->c + s * g->ldc,  \
				     g->ldc);                                   \
		else                                                            \
			gemm_one_##S(g->ta, g->tb, g->m, e - s, g->k,           \
				     g->alpha, g->a, g->lda,                    \
				     g->b + (g->tb ? s * g->ldb : s), g->ldb,   \
				     g->beta, g->c + s, g->ldc);                \
	}                                                                       \
                                                                                \
	void ag_k_gemm_##S(bool ta, bool tb, int64_t m, int64_t n, int64_t k,   \
			   T alpha, const T *a, int64_t lda, const T *b,        \
			   int64_t ldb, T beta, T *c, int64_t ldc)              \
	{                                                                       \
		ag_k_parallel_for_fn pf = ag_k_get_parallel_for();              \
		double flops = (double)m * (double)n * (double)k;               \
                                                                                \
		pthread_once(&blas_once, blas_one_thread);                      \
		if (pf && flops >= 2.0 * GEMM_PAR_FLOPS && k > 0) {             \
			struct gemm_args_##S g = {                              \
				.ta = ta,                                       \
				.tb = tb,                                       \
				.by_rows = m >= n,                              \
				.m = m,                                         \
				.n = n,                                         \
				.k = k,                                         \
				.alpha = alpha,                                 \
				.beta = beta,                                   \
				.a = a,                                         \
				.b = b,                                         \
				.c = c,                                         \
				.lda = lda,                                     \
				.ldb = ldb,                                     \
				.ldc = ldc,                                     \
			};                                                      \
			int64_t len = g.by_rows ? m : n;                        \
			int64_t per = (g.by_rows ? n : m) * k;                  \
                                                                                \
			/* parts of >= GEMM_PAR_FLOPS and >= 16 rows keep the \
			 * BLAS kernels on full panels */ \
			pf(len, max64(16, GEMM_PAR_FLOPS / max64(per, 1)),      \
			   gemm_part_##S, &g);                                  \
			return;                                                 \
		}                                                               \
		gemm_one_##S(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,   \
			     ldc);                                              \
	}                                                                       \
                                                                                \
	void ag_k_gemm_serial_##S(bool ta, bool tb, int64_t m, int64_t n,       \
				  int64_t k, T alpha, const T *a, int64_t lda,  \
				  const T *b, int64_t ldb, T beta, T *c,        \
				  int64_t ldc)                                  \
	{                                                                       \
		pthread_once(&blas_once, blas_one_thread);                      \
		gemm_one_##S(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,   \
			     ldc);                                              \
	}

#ifdef AG_K_HAVE_CBLAS
#define AG_K_HAVE_BLAS 1
/*
 * A product with one row or one column is a matrix-vector product: GEMV
 * reads the matrix once where GEMM first packs all of it, which made a
 * batch-1 linear layer spend a third of its time copying its weight
 * (ag-bench --workload serve).  beta == 0 overwrites, as GEMM does: y is
 * cleared first, so NaN in it never propagates.
 */
#define AG_K_BLAS_RM(T, S, GEMM, GEMV)                                         \
	static void S##gemm_rm(bool ta, bool tb, int64_t m, int64_t n,         \
			       int64_t k, T alpha, const T *a, int64_t lda,    \
			       const T *b, int64_t ldb, T beta, T *c,          \
			       int64_t ldc)                                    \
	{                                                                      \
		int64_t len = m == 1 ? n : m, inc = m == 1 ? 1 : ldc;          \
                                                                               \
		if ((m == 1 || n == 1) && beta == 0)                           \
			for (int64_t i = 0; i < len; i++)                      \
				c[i * inc] = 0;                                \
		if (m == 1) /* c = op(B)^T op(A)'s row */                      \
			GEMV(CblasRowMajor, tb ? CblasNoTrans : CblasTrans,    \
			     (int)(tb ? n : k), (int)(tb ? k : n), alpha, b,   \
			     (int)ldb, a, ta ? (int)lda : 1, beta, c, 1);      \
		else if (n == 1) /* c's column = op(A) op(B)'s column */       \
			GEMV(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,    \
			     (int)(ta ? k : m), (int)(ta ? m : k), alpha, a,   \
			     (int)lda, b, tb ? 1 : (int)ldb, beta, c,          \
			     (int)ldc);                                        \
		else                                                           \
			GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,    \
			     tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,   \
			     (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, \
			     (int)ldc);                                        \
	}

AG_K_BLAS_RM(float, s, cblas_sgemm, cblas_sgemv)
AG_K_BLAS_RM(double, d, cblas_dgemm, cblas_dgemv)
#else
#define AG_K_HAVE_BLAS 0
#define sgemm_rm gemm_ref_f32
#define dgemm_rm gemm_ref_f64
#endif

AG_K_GEMM(float, f32, sgemm_rm)
AG_K_GEMM(double, f64, dgemm_rm)

const char *ag_k_blas_name(void)
{
#if defined(AG_K_BLAS_OPENBLAS)
	return "openblas";
#elif defined(AG_K_BLAS_BLIS)
	return "blis";
#elif defined(AG_K_BLAS_CBLAS)
	return "cblas";
#else
	return "reference loops";
#endif
}
