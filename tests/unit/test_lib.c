// SPDX-License-Identifier: MIT
/* engine/lib/: the intrusive list, the pointer stack and the env parser. */
#include <stdlib.h>

#include "common.h"
#include "lib/env.h"
#include "lib/list.h"
#include "lib/ptrvec.h"

struct item {
	int v;
	struct ag__list link;
};

static int list_values(struct ag__list *h, int *out, int max)
{
	struct ag__list *pos;
	int n = 0;

	ag__list_for_each(pos, h)
	{
		if (n < max)
			out[n] = ag__list_entry(pos, struct item, link)->v;
		n++;
	}
	return n;
}

Test(lib, list_keeps_order_and_unlinks)
{
	struct ag__list h = AG_LIST_INIT(h);
	struct item it[4] = { { .v = 0 }, { .v = 1 }, { .v = 2 }, { .v = 3 } };
	int v[4];

	cr_assert(ag__list_empty(&h));
	ag__list_add_tail(&it[1].link, &h);
	ag__list_add_tail(&it[2].link, &h);
	ag__list_add(&it[0].link, &h);
	ag__list_add_tail(&it[3].link, &h);
	cr_assert_eq(list_values(&h, v, 4), 4);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(v[i], i, "entry %d is %d", i, v[i]);
	ag__list_del(&it[2].link);
	ag__list_del(&it[2].link); /* a second del is harmless */
	ag__list_del(&it[0].link);
	cr_assert_eq(list_values(&h, v, 4), 2);
	cr_assert(v[0] == 1 && v[1] == 3);
	ag__list_del(&it[1].link);
	ag__list_del(&it[3].link);
	cr_assert(ag__list_empty(&h));
}

Test(lib, ptrvec_is_a_stack_across_growth)
{
	struct ag__ptrvec s = { 0 };
	static char x[1000];

	for (int i = 0; i < 1000; i++)
		cr_assert_eq(ag__ptrvec_push(&s, &x[i]), 0);
	cr_assert_geq(s.cap, 1000);
	for (int i = 999; i >= 0; i--)
		cr_assert_eq(ag__ptrvec_pop(&s), &x[i]);
	cr_assert_eq(s.n, 0);
	ag__ptrvec_free(&s);
	cr_assert_null(s.v);
}

Test(lib, ptrvec_push_failure_keeps_the_stack)
{
	struct ag__ptrvec s = { 0 };
	static char x[64];
	int pushed = 0, rc = 0;

	ag__fault_set(2, true); /* the first growth works, the second fails */
	while (!rc && pushed < 64) {
		rc = ag__ptrvec_push(&s, &x[pushed]);
		pushed += !rc;
	}
	ag__fault_set(-1, false);
	cr_assert_eq(rc, -AG_ENOMEM);
	cr_assert_eq(ag_errcode(), AG_ENOMEM);
	cr_assert_eq(s.n, (size_t)pushed);
	for (int i = pushed - 1; i >= 0; i--)
		cr_assert_eq(ag__ptrvec_pop(&s), &x[i]);
	ag__ptrvec_free(&s);
}

Test(lib, env_int_parses_whole_integers_only)
{
	long long v = -7;

	unsetenv("AG_TEST_ENV");
	cr_assert_not(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	setenv("AG_TEST_ENV", "", 1);
	cr_assert_not(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	cr_assert_null(ag__env_str("AG_TEST_ENV"));
	setenv("AG_TEST_ENV", "4x", 1);
	cr_assert_not(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	setenv("AG_TEST_ENV", "0", 1);
	cr_assert_not(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	setenv("AG_TEST_ENV", "99999999999999999999999", 1);
	cr_assert_not(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	cr_assert_eq(v, -7, "a refused value must leave *out alone");
	setenv("AG_TEST_ENV", "3", 1);
	cr_assert(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	cr_assert_eq(v, 3);
	setenv("AG_TEST_ENV", "300", 1);
	cr_assert(ag__env_int("AG_TEST_ENV", 1, 10, &v));
	cr_assert_eq(v, 10, "values above hi clamp");
	unsetenv("AG_TEST_ENV");
}

Test(lib, env_flag)
{
	setenv("AG_TEST_FLAG", "0", 1);
	cr_assert_not(ag__env_flag("AG_TEST_FLAG"));
	setenv("AG_TEST_FLAG", "1", 1);
	cr_assert(ag__env_flag("AG_TEST_FLAG"));
	setenv("AG_TEST_FLAG", "yes", 1);
	cr_assert(ag__env_flag("AG_TEST_FLAG"));
	unsetenv("AG_TEST_FLAG");
	cr_assert_not(ag__env_flag("AG_TEST_FLAG"));
}

Test(lib, shape_text_is_never_cut)
{
	int64_t shape[AG_MAX_DIMS];
	struct ag__shape_str b;
	char want[sizeof(b.s)];
	size_t n = 0;

	n += (size_t)snprintf(want + n, sizeof(want) - n, "[");
	for (int d = 0; d < AG_MAX_DIMS; d++) {
		shape[d] = INT64_MIN;
		n += (size_t)snprintf(want + n, sizeof(want) - n, "%s%lld",
				      d ? ", " : "", (long long)INT64_MIN);
	}
	snprintf(want + n, sizeof(want) - n, "]");
	cr_assert_str_eq(ag__shape_fmt(&b, AG_MAX_DIMS, shape), want);
	cr_assert_str_eq(ag__shape_fmt(&b, 0, shape), "[]");
}
