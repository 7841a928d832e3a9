// SPDX-License-Identifier: MIT
/*
 * Module checkpoints (nn/module_io.c) on real modules: a round trip, and
 * files that do not fit the module, which must change nothing.
 *
 * Not built yet: it needs ag/nn.h.  Enable with nn/module_io.c by adding
 * 'module_io' beside 'checkpoint' in tests/nn/meson.build.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ag/checkpoint.h>
#include <ag/nn.h>

#include "common.h"

static char dir[64];

static void mkdir_tmp(void)
{
	strcpy(dir, "/tmp/ag-modio.XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static char *path_in(const char *name)
{
	static char p[2][512];
	static int k;

	k ^= 1;
	snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
	return p[k];
}

static void rm_tmp(void)
{
	unlink(path_in("a"));
	unlink(path_in("cut"));
	rmdir(dir);
}

TestSuite(nn_module_io, .init = mkdir_tmp, .fini = rm_tmp);

/* Linear(4, out) -> BatchNorm1d(out) -> ReLU, weights from seed. */
static struct ag_module *net(int64_t out, uint64_t seed)
{
	struct ag_generator *g = ag_generator_new(seed);
	struct ag_module *mods[] = {
		ag_linear_new(4, out, true, g),
		ag_batchnorm1d_new(out, 1e-5, 0.1),
		ag_relu_new(),
	};
	struct ag_module *m = ag_sequential_new(mods, 3);

	ag_generator_free(g);
	cr_assert_not_null(m, "%s", ag_errmsg());
	return m;
}

/* Clones of every state tensor, to see that nothing changed. */
static struct ag_tensor **snapshot(struct ag_module *m, int *n)
{
	const char *const *pn, *const *bn;
	struct ag_tensor *const *pt, *const *bt;
	struct ag_tensor **s;
	int np, nb;

	cr_assert_eq(ag_module_named_parameters(m, &pn, &pt, &np), 0);
	cr_assert_eq(ag_module_named_buffers(m, &bn, &bt, &nb), 0);
	s = calloc(np + nb, sizeof(*s));
	for (int i = 0; i < np; i++)
		s[i] = ag_clone(pt[i]);
	for (int i = 0; i < nb; i++)
		s[np + i] = ag_clone(bt[i]);
	*n = np + nb;
	return s;
}

static bool same_state(struct ag_tensor **a, struct ag_tensor **b, int n)
{
	for (int i = 0; i < n; i++)
		if (!ag_equal(a[i], b[i]))
			return false;
	return true;
}

static void put_all(struct ag_tensor **s, int n)
{
	for (int i = 0; i < n; i++)
		ag_tensor_put(s[i]);
	free(s);
}

Test(nn_module_io, round_trip)
{
	struct ag_module *a = net(3, 1), *b = net(3, 2);
	struct ag_tensor **sa, **sb, **after;
	const char *const *names;
	struct ag_tensor *const *ts;
	struct ag_safetensors *st;
	enum ag_dtype dt;
	int n, nb, np, ndim;
	uint64_t v0;

	sa = snapshot(a, &n);
	sb = snapshot(b, &n);
	cr_assert(!same_state(sa, sb, n));
	cr_assert_eq(ag_module_save(a, path_in("a")), 0, "%s", ag_errmsg());

	/* torch's state_dict names; num_batches_tracked is a 0-d i64 */
	st = ag_safetensors_open(path_in("a"));
	cr_assert_not_null(st, "%s", ag_errmsg());
	cr_assert_eq(ag_safetensors_count(st), 7);
	cr_assert_eq(ag_safetensors_info(st, "1.num_batches_tracked", &dt,
					 &ndim, NULL),
		     0);
	cr_assert_eq(dt, AG_I64);
	cr_assert_eq(ndim, 0);
	cr_assert_eq(ag_safetensors_info(st, "0.weight", NULL, NULL, NULL), 0);
	ag_safetensors_close(st);

	cr_assert_eq(ag_module_named_parameters(b, &names, &ts, &np), 0);
	v0 = ag_tensor_version(ts[0]);
	cr_assert_eq(ag_module_load(b, path_in("a")), 0, "%s", ag_errmsg());
	cr_assert_gt(ag_tensor_version(ts[0]), v0);
	cr_assert(ag_tensor_requires_grad(ts[0]));
	cr_assert(ag_tensor_is_leaf(ts[0]));
	after = snapshot(b, &nb);
	cr_assert(same_state(sa, after, n));
	put_all(sa, n);
	put_all(sb, n);
	put_all(after, nb);
	ag_module_put(a);
	ag_module_put(b);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_module_io, mismatches_change_nothing)
{
	struct ag_module *a = net(3, 1), *c = net(5, 3);
	struct ag_tensor **before, **after;
	unsigned char buf[256];
	int n, n2;
	FILE *f;

	cr_assert_eq(ag_module_save(a, path_in("a")), 0, "%s", ag_errmsg());
	before = snapshot(c, &n);
	cr_assert_eq(ag_module_load(c, path_in("a")), -AG_EINVAL);
	cr_assert(strstr(ag_errmsg(), "'0.weight'"), "%s", ag_errmsg());
	cr_assert(strstr(ag_errmsg(), "[3, 4]"), "%s", ag_errmsg());
	cr_assert(strstr(ag_errmsg(), "[5, 4]"), "%s", ag_errmsg());
	ag_clear_error();

	/* a truncated file */
	f = fopen(path_in("a"), "rb");
	cr_assert_eq(fread(buf, 1, sizeof(buf), f), sizeof(buf));
	fclose(f);
	f = fopen(path_in("cut"), "wb");
	fwrite(buf, 1, sizeof(buf), f);
	fclose(f);
	cr_assert_eq(ag_module_load(c, path_in("cut")), -AG_EIO);
	ag_clear_error();

	after = snapshot(c, &n2);
	cr_assert(same_state(before, after, n));
	put_all(before, n);
	put_all(after, n2);
	ag_module_put(a);
	ag_module_put(c);
	AG_ASSERT_NO_LEAKS();
}

Test(nn_module_io, strict_and_non_strict)
{
	struct ag_module *a = net(3, 1);
	struct ag_generator *g = ag_generator_new(9);
	struct ag_module *lin[] = { ag_linear_new(4, 3, true, g) };
	struct ag_module *d = ag_sequential_new(lin, 1);
	struct ag_tensor **before, **after, **sa;
	char **missing, **unexpected;
	int n, na, n2, nm, nu;
	struct ag_load_opts o = {
		.strict = false,
		.missing = &missing,
		.n_missing = &nm,
		.unexpected = &unexpected,
		.n_unexpected = &nu,
	};

	cr_assert_eq(ag_module_save(a, path_in("a")), 0, "%s", ag_errmsg());
	before = snapshot(d, &n);
	cr_assert_eq(ag_module_load(d, path_in("a")), -AG_EINVAL);
	cr_assert(strstr(ag_errmsg(), "missing keys: []"), "%s", ag_errmsg());
	cr_assert(strstr(ag_errmsg(), "unexpected keys: ["), "%s", ag_errmsg());
	cr_assert(strstr(ag_errmsg(), "'1.running_var'"), "%s", ag_errmsg());
	ag_clear_error();
	after = snapshot(d, &n2);
	cr_assert(same_state(before, after, n));
	put_all(after, n2);

	cr_assert_eq(ag_module_load_ex(d, path_in("a"), &o), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(nm, 0);
	cr_assert_eq(nu, 5);
	/* listed in the file's data order */
	cr_assert_str_eq(unexpected[0], "1.num_batches_tracked");
	cr_assert_str_eq(unexpected[4], "1.weight");
	ag_load_keys_free(missing, nm);
	ag_load_keys_free(unexpected, nu);
	sa = snapshot(a, &na);
	after = snapshot(d, &n2);
	cr_assert(same_state(sa, after, 2)); /* 0.weight, 0.bias */
	put_all(sa, na);
	put_all(after, n2);
	put_all(before, n);
	ag_generator_free(g);
	ag_module_put(a);
	ag_module_put(d);
	AG_ASSERT_NO_LEAKS();
}
