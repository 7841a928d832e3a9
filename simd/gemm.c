// SPDX-License-Identifier: MIT
/*
 * GEMM through a tuned BLAS (chosen by simd/meson.build, see docs/simd.md),
 * run one thread per call: libag owns the threads, and a BLAS pool beside
 * libag's pool would fight it for the cores.  Large products are split by
 * rows (or columns) over libag's pool when the engine registered it.
 *
 * f32 products with more than one row and column go to oneDNN's sgemm when
 * the build has it: its kernels are generated for the CPU at run time, so
 * they use AVX-512 where OpenBLAS is held to its AVX2 kernels
 * (OPENBLAS_CORETYPE=Haswell), and at every size libag multiplies it was
 * as fast or faster than OpenBLAS's AVX-512 kernels too (docs/simd.md).
 * AG_GEMM=blas in the environment keeps f32 on the BLAS.
 */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

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

#ifdef AG_K_GEMM_ONEDNN
#include "onednn.h"

static bool use_onednn;

/* False when oneDNN declined (the BLAS then does the product). */
static bool sgemm_onednn(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			 float alpha, const float *a, int64_t lda,
			 const float *b, int64_t ldb, float beta, float *c,
			 int64_t ldc)
{
	int prev = ag_k_omp_one_begin();
	dnnl_status_t st;

	st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda,
			b, ldb, beta, c, ldc);
	ag_k_omp_one_end(prev);
	return st == dnnl_success;
}
#endif

static void gemm_choose(void)
{
#ifdef AG_K_GEMM_ONEDNN
	const char *e = getenv("AG_GEMM");

	use_onednn = !e || strcmp(e, "blas") != 0;
#endif
}

static void gemm_init(void)
{
	blas_one_thread();
	gemm_choose();
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

/* A product smaller than this many multiply-adds is not worth splitting;
 * parts are at least this large too. */
#define GEMM_PAR_FLOPS (1L << 21)

static int64_t max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}

int64_t ag_k_gemm_grain(int64_t len, int64_t per)
{
	if ((double)len * (double)per < 2.0 * GEMM_PAR_FLOPS)
		return 0;
	/* parts of >= GEMM_PAR_FLOPS and >= 16 rows keep the kernels on
	 * full panels */
	return max64(16, GEMM_PAR_FLOPS / max64(per, 1));
}

#ifdef AG_K_HAVE_CBLAS
#define AG_K_HAVE_BLAS 1
#else
#define AG_K_HAVE_BLAS 0
#endif

#define T float
#define F(x) x##_f32
#define CBLAS_GEMM cblas_sgemm
#define CBLAS_GEMV cblas_sgemv
#ifdef AG_K_GEMM_ONEDNN
#define FAST_GEMM(...) (use_onednn && sgemm_onednn(__VA_ARGS__))
#endif
#include "gemm_tmpl.h"
#undef T
#undef F
#undef CBLAS_GEMM
#undef CBLAS_GEMV
#undef FAST_GEMM

#define T double
#define F(x) x##_f64
#define CBLAS_GEMM cblas_dgemm
#define CBLAS_GEMV cblas_dgemv
#include "gemm_tmpl.h"
#undef T
#undef F
#undef CBLAS_GEMM
#undef CBLAS_GEMV

const char *ag_k_gemm_f32_name(void)
{
#ifdef AG_K_GEMM_ONEDNN
	pthread_once(&blas_once, gemm_init);
	if (use_onednn)
		return "onednn";
#endif
	return ag_k_blas_name();
}

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
