// SPDX-License-Identifier: MIT
/*
 * ag_linear_prepack and ag_module_prepack: a packed weight gives the
 * product of the weight as it is (against f64 loops), for every row count
 * (more shapes than the pack keeps primitives for), transposed operands and
 * a pool-split product; a weight written since its packing is read
 * unpacked; bad arguments fail; packs are freed with their weights.
 *
 * AG_TEST_GEMM_F32 (tests/autograd/meson.build) says whether this build
 * packs ("onednn") or not ("blas": prepack returns 0 and changes nothing).
 */
#include <stdlib.h>

#include "alloc.h"
#include "common.h"
#include "simd.h"

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })

static bool packs(void)
{
	const char *e = getenv("AG_TEST_GEMM_F32");

	return e && !strcmp(e, "onednn");
}

static struct ag_tensor *randn(struct ag_generator *g, int ndim,
			       const int64_t *shape)
{
	struct ag_tensor *t = ag_randn(g, AG_F32, ndim, shape);

	cr_assert_not_null(t, "%s", ag_errmsg());
	return t;
}

/* x w^T + b from the elements, in f64 */
static void expect_linear(struct ag_tensor *y, struct ag_tensor *x,
			  struct ag_tensor *w, struct ag_tensor *b,
			  const char *what)
{
	int64_t rows = ag_tensor_shape(x)[0], in = ag_tensor_shape(x)[1];
	int64_t out = ag_tensor_shape(w)[0];

	cr_assert_eq(ag_tensor_shape(y)[0], rows);
	cr_assert_eq(ag_tensor_shape(y)[1], out);
	for (int64_t i = 0; i < rows; i++)
		for (int64_t j = 0; j < out; j++) {
			double s = b ? ag__get(b, j) : 0, mag = fabs(s);

			for (int64_t k = 0; k < in; k++) {
				double t = ag__get(x, i * in + k) *
					   ag__get(w, j * in + k);

				s += t;
				mag += fabs(t);
			}
			double got = ag__get(y, i * out + j);

			cr_assert(fabs(got - s) <= 1e-5 * mag + 1e-6,
				  "%s: [%lld, %lld] %.9g, want %.9g", what,
				  (long long)i, (long long)j, got, s);
		}
}

Test(prepack, products_as_the_weight)
{
	struct ag_generator *g = ag_generator_new(7);
	struct ag_tensor *w = randn(g, 2, SHAPE(48, 40));
	struct ag_tensor *b = randn(g, 1, SHAPE(48));

	cr_assert_eq(ag_linear_prepack(w), packs() ? 1 : 0, "%s", ag_errmsg());
	/* 1 row (GEMV, never packed) to 40: more shapes than a pack keeps
	 * primitives for, so the last ones multiply unpacked */
	for (int64_t rows = 1; rows <= 40; rows++) {
		struct ag_tensor *x = randn(g, 2, SHAPE(rows, 40));
		struct ag_tensor *y = ag_linear(x, w, rows % 2 ? b : NULL);

		cr_assert_not_null(y, "%s", ag_errmsg());
		expect_linear(y, x, w, rows % 2 ? b : NULL, "rows");
		ag_tensor_put(y);
		ag_tensor_put(x);
	}
	ag_tensor_put(b);
	ag_tensor_put(w);
	ag_generator_free(g);
	cr_assert_eq(ag_k_gemm_packs_live(), 0);
	AG_ASSERT_NO_LEAKS();
}

/* x transposed in memory, w a transposed view, a product the pool splits */
Test(prepack, transposed_and_split)
{
	struct ag_generator *g = ag_generator_new(8);
	struct ag_tensor *xt = randn(g, 2, SHAPE(64, 96));
	struct ag_tensor *x = ag_transpose(xt, 0, 1); /* [96, 64] */
	struct ag_tensor *wt = randn(g, 2, SHAPE(64, 512));
	struct ag_tensor *w = ag_transpose(wt, 0, 1); /* [512, 64] */
	struct ag_tensor *xc = ag_contiguous(x), *wc = ag_contiguous(w);
	struct ag_tensor *big = randn(g, 2, SHAPE(256, 64)), *y;

	cr_assert_eq(ag_set_num_threads(2), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_linear_prepack(w), packs() ? 1 : 0, "%s", ag_errmsg());
	y = ag_linear(x, w, NULL);
	cr_assert_not_null(y, "%s", ag_errmsg());
	expect_linear(y, xc, wc, NULL, "transposed");
	ag_tensor_put(y);
	/* 256 x 512 x 64 = 2^23 multiply-adds: split over the pool */
	y = ag_linear(big, w, NULL);
	cr_assert_not_null(y, "%s", ag_errmsg());
	expect_linear(y, big, wc, NULL, "split");
	ag_tensor_put(y);
	ag_set_num_threads(0);
	ag_tensor_put(big);
	ag_tensor_put(xc);
	ag_tensor_put(wc);
	ag_tensor_put(x);
	ag_tensor_put(xt);
	ag_tensor_put(w);
	ag_tensor_put(wt);
	ag_generator_free(g);
	cr_assert_eq(ag_k_gemm_packs_live(), 0);
	AG_ASSERT_NO_LEAKS();
}

/*
 * A weight written after packing is read as written: by an in-place op,
 * or through ag_tensor_data() and ag_tensor_bump_version().
 */
Test(prepack, stale_pack_is_not_used)
{
	struct ag_generator *g = ag_generator_new(9);
	struct ag_tensor *w = randn(g, 2, SHAPE(16, 24));
	struct ag_tensor *x = randn(g, 2, SHAPE(8, 24)), *y;
	float *d;

	cr_assert_geq(ag_linear_prepack(w), 0, "%s", ag_errmsg());
	y = ag_linear(x, w, NULL);
	expect_linear(y, x, w, NULL, "packed");
	ag_tensor_put(y);
	cr_assert_eq(ag_mul_scalar_(w, -2.0), 0, "%s", ag_errmsg());
	y = ag_linear(x, w, NULL);
	expect_linear(y, x, w, NULL, "after an in-place op");
	ag_tensor_put(y);
	d = ag_tensor_data(w);
	for (int i = 0; i < 16 * 24; i++)
		d[i] = (float)(i % 7) - 3.0f;
	cr_assert_eq(ag_tensor_bump_version(w), 0);
	y = ag_linear(x, w, NULL);
	expect_linear(y, x, w, NULL, "after a raw write");
	ag_tensor_put(y);
	/* packed again: the new values */
	cr_assert_eq(ag_linear_prepack(w), packs() ? 1 : 0);
	y = ag_linear(x, w, NULL);
	expect_linear(y, x, w, NULL, "repacked");
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_generator_free(g);
	cr_assert_eq(ag_k_gemm_packs_live(), 0);
	AG_ASSERT_NO_LEAKS();
}

Test(prepack, bad_arguments)
{
	struct ag_tensor *v = ag_zeros(AG_F32, 1, SHAPE(4));
	struct ag_tensor *d = ag_ones(AG_F64, 2, SHAPE(3, 4));
	struct ag_tensor *x = ag_ones(AG_F64, 2, SHAPE(2, 4)), *y, *inf;
	struct ag_mode md;

	cr_assert_eq(ag_linear_prepack(NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_linear_prepack");
	cr_assert_eq(ag_linear_prepack(v), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "must be 2-D [out, in], got 1 dims");
	md = ag_inference_mode_enter();
	inf = ag_ones(AG_F32, 2, SHAPE(3, 4));
	ag_mode_exit(md);
	cr_assert_eq(ag_linear_prepack(inf), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "inference tensor");
	/* f64 has no packed product: nothing happens */
	cr_assert_eq(ag_linear_prepack(d), 0);
	y = ag_linear(x, d, NULL);
	for (int i = 0; i < 6; i++)
		cr_assert_eq(ag__get(y, i), 4.0);
	cr_assert_eq(ag_k_gemm_packs_live(), 0);
	ag_tensor_put(y);
	ag_tensor_put(x);
	ag_tensor_put(inf);
	ag_tensor_put(d);
	ag_tensor_put(v);
	AG_ASSERT_NO_LEAKS();
}

/*
 * Out of memory at each allocation of a pack: prepack fails with
 * AG_ENOMEM, the weight is left unpacked and multiplies as before, and
 * nothing leaks.
 */
Test(prepack, out_of_memory)
{
	struct ag_generator *g = ag_generator_new(4);
	struct ag_tensor *w = randn(g, 2, SHAPE(32, 48));
	struct ag_tensor *x = randn(g, 2, SHAPE(4, 48)), *y;
	long n;
	int failed = 0;

	if (!packs()) {
		cr_assert_eq(ag_linear_prepack(w), 0);
		goto out;
	}
	ag__fault_set(0, false);
	cr_assert_eq(ag_linear_prepack(w), 1, "%s", ag_errmsg());
	n = ag__fault_count();
	cr_assert_gt(n, 0);
	for (long i = 1; i <= n; i++) {
		ag__fault_set(i, false);
		int rc = ag_linear_prepack(w);

		ag__fault_set(-1, false);
		if (rc == -AG_ENOMEM) {
			AG_ASSERT_ERR(AG_ENOMEM,
				      "ag_linear_prepack: out of memory");
			cr_assert_eq(ag_k_gemm_packs_live(), 0);
			failed++;
		} else {
			cr_assert_eq(rc, 1, "%s", ag_errmsg());
		}
		y = ag_linear(x, w, NULL);
		cr_assert_not_null(y, "%s", ag_errmsg());
		expect_linear(y, x, w, NULL, "after a failed prepack");
		ag_tensor_put(y);
	}
	cr_assert_gt(failed, 0);
out:
	ag_tensor_put(x);
	ag_tensor_put(w);
	ag_generator_free(g);
	cr_assert_eq(ag_k_gemm_packs_live(), 0);
	AG_ASSERT_NO_LEAKS();
}

/* Every Linear of a model, through Sequential's children. */
Test(prepack, module_prepack)
{
	struct ag_generator *g = ag_generator_new(3);
	struct ag_module *mods[3] = { ag_linear_new(20, 30, true, g),
				      ag_relu_new(),
				      ag_linear_new(30, 5, false, g) };
	struct ag_module *m = ag_sequential_new(mods, 3);
	struct ag_tensor *x = randn(g, 2, SHAPE(6, 20)), *want, *got;

	cr_assert_not_null(m, "%s", ag_errmsg());
	ag_module_eval(m);
	want = ag_module_forward(m, x);
	cr_assert_eq(ag_module_prepack(m), packs() ? 2 : 0, "%s", ag_errmsg());
	cr_assert_eq(ag_k_gemm_packs_live(), packs() ? 2 : 0);
	got = ag_module_forward(m, x);
	for (int i = 0; i < 30; i++)
		cr_assert(fabs(ag__get(got, i) - ag__get(want, i)) <=
				  1e-5 * (1 + fabs(ag__get(want, i))),
			  "[%d] %g, want %g", i, ag__get(got, i),
			  ag__get(want, i));
	cr_assert_eq(ag_module_prepack(NULL), -AG_EINVAL);
	ag_clear_error();
	ag_tensor_put(got);
	ag_tensor_put(want);
	ag_tensor_put(x);
	ag_module_put(m);
	ag_generator_free(g);
	cr_assert_eq(ag_k_gemm_packs_live(), 0);
	AG_ASSERT_NO_LEAKS();
}
