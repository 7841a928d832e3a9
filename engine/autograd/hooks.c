// SPDX-License-Identifier: MIT
/*
 * Tensor hooks and retain_grad.
 *
 * A hook hangs on the gradient slot a tensor's gradient flows into: slot
 * output_nr of its grad_fn, or slot 0 of a leaf's AccumulateGrad, where it
 * runs before accumulation.  The engine runs a node's hooks in registration
 * order under the lock of the node's hook list, just before its apply.
 *
 * Lifetime.  The node's list owns a reference to each hook and drops it when
 * the node is freed.  A user hook has a second reference, owned by the
 * handle returned to the caller and dropped by ag_hook_remove().  So remove
 * is safe at any time: before backward, from another thread or from inside a
 * hook while a backward runs (it only sets a flag and drops a count, taking
 * no lock), and after the graph is gone (the handle then only frees itself).
 * The flip side is the C one: every handle must be passed to ag_hook_remove()
 * exactly once, even if the hook should stay until the graph dies.
 *
 * retain_grad is a hook without a function: the engine stores the slot's
 * gradient into the tensor's grad cell.  It has no handle.
 */
#include <stdio.h>
#include <stdlib.h>

#include "graph.h"

/* Guards the lazy allocation of a node's hook list. */
static pthread_mutex_t alloc_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * In a fork() child another thread may have held alloc_lock: start it
 * unlocked.  A list is complete before it is published (release store), so
 * the child sees a node with a whole list or none; one being made at the
 * fork is not there (and its memory is lost).  docs/reliability.md.
 */
static void hooks_atfork_child(void)
{
	pthread_mutex_init(&alloc_lock, NULL);
}

__attribute__((constructor)) static void hooks_init(void)
{
	pthread_atfork(NULL, NULL, hooks_atfork_child);
}

static struct ag_hook *hook_new(ag_tensor_hook_fn fn, void *arg, int refs)
{
	struct ag_hook *h = ag__calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->fn = fn;
	h->arg = arg;
	atomic_init(&h->removed, false);
	atomic_init(&h->refs, refs);
	ag__live_add(AG_LIVE_HOOKS, 1);
	return h;
}

static void hook_put(struct ag_hook *h)
{
	if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
		return;
	ag__cell_put(h->cell);
	ag__mfree(h);
	ag__live_add(AG_LIVE_HOOKS, -1);
}

/* The node's hook list, created on first use. */
static struct ag_hook_list *hook_list(struct ag_node *n)
{
	struct ag_hook_list *l;
	pthread_mutexattr_t attr;

	pthread_mutex_lock(&alloc_lock);
	l = atomic_load_explicit(&n->hooks, memory_order_relaxed);
	if (!l) {
		l = ag__calloc(1, sizeof(*l));
		if (l) {
			pthread_mutexattr_init(&attr);
			pthread_mutexattr_settype(&attr,
						  PTHREAD_MUTEX_RECURSIVE);
			pthread_mutex_init(&l->lock, &attr);
			pthread_mutexattr_destroy(&attr);
			atomic_store_explicit(&n->hooks, l,
					      memory_order_release);
		}
	}
	pthread_mutex_unlock(&alloc_lock);
	return l;
}

/* Appends h to the hooks of e.node, slot e.input_nr. */
static int attach(struct ag_edge e, struct ag_hook *h)
{
	struct ag_hook_list *l = hook_list(e.node);
	struct ag_hook **last;

	if (!l)
		return ag__err_last();
	h->node = e.node;
	h->slot = e.input_nr;
	pthread_mutex_lock(&l->lock);
	for (last = &l->head; *last; last = &(*last)->next)
		;
	*last = h;
	pthread_mutex_unlock(&l->lock);
	return 0;
}

void ag__hooks_free(struct ag_node *n)
{
	struct ag_hook_list *l =
		atomic_load_explicit(&n->hooks, memory_order_acquire);
	struct ag_hook *h, *hn;

	if (!l)
		return;
	for (h = l->head; h; h = hn) {
		hn = h->next;
		h->next = NULL;
		h->node = NULL;
		hook_put(h);
	}
	pthread_mutex_destroy(&l->lock);
	ag__mfree(l);
	atomic_store_explicit(&n->hooks, NULL, memory_order_relaxed);
}

struct ag_hook *ag_tensor_register_hook(struct ag_tensor *t,
					ag_tensor_hook_fn fn, void *arg)
{
	struct ag_hook *h;
	struct ag_edge e;

	if (!t) {
		ag__err_null("ag_tensor_register_hook", "t");
		return NULL;
	}
	if (!fn) {
		ag__err(AG_EINVAL, "ag_tensor_register_hook: fn is NULL");
		return NULL;
	}
	if (!ag__requires_grad(t)) {
		ag__err(AG_EINVAL,
			"ag_tensor_register_hook: cannot register a hook on a tensor that doesn't require gradient");
		return NULL;
	}
	e = ag__grad_edge(t);
	if (!e.node)
		return NULL;
	h = hook_new(fn, arg, 2);
	if (!h)
		return NULL;
	if (attach(e, h)) {
		atomic_store(&h->refs, 1);
		hook_put(h);
		return NULL;
	}
	return h;
}

struct ag_hook *ag_tensor_register_post_accumulate_grad_hook(
	struct ag_tensor *t, ag_post_accumulate_grad_hook_fn fn, void *arg)
{
	const char *fn_name = "ag_tensor_register_post_accumulate_grad_hook";
	struct ag_hook *h;
	struct ag_edge e;

	if (!t) {
		ag__err_null(fn_name, "t");
		return NULL;
	}
	if (!fn) {
		ag__err(AG_EINVAL, "%s: fn is NULL", fn_name);
		return NULL;
	}
	if (!ag__requires_grad(t)) {
		ag__err(AG_EINVAL,
			"%s: cannot register a hook on a tensor that doesn't require gradient",
			fn_name);
		return NULL;
	}
	if (!ag_tensor_is_leaf(t)) {
		ag__err(AG_EINVAL,
			"%s: post accumulate grad hooks cannot be registered on non-leaf tensors",
			fn_name);
		return NULL;
	}
	e = ag__grad_edge(t);
	if (!e.node)
		return NULL;
	h = hook_new(NULL, arg, 2);
	if (!h)
		return NULL;
	h->post_fn = fn;
	if (attach(e, h)) {
		atomic_store(&h->refs, 1);
		hook_put(h);
		return NULL;
	}
	return h;
}

/*
 * Under the list's lock, as the pre-hooks: a remove during the backward
 * only sets the flag, and the recursive lock lets a hook register another.
 */
int ag__run_post_hooks(struct ag_node *n, struct ag_tensor *grad)
{
	struct ag_hook_list *l =
		atomic_load_explicit(&n->hooks, memory_order_acquire);
	char msg[512];
	struct ag_hook *h;
	unsigned seq;
	int rc = 0;

	pthread_mutex_lock(&l->lock);
	for (h = l->head; h && !rc; h = h->next) {
		if (!h->post_fn ||
		    atomic_load_explicit(&h->removed, memory_order_acquire))
			continue;
		seq = ag__err_seq();
		rc = h->post_fn(grad, h->arg);
		if (!rc)
			continue;
		/* failed without saying why: an older error is not its own */
		if (ag__err_seq() == seq || !ag_errcode())
			ag__err(AG_EINVAL, "returned %d with no error set", rc);
		snprintf(msg, sizeof(msg), "%s", ag_errmsg());
		rc = ag__err(ag_errcode(),
			     "a post-accumulate-grad hook on %s failed: %s",
			     n->ops->name, msg);
	}
	pthread_mutex_unlock(&l->lock);
	return rc;
}

void ag_hook_remove(struct ag_hook *h)
{
	if (!h)
		return;
	atomic_store_explicit(&h->removed, true, memory_order_release);
	hook_put(h);
}

int ag_tensor_retain_grad(struct ag_tensor *t)
{
	struct ag_grad_cell *c;
	struct ag_hook *h;
	struct ag_edge e;
	int rc;

	if (!t)
		return ag__err_null("ag_tensor_retain_grad", "t");
	if (!ag__requires_grad(t))
		return ag__err(
			AG_EINVAL,
			"ag_tensor_retain_grad: can't retain_grad on a tensor that doesn't require gradient");
	if (ag_tensor_is_leaf(t) || t->meta->retains_grad)
		return 0; /* a leaf keeps .grad anyway */
	c = ag__meta_cell(t->meta);
	if (!c)
		return ag__err_last();
	h = hook_new(NULL, NULL, 1);
	if (!h)
		return ag__err_last();
	ag__cell_get(c);
	h->cell = c;
	e = ag__grad_edge(t);
	rc = attach(e, h);
	if (rc) {
		hook_put(h);
		return rc;
	}
	t->meta->retains_grad = true;
	return 0;
}
