// SPDX-License-Identifier: MIT
/*
 * AccumulateGrad: the node of a leaf that requires grad.  It sums the
 * incoming gradient into the leaf's grad cell.  Without create_graph it
 * steals a gradient nothing else holds, or adds in place into .grad; with
 * create_graph the sum is recorded so .grad stays differentiable.
 */
#include <string.h>

#include <ag/mode.h>

#include <ag/ops.h>

#include "graph.h"

struct acc_node {
	struct ag_node node;
	struct ag_grad_cell *cell; /* the leaf's .grad, shared with it */
};

static int accumulate_apply(struct ag_node *n, struct ag_tensor **grads,
			    struct ag_tensor **out)
{
	struct ag_grad_cell *c =
		ag_container_of(n, struct acc_node, node)->cell;
	struct ag_tensor *g = grads[0], *old, *sum = NULL, *post;
	int rc = 0;

	(void)out;
	if (!g)
		return 0;
	pthread_mutex_lock(&c->lock);
	old = c->grad;
	if (c->orphan) {
		/* the leaf is gone: nobody can read its .grad */
	} else if (!old) {
		if (ag__mode.grad || ag__exclusive(g)) {
			c->grad = g; /* keep its graph under create_graph */
			grads[0] = NULL;
		} else {
			c->grad = ag__contiguous_copy(g);
			rc = c->grad ? 0 : ag__err_last();
		}
	} else if (!ag__mode.grad && !old->meta) {
		/* .grad += g, seen by whoever holds .grad, as in torch */
		ag__acc_into(old, g);
		ag__storage_bump(old->storage, "AccumulateGrad");
	} else {
		sum = ag_add(old, g);
		if (sum) {
			c->grad = sum;
			ag_tensor_put(old);
		} else {
			rc = -ag_errcode();
		}
	}
	/* the hooks see the sum, not a tensor another thread may replace */
	post = !rc && !c->orphan &&
			       atomic_load_explicit(&n->hooks,
						    memory_order_acquire) ?
		       ag_tensor_get(c->grad) :
		       NULL;
	pthread_mutex_unlock(&c->lock);
	if (post) {
		rc = ag__run_post_hooks(n, post);
		ag_tensor_put(post);
	}
	return rc;
}

static void accumulate_destroy(struct ag_node *n)
{
	ag__cell_put(ag_container_of(n, struct acc_node, node)->cell);
}

const struct ag_node_ops ag__accumulate_ops = {
	.name = "AccumulateGrad",
	.apply = accumulate_apply,
	.destroy = accumulate_destroy,
};

struct ag_node *ag__accumulate_new(struct ag_tensor *t, struct ag_grad_cell *c)
{
	struct acc_node *a = (struct acc_node *)ag__node_alloc(
		&ag__accumulate_ops, sizeof(*a), 0, 1, 0, NULL, 0);

	if (!a)
		return NULL;
	ag__cell_get(c);
	a->cell = c;
	a->node.in_meta[0].dtype = t->dtype;
	a->node.in_meta[0].ndim = t->ndim;
	ag__dims_copy(a->node.in_meta[0].shape, t->shape, t->ndim);
	return &a->node;
}
