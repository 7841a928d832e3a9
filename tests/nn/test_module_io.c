// SPDX-License-Identifier: MIT
/*
 * Module checkpoints (nn/module_io.c) on real modules: a round trip, and
 * files that do not fit the module, which must change nothing, and a
 * state_dict saved from torch (tests/nn/gen_safetensors.py).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <ag/checkpoint.h>
#include <ag/nn.h>
#include <ag/optim.h>

#include "common.h"
#include "tmpdir.h"
#include "../../nn/safetensors.h"

#ifndef FIXTURE_DIR
#error "FIXTURE_DIR names tests/nn/data"
#endif

static void mkdir_tmp(void)
{
	tmpdir_make("/tmp/ag-modio.XXXXXX");
}

TestSuite(nn_module_io, .init = mkdir_tmp, .fini = tmpdir_remove);

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

/* The whole file, for byte comparisons. */
static unsigned char *slurp(const char *p, size_t *n)
{
	FILE *f = fopen(p, "rb");
	unsigned char *buf;
	long len;

	cr_assert_not_null(f, "%s", p);
	cr_assert_eq(fseek(f, 0, SEEK_END), 0);
	len = ftell(f);
	cr_assert_eq(fseek(f, 0, SEEK_SET), 0);
	buf = malloc((size_t)len + 1);
	cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	*n = (size_t)len;
	return buf;
}

/* tests/nn/gen_safetensors.py's torch.nn copy of the fashion_mnist CNN. */
static struct ag_module *small_cnn(uint64_t seed)
{
	struct ag_generator *g = ag_generator_new(seed);
	struct ag_conv2d_opts pad1 = { .stride = { 1, 1 },
				       .padding = { 1, 1 },
				       .dilation = { 1, 1 },
				       .groups = 1 };
	const int64_t two[2] = { 2, 2 };
	struct ag_module *mods[] = {
		ag_conv2d_new(1, 4, 3, 3, &pad1, true, g),
		ag_relu_new(),
		ag_maxpool2d_new(two, NULL, NULL),
		ag_conv2d_new(4, 6, 3, 3, &pad1, true, g),
		ag_batchnorm2d_new(6, 1e-5, 0.1),
		ag_relu_new(),
		ag_maxpool2d_new(two, NULL, NULL),
		ag_flatten_new(1, -1),
		ag_linear_new(24, 8, true, g),
		ag_relu_new(),
		ag_linear_new(8, 3, true, g),
	};
	struct ag_module *m = ag_sequential_new(mods, 11);

	ag_generator_free(g);
	cr_assert_not_null(m, "%s", ag_errmsg());
	return m;
}

/* f32 results against torch's (stored as f64), inside a scope. */
static void assert_near(struct ag_safetensors *io, const char *key,
			struct ag_tensor *got, double tol)
{
	struct ag_tensor *want = ag_safetensors_get(io, key);
	struct ag_tensor *g64 = ag_to(got, AG_F64);

	cr_assert_not_null(want, "%s: %s", key, ag_errmsg());
	cr_assert_not_null(g64, "%s: %s", key, ag_errmsg());
	cr_assert_eq(ag_tensor_numel(g64), ag_tensor_numel(want), "%s", key);
	cr_assert(ag_allclose(g64, want, tol, tol), "%s differs from torch's",
		  key);
}

/*
 * A state_dict saved from torch (safetensors written by the format's rules,
 * with metadata) loads into the same libag model, which then computes what
 * torch computed; saved again it is the file torch's save_file writes.
 */
Test(nn_module_io, torch_cnn_fixture)
{
	struct ag_module *m = small_cnn(5);
	struct ag_safetensors *io =
		ag_safetensors_open(FIXTURE_DIR "/cnn_io.safetensors");
	const char *const *names;
	struct ag_tensor *const *ps;
	struct ag_scope *s;
	struct ag_tensor *x, *y, *out, *loss;
	struct ag_mode prev;
	unsigned char *want, *got;
	size_t nw, ng;
	int np;
	char key[64];

	cr_assert_not_null(io, "%s", ag_errmsg());
	cr_assert_eq(ag_module_load(m, FIXTURE_DIR "/cnn.safetensors"), 0, "%s",
		     ag_errmsg());

	/* saved before any forward: the bytes safetensors.torch writes */
	cr_assert_eq(ag_module_save(m, path_in("a")), 0, "%s", ag_errmsg());
	want = slurp(FIXTURE_DIR "/cnn_bare.safetensors", &nw);
	got = slurp(path_in("a"), &ng);
	cr_assert_eq(ng, nw);
	cr_assert(!memcmp(got, want, nw), "not the bytes torch's writer makes");
	free(want);
	free(got);

	s = ag_scope_begin();
	x = ag_to(ag_safetensors_get(io, "x"), AG_F32);
	y = ag_safetensors_get(io, "y");
	cr_assert_not_null(x, "%s", ag_errmsg());
	cr_assert_not_null(y, "%s", ag_errmsg());

	/* eval: BatchNorm on the running stats torch left */
	ag_module_eval(m);
	prev = ag_inference_mode_enter();
	assert_near(io, "out_eval", ag_module_forward(m, x), 1e-5);
	ag_mode_exit(prev);

	/* train: batch stats, the running stats it updates, the gradients */
	ag_module_train(m, true);
	out = ag_module_forward(m, x);
	assert_near(io, "out_train", out, 1e-5);
	loss = ag_cross_entropy(out, y);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_module_named_buffers(m, &names, &ps, &np), 0);
	for (int i = 0; i < np; i++)
		if (strstr(names[i], "running"))
			assert_near(io, names[i], ps[i], 1e-6);
		else
			cr_assert(ag_equal(ps[i],
					   ag_safetensors_get(io, names[i])),
				  "%s", names[i]);
	cr_assert_eq(ag_module_named_parameters(m, &names, &ps, &np), 0);
	cr_assert_eq(np, 10);
	for (int i = 0; i < np; i++) {
		snprintf(key, sizeof(key), "grad.%s", names[i]);
		assert_near(io, key, ag_tensor_grad(ps[i]), 1e-5);
	}
	ag_scope_end(s);
	ag_safetensors_close(io);
	ag_module_put(m);
	AG_ASSERT_NO_LEAKS();
}

static bool file_is(const char *p, const unsigned char *want, size_t n)
{
	size_t got_n;
	unsigned char *got = slurp(p, &got_n);
	bool same = got_n == n && !memcmp(got, want, n);

	free(got);
	return same;
}

/*
 * A save over an existing checkpoint fails at each of its steps in turn
 * (tests-only hook in nn/safetensors.c: an allocation, mkstemp, fchmod,
 * every write, fsync, close, rename, the directory sync).  Each failure is
 * an error, leaves no temporary file, and until the rename the old file
 * is there bit for bit and loads; after it, the new file is there whole.
 */
Test(nn_module_io, save_interrupted_at_every_step)
{
	struct ag_module *a = small_cnn(1), *b = small_cnn(2),
			 *c = small_cnn(3);
	struct ag_tensor **sa, **sc;
	unsigned char *old, *neu;
	size_t n_old, n_new;
	long steps, renamed = 0;
	int n, n2, rc;

	cr_assert_eq(ag_module_save(a, path_in("a")), 0, "%s", ag_errmsg());
	old = slurp(path_in("a"), &n_old);
	/*
	 * the save takes nothing from libag's allocator (engine/alloc.h's
	 * fault injector has nothing to fail): the hook sees every step
	 */
	ag__safetensors_fail_at(0);
	ag__fault_set(0, false);
	cr_assert_eq(ag_module_save(b, path_in("b")), 0, "%s", ag_errmsg());
	cr_assert_eq(ag__fault_count(), 0);
	ag__fault_set(-1, false);
	steps = ag__safetensors_steps();
	neu = slurp(path_in("b"), &n_new);
	/* 4 allocations, 2 + 13 writes (length, header, 13 tensors), mkstemp,
	 * fchmod, fsync, close, rename, the directory's open and fsync */
	cr_assert_eq(steps, 26, "%ld", steps);
	sa = snapshot(a, &n);

	for (long k = 1; k <= steps; k++) {
		ag__safetensors_fail_at(k);
		rc = ag_module_save(b, path_in("a"));
		cr_assert(rc == -AG_EIO || rc == -AG_ENOMEM,
			  "step %ld of %ld: rc %d", k, steps, rc);
		cr_assert_eq(-rc, ag_errcode());
		cr_assert_eq(count_entries(), 2,
			     "step %ld left a temporary file", k);
		ag__safetensors_fail_at(-1);
		if (!file_is(path_in("a"), old, n_old)) {
			/* renamed: only the directory's sync failed */
			cr_assert(file_is(path_in("a"), neu, n_new),
				  "step %ld tore the file", k);
			cr_assert(strstr(ag_errmsg(), ": sync: "), "%s",
				  ag_errmsg());
			renamed++;
			cr_assert_eq(ag_module_save(a, path_in("a")), 0);
			continue;
		}
		ag_clear_error();
		cr_assert_eq(ag_module_load(c, path_in("a")), 0, "%s",
			     ag_errmsg());
		sc = snapshot(c, &n2);
		cr_assert(same_state(sa, sc, n), "step %ld", k);
		put_all(sc, n2);
	}
	cr_assert_eq(renamed, 2); /* the directory's open and its fsync */
	ag__safetensors_fail_at(-1);
	cr_assert_eq(ag_module_save(b, path_in("a")), 0, "%s", ag_errmsg());
	cr_assert(file_is(path_in("a"), neu, n_new));
	free(old);
	free(neu);
	put_all(sa, n);
	ag_module_put(a);
	ag_module_put(b);
	ag_module_put(c);
	AG_ASSERT_NO_LEAKS();
}

/* ---- resuming training: module, optimiser and lr scheduler ---- */

#define RESUME_STEPS 10
#define RESUME_STOP 5 /* mid-epoch: the scheduler has stepped twice */
#define STEPS_PER_EPOCH 2

struct trainer {
	struct ag_module *m;
	struct ag_optim *o;
	struct ag_lr_scheduler *sc;
};

/*
 * Linear(4, 6) -> BatchNorm1d(6) -> ReLU -> Linear(6, 3) in f32; AdamW with
 * the last layer in a second group, lrs times lr_scale; a cosine over 3
 * epochs, so 5 epochs go past its minimum and back (both of torch's
 * recursive forms, one of them using the base lrs).
 */
static struct trainer trainer_new(uint64_t seed, double lr_scale)
{
	struct ag_generator *g = ag_generator_new(seed);
	struct ag_module *mods[] = {
		ag_linear_new(4, 6, true, g),
		ag_batchnorm1d_new(6, 1e-5, 0.1),
		ag_relu_new(),
		ag_linear_new(6, 3, true, g),
	};
	struct trainer t = { ag_sequential_new(mods, 4), NULL, NULL };
	struct ag_tensor **p;
	int n;

	ag_generator_free(g);
	cr_assert_not_null(t.m, "%s", ag_errmsg());
	cr_assert_eq(ag_module_parameters(t.m, &p, &n), 0);
	cr_assert_eq(n, 6); /* 0 and 3's weight and bias, 1's weight, bias */
	t.o = ag_adamw_new(p, 4, 0.01 * lr_scale, 0.9, 0.999, 1e-8, 0.05);
	cr_assert_not_null(t.o, "%s", ag_errmsg());
	cr_assert_eq(ag_optim_add_param_group(t.o, p + 4, 2, 0.003 * lr_scale,
					      0.01),
		     1);
	t.sc = ag_cosine_lr_new(t.o, 3, 1e-4);
	cr_assert_not_null(t.sc, "%s", ag_errmsg());
	return t;
}

static void trainer_free(struct trainer *t)
{
	ag_scheduler_free(t->sc);
	ag_optim_free(t->o);
	ag_module_put(t->m);
}

/* Step s: a batch of 5 made from s, one AdamW step, the lr per epoch. */
static void train_step(struct trainer *t, int s)
{
	struct ag_scope *sc = ag_scope_begin();
	int64_t xs[2] = { 5, 4 }, ys = 5, y[5];
	float x[20];
	struct ag_tensor *xt, *yt, *loss;

	for (int i = 0; i < 20; i++)
		x[i] = (float)sin(0.7 * i + 1.3 * s);
	for (int i = 0; i < 5; i++)
		y[i] = (i + s) % 3;
	xt = ag_from_data(AG_F32, 2, xs, x);
	yt = ag_from_data(AG_I64, 1, &ys, y);
	loss = ag_cross_entropy(ag_module_forward(t->m, xt), yt);
	cr_assert_eq(ag_backward(loss, NULL, NULL), 0, "%s", ag_errmsg());
	cr_assert_eq(ag_optim_step(t->o), 0, "%s", ag_errmsg());
	ag_optim_zero_grad(t->o);
	ag_scope_end(sc);
	if ((s + 1) % STEPS_PER_EPOCH == 0)
		cr_assert_eq(ag_scheduler_step(t->sc), 0);
}

/* The optimiser's and the scheduler's state in one file, as one would. */
static void save_training(struct trainer *t, const char *path)
{
	const char *const *on, *const *sn;
	struct ag_tensor *const *ot, *const *st;
	const char *names[32];
	struct ag_tensor *ts[32];
	int no, ns;

	cr_assert_eq(ag_optim_state(t->o, &on, &ot, &no), 0);
	cr_assert_eq(ag_scheduler_state(t->sc, &sn, &st, &ns), 0);
	cr_assert_eq(no, 6 * 3);
	cr_assert_eq(ns, 3);
	for (int i = 0; i < no; i++) {
		names[i] = on[i];
		ts[i] = ot[i];
	}
	for (int i = 0; i < ns; i++) {
		names[no + i] = sn[i];
		ts[no + i] = st[i];
	}
	cr_assert_eq(ag_safetensors_save(path, names, ts, no + ns), 0, "%s",
		     ag_errmsg());
}

/* Each entry of the file to the optimiser or, "scheduler.*", the scheduler */
static void load_training(struct trainer *t, const char *path)
{
	struct ag_safetensors *f = ag_safetensors_open(path);
	const char *on[32], *sn[4];
	struct ag_tensor *ot[32], *st[4];
	int n, no = 0, ns = 0;

	cr_assert_not_null(f, "%s", ag_errmsg());
	n = ag_safetensors_count(f);
	cr_assert_eq(n, 6 * 3 + 3);
	for (int i = 0; i < n; i++) {
		const char *name = ag_safetensors_name(f, i);
		struct ag_tensor *v = ag_safetensors_get(f, name);

		cr_assert_not_null(v, "%s", ag_errmsg());
		if (!strncmp(name, "scheduler.", 10)) {
			sn[ns] = name;
			st[ns++] = v;
		} else {
			on[no] = name;
			ot[no++] = v;
		}
	}
	cr_assert_eq(ag_optim_load_state(t->o, on, ot, no), 0, "%s",
		     ag_errmsg());
	cr_assert_eq(ag_scheduler_load_state(t->sc, sn, st, ns), 0, "%s",
		     ag_errmsg());
	for (int i = 0; i < no; i++)
		ag_tensor_put(ot[i]);
	for (int i = 0; i < ns; i++)
		ag_tensor_put(st[i]);
	ag_safetensors_close(f);
}

static bool bitwise_same(struct ag_tensor **a, struct ag_tensor **b, int n)
{
	for (int i = 0; i < n; i++) {
		size_t bytes = (size_t)ag_tensor_numel(a[i]) *
			       ag_dtype_size(ag_tensor_dtype(a[i]));

		if (ag_tensor_dtype(a[i]) != ag_tensor_dtype(b[i]) ||
		    ag_tensor_numel(a[i]) != ag_tensor_numel(b[i]) ||
		    memcmp(ag_tensor_data(a[i]), ag_tensor_data(b[i]), bytes))
			return false;
	}
	return true;
}

/*
 * Training stopped mid-way, saved (module; optimiser and scheduler state)
 * and loaded into new objects made from another seed, continues bit for
 * bit as the run that never stopped: parameters, BatchNorm's buffers and
 * every group's lr.
 */
Test(nn_module_io, resume_with_cosine_lr_is_bitwise)
{
	struct trainer whole = trainer_new(1, 1), part = trainer_new(1, 1),
		       fresh;
	struct ag_tensor **want, **got;
	double want_lr[2];
	int n, nb;

	for (int s = 0; s < RESUME_STEPS; s++)
		train_step(&whole, s);
	want = snapshot(whole.m, &n);
	for (int g = 0; g < 2; g++)
		want_lr[g] = ag_optim_group_get_lr(whole.o, g);

	for (int s = 0; s < RESUME_STOP; s++)
		train_step(&part, s);
	cr_assert_eq(ag_module_save(part.m, path_in("model")), 0, "%s",
		     ag_errmsg());
	save_training(&part, path_in("optim"));
	trainer_free(&part);

	/* another seed and lrs: all of it must come from the files */
	fresh = trainer_new(7, 2);
	cr_assert_eq(ag_module_load(fresh.m, path_in("model")), 0, "%s",
		     ag_errmsg());
	load_training(&fresh, path_in("optim"));
	/* the lr of epoch 2 of a 3-epoch cosine from 0.01 to 1e-4 */
	cr_assert_float_eq(ag_optim_get_lr(fresh.o),
			   1e-4 + (0.01 - 1e-4) * (1 + cos(M_PI * 2 / 3)) / 2,
			   1e-15);
	for (int s = RESUME_STOP; s < RESUME_STEPS; s++)
		train_step(&fresh, s);
	got = snapshot(fresh.m, &nb);
	cr_assert_eq(nb, n);
	cr_assert(bitwise_same(want, got, n),
		  "the resumed run differs from the whole one");
	for (int g = 0; g < 2; g++)
		cr_assert_eq(ag_optim_group_get_lr(fresh.o, g), want_lr[g],
			     "group %d: lr %.17g, want %.17g", g,
			     ag_optim_group_get_lr(fresh.o, g), want_lr[g]);
	put_all(want, n);
	put_all(got, nb);
	trainer_free(&whole);
	trainer_free(&fresh);
	AG_ASSERT_NO_LEAKS();
}

/* Entries that do not fit are refused and change neither lr nor epoch. */
Test(nn_module_io, scheduler_load_state_errors)
{
	struct trainer t = trainer_new(1, 1);
	const char *const *sn;
	struct ag_tensor *const *st;
	const char *names[4];
	struct ag_tensor *ts[4], *f32, *three, *epoch;
	int64_t three_n = 3;
	double lr;
	int ns;

	train_step(&t, 0);
	train_step(&t, 1); /* one scheduler step: lr below its base */
	lr = ag_optim_get_lr(t.o);
	cr_assert_lt(lr, 0.01);
	cr_assert_eq(ag_scheduler_state(t.sc, &sn, &st, &ns), 0);
	cr_assert_eq(ns, 3);
	cr_assert_str_eq(sn[0], "scheduler.last_epoch");
	cr_assert_eq(ag_tensor_item_i64(st[0]), 1);
	cr_assert_eq(ag_tensor_numel(st[1]), 2);
	cr_assert_eq(((double *)ag_tensor_data(st[1]))[1], 0.003);
	cr_assert_eq(((double *)ag_tensor_data(st[2]))[0], lr);
	for (int i = 0; i < 3; i++) {
		names[i] = sn[i];
		ts[i] = ag_clone(st[i]);
	}
	f32 = ag_zeros(AG_F32, 1, (int64_t[]){ 2 });
	three = ag_zeros(AG_F64, 1, &three_n);
	epoch = ag_scalar(AG_F64, 1);

	cr_assert_eq(ag_scheduler_load_state(t.sc, names, ts, 2), -AG_EINVAL);
	cr_assert_str_eq(
		ag_errmsg(),
		"ag_scheduler_load_state: \"scheduler.last_lr\" is missing");
	names[3] = "scheduler.base_lrs";
	ts[3] = ts[1];
	cr_assert_eq(ag_scheduler_load_state(t.sc, names, ts, 4), -AG_EINVAL);
	names[3] = "scheduler.lr";
	cr_assert_eq(ag_scheduler_load_state(t.sc, names, ts, 4), -AG_EINVAL);
	cr_assert_str_eq(
		ag_errmsg(),
		"ag_scheduler_load_state: \"scheduler.lr\" is not a scheduler state entry");
	struct ag_tensor *keep = ts[2];
	ts[2] = f32;
	cr_assert_eq(ag_scheduler_load_state(t.sc, names, ts, 3), -AG_EDTYPE);
	ts[2] = three;
	cr_assert_eq(ag_scheduler_load_state(t.sc, names, ts, 3), -AG_ESHAPE);
	cr_assert_str_eq(
		ag_errmsg(),
		"ag_scheduler_load_state: \"scheduler.last_lr\" must have shape [2], one lr per group");
	ts[2] = keep;
	keep = ts[0];
	ts[0] = epoch;
	cr_assert_eq(ag_scheduler_load_state(t.sc, names, ts, 3), -AG_EDTYPE);
	ts[0] = keep;
	cr_assert_eq(ag_scheduler_load_state(NULL, names, ts, 3), -AG_EINVAL);
	cr_assert_eq(ag_scheduler_state(NULL, &sn, &st, &ns), -AG_EINVAL);
	/* nothing changed: the lr is the same and the next step as before */
	cr_assert_eq(ag_optim_get_lr(t.o), lr);
	cr_assert_eq(ag_scheduler_state(t.sc, &sn, &st, &ns), 0);
	cr_assert_eq(ag_tensor_item_i64(st[0]), 1);
	/* and the right entries, in any order, load */
	names[3] = names[0];
	ts[3] = ts[0];
	cr_assert_eq(ag_scheduler_load_state(t.sc, names + 1, ts + 1, 3), 0,
		     "%s", ag_errmsg());
	for (int i = 0; i < 3; i++)
		ag_tensor_put(ts[i]);
	ag_tensor_put(f32);
	ag_tensor_put(three);
	ag_tensor_put(epoch);
	trainer_free(&t);
	AG_ASSERT_NO_LEAKS();
}
