// SPDX-License-Identifier: MIT
/* Scopes: the per-thread autorelease pool of returned references. */
#include <pthread.h>

#include "common.h"

static const int64_t s23[2] = { 2, 3 };

Test(scope, refs_are_put_at_end)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a, *b, *c;

	cr_assert_not_null(s);
	a = ag_ones(AG_F64, 2, s23);
	b = ag_mul_scalar(ag_transpose(a, 0, 1), 2);
	c = ag_sum(ag_reshape(b, 1, (int64_t[]){ -1 }));
	cr_assert_eq(ag_tensor_item(c), 12.0);
	/* a, transpose, b, reshape, c */
	cr_assert_eq(ag__live_tensors(), 5);
	ag_scope_end(s);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, every_returning_function_is_recorded)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_generator *g = ag_generator_new(3);
	double v[6] = { 0 };
	struct ag_tensor *a;

	a = ag_zeros(AG_F32, 2, s23);
	ag_empty(AG_F32, 2, s23);
	ag_full(AG_F32, 2, s23, 1);
	ag_scalar(AG_F32, 1);
	ag_arange(AG_F32, 0, 3, 1);
	ag_rand(g, AG_F32, 2, s23);
	ag_randn(g, AG_F32, 2, s23);
	ag_from_data(AG_F64, 2, s23, v);
	ag_from_blob(AG_F64, 2, s23, v, NULL, NULL);
	ag_detach(a);
	ag_clone(a);
	ag_contiguous(a); /* returns a itself, as a new reference */
	ag_slice(a, 0, 0, 1, 1);
	ag_expand(ag_unsqueeze(a, 0), 3, (int64_t[]){ 4, 2, 3 });
	ag_squeeze(a, 0);
	ag_permute(a, (int[]){ 1, 0 });
	cr_assert_gt(ag__live_tensors(), 10);
	ag_scope_end(s);
	ag_generator_free(g);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, get_keeps_one_alive)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a = ag_full(AG_F64, 2, s23, 4);
	struct ag_tensor *kept = ag_tensor_get(ag_mul_scalar(a, 2));

	ag_scope_end(s);
	cr_assert_eq(ag__live_tensors(), 1);
	cr_assert_eq(ag__get(kept, 5), 8.0);
	ag_tensor_put(kept);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, failures_record_nothing)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a = ag_zeros(AG_F32, 2, s23);

	cr_assert_null(ag_reshape(a, 2, (int64_t[]){ 4, 4 }));
	AG_ASSERT_ERR(AG_ESHAPE, "invalid");
	cr_assert_null(ag_zeros(AG_F32, -1, NULL));
	AG_ASSERT_ERR(AG_EINVAL, "dims requested");
	cr_assert_eq(ag__live_tensors(), 1);
	ag_scope_end(s);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, nested)
{
	struct ag_scope *outer = ag_scope_begin();
	struct ag_tensor *a = ag_ones(AG_F32, 2, s23);
	struct ag_scope *inner = ag_scope_begin();
	struct ag_tensor *b = ag_add_scalar(a, 1);
	struct ag_tensor *kept = ag_tensor_get(ag_mul(a, b));

	ag_tensor_set_name(b, "b");
	cr_assert_eq(ag__live_tensors(), 3);
	ag_scope_end(inner);
	cr_assert_eq(ag__live_tensors(), 2, "b went with the inner scope");
	cr_assert_eq(ag__get(a, 0), 1.0);
	ag_scope_end(outer);
	cr_assert_eq(ag__live_tensors(), 1);
	cr_assert_eq(ag__get(kept, 0), 2.0);
	ag_tensor_put(kept);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, out_of_order_end_is_refused)
{
	struct ag_scope *outer = ag_scope_begin();
	struct ag_tensor *a = ag_ones(AG_F32, 2, s23);
	struct ag_scope *inner = ag_scope_begin();

	ag_zeros(AG_F32, 2, s23);
	ag_clear_error();
	ag_scope_end(outer);
	AG_ASSERT_ERR(AG_EINVAL, "not the innermost open scope");
	/* nothing changed: both scopes still hold their tensors ... */
	cr_assert_eq(ag__live_tensors(), 2);
	cr_assert_eq(ag__get(a, 0), 1.0);
	/* ... and the inner scope still records and ends */
	ag_neg(a);
	cr_assert_eq(ag__live_tensors(), 3);
	ag_scope_end(inner);
	cr_assert_eq(ag_errcode(), 0);
	cr_assert_eq(ag__live_tensors(), 1);
	ag_scope_end(outer);
	cr_assert_eq(ag_errcode(), 0);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, end_null)
{
	ag_clear_error();
	ag_scope_end(NULL);
	AG_ASSERT_ERR(AG_EINVAL, "ag_scope_end: scope is NULL");
	AG_ASSERT_NO_LEAKS();
}

Test(scope, many_refs)
{
	struct ag_scope *s = ag_scope_begin();

	for (int i = 0; i < 1000; i++)
		ag_scalar(AG_F64, i);
	cr_assert_eq(ag__live_tensors(), 1000);
	ag_scope_end(s);
	AG_ASSERT_NO_LEAKS();
}

Test(scope, nothing_recorded_without_a_scope)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *a;

	ag_scope_end(s);
	a = ag_ones(AG_F32, 2, s23);
	s = ag_scope_begin();
	ag_scope_end(s);
	cr_assert_eq(ag__live_tensors(), 1, "a is not in a later scope");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

struct thread_res {
	struct ag_scope *other;
	struct ag_tensor *t;
	int code;
	char msg[256];
};

static void *other_thread(void *arg)
{
	struct thread_res *r = arg;

	/* this thread has no scope: the tensor is its own reference */
	r->t = ag_ones(AG_F64, 2, s23);
	ag_clear_error();
	ag_scope_end(r->other);
	r->code = ag_errcode();
	snprintf(r->msg, sizeof(r->msg), "%s", ag_errmsg());
	return NULL;
}

Test(scope, per_thread)
{
	struct ag_scope *s = ag_scope_begin();
	struct thread_res r = { .other = s };
	pthread_t th;

	cr_assert_eq(pthread_create(&th, NULL, other_thread, &r), 0);
	pthread_join(th, NULL);
	cr_assert_eq(r.code, AG_EINVAL);
	cr_assert(strstr(r.msg, "no scope is open on this thread"), "%s",
		  r.msg);
	ag_scope_end(s);
	cr_assert_eq(ag__live_tensors(), 1, "the thread's tensor survives");
	ag_tensor_put(r.t);
	AG_ASSERT_NO_LEAKS();
}

/*
 * An op composed of other ops (var_dim: mean, sub, mul, sum) puts its
 * steps itself; inside a scope they used to be recorded there too, and
 * the scope's end put them again (a use after free, found by fuzz_views).
 */
Test(scope, composite_op_steps_stay_out_of_the_scope)
{
	struct ag_scope *s = ag_scope_begin();
	struct ag_tensor *x = ag_arange(AG_F64, 0, 6, 1);
	struct ag_tensor *v = ag_var_dim(ag_reshape(x, 2, s23), 1, true, false);

	cr_assert_not_null(v, "%s", ag_errmsg());
	cr_expect_eq(ag_tensor_numel(v), 2);
	cr_expect_eq(ag__get(v, 0), 1.0); /* var of 0 1 2 */
	cr_expect_eq(ag__get(v, 1), 1.0);
	/* x, the reshape and v: nothing else is the scope's to put */
	cr_expect_eq(ag__scope_count(s), 3);
	cr_expect_eq(ag__live_tensors(), 3);
	ag_scope_end(s);
	AG_ASSERT_NO_LEAKS();
}
