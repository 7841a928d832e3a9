// SPDX-License-Identifier: MIT
/*
 * Custom functions, as torch.autograd.Function.
 *
 * ag_function_apply() decides first whether the call is recorded (grad mode
 * on and an input requires grad).  If so it allocates the backward node up
 * front, with the ctx inside it, so forward already sees needs_input_grad.
 * forward runs with grad mode off and the caller's scope suspended.  What
 * the ctx is told during forward (tensors to save, dirty inputs,
 * non-differentiable outputs) is only collected; once forward has returned
 * and every output is known, saves are matched against the outputs by
 * pointer: an output is saved as such (an alias, no reference back to the
 * node that owns it), anything else as a plain reference.
 *
 * Backward state that a call of the node's apply owns (the unpacked saved
 * tensors) lives in a frame on the thread, not in the ctx, so a custom
 * backward may run ag_backward()/ag_grad() re-entrantly and two graph tasks
 * may run the same retained node.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ag/function.h>
#include <ag/mode.h>

#include "graph.h"

#define FN_MAX_ARGS 4096
#define FN_DEFAULT_NAME "CustomFunction"

/* A growable list of tensor references. */
struct tlist {
	struct ag_tensor **v;
	int n, cap;
};

static int tlist_push(struct tlist *l, struct ag_tensor *t)
{
	if (l->n == l->cap) {
		size_t cap = (size_t)l->cap;

		if (ag__array_grow((void **)&l->v, &cap, cap + 1,
				   sizeof(*l->v)))
			return ag__err_last();
		l->cap = (int)cap;
	}
	l->v[l->n++] = ag_tensor_get(t);
	return 0;
}

static bool tlist_has(const struct tlist *l, const struct ag_tensor *t)
{
	for (int i = 0; i < l->n; i++)
		if (l->v[i] == t)
			return true;
	return false;
}

static void tlist_clear(struct tlist *l)
{
	while (l->n)
		ag_tensor_put(l->v[--l->n]);
	ag__free(l->v);
	l->v = NULL;
	l->cap = 0;
}

/* What autograd knows of input i of a recorded call. */
struct fn_input {
	struct ag_input_meta meta;
	bool needs;
};

struct ag_ctx {
	const struct ag_function_ops *f;
	const char *name; /* interned: see fn_names() */
	const struct fn_names *names;
	void *arg;
	struct ag_node *node; /* NULL: the call is not recorded */
	int nin, nout;
	bool forward; /* inside f->forward */
	bool grad_mode; /* of the caller of ag_function_apply */
	int err; /* first failed ctx call during forward */
	struct ag_tensor *const *in; /* during forward */
	struct fn_input *ins; /* nin, recorded calls only */
	struct tlist save, dirty, nondiff; /* during forward */
	void *data; /* ag_ctx_set_data() */
	void (*data_free)(void *data);
};

struct fn_node {
	struct ag_node node;
	struct ag_node_ops ops; /* own copy: the name is the function's */
	struct ag_ctx ctx;
	void *saved_block; /* saved slots and their names */
	struct fn_input ins[];
};

static struct fn_node *to_fn(struct ag_node *n)
{
	return ag_container_of(n, struct fn_node, node);
}

/* A call of a node's apply, for ag_ctx_saved_tensors(). */
struct bwd_frame {
	struct bwd_frame *prev;
	struct ag_ctx *ctx;
	struct ag_tensor **unpacked; /* num_saved, made on first request */
	int err; /* unpacking failed */
};

static AG_TLS struct bwd_frame *bwd_top;

static struct bwd_frame *find_frame(const struct ag_ctx *ctx)
{
	for (struct bwd_frame *fr = bwd_top; fr; fr = fr->prev)
		if (fr->ctx == ctx)
			return fr;
	return NULL;
}

/*
 * Names.  A node's name is read after the node is gone: the trace keeps
 * slice names by pointer until it is written, and a storage remembers its
 * last in-place writer.  So each distinct function name gets one record for
 * the life of the process, with the three strings the library needs.  A
 * small per-thread cache keeps the lock off the path of repeated applies.
 */
struct fn_names {
	struct fn_names *next;
	const char *fwd; /* "LegendrePolynomial" */
	const char *bwd; /* "LegendrePolynomialBackward" */
	const char *dirty; /* "LegendrePolynomial (ag_ctx_mark_dirty)" */
	char buf[];
};

#define NAME_CACHE 8

static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fn_names *names_list;
static _Thread_local struct fn_names *names_cache[NAME_CACHE];

static struct fn_names *names_new(const char *name)
{
	static const char bwd[] = "Backward", dirty[] = " (ag_ctx_mark_dirty)";
	size_t len = strlen(name);
	struct fn_names *r = ag__malloc(sizeof(*r) + 3 * len + sizeof(bwd) +
					sizeof(dirty) + 1);
	char *s;

	if (!r)
		return NULL;
	s = r->buf;
	r->fwd = s;
	memcpy(s, name, len + 1);
	s += len + 1;
	r->bwd = s;
	memcpy(s, name, len);
	memcpy(s + len, bwd, sizeof(bwd));
	s += len + sizeof(bwd);
	r->dirty = s;
	memcpy(s, name, len);
	memcpy(s + len, dirty, sizeof(dirty));
	return r;
}

static const struct fn_names *fn_names(const char *name)
{
	size_t h = ((uintptr_t)name >> 3) % NAME_CACHE;
	struct fn_names *r = names_cache[h];

	if (r && !strcmp(r->fwd, name))
		return r;
	pthread_mutex_lock(&names_lock);
	for (r = names_list; r && strcmp(r->fwd, name); r = r->next)
		;
	if (!r) {
		r = names_new(name);
		if (r) {
			r->next = names_list;
			/* Release: a fork child never sees r before r->next. */
			__atomic_store_n(&names_list, r, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&names_lock);
	if (!r)
		return NULL;
	names_cache[h] = r;
	return r;
}

/*
 * A fork() child has only the forking thread, and names_lock may have been
 * held by another one: start it unlocked.  The list is consistent at every
 * instant (a record is complete before it is published), so the child
 * keeps it; a record being added at the fork is just not there.  Nothing
 * is held across fork, so this handler needs no place in an order of
 * locks.  docs/reliability.md has the audit of every lock.
 */
static void names_atfork_child(void)
{
	pthread_mutex_init(&names_lock, NULL);
}

__attribute__((constructor)) static void names_init(void)
{
	pthread_atfork(NULL, NULL, names_atfork_child);
}

/*
 * A failed user callback: returns the code as a negative AG_E*, and makes
 * sure the thread's error says what failed.
 */
static int callback_error(const struct ag_ctx *ctx, const char *what, int rc)
{
	char msg[512];

	if (rc > 0)
		rc = -rc;
	if (!rc)
		return 0;
	if (!ag_errcode() || !ag_errmsg()[0])
		return ag__err(
			-rc,
			"%s: %s of the custom function returned %s without setting an error message",
			ctx->name, what, ag_strerror(rc));
	if (ag_errcode() != -rc) {
		snprintf(msg, sizeof(msg), "%s", ag_errmsg());
		ag__err(-rc, "%s", msg);
	}
	return rc;
}

/* ---- the ctx API ---- */

static int ctx_fail(struct ag_ctx *ctx, int rc)
{
	if (ctx && ctx->forward && !ctx->err)
		ctx->err = rc;
	return rc;
}

static int need_forward(const struct ag_ctx *ctx, const char *fn)
{
	if (!ctx)
		return ag__err(AG_EINVAL, "%s: argument 'ctx' is NULL", fn);
	if (!ctx->forward)
		return ag__err(
			AG_EINVAL,
			"%s: %s: may only be called from the function's forward",
			fn, ctx->name);
	return 0;
}

int ag_ctx_save_for_backward(struct ag_ctx *ctx, struct ag_tensor *const *ts,
			     int n)
{
	static const char fn[] = "ag_ctx_save_for_backward";
	int rc = need_forward(ctx, fn);

	if (rc)
		return rc;
	if (n < 0 || n > FN_MAX_ARGS || (n && !ts))
		return ctx_fail(ctx,
				ag__err(AG_EINVAL,
					"%s: %s: bad tensor list (n %d, ts %s)",
					fn, ctx->name, n, ts ? "set" : "NULL"));
	for (int i = 0; i < n; i++)
		if (ts[i] && ts[i]->inference && ctx->node)
			return ctx_fail(
				ctx,
				ag__err(AG_EINFERENCE,
					"%s: %s: tensor %d is an inference tensor; inference tensors cannot be saved for backward",
					fn, ctx->name, i));
	/* as in PyTorch, a second call replaces the first */
	tlist_clear(&ctx->save);
	if (!ctx->node)
		return 0;
	for (int i = 0; i < n; i++) {
		rc = tlist_push(&ctx->save, ts[i]);
		if (rc)
			return ctx_fail(ctx, rc);
	}
	return 0;
}

int ag_ctx_saved_tensors(struct ag_ctx *ctx, struct ag_tensor ***ts, int *n)
{
	static const char fn[] = "ag_ctx_saved_tensors";
	struct bwd_frame *fr;
	struct ag_node *node;

	if (!ctx || !ts || !n)
		return ag__err(AG_EINVAL, "%s: ctx, ts and n must not be NULL",
			       fn);
	*ts = NULL;
	*n = 0;
	node = ctx->node;
	if (node && atomic_load_explicit(&node->released, memory_order_acquire))
		return ag__err_freed(node);
	fr = find_frame(ctx);
	if (!node || !fr)
		return ag__err(
			AG_EINVAL,
			"%s: %s: saved tensors can only be read during the function's backward",
			fn, ctx->name);
	if (!fr->unpacked) {
		int k = node->num_saved;

		fr->unpacked = ag__calloc(k, sizeof(*fr->unpacked));
		if (!fr->unpacked)
			return -AG_ENOMEM;
		for (int i = 0; i < k; i++) {
			if (!node->saved[i].defined)
				continue;
			fr->unpacked[i] = ag__unpack(node, i);
			if (fr->unpacked[i])
				continue;
			fr->err = ag_errcode() ? -ag_errcode() : -AG_EINTERNAL;
			while (i--)
				ag_tensor_put(fr->unpacked[i]);
			ag__mfree(fr->unpacked);
			fr->unpacked = NULL;
			return fr->err;
		}
	}
	*ts = fr->unpacked;
	*n = node->num_saved;
	return 0;
}

bool ag_ctx_needs_input_grad(const struct ag_ctx *ctx, int i)
{
	return ctx && ctx->ins && i >= 0 && i < ctx->nin && ctx->ins[i].needs;
}

int ag_ctx_mark_dirty(struct ag_ctx *ctx, struct ag_tensor *t)
{
	static const char fn[] = "ag_ctx_mark_dirty";
	struct ag_tensor *base;
	int rc = need_forward(ctx, fn), i;

	if (rc)
		return rc;
	if (!t)
		return ctx_fail(ctx, ag__err(AG_EINVAL,
					     "%s: %s: argument 't' is NULL", fn,
					     ctx->name));
	for (i = 0; i < ctx->nin && ctx->in[i] != t; i++)
		;
	if (i == ctx->nin)
		return ctx_fail(
			ctx,
			ag__err(AG_EINVAL,
				"%s: %s: only inputs of the function can be marked dirty",
				fn, ctx->name));
	if (t->inference && !ag_is_inference_mode_enabled())
		return ctx_fail(
			ctx,
			ag__err(AG_EINFERENCE,
				"%s: %s: inplace update to inference tensor outside InferenceMode is not allowed",
				fn, ctx->name));
	/* the write has happened: count it whatever follows */
	ag__storage_bump(t->storage, ctx->names->dirty);
	if (ctx->grad_mode && ag__requires_grad(t) && ag_tensor_is_leaf(t) &&
	    !t->meta->view_base)
		return ctx_fail(
			ctx,
			ag__err(AG_ELEAF,
				"%s: %s: a leaf tensor that requires grad (input %d) was modified in place; do it under no-grad or on a clone",
				fn, ctx->name, i));
	base = t->meta ? t->meta->view_base : NULL;
	if (ctx->node && base) {
		if (ag__requires_grad(base) && ag_tensor_is_leaf(base))
			return ctx_fail(
				ctx,
				ag__err(AG_ELEAF,
					"%s: %s: input %d is a view of a leaf tensor that requires grad and was modified in place",
					fn, ctx->name, i));
		return ctx_fail(
			ctx,
			ag__err(AG_EINVAL,
				"%s: %s: input %d is a view of a tensor that autograd tracks; modifying it in place is not supported (it needs CopySlices)",
				fn, ctx->name, i));
	}
	if (tlist_has(&ctx->dirty, t))
		return 0;
	return ctx_fail(ctx, tlist_push(&ctx->dirty, t));
}

int ag_ctx_mark_non_differentiable(struct ag_ctx *ctx, struct ag_tensor *t)
{
	static const char fn[] = "ag_ctx_mark_non_differentiable";
	int rc = need_forward(ctx, fn);

	if (rc)
		return rc;
	if (!t)
		return ctx_fail(ctx, ag__err(AG_EINVAL,
					     "%s: %s: argument 't' is NULL", fn,
					     ctx->name));
	if (tlist_has(&ctx->nondiff, t))
		return 0;
	return ctx_fail(ctx, tlist_push(&ctx->nondiff, t));
}

void *ag_ctx_arg(struct ag_ctx *ctx)
{
	return ctx ? ctx->arg : NULL;
}

static void ctx_data_free(struct ag_ctx *ctx)
{
	if (ctx->data_free)
		ctx->data_free(ctx->data);
	ctx->data = NULL;
	ctx->data_free = NULL;
}

int ag_ctx_set_data(struct ag_ctx *ctx, void *data, void (*free_fn)(void *data))
{
	int rc = need_forward(ctx, "ag_ctx_set_data");

	if (rc)
		return rc;
	if (ctx->data != data || ctx->data_free != free_fn)
		ctx_data_free(ctx);
	ctx->data = data;
	ctx->data_free = free_fn;
	return 0;
}

void *ag_ctx_data(struct ag_ctx *ctx)
{
	return ctx ? ctx->data : NULL;
}

/* ---- the backward node ---- */

static struct ag_tensor *zeros_like_meta(const struct ag_input_meta *m)
{
	struct ag_tensor *t = ag__tensor_new("ag_function_apply", m->dtype,
					     m->ndim, m->shape);

	if (t)
		memset(t->storage->data, 0, t->storage->nbytes);
	return t;
}

static int check_grad_in(const struct ag_ctx *ctx, int i,
			 const struct ag_tensor *g)
{
	const struct ag_input_meta *m = &ctx->ins[i].meta;
	struct ag__shape_str a, b;

	if (g->dtype == m->dtype && g->ndim == m->ndim &&
	    ag__shape_eq(m->ndim, g->shape, m->shape))
		return 0;
	return ag__err(
		AG_ESHAPE,
		"%s: backward of the custom function returned an invalid gradient for input %d: got %s %s but expected %s %s (the input's dtype and shape)",
		ctx->name, i, ag_dtype_name(g->dtype), ag__shape_of(&a, g),
		ag_dtype_name(m->dtype), ag__shape_fmt(&b, m->ndim, m->shape));
}

static int fn_apply(struct ag_node *n, struct ag_tensor **grads,
		    struct ag_tensor **out)
{
	struct ag_ctx *ctx = &to_fn(n)->ctx;
	struct ag_tensor *gsmall[8], *ismall[8];
	struct ag_tensor **g = gsmall, **gi = ismall;
	struct bwd_frame fr = { .ctx = ctx };
	struct ag_scope *scope;
	struct ag_tls_mode mode;
	int nin = ctx->nin, nout = ctx->nout, rc = 0;

	if (nout > 8)
		g = ag__calloc(nout, sizeof(*g));
	if (nin > 8)
		gi = ag__calloc(nin, sizeof(*gi));
	if (!g || !gi) {
		rc = -AG_ENOMEM;
		goto out;
	}
	memset(gi, 0, nin * sizeof(*gi));
	/* a missing gradient is zero: backward always gets every one */
	for (int j = 0; j < nout; j++) {
		g[j] = grads[j] ? ag_tensor_get(grads[j]) :
				  zeros_like_meta(&n->in_meta[j]);
		if (!g[j]) {
			while (j--)
				ag_tensor_put(g[j]);
			rc = ag__err_last();
			goto out;
		}
	}
	fr.prev = bwd_top;
	bwd_top = &fr;
	scope = ag__scope_suspend();
	mode = ag__mode;
	ag_clear_error();
	rc = ctx->f->backward(ctx, g, nout, gi, nin);
	ag__mode = mode; /* a mode left changed must not leak to other nodes */
	ag__scope_resume(scope);
	bwd_top = fr.prev;
	if (!rc && fr.err) /* the saved tensors failed; backward went on */
		rc = fr.err;
	rc = callback_error(ctx, "backward", rc);
	for (int i = 0; i < nin && !rc; i++) {
		if (gi[i] && !ctx->ins[i].needs) {
			ag_tensor_put(gi[i]);
			gi[i] = NULL;
		}
		if (gi[i])
			rc = check_grad_in(ctx, i, gi[i]);
	}
	for (int i = 0; i < nin; i++) {
		if (rc)
			ag_tensor_put(gi[i]);
		else
			out[i] = gi[i];
	}
	for (int j = 0; j < nout; j++)
		ag_tensor_put(g[j]);
	if (fr.unpacked) {
		for (int i = 0; i < n->num_saved; i++)
			ag_tensor_put(fr.unpacked[i]);
		ag__mfree(fr.unpacked);
	}
out:
	if (g != gsmall)
		ag__mfree(g);
	if (gi != ismall)
		ag__mfree(gi);
	return rc;
}

/* The core frees the container. */
static void fn_destroy(struct ag_node *n)
{
	struct fn_node *fn = to_fn(n);

	ctx_data_free(&fn->ctx);
	ag__mfree(fn->saved_block);
}

static const struct ag_node_ops fn_proto_ops = {
	.name = FN_DEFAULT_NAME "Backward",
	.apply = fn_apply,
	.destroy = fn_destroy,
};

static struct fn_node *fn_node_new(const struct fn_names *names,
				   struct ag_tensor *const *in, int nin,
				   int nout)
{
	size_t size = offsetof(struct fn_node, ins) +
		      (size_t)nin * sizeof(struct fn_input);
	struct fn_node *fn;

	fn = (struct fn_node *)ag__node_alloc(&fn_proto_ops, size,
					      offsetof(struct fn_node, node),
					      nout, nin, NULL, 0);
	if (!fn)
		return NULL;
	fn->ops = fn_proto_ops;
	fn->ops.name = names->bwd;
	fn->node.ops = &fn->ops;
	fn->ctx.node = &fn->node;
	fn->ctx.ins = fn->ins;
	for (int i = 0; i < nin; i++) {
		struct ag_input_meta *m = &fn->ins[i].meta;

		m->dtype = in[i]->dtype;
		m->ndim = in[i]->ndim;
		ag__dims_copy(m->shape, in[i]->shape, in[i]->ndim);
		fn->ins[i].needs = ag__requires_grad(in[i]);
	}
	return fn;
}

/* ---- apply ---- */

static int check_args(const struct ag_function_ops *f,
		      struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, int nout)
{
	static const char fn[] = "ag_function_apply";
	const char *name;

	if (!f)
		return ag__err(AG_EINVAL, "%s: argument 'f' is NULL", fn);
	name = f->name ? f->name : FN_DEFAULT_NAME;
	if (!f->forward || !f->backward)
		return ag__err(AG_EINVAL, "%s: function %s has no %s", fn, name,
			       f->forward ? "backward" : "forward");
	if (nin < 0 || nin > FN_MAX_ARGS)
		return ag__err(AG_EINVAL,
			       "%s: %s: nin is %d; it must be in [0, %d]", fn,
			       name, nin, FN_MAX_ARGS);
	if (nout < 1 || nout > FN_MAX_ARGS)
		return ag__err(AG_EINVAL,
			       "%s: %s: nout is %d; it must be in [1, %d]", fn,
			       name, nout, FN_MAX_ARGS);
	if (nin && !in)
		return ag__err(AG_EINVAL, "%s: %s: in is NULL but nin is %d",
			       fn, name, nin);
	if (!out)
		return ag__err(AG_EINVAL, "%s: %s: argument 'out' is NULL", fn,
			       name);
	for (int i = 0; i < nin; i++) {
		if (in[i])
			continue;
		/* keep the error that produced the NULL, if any */
		if (ag_errcode())
			return -ag_errcode();
		return ag__err(AG_EINVAL, "%s: %s: input %d is NULL", fn, name,
			       i);
	}
	return 0;
}

static int run_forward(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		       struct ag_tensor **out, int nout)
{
	struct ag_mode prev = ag_no_grad_enter();
	struct ag_scope *scope = ag__scope_suspend();
	int rc;

	ctx->in = in;
	ctx->forward = true;
	ag_clear_error();
	rc = ctx->f->forward(ctx, in, nin, out, nout);
	ctx->forward = false;
	ag__scope_resume(scope);
	ag_mode_exit(prev);
	if (!rc && ctx->err) /* a ctx call failed; forward went on */
		rc = ctx->err;
	return callback_error(ctx, "forward", rc);
}

static int check_outputs(struct ag_ctx *ctx, struct ag_tensor **out, int nout)
{
	for (int j = 0; j < nout; j++)
		if (!out[j])
			return ag__err(
				AG_EINVAL,
				"ag_function_apply: %s: forward returned 0 but left out[%d] NULL; it must fill all %d outputs",
				ctx->name, j, nout);
	for (int i = 0; i < ctx->dirty.n; i++) {
		int j;

		for (j = 0; j < nout && out[j] != ctx->dirty.v[i]; j++)
			;
		if (j == nout)
			return ag__err(
				AG_EINVAL,
				"ag_function_apply: %s: an input marked dirty in forward was not returned as an output; return it (a new reference) in out[]",
				ctx->name);
	}
	return 0;
}

static bool is_input(const struct ag_ctx *ctx, const struct ag_tensor *t)
{
	for (int i = 0; i < ctx->nin; i++)
		if (ctx->in[i] == t)
			return true;
	return false;
}

enum { OUT_DIFF = 1, OUT_DIRTY = 2 };

/*
 * An output that is a (not dirty) input, another output, or a tensor with a
 * history of its own must not have its history replaced: it becomes a
 * fresh alias of the same storage.
 */
static int alias_outputs(struct ag_ctx *ctx, struct ag_tensor **out, int nout,
			 const unsigned char *flags)
{
	for (int j = 0; j < nout; j++) {
		struct ag_tensor *t = out[j], *a;
		bool dup = false;

		for (int k = 0; k < j && !dup; k++)
			dup = out[k] == t;
		if (!dup && (flags[j] & OUT_DIRTY))
			continue;
		if (!dup && !is_input(ctx, t) && !ag__requires_grad(t))
			continue;
		a = ag__tensor_view(t, t->ndim, t->shape, t->strides,
				    t->offset);
		if (!a)
			return ag__err_last();
		ag_tensor_put(t);
		out[j] = a;
	}
	return 0;
}

/* Turns the tensors forward asked to save into the node's saved slots. */
static int save_all(struct fn_node *fn, struct ag_tensor **out, int nout,
		    const unsigned char *flags)
{
	struct ag_ctx *ctx = &fn->ctx;
	struct ag_node *n = &fn->node;
	int k = ctx->save.n, rc;
	const char **names;
	struct ag_saved *saved;
	char *s;

	if (!k)
		return 0;
	fn->saved_block = ag__calloc(k, sizeof(*saved) + sizeof(*names) + 16);
	if (!fn->saved_block)
		return -AG_ENOMEM;
	saved = fn->saved_block;
	names = (const char **)(saved + k);
	s = (char *)(names + k);
	for (int i = 0; i < k; i++, s += 16) {
		snprintf(s, 16, "saved%d", i);
		names[i] = s;
	}
	fn->ops.saved_names = names;
	n->saved = saved;
	n->num_saved = k;
	for (int i = 0; i < k; i++) {
		struct ag_tensor *t = ctx->save.v[i];
		int j;

		for (j = 0; j < nout && !(out[j] == t && (flags[j] & OUT_DIFF));
		     j++)
			;
		if (j < nout) {
			rc = ag__save(n, i, t, true, j);
		} else {
			rc = ag__save(n, i, t, false, 0);
		}
		if (rc)
			return rc;
	}
	return 0;
}

/*
 * Records the call: edges to the inputs, the node as grad_fn of the
 * differentiable outputs.  Leaves the caller's reference to the node.
 */
static int connect(struct fn_node *fn, struct ag_tensor **out, int nout)
{
	struct ag_ctx *ctx = &fn->ctx;
	struct ag_node *n = &fn->node;
	unsigned char small[16], *flags = small;
	int rc = 0;

	if (nout > 16) {
		flags = ag__calloc(nout, 1);
		if (!flags)
			return -AG_ENOMEM;
	}
	for (int j = 0; j < nout; j++) {
		struct ag_tensor *t = out[j];

		flags[j] = tlist_has(&ctx->dirty, t) ? OUT_DIRTY : 0;
		if (t->dtype != AG_I64 && !tlist_has(&ctx->nondiff, t))
			flags[j] |= OUT_DIFF;
	}
	rc = alias_outputs(ctx, out, nout, flags);
	if (!rc) {
		/* an alias is never dirty */
		for (int j = 0; j < nout; j++)
			if (!tlist_has(&ctx->dirty, out[j]))
				flags[j] &= ~OUT_DIRTY;
		rc = save_all(fn, out, nout, flags);
	}
	for (int j = 0; j < nout && !rc; j++) {
		if ((flags[j] & OUT_DIFF) && out[j]->inference)
			rc = ag__err(
				AG_EINFERENCE,
				"ag_function_apply: %s: output %d is an inference tensor and cannot get a grad_fn",
				ctx->name, j);
		else if ((flags[j] & OUT_DIFF) && !ag__meta(out[j]))
			rc = ag__err_last();
	}
	if (rc)
		goto out;
	ag__node_get(n);
	rc = ag__record(n, ctx->in, ctx->nin, NULL, 0, ctx->name);
	if (rc)
		goto out;
	/* nothing fails from here: histories are rewritten */
	for (int j = 0; j < nout; j++) {
		struct ag_tensor *t = out[j];
		struct ag_autograd_meta *m = t->meta;
		struct ag_input_meta *im = &n->in_meta[j];

		im->dtype = t->dtype;
		im->ndim = t->ndim;
		ag__dims_copy(im->shape, t->shape, t->ndim);
		if (flags[j] & OUT_DIFF) {
			ag__node_get(n);
			ag__node_put(m->grad_fn);
			m->grad_fn = n;
			m->output_nr = j;
			m->requires_grad = false;
		} else if (m && m->grad_fn) {
			/* a dirty input marked non-differentiable */
			ag__node_put(m->grad_fn);
			m->grad_fn = NULL;
		}
	}
out:
	if (flags != small)
		ag__mfree(flags);
	return rc;
}

int ag_function_apply(const struct ag_function_ops *f,
		      struct ag_tensor *const *in, int nin,
		      struct ag_tensor **out, int nout, void *arg)
{
	struct ag_ctx local = { 0 }, *ctx = &local;
	const struct fn_names *names;
	struct fn_node *fn = NULL;
	int rc = check_args(f, in, nin, out, nout);

	if (rc)
		return rc;
	for (int j = 0; j < nout; j++)
		out[j] = NULL;
	names = fn_names(f->name ? f->name : FN_DEFAULT_NAME);
	if (!names)
		return ag__err_last();
	if (ag__should_record(in, nin)) {
		fn = fn_node_new(names, in, nin, nout);
		if (!fn)
			return -ag_errcode();
		ctx = &fn->ctx;
	}
	ctx->f = f;
	ctx->names = names;
	ctx->name = names->fwd;
	ctx->arg = arg;
	ctx->nin = nin;
	ctx->nout = nout;
	ctx->grad_mode = ag__mode.grad;
	rc = run_forward(ctx, in, nin, out, nout);
	if (!rc)
		rc = check_outputs(ctx, out, nout);
	if (!rc && fn)
		rc = connect(fn, out, nout);
	tlist_clear(&ctx->save);
	tlist_clear(&ctx->dirty);
	tlist_clear(&ctx->nondiff);
	ctx->in = NULL;
	if (!fn)
		ctx_data_free(ctx); /* nothing will run backward */
	else
		ag__node_put(&fn->node);
	for (int j = 0; j < nout; j++) {
		if (rc) {
			ag_tensor_put(out[j]);
			out[j] = NULL;
			continue;
		}
		out[j] = ag__scope_add(out[j]);
		if (!out[j]) {
			/* earlier outputs belong to the scope now */
			rc = -ag_errcode();
			for (int k = 0; k < j; k++)
				out[k] = NULL;
		}
	}
	return rc;
}
