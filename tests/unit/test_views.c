// SPDX-License-Identifier: MIT
/*
 * The view ops of ag/ops.h: geometry, sharing of storage and version
 * counter, writes through views, and their bad inputs.
 */
#include "common.h"

/* 0, 1, 2, ... in the given shape (a contiguous f64 tensor). */
static struct ag_tensor *iota(int ndim, const int64_t *shape)
{
	int64_t n = 1;
	struct ag_tensor *a, *r;

	for (int d = 0; d < ndim; d++)
		n *= shape[d];
	a = ag_arange(AG_F64, 0, (double)n, 1);
	r = ag_reshape(a, ndim, shape);
	ag_tensor_put(a);
	cr_assert_not_null(r, "%s", ag_errmsg());
	return r;
}

static void assert_geom(struct ag_tensor *t, int ndim, const int64_t *shape,
			const int64_t *strides)
{
	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_ndim(t), ndim);
	for (int d = 0; d < ndim; d++) {
		cr_assert_eq(ag_tensor_shape(t)[d], shape[d], "shape[%d]", d);
		if (strides)
			cr_assert_eq(ag_tensor_strides(t)[d], strides[d],
				     "strides[%d] = %ld, want %ld", d,
				     (long)ag_tensor_strides(t)[d],
				     (long)strides[d]);
	}
}

static void assert_values(struct ag_tensor *t, const double *want, int64_t n)
{
	cr_assert_eq(ag_tensor_numel(t), n);
	for (int64_t i = 0; i < n; i++)
		cr_assert_eq(ag__get(t, i), want[i], "element %ld: %g, want %g",
			     (long)i, ag__get(t, i), want[i]);
}

static bool shares(struct ag_tensor *a, struct ag_tensor *b)
{
	return a->storage == b->storage;
}

/* ---- reshape ---- */

Test(reshape, contiguous_is_a_view)
{
	int64_t s12[1] = { 12 }, s34[2] = { 3, 4 }, st[2] = { 4, 1 };
	struct ag_tensor *a = iota(1, s12);
	struct ag_tensor *r = ag_reshape(a, 2, s34);

	assert_geom(r, 2, s34, st);
	cr_assert(shares(a, r));
	cr_assert_eq(ag_tensor_data(r), ag_tensor_data(a));
	cr_assert_eq(ag__get(r, 7), 7.0);
	ag_tensor_put(a);
	cr_assert_eq(ag__get(r, 11), 11.0, "the view keeps the storage");
	ag_tensor_put(r);
	AG_ASSERT_NO_LEAKS();
}

Test(reshape, infers_minus_one)
{
	int64_t s12[1] = { 12 }, w1[2] = { -1, 6 }, w2[3] = { 2, -1, 3 };
	int64_t g1[2] = { 2, 6 }, g2[3] = { 2, 2, 3 }, flat[1] = { -1 };
	struct ag_tensor *a = iota(1, s12);
	struct ag_tensor *r1 = ag_reshape(a, 2, w1);
	struct ag_tensor *r2 = ag_reshape(a, 3, w2);
	struct ag_tensor *r3 = ag_reshape(r2, 1, flat);

	assert_geom(r1, 2, g1, NULL);
	assert_geom(r2, 3, g2, NULL);
	assert_geom(r3, 1, s12, NULL);
	cr_assert(ag_equal(r3, a));
	ag_tensor_put(a);
	ag_tensor_put(r1);
	ag_tensor_put(r2);
	ag_tensor_put(r3);
	AG_ASSERT_NO_LEAKS();
}

Test(reshape, to_and_from_0d)
{
	int64_t one[1] = { 1 };
	struct ag_tensor *s = ag_scalar(AG_F32, 4);
	struct ag_tensor *v = ag_reshape(s, 1, one);
	struct ag_tensor *back = ag_reshape(v, 0, NULL);

	assert_geom(v, 1, one, NULL);
	cr_assert_eq(ag_tensor_ndim(back), 0);
	cr_assert_eq(ag_tensor_item(back), 4.0);
	ag_tensor_put(s);
	ag_tensor_put(v);
	ag_tensor_put(back);
	AG_ASSERT_NO_LEAKS();
}

Test(reshape, strided_but_viewable)
{
	/* every other element of 0..7 split into 2x2 stays a view */
	int64_t s8[1] = { 8 }, s22[2] = { 2, 2 }, st[2] = { 4, 2 };
	const double want[4] = { 0, 2, 4, 6 };
	struct ag_tensor *a = iota(1, s8);
	struct ag_tensor *ev = ag_slice(a, 0, 0, 8, 2);
	struct ag_tensor *r = ag_reshape(ev, 2, s22);

	assert_geom(r, 2, s22, st);
	cr_assert(shares(a, r));
	assert_values(r, want, 4);
	ag_tensor_put(a);
	ag_tensor_put(ev);
	ag_tensor_put(r);
	AG_ASSERT_NO_LEAKS();
}

Test(reshape, transposed_needs_a_copy)
{
	int64_t s23[2] = { 2, 3 }, flat[1] = { 6 };
	const double want[6] = { 0, 3, 1, 4, 2, 5 };
	struct ag_tensor *a = iota(2, s23);
	struct ag_tensor *t = ag_transpose(a, 0, 1);
	struct ag_tensor *r = ag_reshape(t, 1, flat);

	cr_assert_not_null(r, "%s", ag_errmsg());
	cr_assert_not(shares(a, r));
	cr_assert(ag_tensor_is_contiguous(r));
	assert_values(r, want, 6);
	/* a copy: later writes to the base are not seen */
	cr_assert_eq(ag_fill_(a, 7), 0, "%s", ag_errmsg());
	assert_values(r, want, 6);
	cr_assert_eq(ag_tensor_version(r), 0);
	ag_tensor_put(a);
	ag_tensor_put(t);
	ag_tensor_put(r);
	AG_ASSERT_NO_LEAKS();
}

Test(reshape, bad_shapes)
{
	int64_t s16[1] = { 16 }, s35[2] = { 3, 5 }, two_inf[2] = { -1, -1 };
	int64_t neg[2] = { -2, -8 }, zero_inf[2] = { 0, -1 };
	int64_t big[2] = { 1LL << 40, 1LL << 40 }, nine[9] = { 1 };
	struct ag_tensor *a = iota(1, s16);

	cr_assert_null(ag_reshape(a, 2, s35));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_reshape: shape [3, 5] is invalid for a tensor of 16 elements");
	cr_assert_null(ag_reshape(a, 2, two_inf));
	AG_ASSERT_ERR(AG_ESHAPE, "shape [-1, -1] is invalid");
	cr_assert_null(ag_reshape(a, 2, neg));
	AG_ASSERT_ERR(AG_ESHAPE, "shape [-2, -8] is invalid");
	cr_assert_null(ag_reshape(a, 2, zero_inf));
	AG_ASSERT_ERR(AG_ESHAPE, "[0, -1] is invalid");
	cr_assert_null(ag_reshape(a, 2, big));
	AG_ASSERT_ERR(AG_ESHAPE, "is invalid for a tensor of 16 elements");
	cr_assert_null(ag_reshape(a, 9, nine));
	AG_ASSERT_ERR(AG_EINVAL, "ag_reshape: 9 dims requested");
	cr_assert_null(ag_reshape(a, -1, s16));
	AG_ASSERT_ERR(AG_EINVAL, "-1 dims requested");
	cr_assert_null(ag_reshape(a, 1, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_reshape: shape is NULL for 1 dims");
	cr_assert_null(ag_reshape(NULL, 1, s16));
	AG_ASSERT_ERR(AG_EINVAL, "ag_reshape: argument 'a' is NULL");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* ---- transpose and permute ---- */

Test(transpose, swaps_shape_and_strides)
{
	int64_t s234[3] = { 2, 3, 4 }, sh[3] = { 4, 3, 2 },
		st[3] = { 1, 4, 12 };
	struct ag_tensor *a = iota(3, s234);
	struct ag_tensor *t = ag_transpose(a, 0, -1);
	struct ag_tensor *same = ag_transpose(a, 1, 1);

	assert_geom(t, 3, sh, st);
	cr_assert(shares(a, t));
	cr_assert_not(ag_tensor_is_contiguous(t));
	/* t[1][2][1] = a[1][2][1] = 12 + 8 + 1 */
	cr_assert_eq(ag__get(t, 1 * 6 + 2 * 2 + 1), 21.0);
	cr_assert(ag_equal(same, a));
	ag_tensor_put(a);
	ag_tensor_put(t);
	ag_tensor_put(same);
	AG_ASSERT_NO_LEAKS();
}

Test(transpose, of_0d_and_bad_dims)
{
	int64_t s23[2] = { 2, 3 };
	struct ag_tensor *s = ag_scalar(AG_F64, 1);
	struct ag_tensor *t = ag_transpose(s, 0, -1);
	struct ag_tensor *a = iota(2, s23);

	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_ndim(t), 0);
	cr_assert_null(ag_transpose(a, 0, 5));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_transpose: dimension out of range (expected to be in range of [-2, 1], but got 5)");
	cr_assert_null(ag_transpose(a, -3, 0));
	AG_ASSERT_ERR(AG_EINVAL, "but got -3");
	cr_assert_null(ag_transpose(NULL, 0, 1));
	AG_ASSERT_ERR(AG_EINVAL, "ag_transpose: argument 'a' is NULL");
	ag_tensor_put(s);
	ag_tensor_put(t);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(permute, reorders)
{
	int64_t s234[3] = { 2, 3, 4 }, sh[3] = { 4, 2, 3 },
		st[3] = { 1, 12, 4 };
	int perm[3] = { 2, 0, -2 };
	struct ag_tensor *a = iota(3, s234);
	struct ag_tensor *p = ag_permute(a, perm);

	assert_geom(p, 3, sh, st);
	cr_assert(shares(a, p));
	/* p[3][1][2] = a[1][2][3] = 12 + 8 + 3 */
	cr_assert_eq(ag__get(p, 3 * 6 + 1 * 3 + 2), 23.0);
	ag_tensor_put(a);
	ag_tensor_put(p);
	AG_ASSERT_NO_LEAKS();
}

Test(permute, refuses_repeated_and_out_of_range_dims)
{
	int64_t s23[2] = { 2, 3 };
	int rep[2] = { 1, -1 }, out[2] = { 0, 5 };
	struct ag_tensor *a = iota(2, s23);

	cr_assert_null(ag_permute(a, rep));
	AG_ASSERT_ERR(AG_EINVAL, "ag_permute: dim 1 is repeated");
	cr_assert_null(ag_permute(a, out));
	AG_ASSERT_ERR(AG_EINVAL, "dimension out of range");
	cr_assert_null(ag_permute(a, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_permute: dims is NULL");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* ---- slice ---- */

static void check_slice(struct ag_tensor *a, int64_t start, int64_t end,
			int64_t step, const double *want, int64_t n)
{
	struct ag_tensor *s = ag_slice(a, 0, start, end, step);

	cr_assert_not_null(s, "%s", ag_errmsg());
	cr_assert(shares(a, s));
	assert_values(s, want, n);
	ag_tensor_put(s);
}

Test(slice, python_rules)
{
	int64_t s10[1] = { 10 };
	struct ag_tensor *a = iota(1, s10);
	const double step3[3] = { 1, 4, 7 }, tail[3] = { 7, 8, 9 };
	const double head[2] = { 0, 1 }, all2[5] = { 0, 2, 4, 6, 8 };
	const double mid[3] = { 2, 3, 4 }, last[1] = { 9 };

	check_slice(a, 1, 8, 3, step3, 3);
	check_slice(a, -3, INT64_MAX, 1, tail, 3);
	check_slice(a, -100, 2, 1, head, 2); /* clamped to 0 */
	check_slice(a, 0, 100, 2, all2, 5); /* clamped to 10 */
	check_slice(a, 2, -5, 1, mid, 3);
	check_slice(a, -1, 10, 7, last, 1);
	check_slice(a, 5, 2, 1, NULL, 0); /* end before start: empty */
	check_slice(a, 20, 30, 1, NULL, 0); /* past the end: empty */
	check_slice(a, 9, 10, 100, last, 1);
	check_slice(a, -1, INT64_MAX, INT64_MAX, last, 1); /* no overflow */
	check_slice(a, INT64_MIN, INT64_MAX, INT64_MAX, head, 1);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(slice, huge_step_on_a_strided_dim)
{
	int64_t s34[2] = { 3, 4 };
	const double want[4] = { 0, 1, 2, 3 };
	struct ag_tensor *a = iota(2, s34);
	struct ag_tensor *s = ag_slice(a, 0, 0, 3, INT64_MAX / 2);

	cr_assert_not_null(s, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_shape(s)[0], 1);
	assert_values(s, want, 4);
	ag_tensor_put(a);
	ag_tensor_put(s);
	AG_ASSERT_NO_LEAKS();
}

Test(slice, huge_step_backward)
{
	int64_t s34[2] = { 3, 4 };
	struct ag_tensor *a = ag_ones(AG_F64, 2, s34);
	struct ag_tensor *s, *l, *g;

	ag_tensor_set_requires_grad(a, true);
	s = ag_slice(a, 0, 1, 3, INT64_MAX);
	l = ag_sum(s);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(a);
	for (int i = 0; i < 12; i++)
		cr_assert_eq(ag__get(g, i), i / 4 == 1 ? 1.0 : 0.0, "%d", i);
	ag_tensor_put(g);
	ag_tensor_put(l);
	ag_tensor_put(s);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(slice, inner_dim_with_step)
{
	int64_t s34[2] = { 3, 4 }, sh[2] = { 3, 2 }, st[2] = { 4, 2 };
	const double want[6] = { 1, 3, 5, 7, 9, 11 };
	struct ag_tensor *a = iota(2, s34);
	struct ag_tensor *s = ag_slice(a, -1, 1, 4, 2);

	assert_geom(s, 2, sh, st);
	assert_values(s, want, 6);
	ag_tensor_put(a);
	ag_tensor_put(s);
	AG_ASSERT_NO_LEAKS();
}

Test(slice, refuses_bad_dims_steps_and_nulls)
{
	int64_t s23[2] = { 2, 3 };
	struct ag_tensor *a = iota(2, s23);
	struct ag_tensor *s = ag_scalar(AG_F32, 0);

	cr_assert_null(ag_slice(a, 0, 0, 2, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_slice: step must be positive, got 0");
	cr_assert_null(ag_slice(a, 0, 2, 0, -1));
	AG_ASSERT_ERR(AG_EINVAL, "step must be positive, got -1");
	cr_assert_null(ag_slice(a, 5, 0, 1, 1));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_slice: dimension out of range (expected to be in range of [-2, 1], but got 5)");
	cr_assert_null(ag_slice(a, -3, 0, 1, 1));
	AG_ASSERT_ERR(AG_EINVAL, "but got -3");
	cr_assert_null(ag_slice(s, 0, 0, 1, 1));
	AG_ASSERT_ERR(AG_EINVAL, "cannot slice a 0-d tensor");
	ag_tensor_put(a);
	ag_tensor_put(s);
	AG_ASSERT_NO_LEAKS();
}

/* ---- expand ---- */

Test(expand, stride_zero)
{
	int64_t s31[2] = { 3, 1 }, s34[2] = { 3, 4 }, st[2] = { 1, 0 };
	int64_t s234[3] = { 2, 3, 4 }, st3[3] = { 0, 1, 0 };
	int64_t keep[3] = { 2, -1, 4 };
	struct ag_tensor *a = iota(2, s31);
	struct ag_tensor *e = ag_expand(a, 2, s34);
	struct ag_tensor *e3 = ag_expand(a, 3, keep);

	assert_geom(e, 2, s34, st);
	assert_geom(e3, 3, s234, st3);
	cr_assert(shares(a, e));
	cr_assert_eq(ag_tensor_numel(e3), 24);
	for (int i = 0; i < 12; i++)
		cr_assert_eq(ag__get(e, i), (double)(i / 4));
	cr_assert_eq(ag__get(e3, 12 + 2 * 4 + 3), 2.0);
	/* the one element behind a row is seen by all four columns */
	cr_assert_eq(ag_fill_(a, 5), 0);
	cr_assert_eq(ag__get(e, 7), 5.0);
	ag_tensor_put(a);
	ag_tensor_put(e);
	ag_tensor_put(e3);
	AG_ASSERT_NO_LEAKS();
}

/* As torch: read-modify-write through an expanded view is refused. */
Test(expand, inplace_write_overlaps)
{
	int64_t s31[2] = { 3, 1 }, s34[2] = { 3, 4 };
	struct ag_tensor *a = iota(2, s31);
	struct ag_tensor *e = ag_expand(a, 2, s34);
	struct ag_tensor *o = ag_ones(AG_F64, 2, s34);
	struct ag_tensor *row =
		ag_slice(e, 1, 0, 1, 1); /* [3, 1]: no overlap */

	cr_assert_eq(ag_mul_scalar_(e, 2), -AG_EINVAL);
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_mul_scalar_: unsupported operation: more than one element of the written-to tensor refers to a single memory location. Please clone() the tensor before performing the operation.");
	cr_assert_eq(ag_add_(e, o), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_add_: unsupported operation");
	cr_assert_eq(ag_copy_(e, o), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_copy_: unsupported operation");
	for (int i = 0; i < 3; i++) /* nothing was written */
		cr_assert_eq(ag__get(a, i), (double)i);
	cr_assert_eq(ag_fill_(e, 7), 0); /* idempotent: allowed */
	cr_assert_eq(ag_mul_scalar_(row, 2), 0);
	cr_assert_eq(ag__get(a, 2), 14.0);
	ag_tensor_put(row);
	ag_tensor_put(o);
	ag_tensor_put(e);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(expand, refuses_incompatible_and_overflowing_shapes)
{
	int64_t s31[2] = { 3, 1 }, s24[2] = { 2, 4 }, s4[1] = { 4 };
	int64_t neg[2] = { 3, -2 }, nine[9] = { 1, 1, 1, 1, 1, 1, 1, 3, 1 };
	struct ag_tensor *a = iota(2, s31);

	cr_assert_null(ag_expand(a, 2, s24));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_expand: the shape [3, 1] cannot be expanded to [2, 4]");
	cr_assert_null(ag_expand(a, 1, s4));
	AG_ASSERT_ERR(AG_EINVAL, "cannot expand a 2-dim tensor to 1 dims");
	cr_assert_null(ag_expand(a, 2, neg));
	AG_ASSERT_ERR(AG_ESHAPE, "cannot be expanded to [3, -2]");
	cr_assert_null(ag_expand(a, 9, nine));
	AG_ASSERT_ERR(AG_EINVAL, "to 9 dims");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/*
 * Element counts and byte sizes are overflow-checked wherever they are
 * computed: an expand whose count wraps is refused, and an op whose dense
 * output of a valid expand would not fit the address space fails instead
 * of allocating a wrapped size and writing past it.
 */
Test(expand, count_overflow_is_refused)
{
	int64_t s14[2] = { 1, 4 }, big[2] = { (INT64_C(1) << 62) + 1, 4 };
	struct ag_tensor *a = ag_ones(AG_F32, 2, s14);

	cr_assert_null(ag_expand(a, 2, big));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_expand: shape [4611686018427387905, 4] of f32 is too large: its element count overflows");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(expand, dense_size_overflow_is_refused)
{
	int64_t one[1] = { 1 }, huge[1] = { INT64_C(1) << 61 };
	int64_t s1x2[2] = { 1, 2 }, wide[2] = { INT64_C(1) << 61, 2 };
	int64_t col[2] = { INT64_C(1) << 40, 1 },
		row[2] = { 1, INT64_C(1) << 40 };
	struct ag_tensor *a = ag_ones(AG_F64, 1, one);
	struct ag_tensor *b = ag_ones(AG_F64, 2, s1x2);
	struct ag_tensor *e = ag_expand(a, 1, huge);
	struct ag_tensor *w = ag_expand(b, 2, wide);
	struct ag_tensor *c, *r;
	double buf[1];

	cr_assert_not_null(e, "a valid expand: %s", ag_errmsg());
	cr_assert_not_null(w, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(e), INT64_C(1) << 61);
	cr_assert_null(ag_exp(e));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_exp: shape [2305843009213693952] of f64 is too large: its byte size overflows");
	cr_assert_null(ag_add(e, a));
	AG_ASSERT_ERR(AG_EINVAL, "ag_add: shape [2305843009213693952]");
	cr_assert_null(ag_softmax(e, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_softmax: shape [2305843009213693952]");
	cr_assert_null(ag_clone(e));
	AG_ASSERT_ERR(AG_EINVAL, "its byte size overflows");
	cr_assert_null(ag__tensor_like(e));
	AG_ASSERT_ERR(AG_EINVAL,
		      "shape [2305843009213693952] of f64 is too large");
	cr_assert_eq(ag_tensor_copy_to(e, buf, 0), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_copy_to: shape");
	/* reductions: the kept dim of a keepdim result */
	cr_assert_null(ag_sum_dim(w, 1, true));
	AG_ASSERT_ERR(AG_EINVAL, "ag_sum_dim: shape [2305843009213693952, 1]");
	cr_assert_null(ag_max_dim(w, 1, true));
	AG_ASSERT_ERR(AG_EINVAL, "ag_max_dim: shape [2305843009213693952, 1]");
	/* matmul: a 2^40 x 2^40 result of 2^40 x 1 by 1 x 2^40 */
	c = ag_expand(a, 2, col);
	r = ag_expand(a, 2, row);
	cr_assert_not_null(c);
	cr_assert_not_null(r);
	cr_assert_null(ag_matmul(c, r));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_matmul: shape [1099511627776, 1099511627776] of f64 is too large: its element count overflows");
	ag_tensor_put(c);
	ag_tensor_put(r);
	ag_tensor_put(w);
	ag_tensor_put(e);
	ag_tensor_put(b);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* ---- squeeze and unsqueeze ---- */

Test(squeeze, removes_size_one_only)
{
	int64_t s213[3] = { 2, 1, 3 }, s23[2] = { 2, 3 }, st[2] = { 3, 1 };
	struct ag_tensor *a = iota(3, s213);
	struct ag_tensor *q = ag_squeeze(a, 1);
	struct ag_tensor *q2 = ag_squeeze(a, -2);
	struct ag_tensor *keep = ag_squeeze(a, 0);

	assert_geom(q, 2, s23, st);
	assert_geom(q2, 2, s23, st);
	assert_geom(keep, 3, s213, NULL);
	cr_assert(shares(a, q));
	cr_assert_null(ag_squeeze(a, 3));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_squeeze: dimension out of range (expected to be in range of [-3, 2], but got 3)");
	ag_tensor_put(a);
	ag_tensor_put(q);
	ag_tensor_put(q2);
	ag_tensor_put(keep);
	AG_ASSERT_NO_LEAKS();
}

Test(squeeze, to_0d)
{
	int64_t one[1] = { 1 };
	struct ag_tensor *a = ag_full(AG_F64, 1, one, 3);
	struct ag_tensor *s = ag_squeeze(a, 0);

	cr_assert_eq(ag_tensor_ndim(s), 0);
	cr_assert_eq(ag_tensor_item(s), 3.0);
	ag_tensor_put(a);
	ag_tensor_put(s);
	AG_ASSERT_NO_LEAKS();
}

Test(unsqueeze, inserts_size_one)
{
	int64_t s23[2] = { 2, 3 }, f[3] = { 1, 2, 3 }, m[3] = { 2, 1, 3 };
	int64_t l[3] = { 2, 3, 1 };
	struct ag_tensor *a = iota(2, s23);
	struct ag_tensor *u0 = ag_unsqueeze(a, 0);
	struct ag_tensor *u1 = ag_unsqueeze(a, 1);
	struct ag_tensor *ul = ag_unsqueeze(a, -1);
	struct ag_tensor *s = ag_scalar(AG_F64, 2);
	struct ag_tensor *us = ag_unsqueeze(s, 0);

	assert_geom(u0, 3, f, NULL);
	assert_geom(u1, 3, m, NULL);
	assert_geom(ul, 3, l, NULL);
	cr_assert(ag_tensor_is_contiguous(u0));
	cr_assert(ag_tensor_is_contiguous(u1));
	cr_assert(ag_tensor_is_contiguous(ul));
	cr_assert(ag_equal(ul, u1) == false);
	cr_assert_eq(ag__get(u1, 4), 4.0);
	cr_assert_eq(ag_tensor_ndim(us), 1);
	cr_assert_eq(ag_tensor_item(us), 2.0);
	cr_assert(shares(a, u0));
	ag_tensor_put(a);
	ag_tensor_put(u0);
	ag_tensor_put(u1);
	ag_tensor_put(ul);
	ag_tensor_put(s);
	ag_tensor_put(us);
	AG_ASSERT_NO_LEAKS();
}

Test(unsqueeze, refuses_out_of_range_dims)
{
	int64_t s8[AG_MAX_DIMS] = { 1, 1, 1, 1, 1, 1, 1, 1 }, s23[2] = { 2, 3 };
	struct ag_tensor *full = ag_zeros(AG_F32, AG_MAX_DIMS, s8);
	struct ag_tensor *a = iota(2, s23);

	cr_assert_null(ag_unsqueeze(full, 0));
	AG_ASSERT_ERR(AG_EINVAL, "already has the maximum of 8 dims");
	cr_assert_null(ag_unsqueeze(a, 4));
	AG_ASSERT_ERR(
		AG_EINVAL,
		"ag_unsqueeze: dimension out of range (expected to be in range of [-3, 2], but got 4)");
	cr_assert_null(ag_unsqueeze(NULL, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_unsqueeze: argument 'a' is NULL");
	ag_tensor_put(full);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* ---- writes and versions ---- */

Test(write, through_a_view_seen_by_base)
{
	int64_t s23[2] = { 2, 3 };
	const double want[6] = { 0, -1, -1, 3, -1, -1 };
	const double want2[6] = { 1, 0, 0, 4, 0, 0 };
	struct ag_tensor *a = iota(2, s23);
	struct ag_tensor *v = ag_slice(a, 1, 1, 3, 1);
	struct ag_tensor *tv = ag_transpose(a, 0, 1);

	cr_assert_eq(ag_tensor_version(a), 0);
	cr_assert_eq(ag_fill_(v, -1), 0, "%s", ag_errmsg());
	assert_values(a, want, 6);
	cr_assert_eq(ag_tensor_version(a), 1);
	cr_assert_eq(ag_tensor_version(v), 1);
	cr_assert_eq(ag_tensor_version(tv), 1);
	cr_assert_eq(ag_add_scalar_(tv, 1), 0, "%s", ag_errmsg());
	assert_values(a, want2, 6);
	cr_assert_eq(ag__get(v, 0), 0.0);
	cr_assert_eq(ag_tensor_version(a), 2);
	cr_assert_eq(ag_tensor_version(v), 2);
	/* the raw pointer is the caller's business: no bump */
	((double *)ag_tensor_data(v))[0] = 42;
	cr_assert_eq(ag__get(a, 1), 42.0);
	cr_assert_eq(ag_tensor_version(a), 2);
	ag_tensor_put(a);
	ag_tensor_put(v);
	ag_tensor_put(tv);
	AG_ASSERT_NO_LEAKS();
}

Test(write, base_write_seen_by_views)
{
	int64_t s4[1] = { 4 }, s22[2] = { 2, 2 };
	struct ag_tensor *a = iota(1, s4);
	struct ag_tensor *r = ag_reshape(a, 2, s22);
	struct ag_tensor *u = ag_unsqueeze(r, 0);
	struct ag_tensor *d = ag_detach(u);

	cr_assert_eq(ag_mul_scalar_(a, 10), 0, "%s", ag_errmsg());
	cr_assert_eq(ag__get(d, 3), 30.0);
	cr_assert_eq(ag_tensor_version(d), 1);
	cr_assert_eq(ag_zero_(d), 0, "%s", ag_errmsg());
	cr_assert_eq(ag__get(a, 3), 0.0);
	cr_assert_eq(ag_tensor_version(a), 2);
	cr_assert_eq(ag_tensor_version(r), 2);
	ag_tensor_put(a);
	ag_tensor_put(r);
	ag_tensor_put(u);
	ag_tensor_put(d);
	AG_ASSERT_NO_LEAKS();
}

Test(write, no_grad_write_to_a_leaf_view)
{
	int64_t s23[2] = { 2, 3 };
	struct ag_tensor *w = ag_ones(AG_F64, 2, s23);
	struct ag_tensor *row;
	int rc;

	ag_tensor_set_requires_grad(w, true);
	cr_assert_eq(ag_fill_(w, 2), -AG_ELEAF);
	AG_ASSERT_ERR(AG_ELEAF, "ag_fill_");
	cr_assert_eq(ag_tensor_version(w), 0);
	{
		AG_NO_GRAD_SCOPE();
		row = ag_slice(w, 0, 1, 2, 1);
		rc = ag_add_scalar_(row, 1);
	}
	cr_assert_eq(rc, 0, "%s", ag_errmsg());
	cr_assert_eq(ag__get(w, 3), 2.0);
	cr_assert_eq(ag__get(w, 0), 1.0);
	cr_assert_eq(ag_tensor_version(w), 1);
	cr_assert_eq(ag_tensor_version(row), 1);
	ag_tensor_put(row);
	ag_tensor_put(w);
	AG_ASSERT_NO_LEAKS();
}

/* ---- in-place writes whose source shares self's memory ---- */

#define OVERLAP_MSG                                                         \
	"unsupported operation: some elements of the input tensor and the " \
	"written-to tensor refer to a single memory location. Please "      \
	"clone() the tensor before performing the operation."

/* As torch: a source that partially overlaps self is refused, unwritten. */
Test(overlap, partial_is_refused)
{
	int64_t s22[2] = { 2, 2 }, s4[1] = { 4 }, s24[2] = { 2, 4 };
	struct ag_tensor *a = iota(2, s22), *v = iota(1, s4), *m = iota(2, s24);
	struct ag_tensor *at = ag_transpose(a, 0, 1),
			 *row = ag_slice(a, 0, 0, 1, 1);
	struct ag_tensor *hi = ag_slice(v, 0, 1, 4, 1),
			 *lo = ag_slice(v, 0, 0, 3, 1);
	struct ag_tensor *mid = ag_slice(v, 0, 1, 3, 1),
			 *head = ag_slice(v, 0, 0, 2, 1);
	/* strided windows of a 2 x 4: torch does not check these */
	struct ag_tensor *w1 = ag_slice(m, 1, 1, 3, 1),
			 *w0 = ag_slice(m, 1, 0, 2, 1);
	const double a0[4] = { 0, 1, 2, 3 }, m0[8] = { 0, 1, 2, 3, 4, 5, 6, 7 };

	cr_assert_eq(ag_copy_(a, at), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_copy_: " OVERLAP_MSG);
	cr_assert_eq(ag_add_(a, row), -AG_EINVAL); /* broadcast row 0 */
	AG_ASSERT_ERR(AG_EINVAL, "ag_add_: " OVERLAP_MSG);
	cr_assert_eq(ag_add_(hi, lo), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_add_: " OVERLAP_MSG);
	cr_assert_eq(ag_mul_(mid, head), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_mul_: " OVERLAP_MSG);
	cr_assert_eq(ag_sub_(lo, hi), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_sub_: " OVERLAP_MSG);
	cr_assert_eq(ag_div_(w1, w0), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_div_: " OVERLAP_MSG);
	assert_values(a, a0, 4);
	assert_values(v, a0, 4);
	assert_values(m, m0, 8);
	cr_assert_eq(ag_tensor_version(a), 0);
	ag_tensor_put(w0);
	ag_tensor_put(w1);
	ag_tensor_put(head);
	ag_tensor_put(mid);
	ag_tensor_put(lo);
	ag_tensor_put(hi);
	ag_tensor_put(row);
	ag_tensor_put(at);
	ag_tensor_put(m);
	ag_tensor_put(v);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* Exact aliases and disjoint parts of one storage stay allowed. */
Test(overlap, alias_and_disjoint_are_allowed)
{
	int64_t s22[2] = { 2, 2 }, s6[1] = { 6 }, s44[2] = { 4, 4 };
	struct ag_tensor *a = iota(2, s22), *v = iota(1, s6), *m = iota(2, s44);
	struct ag_tensor *t0 = ag_transpose(a, 0, 1),
			 *t1 = ag_transpose(a, 0, 1);
	struct ag_tensor *ev = ag_slice(v, 0, 0, 6, 2),
			 *od = ag_slice(v, 0, 1, 6, 2);
	struct ag_tensor *l = ag_slice(m, 1, 0, 2, 1),
			 *r = ag_slice(m, 1, 2, 4, 1);
	const double a2[4] = { 0, 2, 4, 6 }, a4[4] = { 0, 4, 8, 12 };
	const double v1[6] = { 1, 1, 5, 3, 9, 5 };
	/* torch: x[:, :2].add_(x[:, 2:]) on arange(16).reshape(4, 4) */
	const double m1[16] = { 2,  4,	2,  3,	10, 12, 6,  7,
				18, 20, 10, 11, 26, 28, 14, 15 };

	cr_assert_eq(ag_add_(a, a), 0, "%s", ag_errmsg());
	assert_values(a, a2, 4);
	cr_assert_eq(ag_add_(t0, t1), 0, "%s", ag_errmsg()); /* same geometry */
	assert_values(a, a4, 4);
	cr_assert_eq(ag_copy_(a, a), 0, "%s", ag_errmsg());
	assert_values(a, a4, 4);
	cr_assert_eq(ag_add_(ev, od), 0, "interleaved: %s", ag_errmsg());
	assert_values(v, v1, 6);
	cr_assert_eq(ag_add_(l, r), 0, "column blocks: %s", ag_errmsg());
	assert_values(m, m1, 16);
	cr_assert_eq(ag_copy_(r, l), 0, "%s", ag_errmsg());
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ag__get(m, 4 * i + 2), m1[4 * i]);
	ag_tensor_put(r);
	ag_tensor_put(l);
	ag_tensor_put(od);
	ag_tensor_put(ev);
	ag_tensor_put(t1);
	ag_tensor_put(t0);
	ag_tensor_put(m);
	ag_tensor_put(v);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* A view of the 6 x 6 base of shape (r, c): maybe transposed, stepped. */
static struct ag_tensor *window(struct ag_tensor *base, uint64_t *rng, int r,
				int c)
{
	int64_t len[2] = { r, c };
	struct ag_tensor *t = (*rng >> 40) & 1 ? ag_transpose(base, 0, 1) :
						 ag_tensor_get(base);

	for (int d = 0; d < 2; d++) {
		struct ag_tensor *u;
		int64_t step, start;

		*rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
		step = len[d] > 1 && (*rng >> 33) % 3 == 0 ? 2 : 1;
		start = (int64_t)((*rng >> 45) %
				  (uint64_t)(6 - (len[d] - 1) * step));
		u = ag_slice(t, d, start, start + (len[d] - 1) * step + 1,
			     step);
		ag_tensor_put(t);
		t = u;
	}
	return t;
}

/* The refusal agrees with the address sets, counted by brute force. */
Test(overlap, random_windows_match_brute_force)
{
	int64_t s66[2] = { 6, 6 };
	struct ag_tensor *base = ag_zeros(AG_F64, 2, s66);
	uint64_t rng = 12345;
	int refused = 0, allowed = 0, interleaved = 0;

	for (int it = 0; it < 2000; it++) {
		int r, c;
		struct ag_tensor *a, *b;
		bool seen[36] = { false }, meet = false, alias;
		int64_t lo = 36, hi = -1;
		int rc;

		rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
		r = 1 + (int)((rng >> 35) % 3);
		c = 1 + (int)((rng >> 50) % 3);
		a = window(base, &rng, r, c);
		b = window(base, &rng, r, c);
		alias = ag_tensor_numel(a) && a->offset == b->offset;
		for (int d = 0; d < 2; d++)
			if (a->shape[d] > 1 && a->strides[d] != b->strides[d])
				alias = false;
		for (int64_t i = 0; i < a->numel; i++)
			seen[ag__elem_offset(a, i)] = true;
		for (int64_t i = 0; i < b->numel; i++) {
			int64_t o = ag__elem_offset(b, i);

			meet |= seen[o];
			lo = o < lo ? o : lo;
			hi = o > hi ? o : hi;
		}
		/* disjoint although b's range holds some of a: interleaved */
		for (int64_t i = lo; !meet && i <= hi; i++) {
			if (seen[i]) {
				interleaved++;
				break;
			}
		}
		rc = ag_add_(a, b);
		if (meet && !alias) {
			cr_assert_eq(rc, -AG_EINVAL, "iteration %d", it);
			ag_clear_error();
			refused++;
		} else {
			cr_assert_eq(rc, 0, "iteration %d: %s", it,
				     ag_errmsg());
			allowed++;
		}
		ag_tensor_put(a);
		ag_tensor_put(b);
	}
	cr_assert_gt(refused, 100);
	cr_assert_gt(allowed, 100);
	cr_assert_gt(interleaved, 20, "%d interleaved", interleaved);
	ag_tensor_put(base);
	AG_ASSERT_NO_LEAKS();
}

/* ---- empty tensors ---- */

Test(empty, views_of_huge_empty_shapes)
{
	/* numel 0, but the other dims multiply past INT64_MAX: nothing may
	 * overflow (UBSan checks) */
	int64_t shape[3] = { INT64_MAX / 2, 3, 0 }, flat[1] = { 0 };
	int64_t back[3] = { INT64_MAX / 2, 3, 0 }, amb[2] = { 0, -1 };
	struct ag_tensor *a = ag_zeros(AG_F32, 3, shape);
	struct ag_tensor *v[6];

	cr_assert_not_null(a, "%s", ag_errmsg());
	cr_assert(ag_tensor_is_contiguous(a));
	v[0] = ag_detach(a);
	v[1] = ag_transpose(a, 1, 2);
	v[2] = ag_unsqueeze(a, 0);
	v[3] = ag_reshape(a, 1, flat);
	v[4] = ag_reshape(v[3], 3, back);
	v[5] = ag_slice(a, 0, 5, 10, 2);
	for (int i = 0; i < 6; i++) {
		cr_assert_not_null(v[i], "%d: %s", i, ag_errmsg());
		cr_assert_eq(ag_tensor_numel(v[i]), 0, "view %d", i);
		cr_assert(ag_tensor_is_contiguous(v[i]), "view %d", i);
	}
	cr_assert_null(ag_reshape(a, 2, amb));
	AG_ASSERT_ERR(AG_ESHAPE, "shape [0, -1] is invalid");
	for (int i = 0; i < 6; i++)
		ag_tensor_put(v[i]);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(empty, inner_zero_is_contiguous)
{
	int64_t shape[3] = { 2, 0, 3 };
	struct ag_tensor *a = ag_empty(AG_F64, 3, shape);
	struct ag_tensor *c = ag_contiguous(a);

	cr_assert(ag_tensor_is_contiguous(a));
	cr_assert_eq(c, a, "already contiguous: no copy");
	ag_tensor_put(c);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* ---- reshape of arbitrary views against a contiguous reference ---- */

static int64_t pick(struct ag_generator *g, int64_t n)
{
	return (int64_t)(ag_generator_next(g) % (uint64_t)n);
}

/* A random view of a fresh tensor: permuted, sliced, maybe expanded. */
static struct ag_tensor *random_view(struct ag_generator *g)
{
	int64_t shape[4];
	int nd = 1 + (int)pick(g, 4);
	struct ag_tensor *t, *u;
	int perm[4];

	for (int d = 0; d < nd; d++)
		shape[d] = 1 + pick(g, 4);
	t = iota(nd, shape);
	for (int d = 0; d < nd; d++)
		perm[d] = d;
	for (int d = nd - 1; d > 0; d--) {
		int k = (int)pick(g, d + 1), x = perm[d];

		perm[d] = perm[k];
		perm[k] = x;
	}
	u = ag_permute(t, perm);
	ag_tensor_put(t);
	if (pick(g, 2)) {
		int d = (int)pick(g, nd);
		int64_t n = ag_tensor_shape(u)[d];

		t = ag_slice(u, d, pick(g, n), n, 1 + pick(g, 2));
		ag_tensor_put(u);
		u = t;
	}
	if (pick(g, 3) == 0) {
		int64_t sh[5] = { 2 };

		memcpy(sh + 1, ag_tensor_shape(u), sizeof(int64_t) * nd);
		t = ag_expand(u, nd + 1, sh);
		ag_tensor_put(u);
		u = t;
	}
	cr_assert_not_null(u, "%s", ag_errmsg());
	return u;
}

/* A random shape with numel elements: split numel's factors over dims. */
static int random_shape(struct ag_generator *g, int64_t numel, int64_t *shape)
{
	int nd = 1 + (int)pick(g, 4);

	for (int d = 0; d < nd; d++)
		shape[d] = 1;
	for (int64_t f = 2; numel > 1;) {
		if (numel % f) {
			f++;
			continue;
		}
		shape[pick(g, nd)] *= f;
		numel /= f;
	}
	if (pick(g, 2))
		shape[pick(g, nd)] = -1;
	return nd;
}

Test(reshape, random_views_match_reference)
{
	struct ag_generator *g = ag_generator_new(11);
	int views = 0;

	for (int it = 0; it < 500; it++) {
		struct ag_tensor *v = random_view(g);
		struct ag_tensor *ref = ag_contiguous(v);
		int64_t shape[4], numel = ag_tensor_numel(v);
		int nd = random_shape(g, numel, shape);
		struct ag_tensor *r = ag_reshape(v, nd, shape);
		struct ag_tensor *rr = ag_reshape(ref, nd, shape);

		cr_assert_not_null(r, "%s", ag_errmsg());
		cr_assert(ag_equal(r, rr), "iteration %d", it);
		views += r->storage == v->storage;
		/* a view must see a later write; a copy must not */
		cr_assert_eq(ag_fill_(v, -1), 0, "%s", ag_errmsg());
		if (r->storage == v->storage)
			cr_assert_eq(ag__get(r, numel - 1), -1.0);
		else
			cr_assert(ag_equal(r, rr));
		ag_tensor_put(v);
		ag_tensor_put(ref);
		ag_tensor_put(r);
		ag_tensor_put(rr);
	}
	cr_assert_gt(views, 100, "only %d of 500 reshapes were views", views);
	cr_assert_lt(views, 500, "no reshape needed a copy");
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}
