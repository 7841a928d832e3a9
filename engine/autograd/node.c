// SPDX-License-Identifier: MIT
/*
 * Nodes, grad cells and the autograd state of tensors.
 *
 * Freeing is iterative: a node whose count drops to zero goes on a
 * per-thread reap list and the outermost put on the thread frees the list.
 * Freeing a node puts its edges and saved tensors, which may free further
 * nodes; those join the list instead of recursing, so a million-node chain
 * frees in constant stack.
 */
#include <stdlib.h>
#include <string.h>

#include "graph.h"

static _Atomic uint64_t seq_counter;

uint64_t ag__next_seq(void)
{
	return atomic_fetch_add_explicit(&seq_counter, 1,
					 memory_order_relaxed) +
	       1;
}

struct ag_node *ag__node_alloc(const struct ag_node_ops *ops, size_t size,
			       size_t node_off, int num_inputs, int num_next,
			       struct ag_saved *saved, int num_saved)
{
	size_t edges = (size_t)num_next * sizeof(struct ag_edge);
	size_t metas = (size_t)num_inputs * sizeof(struct ag_input_meta);
	size_t head = (size + 15) / 16 * 16;
	char *mem;
	struct ag_node *n;

	if (node_off > UINT16_MAX) {
		ag__err(AG_EINTERNAL, "%s: node at offset %zu of its container",
			ops->name, node_off);
		return NULL;
	}
	mem = ag__zalloc(head + edges + metas);
	if (!mem) {
		ag__err(AG_ENOMEM, "out of memory recording %s", ops->name);
		return NULL;
	}
	n = (struct ag_node *)(mem + node_off);
	n->ops = ops;
	n->mem_off = (uint16_t)node_off;
	atomic_init(&n->refcount, 1);
	n->seq = ag__next_seq();
	n->num_inputs = num_inputs;
	n->num_next = num_next;
	n->next = (struct ag_edge *)(mem + head);
	n->in_meta = (struct ag_input_meta *)(mem + head + edges);
	n->saved = saved;
	n->num_saved = num_saved;
	atomic_init(&n->released, false);
	atomic_init(&n->task, NULL);
	ag__live_add(AG_LIVE_NODES, 1);
	return n;
}

void ag__node_get(struct ag_node *n)
{
	atomic_fetch_add_explicit(&n->refcount, 1, memory_order_relaxed);
}

static AG_TLS struct ag_node *reap_list;
static AG_TLS bool reaping;

static void node_free(struct ag_node *n)
{
	for (int i = 0; i < n->num_next; i++)
		ag__node_put(n->next[i].node);
	ag__node_release(n);
	ag__hooks_free(n);
	ag__live_add(AG_LIVE_NODES, -1);
	if (n->ops->destroy)
		n->ops->destroy(n);
	ag__free((char *)n - n->mem_off);
}

void ag__node_put(struct ag_node *n)
{
	if (!n)
		return;
	if (atomic_fetch_sub_explicit(&n->refcount, 1, memory_order_acq_rel) !=
	    1)
		return;
	n->reap_next = reap_list;
	reap_list = n;
	if (reaping)
		return;
	reaping = true;
	while (reap_list) {
		struct ag_node *d = reap_list;

		reap_list = d->reap_next;
		node_free(d);
	}
	reaping = false;
}

void ag__node_release(struct ag_node *n)
{
	for (int i = 0; i < n->num_saved; i++) {
		struct ag_saved *s = &n->saved[i];

		if (s->compact)
			ag__storage_put(s->storage);
		else
			ag_tensor_put(s->t);
		/* atomic: the engine may peek at the slot to prefetch it */
		__atomic_store_n(&s->t, NULL, __ATOMIC_RELAXED);
		__atomic_store_n(&s->compact, false, __ATOMIC_RELAXED);
	}
	if (n->ops->release)
		n->ops->release(n);
}

/* ---- grad cells ---- */

struct ag_grad_cell *ag__cell_new(void)
{
	struct ag_grad_cell *c = ag__zalloc(sizeof(*c));

	if (!c) {
		ag__err(AG_ENOMEM, "out of memory");
		return NULL;
	}
	atomic_init(&c->refcount, 1);
	pthread_mutex_init(&c->lock, NULL);
	return c;
}

void ag__cell_get(struct ag_grad_cell *c)
{
	atomic_fetch_add_explicit(&c->refcount, 1, memory_order_relaxed);
}

void ag__cell_put(struct ag_grad_cell *c)
{
	if (!c || atomic_fetch_sub_explicit(&c->refcount, 1,
					    memory_order_acq_rel) != 1)
		return;
	ag_tensor_put(c->grad);
	pthread_mutex_destroy(&c->lock);
	ag__free(c);
}

/* ---- autograd state of tensors ---- */

struct ag_autograd_meta *ag__meta(struct ag_tensor *t)
{
	if (!t->meta) {
		t->meta = &t->meta_store;
		memset(t->meta, 0, sizeof(*t->meta));
		atomic_init(&t->meta->grad_acc, NULL);
		atomic_init(&t->meta->cell, NULL);
	}
	return t->meta;
}

void ag__meta_clear(struct ag_autograd_meta *m)
{
	struct ag_grad_cell *c;
	struct ag_tensor *g;

	if (!m)
		return;
	c = atomic_load(&m->cell);
	if (c) {
		pthread_mutex_lock(&c->lock);
		g = c->grad;
		c->grad = NULL;
		c->orphan = true;
		pthread_mutex_unlock(&c->lock);
		ag_tensor_put(g);
	}
	ag__node_put(m->grad_fn);
	ag__node_put(atomic_load(&m->grad_acc));
	ag__cell_put(c);
	ag_tensor_put(m->view_base);
}

bool ag_tensor_requires_grad(const struct ag_tensor *t)
{
	return t && ag__requires_grad(t);
}

bool ag_tensor_is_leaf(const struct ag_tensor *t)
{
	return t && !(t->meta && t->meta->grad_fn);
}

struct ag_node *ag_tensor_grad_fn(struct ag_tensor *t)
{
	return t && t->meta ? t->meta->grad_fn : NULL;
}

int ag_tensor_set_requires_grad(struct ag_tensor *t, bool on)
{
	if (!t)
		return ag__err_null("ag_tensor_set_requires_grad", "t");
	if (!ag_tensor_is_leaf(t))
		return ag__err(
			AG_EINVAL,
			"ag_tensor_set_requires_grad: you can only change requires_grad of leaf tensors; this one is an output of %s (use ag_detach to get a leaf)",
			t->meta->grad_fn->ops->name);
	if (on && t->dtype == AG_I64)
		return ag__err(
			AG_EDTYPE,
			"ag_tensor_set_requires_grad: only floating point tensors (f32, f64) can require gradients, not i64");
	if (on && t->inference)
		return ag__err(
			AG_EINFERENCE,
			"ag_tensor_set_requires_grad: setting requires_grad on an inference tensor outside inference mode is not allowed");
	if (!on && !t->meta)
		return 0;
	if (!ag__meta(t))
		return ag__err_last();
	t->meta->requires_grad = on;
	return 0;
}

struct ag_grad_cell *ag__meta_cell(struct ag_autograd_meta *m)
{
	struct ag_grad_cell *c =
		atomic_load_explicit(&m->cell, memory_order_acquire);
	struct ag_grad_cell *expected = NULL;

	if (c)
		return c;
	c = ag__cell_new();
	if (!c)
		return NULL;
	if (!atomic_compare_exchange_strong_explicit(&m->cell, &expected, c,
						     memory_order_acq_rel,
						     memory_order_acquire)) {
		ag__cell_put(c);
		return expected;
	}
	return c;
}

struct ag_tensor *ag_tensor_grad(struct ag_tensor *t)
{
	struct ag_grad_cell *c;
	struct ag_tensor *g;

	if (!t) {
		ag__err_null("ag_tensor_grad", "t");
		return NULL;
	}
	if (!t->meta)
		return NULL;
	c = atomic_load_explicit(&t->meta->cell, memory_order_acquire);
	if (!c)
		return NULL;
	pthread_mutex_lock(&c->lock);
	g = ag_tensor_get(c->grad);
	pthread_mutex_unlock(&c->lock);
	return ag__scope_add(g);
}

int ag_tensor_zero_grad(struct ag_tensor *t)
{
	struct ag_grad_cell *c;
	struct ag_tensor *g;

	if (!t)
		return ag__err_null("ag_tensor_zero_grad", "t");
	if (!t->meta)
		return 0;
	c = atomic_load_explicit(&t->meta->cell, memory_order_acquire);
	if (!c)
		return 0;
	pthread_mutex_lock(&c->lock);
	g = c->grad;
	c->grad = NULL;
	pthread_mutex_unlock(&c->lock);
	ag_tensor_put(g);
	return 0;
}

int ag_tensor_set_grad(struct ag_tensor *t, struct ag_tensor *g)
{
	struct ag__shape_str a, b;
	struct ag_grad_cell *c;
	struct ag_tensor *old;

	if (!t)
		return ag__err_null("ag_tensor_set_grad", "t");
	if (!g)
		return ag_tensor_zero_grad(t);
	if (g->dtype != t->dtype || g->ndim != t->ndim ||
	    !ag__shape_eq(t->ndim, t->shape, g->shape))
		return ag__err(
			AG_ESHAPE,
			"ag_tensor_set_grad: assigned grad has %s %s but the tensor is %s %s",
			ag_dtype_name(g->dtype), ag__shape_of(&a, g),
			ag_dtype_name(t->dtype), ag__shape_of(&b, t));
	c = ag__meta_cell(ag__meta(t));
	if (!c)
		return ag__err_last();
	ag_tensor_get(g);
	pthread_mutex_lock(&c->lock);
	old = c->grad;
	c->grad = g;
	pthread_mutex_unlock(&c->lock);
	ag_tensor_put(old);
	return 0;
}

/*
 * The leaf's AccumulateGrad, created on first use; racing creators agree
 * on one through the CAS.
 */

static struct ag_node *grad_accumulator(struct ag_tensor *t)
{
	struct ag_autograd_meta *m = t->meta;
	struct ag_node *n =
		atomic_load_explicit(&m->grad_acc, memory_order_acquire);
	struct ag_node *expected = NULL;
	struct ag_grad_cell *c;

	if (n)
		return n;
	c = ag__meta_cell(m);
	if (!c)
		return NULL;
	n = ag__accumulate_new(t, c);
	if (!n)
		return NULL;
	if (!atomic_compare_exchange_strong_explicit(&m->grad_acc, &expected, n,
						     memory_order_acq_rel,
						     memory_order_acquire)) {
		ag__node_put(n);
		return expected;
	}
	return n;
}

struct ag_edge ag__grad_edge(struct ag_tensor *t)
{
	struct ag_edge e = { NULL, 0 };

	if (!ag__requires_grad(t))
		return e;
	if (t->meta->grad_fn) {
		e.node = t->meta->grad_fn;
		e.input_nr = t->meta->output_nr;
	} else {
		e.node = grad_accumulator(t);
	}
	return e;
}

/* ---- introspection ---- */

const char *ag_node_name(const struct ag_node *n)
{
	return n ? n->ops->name : NULL;
}

int ag_node_num_next(const struct ag_node *n)
{
	if (!n)
		return ag__err_null("ag_node_num_next", "n");
	return n->num_next;
}

struct ag_node *ag_node_next(const struct ag_node *n, int i, int *input_nr)
{
	if (!n) {
		ag__err_null("ag_node_next", "n");
		return NULL;
	}
	if (i < 0 || i >= n->num_next) {
		ag__err(AG_EINVAL,
			"ag_node_next: %s has %d next edges; index %d is out of range",
			n->ops->name, n->num_next, i);
		return NULL;
	}
	if (input_nr)
		*input_nr = n->next[i].input_nr;
	return n->next[i].node;
}

int ag_node_saved_names(const struct ag_node *n, const char *const **names)
{
	if (!n)
		return ag__err_null("ag_node_saved_names", "n");
	if (names)
		*names = n->ops->saved_names;
	return n->num_saved;
}

struct ag_tensor *ag_node_saved(struct ag_node *n, const char *name)
{
	if (!n) {
		ag__err_null("ag_node_saved", "n");
		return NULL;
	}
	if (!name) {
		ag__err(AG_EINVAL, "ag_node_saved: name is NULL");
		return NULL;
	}
	for (int i = 0; i < n->num_saved; i++)
		if (!strcmp(n->ops->saved_names[i], name))
			return ag__scope_add(ag__unpack(n, i));
	ag__err(AG_EINVAL, "ag_node_saved: %s has no saved tensor named '%s'",
		n->ops->name, name);
	return NULL;
}
