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

#ifdef AG_K_HAVE_CBLAS
#define AG_K_HAVE_BLAS 1
#else
#define AG_K_HAVE_BLAS 0
#endif

#define T float
#define F(x) x##_f32
#define CBLAS_GEMM cblas_sgemm
#define CBLAS_GEMV cblas_sgemv
#include "gemm_tmpl.h"
#undef T
#undef F
#undef CBLAS_GEMM
#undef CBLAS_GEMV

#define T double
#define F(x) x##_f64
#define CBLAS_GEMM cblas_dgemm
#define CBLAS_GEMV cblas_dgemv
#include "gemm_tmpl.h"
#undef T
#undef F
#undef CBLAS_GEMM
#undef CBLAS_GEMV

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
