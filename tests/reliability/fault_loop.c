// SPDX-License-Identifier: MIT
/*
 * Out-of-memory at every allocation, SQLite style: a workload that touches
 * most of the library runs once fault-free for a reference, then again
 * with the N-th allocation failing, for N = 1, 2, ... until a run no
 * longer reaches N; once failing only that allocation, once failing every
 * one from N on; on 1 and on 4 pool threads.  At every N the run must
 * either fail cleanly (AG_ENOMEM with a message) or give the reference's
 * results bit for bit, free everything it made (the live counters and the
 * user's blob), and a clean run right after must match the reference.
 *
 * FAULT_LOOP_STRIDE=k in the environment tries only every k-th N (for slow
 * sanitizer builds); the default tries every one.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ag/ag.h>
#include <ag/pool.h>

#include "../tsan/tap.h"
#include "internal.h"

#define MAX_VALS 1024
#define MAX_TEXT 8192
/* workload(): the hook's allocation failed and the backward went on */
#define HOOK_FAILED 1

struct result {
	double v[MAX_VALS];
	size_t nv;
	char text[MAX_TEXT];
	size_t ntext;
};

struct live {
	long tensors, storages, nodes, hooks, bytes;
};

static atomic_int hook_failed; /* the hook's own allocation failed */
static atomic_int blobs_live; /* blobs given to ag_from_blob, not freed */

static void live_now(struct live *l)
{
	l->tensors = ag__live_tensors();
	l->storages = ag__live_storages();
	l->nodes = ag__live_nodes();
	l->hooks = ag__live_hooks();
	l->bytes = ag__live_bytes();
}

static bool live_eq(const struct live *a, const struct live *b)
{
	return a->tensors == b->tensors && a->storages == b->storages &&
	       a->nodes == b->nodes && a->hooks == b->hooks &&
	       a->bytes == b->bytes;
}

static void blob_free(void *data, void *arg)
{
	(void)arg;
	free(data);
	atomic_fetch_sub(&blobs_live, 1);
}

/* Doubles the gradient: a hook that replaces it. */
static struct ag_tensor *scale_hook(struct ag_tensor *g, void *arg)
{
	struct ag_tensor *r = ag_mul_scalar(g, 2.0);

	(void)arg;
	if (!r)
		atomic_store(&hook_failed, 1);
	return r;
}

/* A custom x^3 saving its input, so double backward goes through it. */
static int cube_fwd(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		    struct ag_tensor **out, int nout)
{
	struct ag_tensor *sq = ag_mul(in[0], in[0]);

	(void)nin;
	(void)nout;
	out[0] = ag_mul(sq, in[0]);
	ag_tensor_put(sq);
	if (!out[0])
		return -ag_errcode();
	return ag_ctx_save_for_backward(ctx, in, 1);
}

static int cube_bwd(struct ag_ctx *ctx, struct ag_tensor *const *gout, int nout,
		    struct ag_tensor **gin, int nin)
{
	struct ag_tensor **saved, *sq, *d;
	int n, rc = ag_ctx_saved_tensors(ctx, &saved, &n);

	(void)nout;
	(void)nin;
	if (rc)
		return rc;
	sq = ag_mul(saved[0], saved[0]);
	d = ag_mul_scalar(sq, 3.0);
	gin[0] = ag_mul(gout[0], d);
	ag_tensor_put(sq);
	ag_tensor_put(d);
	return gin[0] ? 0 : -ag_errcode();
}

static const struct ag_function_ops cube_ops = {
	.name = "Cube",
	.forward = cube_fwd,
	.backward = cube_bwd,
};

static int take(struct result *r, struct ag_tensor *t)
{
	size_t n;

	if (!t)
		return -1;
	n = (size_t)ag_tensor_numel(t);
	if (r->nv + n > MAX_VALS || ag_tensor_dtype(t) != AG_F64)
		return -2;
	if (ag_tensor_copy_to(t, r->v + r->nv, n * sizeof(double)))
		return -1;
	r->nv += n;
	return 0;
}

/* A hash of t's bytes, for tensors too large to keep. */
static int take_hash(struct result *r, struct ag_tensor *t)
{
	size_t nb, i;
	unsigned char *buf;
	uint64_t h = 14695981039346656037ULL;

	if (!t)
		return -1;
	nb = (size_t)ag_tensor_numel(t) * ag_dtype_size(ag_tensor_dtype(t));
	buf = malloc(nb ? nb : 1);
	if (!buf || r->nv >= MAX_VALS || ag_tensor_copy_to(t, buf, nb)) {
		free(buf);
		return buf ? -1 : -2;
	}
	for (i = 0; i < nb; i++)
		h = (h ^ buf[i]) * 1099511628211ULL;
	free(buf);
	memcpy(&r->v[r->nv++], &h, sizeof(h));
	return 0;
}

/* For ag_gradgradcheck: the custom function alone. */
static int cube_call(struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, void *arg)
{
	(void)nin;
	(void)arg;
	return ag_function_apply(&cube_ops, in, 1, out, 1, NULL);
}

/* Appends what print (which) writes for t to r->text. */
static int take_text(struct result *r, struct ag_tensor *t, bool dot)
{
	char buf[MAX_TEXT];
	FILE *f = fmemopen(buf, sizeof(buf), "w");
	int rc;
	long n;

	if (!f)
		return -2;
	rc = dot ? ag_graph_dot(t, f) : ag_tensor_print(t, f);
	n = ftell(f);
	fclose(f);
	if (rc)
		return rc;
	if (n < 0 || r->ntext + (size_t)n >= MAX_TEXT)
		return -2;
	memcpy(r->text + r->ntext, buf, (size_t)n);
	r->ntext += (size_t)n;
	return 0;
}

#define T(x)                       \
	do {                       \
		if (!(x))          \
			goto fail; \
	} while (0)
#define R(x)                       \
	do {                       \
		if ((x) != 0)      \
			goto fail; \
	} while (0)

/*
 * The model-building ops and nn/: a small conv net (conv, batch norm,
 * max pool, linear) trained one SGD step with cross-entropy, dropout,
 * cat and index_select on the side, then saved and loaded back as a
 * safetensors checkpoint.  0, or -code of the first failure.
 */
static int nn_part(struct result *r, struct ag_generator *g)
{
	static const int64_t sx[] = { 2, 1, 4, 4 }, st[] = { 2 }, si[] = { 3 },
			     two[2] = { 2, 2 };
	static const int64_t tv[] = { 0, 2 }, iv[] = { 1, 0, 1 };
	struct ag_conv2d_opts pad1 = { .stride = { 1, 1 },
				       .padding = { 1, 1 },
				       .dilation = { 1, 1 },
				       .groups = 1 };
	struct ag_module *mods[6] = {
		ag_conv2d_new(1, 2, 3, 3, &pad1, true, g),
		ag_batchnorm2d_new(2, 1e-5, 0.1),
		ag_relu_new(),
		ag_maxpool2d_new(two, NULL, NULL),
		ag_flatten_new(1, -1),
		ag_linear_new(8, 3, true, g),
	};
	struct ag_module *m = ag_sequential_new(mods, 6);
	struct ag_optim *o = NULL;
	struct ag_tensor **p, *x, *t, *idx, *y, *loss, *pair[2];
	struct ag_scope *s = ag_scope_begin();
	const char *path = "fault_loop.safetensors";
	int np, rc = 0;

	T(m && s);
	R(ag_module_parameters(m, &p, &np));
	T(o = ag_sgd_new(p, np, 0.1, 0.9, 0));
	T(x = ag_randn(g, AG_F32, 4, sx));
	T(t = ag_from_data(AG_I64, 1, st, tv));
	T(idx = ag_from_data(AG_I64, 1, si, iv));
	T(y = ag_module_forward(m, x));
	pair[0] = y;
	pair[1] = ag_dropout(y, 0.5, true, g);
	T(pair[1]);
	T(y = ag_index_select(ag_cat(pair, 2, 0), 0, idx));
	T(loss = ag_add(ag_cross_entropy(ag_slice(y, 0, 0, 2, 1), t),
			ag_mul_scalar(ag_sum(y), 1e-2)));
	R(ag_backward(loss, NULL, NULL));
	R(ag_optim_step(o));
	ag_optim_zero_grad(o);
	R(take_hash(r, loss));
	R(take_hash(r, p[0]));
	R(ag_module_save(m, path));
	R(ag_module_load(m, path));
	R(take_hash(r, p[np - 1]));
	goto out;
fail:
	rc = ag_errcode() ? -ag_errcode() : -1000;
out:
	if (s)
		ag_scope_end(s);
	ag_optim_free(o);
	ag_module_put(m);
	remove(path);
	return rc;
}

/*
 * The workload: 0 when it ran through, else -code of the first failure
 * (-1000 when a failure left no error code).  Everything it makes is
 * released before it returns, in both cases.
 */
static int workload(struct result *r)
{
	static const int64_t szz[] = { 16, 1024 }, sp[] = { 1024, 16 },
			     s3x[] = { 3 };
	static const int64_t s45[] = { 4, 5 }, s53[] = { 5, 3 }, s3[] = { 3 },
			     s43[] = { 4, 3 }, s26[] = { 2, 6 },
			     s324[] = { 3, 2, 4 };
	struct ag_backward_opts bo = { .retain_graph = true,
				       .deterministic = true };
	struct ag_backward_opts bo2 = { .deterministic = true };
	struct ag_grad_opts go = { .create_graph = true,
				   .retain_graph = true,
				   .deterministic = true };
	struct ag_tensor *x = NULL, *w = NULL, *b = NULL, *bt = NULL, *h, *a,
			 *u, *v, *c, *sm, *lsm, *ex, *cube[1] = { NULL }, *loss,
			 *gx = NULL, *gg, *z = NULL, *big;
	struct ag_generator *g = NULL;
	struct ag_hook *hk = NULL;
	struct ag_scope *s;
	double *blob;
	int rc = 0;

	memset(r, 0, sizeof(*r));
	atomic_store(&hook_failed, 0);
	ag_clear_error();
	s = ag_scope_begin();
	if (!s)
		return ag_errcode() ? -ag_errcode() : -1000;
	T(g = ag_generator_new(7));
	x = ag_randn(g, AG_F64, 2, s45);
	w = ag_randn(g, AG_F64, 2, s53);
	b = ag_randn(g, AG_F64, 1, s3);
	T(x && w && b);
	R(ag_tensor_set_requires_grad(x, true));
	R(ag_tensor_set_requires_grad(w, true));
	R(ag_tensor_set_requires_grad(b, true));

	T(blob = malloc(12 * sizeof(double)));
	for (int i = 0; i < 12; i++)
		blob[i] = 0.25 * i - 1.0;
	atomic_fetch_add(&blobs_live, 1);
	bt = ag_from_blob(AG_F64, 2, s43, blob, blob_free, NULL);
	if (!bt) { /* not taken over: still ours */
		free(blob);
		atomic_fetch_sub(&blobs_live, 1);
		goto fail;
	}

	/* matmul, broadcast add, a name, retain_grad and a hook */
	T(h = ag_add(ag_matmul(x, w), b));
	R(ag_tensor_set_name(h, "hidden"));
	R(ag_tensor_retain_grad(h));
	T(hk = ag_tensor_register_hook(h, scale_hook, NULL));
	/* unary and binary ops, one operand a blob */
	T(a = ag_mul(ag_tanh(h), bt));
	T(u = ag_add(ag_sigmoid(a), ag_exp(ag_neg(ag_square(a)))));
	T(v = ag_sub(ag_relu(a), ag_div(a, ag_add_scalar(ag_abs(a), 1.0))));
	/* in-place ops on a clone */
	T(c = ag_clone(u));
	R(ag_mul_scalar_(c, 0.5));
	R(ag_add_(c, v));
	T(sm = ag_softmax(c, 1));
	T(lsm = ag_log_softmax(c, 0));
	/* views */
	T(ex = ag_expand(
		  ag_unsqueeze(
			  ag_slice(ag_reshape(ag_transpose(lsm, 0, 1), 2, s26),
				   1, 1, 5, 1),
			  0),
		  3, s324));
	R(ag_function_apply(&cube_ops, &sm, 1, cube, 1, NULL));
	/* reductions */
	T(loss = ag_add(ag_sum(ag_mean_dim(ex, 0, false)),
			ag_sum(ag_sum_dim(cube[0], 1, false))));
	T(loss = ag_add(loss, ag_mean(ag_logsumexp(c, 1, false))));
	T(loss = ag_add(loss, ag_sum(ag_max_dim(c, 1, false))));
	T(loss = ag_add(loss, ag_sum(ag_var_dim(c, 0, true, false))));
	/* large enough for the pool to split the kernels and the matmul */
	T(z = ag_rand(g, AG_F64, 2, szz));
	R(ag_tensor_set_requires_grad(z, true));
	T(big = ag_mul(ag_exp(ag_tanh(z)), z));
	T(big = ag_matmul(big, ag_reshape(ag_sin(z), 2, sp)));
	T(loss = ag_add(loss, ag_mul_scalar(ag_mean(big), 1e-3)));
	R(take_text(r, loss, true));
	R(take_text(r, sm, false));

	/* a gradient with its graph, then backward through both */
	R(ag_grad(&loss, NULL, 1, &x, 1, &gx, &go));
	T(gg = ag_sum(ag_mul(gx, gx)));
	R(ag_backward(loss, NULL, &bo));
	R(ag_backward(gg, NULL, &bo2));

	R(take(r, loss));
	R(take(r, gx));
	R(take(r, ag_tensor_grad(x)));
	R(take(r, ag_tensor_grad(w)));
	R(take(r, ag_tensor_grad(b)));
	R(take(r, ag_tensor_grad(h)));
	R(take(r, sm));
	R(take_hash(r, ag_tensor_grad(z)));
	{
		struct ag_tensor *q = ag_rand(g, AG_F64, 1, s3x);

		T(q);
		R(ag_tensor_set_requires_grad(q, true));
		R(ag_gradgradcheck(cube_call, NULL, &q, 1, NULL));
	}
	R(nn_part(r, g));
	goto out;
fail:
	rc = ag_errcode() ? -ag_errcode() : -1000;
out:
	/*
	 * A hook whose allocation failed returns NULL with the error set,
	 * which fails the backward: a run that went through all the same
	 * ignored the failure.
	 */
	if (atomic_load(&hook_failed) && !rc)
		rc = HOOK_FAILED;
	/* a .grad made under create_graph holds the leaf's graph */
	ag_tensor_zero_grad(x);
	ag_tensor_zero_grad(w);
	ag_tensor_zero_grad(b);
	ag_tensor_zero_grad(z);
	if (hk)
		ag_hook_remove(hk);
	ag_scope_end(s);
	ag_generator_free(g);
	return rc;
}

static bool same(const struct result *a, const struct result *b)
{
	return a->nv == b->nv && a->ntext == b->ntext &&
	       !memcmp(a->v, b->v, a->nv * sizeof(double)) &&
	       !memcmp(a->text, b->text, a->ntext);
}

static long stride(void)
{
	const char *e = getenv("FAULT_LOOP_STRIDE");
	long k = e ? atol(e) : 1;

	return k > 0 ? k : 1;
}

static struct result ref, got; /* large: not on the stack */

/* The loop for one mode on nthreads pool threads. */
static int fault_loop(bool persistent, int nthreads)
{
	struct live base, now;
	long n, tried = 0, failed = 0, hooks = 0, step = stride();
	int rc;

	TAP_CHECK(ag_set_num_threads(nthreads) == 0);
	/* a first run warms caches and pools that are kept */
	TAP_CHECKF(workload(&ref) == 0, "%s", ag_errmsg());
	TAP_CHECKF(workload(&ref) == 0, "%s", ag_errmsg());
	TAP_CHECK(ref.nv > 0 && ref.ntext > 0);
	live_now(&base);
	TAP_CHECK(atomic_load(&blobs_live) == 0);
	for (n = 1;; n += step) {
		long count;

		ag__fault_set(n, persistent);
		rc = workload(&got);
		count = ag__fault_count();
		ag__fault_set(-1, false);
		tried++;
		TAP_CHECKF(rc == 0 || rc == -AG_ENOMEM, "N=%ld: rc %d (%s): %s",
			   n, rc, ag_strerror(rc), ag_errmsg());
		if (atomic_load(&hook_failed))
			hooks++;
		if (rc) {
			failed++;
			TAP_CHECKF(ag_errmsg()[0], "N=%ld: no message", n);
		} else {
			TAP_CHECKF(same(&got, &ref), "N=%ld: results differ",
				   n);
			/* a fallback that recovered leaves no error behind */
			TAP_CHECKF(!ag_errcode(),
				   "N=%ld: succeeded with %s set: %s", n,
				   ag_strerror(ag_errcode()), ag_errmsg());
		}
		live_now(&now);
		TAP_CHECKF(
			live_eq(&now, &base),
			"N=%ld: live tensors %ld->%ld storages %ld->%ld nodes %ld->%ld hooks %ld->%ld bytes %ld->%ld",
			n, base.tensors, now.tensors, base.storages,
			now.storages, base.nodes, now.nodes, base.hooks,
			now.hooks, base.bytes, now.bytes);
		TAP_CHECKF(atomic_load(&blobs_live) == 0,
			   "N=%ld: the blob was not freed", n);
		rc = workload(&got);
		TAP_CHECKF(rc == 0, "N=%ld: clean rerun: %s", n, ag_errmsg());
		TAP_CHECKF(same(&got, &ref), "N=%ld: clean rerun differs", n);
		if (count < n)
			break; /* the run never reached the N-th allocation */
	}
	printf("# %s, %d thread(s): tried N = 1..%ld (%ld runs, %ld failed cleanly, %ld of them in the hook)\n",
	       persistent ? "persistent" : "single", nthreads, n, tried, failed,
	       hooks);
	return 0;
}

static int single_1(void)
{
	return fault_loop(false, 1);
}

static int persistent_1(void)
{
	return fault_loop(true, 1);
}

static int single_4(void)
{
	return fault_loop(false, 4);
}

static int persistent_4(void)
{
	return fault_loop(true, 4);
}

/*
 * ag_from_blob when the allocation after the first of its two fails: it
 * must fail cleanly, not free a half-made tensor.
 */
static int from_blob_fails(void)
{
	static const int64_t shape[] = { 2, 3 };
	double *data = calloc(6, sizeof(double));
	struct live base, now;
	long k, made = 0;

	TAP_CHECK(data);
	live_now(&base);
	for (k = 1; k <= 4; k++) {
		struct ag_tensor *t;

		ag_clear_error();
		ag__fault_set(k, false);
		t = ag_from_blob(AG_F64, 2, shape, data, NULL, NULL);
		ag__fault_set(-1, false);
		if (t) {
			made++;
			TAP_CHECK(ag_tensor_data(t) == data);
			ag_tensor_put(t);
		} else {
			TAP_CHECK(ag_errcode() == AG_ENOMEM && ag_errmsg()[0]);
		}
		live_now(&now);
		TAP_CHECK(live_eq(&now, &base));
	}
	TAP_CHECK(made > 0); /* the last k needed no more allocations */
	free(data);
	return 0;
}

static const struct tap_test tests[] = {
	TAP_TEST(from_blob_fails), TAP_TEST(single_1),
	TAP_TEST(persistent_1),	   TAP_TEST(single_4),
	TAP_TEST(persistent_4),	   { 0 },
};

int main(void)
{
	return tap_run(tests);
}
