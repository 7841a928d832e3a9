// SPDX-License-Identifier: MIT
/* ag_graph_dot: the backward graph in Graphviz dot. */
#include "common.h"

static char *dot_of(struct ag_tensor *t, int *rc)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	cr_assert(f);
	*rc = ag_graph_dot(t, f);
	fclose(f);
	return buf;
}

static int count(const char *s, const char *sub)
{
	int n = 0;

	for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub))
		n++;
	return n;
}

Test(dot, tanh_graph)
{
	double v[3] = { 0.5, -1, 2 };
	int64_t n = 3;
	struct ag_tensor *x = ag_from_data(AG_F64, 1, &n, v);
	struct ag_tensor *y, *z, *l;
	char *s;
	int rc;

	ag_tensor_set_requires_grad(x, true);
	y = ag_tanh(x);
	z = ag_mul(y, x); /* x is reached twice: one AccumulateGrad node */
	l = ag_sum(z);
	s = dot_of(l, &rc);
	cr_assert_eq(rc, 0, "%s", ag_errmsg());
	cr_assert(!strncmp(s, "digraph {", 9), "%s", s);
	cr_assert(strstr(s, "TanhBackward"), "%s", s);
	cr_assert(strstr(s, "MulBackward"), "%s", s);
	cr_assert(strstr(s, "SumBackward"), "%s", s);
	cr_assert_eq(count(s, "AccumulateGrad"), 1, "%s", s);
	cr_assert(strstr(s, " -> "), "%s", s);
	/* Sum -> Mul, Mul -> Tanh, Mul -> Acc, Tanh -> Acc */
	cr_assert_eq(count(s, " -> "), 4, "%s", s);
	cr_assert(strstr(s, "}\n"), "%s", s);
	free(s);

	/* a leaf: its AccumulateGrad alone */
	s = dot_of(x, &rc);
	cr_assert_eq(rc, 0, "%s", ag_errmsg());
	cr_assert(strstr(s, "AccumulateGrad"), "%s", s);
	cr_assert_eq(count(s, " -> "), 0, "%s", s);
	free(s);

	ag_tensor_put(l);
	ag_tensor_put(z);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}

Test(dot, errors)
{
	struct ag_tensor *c = ag_scalar(AG_F64, 1);
	char *s;
	int rc;

	s = dot_of(c, &rc);
	cr_assert_eq(rc, -AG_ENOGRAD);
	AG_ASSERT_ERR(AG_ENOGRAD, "does not require grad");
	free(s);
	cr_assert_eq(ag_graph_dot(c, NULL), -AG_EINVAL);
	ag_clear_error();
	ag_tensor_put(c);
	AG_ASSERT_NO_LEAKS();
}

Test(dot, long_chain_is_iterative)
{
	struct ag_tensor *x = ag_scalar(AG_F64, 0.5), *y;
	char *s;
	int rc;

	ag_tensor_set_requires_grad(x, true);
	y = ag_tensor_get(x);
	for (int i = 0; i < 200000; i++) {
		struct ag_tensor *t = ag_add_scalar(y, 1e-6);

		ag_tensor_put(y);
		y = t;
	}
	s = dot_of(y, &rc);
	cr_assert_eq(rc, 0, "%s", ag_errmsg());
	cr_assert_eq(count(s, "AccumulateGrad"), 1);
	free(s);
	ag_tensor_put(y);
	ag_tensor_put(x);
	AG_ASSERT_NO_LEAKS();
}
