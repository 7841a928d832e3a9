// SPDX-License-Identifier: MIT
/* ag/error.h: per-thread code and message, sticky errors, names. */
#include <limits.h>
#include <pthread.h>

#include "common.h"

Test(errors, none_at_start)
{
	cr_assert_eq(ag_errcode(), 0);
	cr_assert_str_eq(ag_errmsg(), "");
	AG_ASSERT_NO_LEAKS();
}

Test(errors, set_sticky_and_cleared)
{
	int64_t shape[1] = { 2 };
	struct ag_tensor *t;

	cr_assert_null(ag_zeros(AG_F32, 1, (int64_t[]){ -2 }));
	cr_assert_eq(ag_errcode(), AG_EINVAL);
	/* a later success does not clear it, like errno */
	t = ag_zeros(AG_F32, 1, shape);
	cr_assert_not_null(t);
	cr_assert_eq(ag_errcode(), AG_EINVAL);
	cr_assert(strstr(ag_errmsg(), "ag_zeros: dim 0 has negative size -2"));
	ag_clear_error();
	cr_assert_eq(ag_errcode(), 0);
	cr_assert_str_eq(ag_errmsg(), "");
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(errors, a_newer_error_replaces)
{
	cr_assert_null(ag_zeros(AG_F32, 9, NULL));
	cr_assert_null(ag_arange(AG_F32, 0, 1, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_arange");
	AG_ASSERT_NO_LEAKS();
}

Test(errors, int_functions_return_negative_code)
{
	struct ag_tensor *t = ag_zeros(AG_F32, 0, NULL);
	int rc;

	rc = ag_tensor_copy_to(t, NULL, 4);
	cr_assert_eq(rc, -AG_EINVAL);
	cr_assert_eq(ag_errcode(), -rc);
	ag_clear_error();
	ag_tensor_put(t);
	AG_ASSERT_NO_LEAKS();
}

Test(errors, strerror_names)
{
	static const struct {
		int code;
		const char *name;
	} names[] = {
		{ 0, "OK" },
		{ AG_EINVAL, "AG_EINVAL" },
		{ AG_ESHAPE, "AG_ESHAPE" },
		{ AG_EDTYPE, "AG_EDTYPE" },
		{ AG_ENOMEM, "AG_ENOMEM" },
		{ AG_EVERSION, "AG_EVERSION" },
		{ AG_EFREED, "AG_EFREED" },
		{ AG_EINFERENCE, "AG_EINFERENCE" },
		{ AG_ELEAF, "AG_ELEAF" },
		{ AG_ENOGRAD, "AG_ENOGRAD" },
		{ AG_ESCALAR, "AG_ESCALAR" },
		{ AG_ENAN, "AG_ENAN" },
		{ AG_EIO, "AG_EIO" },
		{ AG_EINTERNAL, "AG_EINTERNAL" },
		{ AG_EBUSY, "AG_EBUSY" },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		cr_assert_str_eq(ag_strerror(names[i].code), names[i].name);
		cr_assert_str_eq(ag_strerror(-names[i].code), names[i].name);
	}
	cr_assert_eq(AG_EINVAL, 1);
	cr_assert_str_eq(ag_strerror(AG_EBUSY + 1), "AG_E?");
	cr_assert_str_eq(ag_strerror(1000), "AG_E?");
	cr_assert_str_eq(ag_strerror(INT_MIN), "AG_E?");
	cr_assert_str_eq(ag_strerror(INT_MAX), "AG_E?");
	AG_ASSERT_NO_LEAKS();
}

Test(errors, null_argument_names_it)
{
	ag_clear_error();
	cr_assert_null(ag_neg(NULL));
	AG_ASSERT_ERR(AG_EINVAL, "ag_neg: argument 'a' is NULL");
	cr_assert_null(ag_squeeze(NULL, 0));
	AG_ASSERT_ERR(AG_EINVAL, "ag_squeeze: argument 'a' is NULL");
	AG_ASSERT_NO_LEAKS();
}

Test(errors, null_argument_keeps_first_error)
{
	struct ag_tensor *a = ag_ones(AG_F32, 1, (int64_t[]){ 4 });
	struct ag_tensor *y;

	ag_clear_error();
	/* the transpose fails; every op after it gets NULL */
	y = ag_neg(
		ag_slice(ag_unsqueeze(ag_transpose(a, 0, 5), 0), 0, 0, 1, 1));
	cr_assert_null(y);
	AG_ASSERT_ERR(AG_EINVAL, "ag_transpose: dimension out of range");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

Test(errors, long_message_truncated_safely)
{
	int64_t shape[AG_MAX_DIMS];
	struct ag_tensor *a;

	for (int d = 0; d < AG_MAX_DIMS; d++)
		shape[d] = INT64_MAX / 2 - d;
	cr_assert_null(ag_zeros(AG_F64, AG_MAX_DIMS, shape));
	cr_assert_eq(ag_errcode(), AG_EINVAL);
	cr_assert_lt(strlen(ag_errmsg()), 512);
	cr_assert(strstr(ag_errmsg(), "overflow"));
	ag_clear_error();
	a = ag_zeros(AG_F32, 1, (int64_t[]){ 16 });
	cr_assert_null(ag_reshape(a, AG_MAX_DIMS, shape));
	AG_ASSERT_ERR(AG_ESHAPE, "ag_reshape: shape [4611686018427387903, ");
	ag_tensor_put(a);
	AG_ASSERT_NO_LEAKS();
}

struct thread_err {
	int code_at_start;
	int code_after;
	char msg[256];
};

static void *thread_fn(void *arg)
{
	struct thread_err *e = arg;

	e->code_at_start = ag_errcode();
	ag_slice(NULL, 0, 0, 1, 1);
	e->code_after = ag_errcode();
	snprintf(e->msg, sizeof(e->msg), "%s", ag_errmsg());
	return NULL;
}

Test(errors, per_thread)
{
	struct thread_err e = { 0 };
	pthread_t th;

	cr_assert_null(ag_arange(AG_F64, 0, 1, -1));
	cr_assert_eq(pthread_create(&th, NULL, thread_fn, &e), 0);
	pthread_join(th, NULL);
	cr_assert_eq(e.code_at_start, 0, "a new thread starts clean");
	cr_assert_eq(e.code_after, AG_EINVAL);
	cr_assert(strstr(e.msg, "ag_slice: argument 'a' is NULL"), "%s", e.msg);
	/* this thread's error is untouched */
	AG_ASSERT_ERR(AG_EINVAL, "ag_arange: step -1 does not lead");
	AG_ASSERT_NO_LEAKS();
}

Test(errors, set_error_for_callbacks)
{
	ag_clear_error();
	cr_assert_eq(ag_set_error(AG_ESHAPE, "shape %d x %s", 3, "four"),
		     -AG_ESHAPE);
	cr_assert_eq(ag_errcode(), AG_ESHAPE);
	cr_assert_str_eq(ag_errmsg(), "shape 3 x four");
	cr_assert_eq(ag_set_error(-AG_ENOMEM, NULL), -AG_ENOMEM);
	cr_assert_eq(ag_errcode(), AG_ENOMEM);
	cr_assert_str_eq(ag_errmsg(), "AG_ENOMEM");
	cr_assert_eq(ag_set_error(0, "ignored"), 0);
	cr_assert_eq(ag_errcode(), 0);
	cr_assert_str_eq(ag_errmsg(), "");
	AG_ASSERT_NO_LEAKS();
}
