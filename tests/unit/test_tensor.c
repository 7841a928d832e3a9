// SPDX-License-Identifier: MIT
/*
 * ag/tensor.h: creation, reference counting, geometry, copies, scalars,
 * names, comparisons and the bad inputs of each.
 */
#include <math.h>
#include <stdlib.h>

#include "common.h"

static const int64_t s23[2] = { 2, 3 };

static void assert_values(struct ag_tensor *t, const double *want, int64_t n)
{
	cr_assert_eq(ag_tensor_numel(t), n);
	for (int64_t i = 0; i < n; i++)
		cr_assert_eq(ag__get(t, i), want[i], "element %ld: %g, want %g",
			     (long)i, ag__get(t, i), want[i]);
}

/* ---- creation ---- */

Test(create, empty_shape_strides_dtype)
{
	int64_t shape[3] = { 2, 3, 4 };
	struct ag_tensor *t = ag_empty(AG_F32, 3, shape);

	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_ndim(t), 3);
	cr_assert_eq(ag_tensor_numel(t), 24);
	cr_assert_eq(ag_tensor_dtype(t), AG_F32);
	cr_assert_eq(ag_tensor_shape(t)[0], 2);
	cr_assert_eq(ag_tensor_shape(t)[2], 4);
	cr_assert_eq(ag_tensor_strides(t)[0], 12);
	cr_assert_eq(ag_tensor_strides(t)[1], 4);
	cr_assert_eq(ag_tensor_strides(t)[2], 1);
	cr_assert(ag_tensor_is_contiguous(t));
	cr_assert_not_null(ag_tensor_data(t));
	cr_assert_eq((uintptr_t)ag_tensor_data(t) % 64, 0,
		     "storage is not 64-byte aligned");
	cr_assert(ag_tensor_is_leaf(t));
	cr_assert_not(ag_tensor_requires_grad(t));
	cr_assert_null(ag_tensor_grad_fn(t));
	cr_assert_eq(ag_tensor_version(t), 0);
	cr_assert_not(ag_tensor_is_inference(t));
	cr_assert_null(ag_tensor_name(t));
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(create, live_counters_track_bytes)
{
	struct ag_tensor *t = ag_empty(AG_F64, 2, s23);

	cr_assert_eq(ag__live_tensors(), 1);
	cr_assert_eq(ag__live_storages(), 1);
	cr_assert_eq(ag__live_bytes(), 48);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(create, dtype_size_and_name)
{
	cr_assert_eq(ag_dtype_size(AG_F32), 4);
	cr_assert_eq(ag_dtype_size(AG_F64), 8);
	cr_assert_eq(ag_dtype_size(AG_I64), 8);
	cr_assert_str_eq(ag_dtype_name(AG_F32), "f32");
	cr_assert_str_eq(ag_dtype_name(AG_F64), "f64");
	cr_assert_str_eq(ag_dtype_name(AG_I64), "i64");
	cr_assert_str_eq(ag_dtype_name((enum ag_dtype)42), "?");
	cr_assert_eq(ag_dtype_size((enum ag_dtype)42), 0);
	AG_ASSERT_NO_LEAKS();
}

Test(create, zeros_ones_full_each_dtype)
{
	enum ag_dtype dts[3] = { AG_F32, AG_F64, AG_I64 };

	for (int k = 0; k < 3; k++) {
		struct ag_tensor *z = ag_zeros(dts[k], 2, s23);
		struct ag_tensor *o = ag_ones(dts[k], 2, s23);
		struct ag_tensor *f = ag_full(dts[k], 2, s23, -7);

		cr_assert(z && o && f, "%s", ag_errmsg());
		for (int i = 0; i < 6; i++) {
			cr_assert_eq(ag__get(z, i), 0.0);
			cr_assert_eq(ag__get(o, i), 1.0);
			cr_assert_eq(ag__get(f, i), -7.0);
		}
		cr_assert_eq(ag_tensor_dtype(f), dts[k]);
		ag_tensor_put(z);
		ag_tensor_put(o);
		ag_tensor_put(f);
	}
	AG_ASSERT_NO_LEAKS();
}

Test(create, full_f32_rounds)
{
	int64_t n = 1;
	struct ag_tensor *f = ag_full(AG_F32, 1, &n, 0.1);

	cr_assert_eq(*(float *)ag_tensor_data(f), 0.1f);
	ag_tensor_put(f);
	AG_ASSERT_NO_LEAKS();
}

Test(create, scalar_is_0d)
{
	struct ag_tensor *s = ag_scalar(AG_F64, 2.5);
	struct ag_tensor *i = ag_scalar(AG_I64, -3);

	cr_assert_eq(ag_tensor_ndim(s), 0);
	cr_assert_eq(ag_tensor_numel(s), 1);
	cr_assert(ag_tensor_is_contiguous(s));
	cr_assert_eq(ag_tensor_item(s), 2.5);
	cr_assert_eq(ag_tensor_item_i64(i), -3);
	cr_assert_eq(ag_tensor_item(i), -3.0);
	ag_tensor_put(s);
	ag_tensor_put(i);
	AG_ASSERT_NO_LEAKS();
}

Test(create, zero_size_dims)
{
	int64_t shape[2] = { 0, 3 };
	struct ag_tensor *t = ag_zeros(AG_F32, 2, shape);
	float dummy;

	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), 0);
	cr_assert_eq(ag_tensor_copy_to(t, &dummy, 0), 0, "%s", ag_errmsg());
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(create, max_dims)
{
	int64_t shape[AG_MAX_DIMS] = { 1, 2, 1, 2, 1, 2, 1, 2 };
	struct ag_tensor *t = ag_ones(AG_F32, AG_MAX_DIMS, shape);

	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), 16);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(create, arange_positive_step)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *a = ag_arange(AG_F64, 0, 5, 1);
	struct ag_tensor *b = ag_arange(AG_F32, 1, 2, 0.25);
	struct ag_tensor *c = ag_arange(AG_I64, 2, 11, 3);
	struct ag_tensor *e = ag_arange(AG_F64, 3, 3, 1);
	const double wa[5] = { 0, 1, 2, 3, 4 };
	const double wb[4] = { 1, 1.25, 1.5, 1.75 };
	const double wc[3] = { 2, 5, 8 };

	assert_values(a, wa, 5);
	assert_values(b, wb, 4);
	assert_values(c, wc, 3);
	cr_assert_eq(ag_tensor_dtype(c), AG_I64);
	cr_assert_eq(ag_tensor_ndim(e), 1);
	cr_assert_eq(ag_tensor_numel(e), 0);
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(create, arange_negative_step)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *a = ag_arange(AG_F64, 5, 0, -1);
	struct ag_tensor *b = ag_arange(AG_F64, 1, -1, -0.5);
	struct ag_tensor *c = ag_arange(AG_I64, 10, 1, -4);
	const double wa[5] = { 5, 4, 3, 2, 1 };
	const double wb[4] = { 1, 0.5, 0, -0.5 };
	const double wc[3] = { 10, 6, 2 };

	assert_values(a, wa, 5);
	assert_values(b, wb, 4);
	assert_values(c, wc, 3);
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(create, arange_bad)
{
	cr_assert_null(ag_arange(AG_F64, 0, 5, 0));
	AG_ASSERT_ERR(AG_EINVAL, "nonzero step");
	cr_assert_null(ag_arange(AG_F64, 0, NAN, 1));
	AG_ASSERT_ERR(AG_EINVAL, "finite");
	cr_assert_null(ag_arange(AG_F64, 0, 5, -1));
	AG_ASSERT_ERR(AG_EINVAL, "does not lead");
	cr_assert_null(ag_arange(AG_F64, 5, 0, 1));
	AG_ASSERT_ERR(AG_EINVAL, "does not lead");
	cr_assert_null(ag_arange(AG_F64, 0, 1e300, 1e-300));
	AG_ASSERT_ERR(AG_EINVAL, "too many");
	cr_assert_null(ag_arange(AG_I64, 0, 1e30, 1e29));
	AG_ASSERT_ERR(AG_EINVAL, "i64");
	cr_assert_null(ag_arange((enum ag_dtype)9, 0, 3, 1));
	AG_ASSERT_ERR(AG_EDTYPE, "unknown dtype 9");
	AG_ASSERT_NO_LEAKS();
}

Test(create, from_data_copies)
{
	double v[6] = { 1, 2, 3, 4, 5, 6 };
	struct ag_tensor *t = ag_from_data(AG_F64, 2, s23, v);

	v[0] = 100;
	cr_assert_eq(ag__get(t, 0), 1.0);
	cr_assert_eq(ag__get(t, 5), 6.0);
	cr_assert_neq(ag_tensor_data(t), (void *)v);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(create, from_data_0d)
{
	int64_t v = 42;
	struct ag_tensor *t = ag_from_data(AG_I64, 0, NULL, &v);

	cr_assert_eq(ag_tensor_item_i64(t), 42);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

struct blob_log {
	int calls;
	void *data;
	void *arg;
};

static void blob_free(void *data, void *arg)
{
	struct blob_log *log = arg;

	log->calls++;
	log->data = data;
	log->arg = arg;
}

Test(create, from_blob_no_copy_free_once)
{
	float buf[6] = { 1, 2, 3, 4, 5, 6 };
	struct blob_log log = { 0 };
	struct ag_tensor *t =
		ag_from_blob(AG_F32, 2, s23, buf, blob_free, &log);

	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_data(t), (void *)buf);
	buf[4] = 50;
	cr_assert_eq(ag__get(t, 4), 50.0);
	ag_tensor_get(t);
	ag_tensor_put(t);
	cr_assert_eq(log.calls, 0);
	ag_tensor_put(t);
	cr_assert_eq(log.calls, 1);
	cr_assert_eq(log.data, (void *)buf);
	cr_assert_eq(log.arg, (void *)&log);
	AG_ASSERT_NO_LEAKS();
}

Test(create, from_blob_views_outlive_original)
{
	double *buf = malloc(6 * sizeof(*buf));
	struct blob_log log = { 0 };
	struct ag_tensor *t, *tr, *row, *det;

	for (int i = 0; i < 6; i++)
		buf[i] = i;
	t = ag_from_blob(AG_F64, 2, s23, buf, blob_free, &log);
	tr = ag_transpose(t, 0, 1);
	row = ag_slice(t, 0, 1, 2, 1);
	det = ag_detach(t);
	ag_tensor_put(t);
	cr_assert_eq(log.calls, 0);
	cr_assert_eq(ag__get(tr, 1), 3.0);
	cr_assert_eq(ag__get(row, 2), 5.0);
	ag_tensor_put(tr);
	ag_tensor_put(det);
	cr_assert_eq(log.calls, 0);
	cr_assert_eq(ag__get(row, 0), 3.0);
	ag_tensor_put(row);
	cr_assert_eq(log.calls, 1);
	free(buf);
	AG_ASSERT_NO_LEAKS();
}

Test(create, from_blob_null_free_fn)
{
	int64_t buf[3] = { 7, 8, 9 };
	int64_t n = 3;
	struct ag_tensor *t = ag_from_blob(AG_I64, 1, &n, buf, NULL, NULL);

	cr_assert_eq(ag__get(t, 2), 9.0);
	ag_tensor_put(t);
	cr_assert_eq(buf[2], 9);
	AG_ASSERT_NO_LEAKS();
}

Test(create, from_blob_bad_does_not_free)
{
	double buf[4];
	struct blob_log log = { 0 };
	int64_t n = 3, bad = -3, huge = INT64_C(1) << 61;

	cr_assert_null(ag_from_blob(AG_F64, 1, &n, NULL, blob_free, &log));
	AG_ASSERT_ERR(AG_EINVAL, "data is NULL");
	cr_assert_null(
		ag_from_blob(AG_F64, 1, &n, (char *)buf + 1, blob_free, &log));
	AG_ASSERT_ERR(AG_EINVAL, "not aligned");
	cr_assert_null(ag_from_blob(AG_F64, 1, &bad, buf, blob_free, &log));
	AG_ASSERT_ERR(AG_EINVAL, "negative size");
	cr_assert_null(ag_from_blob(AG_F64, 1, &huge, buf, blob_free, &log));
	AG_ASSERT_ERR(AG_EINVAL, "its byte size overflows");
	cr_assert_eq(log.calls, 0);
	AG_ASSERT_NO_LEAKS();
}

/* ---- bad shapes for every creation function ---- */

typedef struct ag_tensor *(*create_fn)(enum ag_dtype, int, const int64_t *);

static struct ag_tensor *mk_full(enum ag_dtype dt, int nd, const int64_t *s)
{
	return ag_full(dt, nd, s, 1);
}

static struct ag_tensor *mk_from_data(enum ag_dtype dt, int nd,
				      const int64_t *s)
{
	static double v[64];

	return ag_from_data(dt, nd, s, v);
}

static struct ag_tensor *mk_from_blob(enum ag_dtype dt, int nd,
				      const int64_t *s)
{
	static double v[64];

	return ag_from_blob(dt, nd, s, v, NULL, NULL);
}

static struct ag_generator *test_gen;

static struct ag_tensor *mk_rand(enum ag_dtype dt, int nd, const int64_t *s)
{
	return ag_rand(test_gen, dt, nd, s);
}

static struct ag_tensor *mk_randn(enum ag_dtype dt, int nd, const int64_t *s)
{
	return ag_randn(test_gen, dt, nd, s);
}

static const struct {
	const char *name;
	create_fn fn;
} creators[] = {
	{ "ag_empty", ag_empty },	  { "ag_zeros", ag_zeros },
	{ "ag_ones", ag_ones },		  { "ag_full", mk_full },
	{ "ag_from_data", mk_from_data }, { "ag_from_blob", mk_from_blob },
	{ "ag_rand", mk_rand },		  { "ag_randn", mk_randn },
};

#define NCREATORS ((int)(sizeof(creators) / sizeof(creators[0])))

Test(bad_shape, negative_ndim)
{
	test_gen = ag_generator_new(1);
	for (int k = 0; k < NCREATORS; k++) {
		cr_assert_null(creators[k].fn(AG_F32, -1, s23), "%s",
			       creators[k].name);
		AG_ASSERT_ERR(AG_EINVAL, "-1 dims requested");
	}
	ag_generator_free(test_gen);
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, too_many_dims)
{
	int64_t shape[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 1 };
	char want[64];

	test_gen = ag_generator_new(1);
	for (int k = 0; k < NCREATORS; k++) {
		snprintf(want, sizeof(want), "%s: 9 dims requested",
			 creators[k].name);
		cr_assert_null(creators[k].fn(AG_F32, 9, shape));
		AG_ASSERT_ERR(AG_EINVAL, want);
	}
	ag_generator_free(test_gen);
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, negative_size)
{
	int64_t shape[2] = { 2, -3 };

	test_gen = ag_generator_new(1);
	for (int k = 0; k < NCREATORS; k++) {
		cr_assert_null(creators[k].fn(AG_F64, 2, shape));
		AG_ASSERT_ERR(AG_EINVAL, "dim 1 has negative size -3");
	}
	ag_generator_free(test_gen);
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, null_shape)
{
	test_gen = ag_generator_new(1);
	for (int k = 0; k < NCREATORS; k++) {
		cr_assert_null(creators[k].fn(AG_F64, 2, NULL));
		AG_ASSERT_ERR(AG_EINVAL, "shape is NULL");
	}
	ag_generator_free(test_gen);
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, overflow)
{
	int64_t big[2] = { 1LL << 40, 1LL << 40 };
	int64_t bytes[1] = { 1LL << 61 }; /* count fits, bytes do not */
	int64_t huge[2] = { INT64_MAX / 2, 3 };

	test_gen = ag_generator_new(1);
	for (int k = 0; k < NCREATORS; k++) {
		cr_assert_null(creators[k].fn(AG_F32, 2, big));
		AG_ASSERT_ERR(AG_EINVAL, "overflow");
		cr_assert_null(creators[k].fn(AG_F64, 1, bytes));
		AG_ASSERT_ERR(AG_EINVAL, "overflow");
		cr_assert_null(creators[k].fn(AG_F64, 2, huge));
		AG_ASSERT_ERR(AG_EINVAL, "[4611686018427387903, 3]");
	}
	ag_generator_free(test_gen);
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, zero_dim_makes_empty_not_overflow)
{
	/* as in torch, a 0 anywhere makes an empty tensor, however large
	 * the other dims */
	int64_t shape[3] = { INT64_MAX / 2, 3, 0 };
	struct ag_tensor *t = ag_zeros(AG_F64, 3, shape);

	cr_assert_not_null(t, "%s", ag_errmsg());
	cr_assert_eq(ag_tensor_numel(t), 0);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, unknown_dtype)
{
	cr_assert_null(ag_zeros((enum ag_dtype)5, 1, s23));
	AG_ASSERT_ERR(AG_EDTYPE, "ag_zeros: unknown dtype 5");
	cr_assert_null(ag_scalar((enum ag_dtype) - 1, 1));
	AG_ASSERT_ERR(AG_EDTYPE, "unknown dtype");
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, i64_value_out_of_range)
{
	cr_assert_null(ag_full(AG_I64, 2, s23, NAN));
	AG_ASSERT_ERR(AG_EINVAL, "ag_full: value nan does not fit an i64");
	cr_assert_null(ag_scalar(AG_I64, 1e19));
	AG_ASSERT_ERR(AG_EINVAL, "does not fit an i64");
	cr_assert_null(ag_full(AG_I64, 2, s23, -INFINITY));
	AG_ASSERT_ERR(AG_EINVAL, "does not fit");
	AG_ASSERT_NO_LEAKS();
}

Test(bad_shape, from_data_null)
{
	cr_assert_null(ag_from_data(AG_F32, 2, s23, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_from_data: data is NULL");
	AG_ASSERT_NO_LEAKS();
}

/* ---- references ---- */

Test(refs, get_put)
{
	struct ag_tensor *t = ag_ones(AG_F32, 2, s23);

	cr_assert_eq(ag_tensor_get(t), t);
	ag_tensor_put(t);
	cr_assert_eq(ag__live_tensors(), 1);
	ag_tensor_put(t);
	cr_assert_eq(ag__live_tensors(), 0);
	cr_assert_null(ag_tensor_get(NULL));
	ag_tensor_put(NULL);
	AG_ASSERT_NO_LEAKS();
}

/* ---- accessors given NULL ---- */

Test(null_args, accessors)
{
	ag_clear_error();
	cr_assert_eq(ag_tensor_ndim(NULL), -1);
	cr_assert_null(ag_tensor_shape(NULL));
	cr_assert_null(ag_tensor_strides(NULL));
	cr_assert_eq(ag_tensor_numel(NULL), -1);
	cr_assert_not(ag_tensor_is_contiguous(NULL));
	cr_assert_null(ag_tensor_data(NULL));
	cr_assert_null(ag_tensor_name(NULL));
	cr_assert_not(ag_tensor_is_inference(NULL));
	cr_assert_eq(ag_tensor_version(NULL), 0);
	cr_assert_not(ag_tensor_requires_grad(NULL));
	cr_assert_not(ag_tensor_is_leaf(NULL));
	cr_assert_null(ag_tensor_grad_fn(NULL));
	AG_ASSERT_NO_LEAKS();
}

Test(null_args, functions_set_einval)
{
	double d;

	ag_clear_error();
	cr_assert_eq(ag_tensor_set_name(NULL, "x"), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_set_name: argument 't' is NULL");
	cr_assert_eq(ag_tensor_copy_to(NULL, &d, 8), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_copy_to");
	cr_assert(isnan(ag_tensor_item(NULL)));
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_item");
	cr_assert_eq(ag_tensor_item_i64(NULL), 0);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_item_i64");
	cr_assert_null(ag_clone(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_clone: argument 'a' is NULL");
	cr_assert_null(ag_contiguous(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_contiguous");
	cr_assert_null(ag_detach(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_detach");
	cr_assert_not(ag_equal(NULL, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_equal: argument 'a' is NULL");
	cr_assert_not(ag_allclose(NULL, NULL, 0, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_allclose");
	cr_assert_eq(ag_tensor_set_requires_grad(NULL, true), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_set_requires_grad");
	cr_assert_null(ag_tensor_grad(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_grad");
	cr_assert_eq(ag_tensor_zero_grad(NULL), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_zero_grad");
	cr_assert_eq(ag_tensor_print(NULL, stdout), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_tensor_print");
	cr_assert_null(ag_rand(NULL, AG_F32, 2, s23));
	AG_ASSERT_ERR(AG_EINVAL, "ag_rand: generator is NULL");
	AG_ASSERT_NO_LEAKS();
}

Test(null_args, op_keeps_first_error)
{
	int64_t bad[2] = { 3, 5 };
	struct ag_tensor *t = ag_zeros(AG_F32, 2, s23);
	struct ag_tensor *r;

	ag_clear_error();
	r = ag_reshape(t, 2, bad); /* fails: 6 elements */
	cr_assert_null(r);
	/* a chain: every later op given the NULL keeps the first message */
	cr_assert_null(ag_clone(ag_transpose(ag_detach(r), 0, 1)));
	AG_ASSERT_ERR(
		AG_ESHAPE,
		"ag_reshape: shape [3, 5] is invalid for a tensor of 6 elements");
	cr_assert_null(ag_contiguous(r));
	AG_ASSERT_ERR(AG_EINVAL, "ag_contiguous: argument 'a' is NULL");
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

/* ---- copies and scalars ---- */

Test(copy, copy_to_dense_and_strided)
{
	double v[6] = { 1, 2, 3, 4, 5, 6 }, out[6];
	const double want[6] = { 1, 4, 2, 5, 3, 6 };
	struct ag_tensor *t = ag_from_data(AG_F64, 2, s23, v);
	struct ag_tensor *tr = ag_transpose(t, 0, 1);

	cr_assert_eq(ag_tensor_copy_to(t, out, sizeof(out)), 0);
	cr_assert_arr_eq(out, v, sizeof(out));
	cr_assert_not(ag_tensor_is_contiguous(tr));
	cr_assert_eq(ag_tensor_copy_to(tr, out, sizeof(out)), 0);
	cr_assert_arr_eq(out, want, sizeof(out));
	ag_tensor_put(tr);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, copy_to_expanded_and_stepped)
{
	struct ag_scope *scope = ag_scope_begin();
	int64_t s31[2] = { 3, 1 }, s34[2] = { 3, 4 };
	const int64_t want_e[12] = { 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2 };
	const int64_t want_s[2] = { 0, 2 };
	int64_t out[12];
	struct ag_tensor *a = ag_arange(AG_I64, 0, 3, 1);
	struct ag_tensor *col = ag_reshape(a, 2, s31);
	struct ag_tensor *e = ag_expand(col, 2, s34);
	struct ag_tensor *st = ag_slice(e, 0, 0, 3, 2);
	struct ag_tensor *stc = ag_slice(st, 1, 1, 2, 1);

	cr_assert_eq(ag_tensor_strides(e)[1], 0);
	cr_assert_eq(ag_tensor_copy_to(e, out, sizeof(out)), 0, "%s",
		     ag_errmsg());
	cr_assert_arr_eq(out, want_e, sizeof(out));
	cr_assert_eq(ag_tensor_copy_to(stc, out, 2 * sizeof(int64_t)), 0, "%s",
		     ag_errmsg());
	cr_assert_arr_eq(out, want_s, sizeof(want_s));
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, copy_to_bad)
{
	float out[6];
	struct ag_tensor *t = ag_zeros(AG_F32, 2, s23);

	cr_assert_eq(ag_tensor_copy_to(t, out, sizeof(out) - 4), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "needs 24 bytes, got 20");
	cr_assert_eq(ag_tensor_copy_to(t, out, 48), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "f32 tensor of shape [2, 3] needs 24 bytes");
	cr_assert_eq(ag_tensor_copy_to(t, NULL, 24), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "dst is NULL");
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, item_and_item_i64)
{
	struct ag_scope *scope = ag_scope_begin();
	int64_t one = 1, big = (1LL << 53) + 1, exact = 1LL << 53;
	struct ag_tensor *f = ag_full(AG_F32, 1, &one, 0.5);
	struct ag_tensor *i = ag_from_data(AG_I64, 1, &one, &big);
	struct ag_tensor *e = ag_from_data(AG_I64, 0, NULL, &exact);
	struct ag_tensor *m = ag_ones(AG_F64, 2, s23);

	cr_assert_eq(ag_tensor_item(f), 0.5);
	cr_assert_eq(ag_tensor_item(e), 0x1p53);
	cr_assert_eq(ag_tensor_item_i64(i), big);
	cr_assert(isnan(ag_tensor_item(i)));
	AG_ASSERT_ERR(AG_EDTYPE, "cannot be held exactly by a double");
	cr_assert_eq(ag_tensor_item_i64(f), 0);
	AG_ASSERT_ERR(AG_EDTYPE,
		      "ag_tensor_item_i64: tensor is f32, expected i64");
	cr_assert(isnan(ag_tensor_item(m)));
	AG_ASSERT_ERR(AG_EINVAL, "shape [2, 3] has 6 elements");
	cr_assert_eq(ag_tensor_item_i64(m), 0);
	AG_ASSERT_ERR(AG_EINVAL, "only one-element tensors");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, item_of_a_strided_element)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *a = ag_arange(AG_F64, 0, 6, 1);
	struct ag_tensor *r = ag_reshape(a, 2, s23);
	struct ag_tensor *row = ag_slice(r, 0, 1, 2, 1);
	struct ag_tensor *el = ag_slice(row, 1, 2, 3, 1);

	cr_assert_eq(ag_tensor_item(el), 5.0, "%s", ag_errmsg());
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, clone_is_deep_and_contiguous)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *a = ag_arange(AG_F32, 0, 6, 1);
	struct ag_tensor *r = ag_reshape(a, 2, s23);
	struct ag_tensor *tr = ag_transpose(r, 0, 1);
	struct ag_tensor *c = ag_clone(tr);

	cr_assert(ag_tensor_is_contiguous(c));
	cr_assert(ag_equal(c, tr));
	cr_assert_neq(ag_tensor_data(c), ag_tensor_data(tr));
	cr_assert_eq(ag_fill_(a, 9), 0, "%s", ag_errmsg());
	cr_assert_eq(ag__get(c, 1), 3.0);
	cr_assert_eq(ag_tensor_version(c), 0);
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, contiguous_returns_self_or_copy)
{
	struct ag_scope *scope = ag_scope_begin();
	struct ag_tensor *a = ag_zeros(AG_F64, 2, s23);
	struct ag_tensor *same = ag_contiguous(a);
	struct ag_tensor *tr = ag_transpose(a, 0, 1);
	struct ag_tensor *c = ag_contiguous(tr);

	cr_assert_eq(same, a);
	cr_assert_neq(c, tr);
	cr_assert(ag_tensor_is_contiguous(c));
	cr_assert_eq(ag_tensor_shape(c)[0], 3);
	cr_assert_eq(ag_tensor_strides(c)[0], 2);
	cr_assert(ag_equal(c, tr));
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(copy, detach_shares_storage_and_version)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, s23);
	struct ag_tensor *d;

	ag_tensor_set_requires_grad(a, true);
	d = ag_detach(a);
	cr_assert_eq(ag_tensor_data(d), ag_tensor_data(a));
	cr_assert_not(ag_tensor_requires_grad(d));
	cr_assert(ag_tensor_is_leaf(d));
	cr_assert_eq(ag_fill_(d, 3), 0, "%s", ag_errmsg());
	cr_assert_eq(ag__get(a, 4), 3.0);
	cr_assert_eq(ag_tensor_version(a), 1);
	cr_assert_eq(ag_tensor_version(d), 1);
	ag_tensor_put(d);
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

/* ---- names ---- */

Test(names, set_get_replace_clear)
{
	struct ag_tensor *t = ag_zeros(AG_F32, 0, NULL);
	char name[8] = "weight";

	cr_assert_eq(ag_tensor_set_name(t, name), 0);
	name[0] = 'W'; /* copied */
	cr_assert_str_eq(ag_tensor_name(t), "weight");
	cr_assert_eq(ag_tensor_set_name(t, "bias"), 0);
	cr_assert_str_eq(ag_tensor_name(t), "bias");
	cr_assert_eq(ag_tensor_set_name(t, NULL), 0);
	cr_assert_null(ag_tensor_name(t));
	cr_assert_eq(ag_tensor_set_name(t, "kept"), 0);
	ag_tensor_put(t); /* frees the name: ASan would see a leak */
	AG_ASSERT_NO_LEAKS();
}

/* ---- comparisons ---- */

Test(compare, equal)
{
	double v[6] = { 1, 2, 3, 4, 5, 6 };
	int64_t s32[2] = { 3, 2 }, six = 6;
	struct ag_tensor *a = ag_from_data(AG_F64, 2, s23, v);
	struct ag_tensor *b = ag_arange(AG_F32, 1, 7, 1);
	struct ag_tensor *br = ag_reshape(b, 2, s23);
	struct ag_tensor *c = ag_from_data(AG_F64, 2, s32, v);
	struct ag_tensor *flat = ag_from_data(AG_F64, 1, &six, v);
	struct ag_tensor *n1 = ag_scalar(AG_F64, NAN);

	cr_assert(ag_equal(a, a));
	cr_assert(ag_equal(a, br), "dtypes may differ");
	cr_assert_not(ag_equal(a, c), "same numel, other shape");
	cr_assert_not(ag_equal(a, flat));
	cr_assert_not(ag_equal(n1, n1), "NaN is not equal to NaN");
	v[5] = 7;
	ag_tensor_put(c);
	c = ag_from_data(AG_F64, 2, s23, v);
	cr_assert_not(ag_equal(a, c));
	ag_tensor_put(a);
	ag_tensor_put(b);
	ag_tensor_put(br);
	ag_tensor_put(c);
	ag_tensor_put(flat);
	ag_tensor_put(n1);
	AG_ASSERT_NO_LEAKS();
}

Test(compare, equal_i64_exact)
{
	int64_t one = 1, x = (1LL << 60) + 1, y = 1LL << 60;
	struct ag_tensor *a = ag_from_data(AG_I64, 1, &one, &x);
	struct ag_tensor *b = ag_from_data(AG_I64, 1, &one, &y);

	cr_assert_not(ag_equal(a, b), "i64 compare must not go via double");
	ag_tensor_put(a);
	ag_tensor_put(b);
	AG_ASSERT_NO_LEAKS();
}

Test(compare, allclose)
{
	struct ag_scope *scope = ag_scope_begin();
	double x[3] = { 1, 2, 3 }, y[3] = { 1, 2.001, 3 };
	double inf[3] = { INFINITY, 2, 3 };
	int64_t n = 3, two = 2;
	struct ag_tensor *a = ag_from_data(AG_F64, 1, &n, x);
	struct ag_tensor *b = ag_from_data(AG_F64, 1, &n, y);
	struct ag_tensor *i1 = ag_from_data(AG_F64, 1, &n, inf);
	struct ag_tensor *i2 = ag_from_data(AG_F64, 1, &n, inf);
	struct ag_tensor *short_ = ag_from_data(AG_F64, 1, &two, x);

	cr_assert(ag_allclose(a, b, 1e-3, 0));
	cr_assert_not(ag_allclose(a, b, 1e-4, 0));
	cr_assert(ag_allclose(a, b, 0, 1.1e-3));
	cr_assert_not(ag_allclose(a, b, 0, 0.9e-3));
	cr_assert(ag_allclose(i1, i2, 0, 0), "equal infinities");
	cr_assert_not(ag_allclose(a, i1, 1, 1));
	cr_assert_not(ag_allclose(a, short_, 1, 1));
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

Test(compare, allclose_broadcasts_b)
{
	struct ag_scope *scope = ag_scope_begin();
	double x[6] = { 1, 2, 3, 1, 2, 3 }, row[3] = { 1, 2, 3 };
	int64_t n = 3;
	struct ag_tensor *a = ag_from_data(AG_F64, 2, s23, x);
	struct ag_tensor *b = ag_from_data(AG_F64, 1, &n, row);
	struct ag_tensor *s = ag_scalar(AG_F64, 2);
	struct ag_tensor *t = ag_full(AG_F64, 2, s23, 2);

	cr_assert(ag_allclose(a, b, 0, 0), "b broadcasts to a");
	cr_assert(ag_allclose(t, s, 0, 0), "a 0-d b broadcasts");
	cr_assert_not(ag_allclose(a, s, 0, 0));
	cr_assert_not(ag_allclose(b, a, 0, 0), "a is not broadcast to b");
	ag_scope_end(scope);
	AG_ASSERT_NO_LEAKS();
}

/* ---- autograd fields of a tensor ---- */

Test(grad_fields, requires_grad_and_leaf)
{
	struct ag_tensor *a = ag_ones(AG_F64, 2, s23);
	struct ag_tensor *i = ag_zeros(AG_I64, 2, s23);
	struct ag_tensor *y, *l, *g;

	cr_assert_eq(ag_tensor_set_requires_grad(a, true), 0);
	cr_assert(ag_tensor_requires_grad(a));
	cr_assert(ag_tensor_is_leaf(a));
	cr_assert_null(ag_tensor_grad(a), "no .grad before backward");
	cr_assert_eq(ag_tensor_set_requires_grad(i, true), -AG_EDTYPE);
	AG_ASSERT_ERR(AG_EDTYPE, "only floating point tensors");
	cr_assert_eq(ag_tensor_set_requires_grad(i, false), 0);
	y = ag_mul_scalar(a, 3);
	cr_assert_not(ag_tensor_is_leaf(y));
	cr_assert(ag_tensor_requires_grad(y));
	cr_assert_not_null(ag_tensor_grad_fn(y));
	cr_assert_eq(ag_tensor_set_requires_grad(y, false), -AG_EINVAL);
	AG_ASSERT_ERR(AG_EINVAL, "only change requires_grad of leaf tensors");
	l = ag_sum(y);
	cr_assert_eq(ag_backward(l, NULL, NULL), 0, "%s", ag_errmsg());
	g = ag_tensor_grad(a);
	cr_assert_not_null(g);
	cr_assert_eq(ag__get(g, 5), 3.0);
	ag_tensor_put(g);
	cr_assert_eq(ag_tensor_zero_grad(a), 0);
	cr_assert_null(ag_tensor_grad(a));
	cr_assert_eq(ag_tensor_zero_grad(i), 0, "no meta: nothing to drop");
	ag_tensor_put(l);
	ag_tensor_put(y);
	ag_tensor_put(a);
	ag_tensor_put(i);
	AG_ASSERT_NO_LEAKS();
}

/* ---- print (layout is checked in test_print.c) ---- */

Test(print, to_file)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	struct ag_tensor *t = ag_arange(AG_F32, 0, 3, 1);

	cr_assert_eq(ag_tensor_print(t, f), 0);
	fclose(f);
	cr_assert_str_eq(buf, "tensor([0., 1., 2.])\n");
	free(buf);
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}
