/* SPDX-License-Identifier: MIT */
/*
 * GEMM per element type, written once.  gemm.c includes this file twice,
 * with
 *   T           the element type (float, double)
 *   F(x)        x with the type suffix (x_f32, x_f64)
 *   CBLAS_GEMM  cblas_sgemm or cblas_dgemm, when built with a CBLAS
 *   CBLAS_GEMV  cblas_sgemv or cblas_dgemv, likewise
 *   FAST_GEMM   optionally, a GEMM tried first for products of more than
 *               one row and column, true when it did the product
 * No include guard on purpose.
 */

static void F(gemm_ref)(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			T alpha, const T *a, int64_t lda, const T *b,
			int64_t ldb, T beta, T *c, int64_t ldc)
{
	int64_t i, j, l;

	for (i = 0; i < m; i++) {
		for (j = 0; j < n; j++) {
			T s = 0;

			for (l = 0; l < k; l++)
				s += (ta ? a[l * lda + i] : a[i * lda + l]) *
				     (tb ? b[j * ldb + l] : b[l * ldb + j]);
			/* beta 0 overwrites (NaN in C ignored),
			 * as BLAS does */
			c[i * ldc + j] =
				alpha * s +
				(beta == 0 ? 0 : beta * c[i * ldc + j]);
		}
	}
}

#ifdef AG_K_HAVE_CBLAS
/*
 * A product with one row or one column is a matrix-vector product: GEMV
 * reads the matrix once where GEMM first packs all of it, which made a
 * batch-1 linear layer spend a third of its time copying its weight
 * (ag-bench --workload serve).  beta == 0 overwrites, as GEMM does: y is
 * cleared first, so NaN in it never propagates.
 */
static void F(gemm_blas)(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			 T alpha, const T *a, int64_t lda, const T *b,
			 int64_t ldb, T beta, T *c, int64_t ldc)
{
	int64_t len = m == 1 ? n : m, inc = m == 1 ? 1 : ldc;

	if ((m == 1 || n == 1) && beta == 0)
		for (int64_t i = 0; i < len; i++)
			c[i * inc] = 0;
	if (m == 1) /* c = op(B)^T op(A)'s row */
		CBLAS_GEMV(CblasRowMajor, tb ? CblasNoTrans : CblasTrans,
			   (int)(tb ? n : k), (int)(tb ? k : n), alpha, b,
			   (int)ldb, a, ta ? (int)lda : 1, beta, c, 1);
	else if (n == 1) /* c's column = op(A) op(B)'s column */
		CBLAS_GEMV(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
			   (int)(ta ? k : m), (int)(ta ? m : k), alpha, a,
			   (int)lda, b, tb ? 1 : (int)ldb, beta, c, (int)ldc);
#ifdef FAST_GEMM
	else if (FAST_GEMM(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c,
			   ldc))
		return;
#endif
	else
		CBLAS_GEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
			   tb ? CblasTrans : CblasNoTrans, (int)m, (int)n,
			   (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c,
			   (int)ldc);
}
#else
/* no BLAS in this build: the loops (gemm_one never gets here then) */
static void F(gemm_blas)(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			 T alpha, const T *a, int64_t lda, const T *b,
			 int64_t ldb, T beta, T *c, int64_t ldc)
{
	F(gemm_ref)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
#endif

static void F(gemm_one)(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			T alpha, const T *a, int64_t lda, const T *b,
			int64_t ldb, T beta, T *c, int64_t ldc)
{
	int64_t i, j;

	if (m <= 0 || n <= 0)
		return;
	if (k <= 0 || alpha == 0) {
		for (i = 0; i < m; i++)
			for (j = 0; j < n; j++)
				c[i * ldc + j] =
					beta == 0 ? 0 : beta * c[i * ldc + j];
		return;
	}
	/* BLAS rejects a leading dimension below the row length
	 * even where it is never used (one stored row); one that
	 * is really too short (rows overlap) takes the loops. */
	if ((ta ? k : m) == 1)
		lda = max64(lda, ta ? m : k);
	if ((tb ? n : k) == 1)
		ldb = max64(ldb, tb ? k : n);
	if (m == 1)
		ldc = max64(ldc, n);
	if (lda < (ta ? m : k) || ldb < (tb ? k : n) || ldc < n)
		goto ref;
	if (m > INT_MAX || n > INT_MAX || k > INT_MAX || lda > INT_MAX ||
	    ldb > INT_MAX || ldc > INT_MAX || !AG_K_HAVE_BLAS)
		goto ref;
	F(gemm_blas)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
	return;
ref:
	F(gemm_ref)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

struct F(gemm_args) {
	bool ta, tb, by_rows;
	int64_t m, n, k;
	T alpha, beta;
	const T *a, *b;
	T *c;
	int64_t lda, ldb, ldc;
};

static void F(gemm_part)(int64_t s, int64_t e, void *arg)
{
	struct F(gemm_args) *g = arg;

	if (g->by_rows)
		F(gemm_one)
	(g->ta, g->tb, e - s, g->n, g->k, g->alpha,
	 g->a + (g->ta ? s : s * g->lda), g->lda, g->b, g->ldb, g->beta,
	 g->c + s * g->ldc, g->ldc);
	else F(gemm_one)(g->ta, g->tb, g->m, e - s, g->k, g->alpha, g->a,
			 g->lda, g->b + (g->tb ? s * g->ldb : s), g->ldb,
			 g->beta, g->c + s, g->ldc);
}

void F(ag_k_gemm)(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
		  const T *a, int64_t lda, const T *b, int64_t ldb, T beta,
		  T *c, int64_t ldc)
{
	ag_k_parallel_for_fn pf = ag_k_get_parallel_for();
	bool by_rows = m >= n;
	int64_t len = by_rows ? m : n, per = (by_rows ? n : m) * k;
	int64_t grain = pf && k > 0 ? ag_k_gemm_grain(len, per) : 0;

	pthread_once(&blas_once, gemm_init);
	if (grain) {
		struct F(gemm_args) g = {
			.ta = ta,
			.tb = tb,
			.by_rows = by_rows,
			.m = m,
			.n = n,
			.k = k,
			.alpha = alpha,
			.beta = beta,
			.a = a,
			.b = b,
			.c = c,
			.lda = lda,
			.ldb = ldb,
			.ldc = ldc,
		};

		pf(len, grain, F(gemm_part), &g);
		return;
	}
	F(gemm_one)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void F(ag_k_gemm_serial)(bool ta, bool tb, int64_t m, int64_t n, int64_t k,
			 T alpha, const T *a, int64_t lda, const T *b,
			 int64_t ldb, T beta, T *c, int64_t ldc)
{
	pthread_once(&blas_once, gemm_init);
	F(gemm_one)(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
