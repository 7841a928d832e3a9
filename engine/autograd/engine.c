// SPDX-License-Identifier: MIT
/*
 * The backward engine.
 *
 * A graph task first walks the graph from the roots (iteratively) and counts,
 * for every reachable node, the edges that point at it.  A node runs when its
 * count reaches zero: by then its input slots hold the sum of every gradient
 * sent to it.  The task keeps each node's state in a dense array in the
 * order the count claimed them; a node it claimed holds its index, so the
 * hot path does no lookups, and a node claimed by another task running
 * concurrently is found through a small table of its own.
 *
 * A long graph is out of cache by the time it runs backward, and both
 * walks would wait on a miss per node: the count prefetches the nodes that
 * jump pointers (ag_node.hint) name, the run prefetches the nodes claimed
 * a little after the running one.  docs/engine.md has the figures.
 *
 * Ready nodes run on the work-stealing pool (engine/pool): the thread whose
 * decrement brings a node's count to zero runs it next, so a serial chain
 * never touches a deque; further ready nodes are submitted for thieves.
 * The caller runs the first root itself and then waits on the task's
 * group, helping only with this graph.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <ag/mode.h>
#include <ag/ops.h>

#include "graph.h"
#include "lib/env.h"
#include "lib/ptrvec.h"

struct capture {
	struct ag_node *node;
	int slot;
	struct ag_tensor *grad;
};

/* A function ag_queue_callback() queued to run when the backward ends. */
struct callback {
	ag_backward_callback_fn fn;
	void *arg;
};

/* A node claimed by another task: where this task keeps its state. */
struct foreign {
	struct ag_node *node;
	uint32_t idx;
};

/*
 * Per-node state, in claim order, in chunks that never move (a ready
 * node's task is on a deque by address).  Dense: the count pass writes it
 * as one stream, and nodes stay small.
 */
#define STATE_SHIFT 8
#define STATE_CHUNK (1u << STATE_SHIFT)

/* Field tags (T, C, A, R, L): the legend in graph.h. */
struct ag_graph_task {
	bool retain; /* T */
	bool create; /* T */
	bool prune; /* T: ag_grad: only nodes on a path to the inputs */
	bool allow_unused; /* T */
	bool deterministic; /* T: sum each slot's gradients in a fixed order */
	struct ag_node **nodes; /* C: every node this task reached */
	size_t n, cap; /* C */
	atomic_size_t unclaimed; /* A: nodes run_node handed back already */
	struct ag_group group; /* A: the pool's own */
	struct ag_tls_mode mode; /* T: installed on whoever runs a node */
	atomic_int err; /* A: first error, cancels the rest */
	char errmsg[512]; /* the thread whose CAS set err, once */
	struct capture *caps; /* T; caps[i].grad: R of caps[i].node */
	int ncaps; /* T */
	struct ag_node_state **chunks; /* C: state of nodes[i]: state_at(i) */
	void **chunk_mem; /* C: the blocks behind chunks, to free */
	size_t nchunks, chunks_cap; /* C */
	/* C: nodes claimed by another task: open addressing */
	struct foreign *tab;
	size_t tab_cap, tab_n; /* C */
	/* ag_queue_callback(): appended from any thread running a node */
	atomic_bool cb_busy; /* A: spin lock: held for an append or a read */
	struct callback *cbs; /* under cb_busy */
	int ncbs; /* under cb_busy */
	size_t cbs_cap; /* under cb_busy */
};

/*
 * The graph task whose node (or callback) this thread is running, for
 * ag_queue_callback().  Set by run_from and run_callbacks, restored after:
 * a backward started inside a hook has its own.
 */
static AG_TLS struct ag_graph_task *cur_task;

static inline struct ag_node_state *state_at(struct ag_graph_task *gt,
					     uint32_t idx)
{
	return &gt->chunks[idx >> STATE_SHIFT][idx & (STATE_CHUNK - 1)];
}

/*
 * Doubles a full array, from 64 elements.  From ag__alloc, which keeps
 * freed blocks: a long graph's arrays span hundreds of kilobytes, and from
 * malloc they were fresh pages, faulting in on every backward.  Freed with
 * ag__free.
 */
static int grow(void **arr, size_t *cap, size_t elem)
{
	return ag__array_grow(arr, cap, *cap ? *cap + 1 : 64, elem);
}

static size_t hash_ptr(const void *p, size_t cap)
{
	uint64_t x = (uint64_t)(uintptr_t)p;

	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return (size_t)x & (cap - 1);
}

static struct foreign *foreign_slot(struct foreign *t, size_t cap,
				    struct ag_node *n)
{
	size_t i = hash_ptr(n, cap);

	while (t[i].node && t[i].node != n)
		i = (i + 1) & (cap - 1);
	return &t[i];
}

static struct foreign *foreign_find(struct ag_graph_task *gt, struct ag_node *n)
{
	struct foreign *f;

	if (!gt->tab_n)
		return NULL;
	f = foreign_slot(gt->tab, gt->tab_cap, n);
	return f->node ? f : NULL;
}

/* Records that n's state is state_at(idx); -AG_ENOMEM. */
static int foreign_add(struct ag_graph_task *gt, struct ag_node *n,
		       uint32_t idx)
{
	struct foreign *f;

	if ((gt->tab_n + 1) * 2 > gt->tab_cap) {
		size_t oc = gt->tab_cap, nc = oc ? oc * 2 : 16;
		struct foreign *t = ag__calloc(nc, sizeof(*t));

		if (!t)
			return -AG_ENOMEM;
		for (size_t k = 0; k < oc; k++)
			if (gt->tab[k].node)
				*foreign_slot(t, nc, gt->tab[k].node) =
					gt->tab[k];
		ag__mfree(gt->tab);
		gt->tab = t;
		gt->tab_cap = nc;
	}
	f = foreign_slot(gt->tab, gt->tab_cap, n);
	f->node = n;
	f->idx = idx;
	gt->tab_n++;
	return 0;
}

static inline struct ag_node_state *state_of(struct ag_graph_task *gt,
					     struct ag_node *n)
{
	struct foreign *f;

	if (atomic_load_explicit(&n->task, memory_order_relaxed) == gt)
		return state_at(gt, n->idx);
	f = foreign_find(gt, n);
	return f ? state_at(gt, f->idx) : NULL;
}

/* cur_task: run_node runs only inside run_from, which sets it. */
bool ag__grad_wanted(const struct ag_node *n, int i)
{
	struct ag_graph_task *gt = cur_task;
	struct ag_node *c = n->next[i].node;
	struct ag_node_state *cs;

	if (!c)
		return false;
	if (!gt)
		return true;
	cs = state_of(gt, c);
	/* what the engine would drop after apply: see run_node */
	return cs && cs->needed &&
	       !(gt->prune && c->ops == &ag__accumulate_ops && !cs->capture);
}

static void state_init(struct ag_node_state *st, uint32_t idx)
{
	atomic_store_explicit(&st->deps, 0, memory_order_relaxed);
	st->idx = idx;
	st->needed = true;
	st->capture = false;
	st->queued = false;
	st->done = false;
	atomic_flag_clear_explicit(&st->lock, memory_order_relaxed);
	st->inbuf_one = NULL;
	st->inbuf = &st->inbuf_one;
	st->contribs = NULL;
}

/* Room for state number idx; -AG_ENOMEM. */
static int state_room(struct ag_graph_task *gt, uint32_t idx)
{
	size_t cap = gt->chunks_cap;
	void *mem;

	if (idx >> STATE_SHIFT < gt->nchunks)
		return 0;
	if (gt->nchunks == cap &&
	    (grow((void **)&gt->chunks, &cap, sizeof(*gt->chunks)) ||
	     grow((void **)&gt->chunk_mem, &gt->chunks_cap,
		  sizeof(*gt->chunk_mem))))
		return -AG_ENOMEM;
	/*
	 * ag__alloc keeps freed blocks this size, where fresh pages would
	 * fault in on every backward; aligned here to whole lines.
	 */
	mem = ag__alloc(STATE_CHUNK * sizeof(struct ag_node_state) +
			AG_CACHE_LINE);
	if (!mem)
		return -AG_ENOMEM;
	gt->chunk_mem[gt->nchunks] = mem;
	gt->chunks[gt->nchunks++] =
		(void *)(((uintptr_t)mem + AG_CACHE_LINE - 1) &
			 ~(uintptr_t)(AG_CACHE_LINE - 1));
	return 0;
}

/* Visits n for the first time in this task; NULL with an error on OOM. */
static struct ag_node_state *claim(struct ag_graph_task *gt, struct ag_node *n)
{
	struct ag_graph_task *expected = NULL;
	uint32_t idx = (uint32_t)gt->n;
	struct ag_node_state *st;

	if (gt->n >= UINT32_MAX) {
		ag__err(AG_ENOMEM, "backward: more than %u nodes", UINT32_MAX);
		return NULL;
	}
	if (gt->n == gt->cap &&
	    grow((void **)&gt->nodes, &gt->cap, sizeof(*gt->nodes)))
		return NULL;
	if (state_room(gt, idx))
		return NULL;
	st = state_at(gt, idx);
	state_init(st, idx);
	if (n->num_inputs > 1) {
		st->inbuf = ag__calloc(n->num_inputs, sizeof(*st->inbuf));
		if (!st->inbuf)
			return NULL;
	}
	if (atomic_compare_exchange_strong_explicit(&n->task, &expected, gt,
						    memory_order_acquire,
						    memory_order_relaxed)) {
		n->idx = idx;
	} else if (foreign_add(gt, n, idx)) {
		if (st->inbuf != &st->inbuf_one)
			ag__mfree(st->inbuf);
		return NULL;
	}
	gt->nodes[gt->n++] = n;
	__builtin_prefetch(n->next); /* its edges are read next */
	return st;
}

/*
 * A node that ran is done with this task: hand it back at once, while it
 * is still in cache, so task_cleanup need not visit every node again.  No
 * one in this task looks at its state after this (its senders have all
 * sent), so a concurrent task may claim it.
 */
static void unclaim(struct ag_graph_task *gt, struct ag_node *n,
		    struct ag_node_state *st)
{
	if (st->inbuf != &st->inbuf_one)
		ag__mfree(st->inbuf);
	st->inbuf = &st->inbuf_one;
	st->done = true;
	if (atomic_load_explicit(&n->task, memory_order_relaxed) == gt)
		atomic_store_explicit(&n->task, NULL, memory_order_release);
	atomic_fetch_add_explicit(&gt->unclaimed, 1, memory_order_relaxed);
}

static void contribs_free(struct ag_node_state *st);

static void task_cleanup(struct ag_graph_task *gt)
{
	bool all = atomic_load_explicit(&gt->unclaimed, memory_order_relaxed) ==
		   gt->n;

	for (size_t i = 0; i < gt->n && !all; i++) {
		struct ag_node *n = gt->nodes[i];
		struct ag_node_state *st = state_at(gt, (uint32_t)i);

		if (st->done)
			continue; /* unclaimed by run_node */
		for (int k = 0; k < n->num_inputs; k++) {
			ag_tensor_put(st->inbuf[k]);
			st->inbuf[k] = NULL;
		}
		if (st->inbuf != &st->inbuf_one)
			ag__mfree(st->inbuf);
		st->inbuf = &st->inbuf_one;
		contribs_free(st);
		if (atomic_load_explicit(&n->task, memory_order_relaxed) == gt)
			atomic_store_explicit(&n->task, NULL,
					      memory_order_release);
	}
	for (int i = 0; i < gt->ncaps; i++)
		ag_tensor_put(gt->caps[i].grad);
	for (size_t i = 0; i < gt->nchunks; i++)
		ag__free(gt->chunk_mem[i]);
	ag__free(gt->chunks);
	ag__free(gt->chunk_mem);
	ag__free(gt->nodes);
	ag__mfree(gt->caps);
	ag__mfree(gt->tab);
	ag__free(gt->cbs);
}

/* Counts the edges into every node reachable from the roots. */
static int count_deps(struct ag_graph_task *gt, struct ag_node **roots,
		      int nroots)
{
	struct ag__ptrvec stack = { 0 };

	for (int i = 0; i < nroots; i++) {
		if (state_of(gt, roots[i]))
			continue;
		if (!claim(gt, roots[i]) || ag__ptrvec_push(&stack, roots[i]))
			goto oom;
	}
	while (stack.n) {
		struct ag_node *n = ag__ptrvec_pop(&stack);

		/* nodes a few steps down the walk (a 256-byte block) */
		if (n->hint)
			ag__prefetch_span(n->hint, 240, 1);
		/*
		 * Claiming is a locked instruction, which holds later loads
		 * back: start every child's lines before the first claim.
		 */
		for (int i = 0; i < n->num_next && i < 4; i++)
			if (n->next[i].node)
				ag__prefetch_span(n->next[i].node,
						  sizeof(struct ag_node), 1);
		for (int i = 0; i < n->num_next; i++) {
			struct ag_node *c = n->next[i].node;
			struct ag_node_state *st;

			if (!c)
				continue;
			st = state_of(gt, c);
			if (!st) {
				st = claim(gt, c);
				if (!st || ag__ptrvec_push(&stack, c))
					goto oom;
			}
			/* only this thread touches deps until the run pass */
			atomic_store_explicit(
				&st->deps,
				atomic_load_explicit(&st->deps,
						     memory_order_relaxed) +
					1,
				memory_order_relaxed);
		}
	}
	ag__ptrvec_free(&stack);
	return 0;
oom:
	ag__ptrvec_free(&stack);
	return ag__err_last();
}

static int cmp_seq(const void *a, const void *b)
{
	const struct ag_node *x = *(struct ag_node *const *)a;
	const struct ag_node *y = *(struct ag_node *const *)b;

	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * ag_grad: keep only nodes with a path to a captured slot, and recount the
 * dependencies among them.  Edges always point to older nodes, so sequence
 * order is a topological order.  Sorts a copy: nodes[i] must stay the
 * node whose state is state_at(i).
 */
static int prune(struct ag_graph_task *gt)
{
	struct ag_node **order = ag__calloc(gt->n, sizeof(*order));

	if (!order)
		return -AG_ENOMEM;
	memcpy(order, gt->nodes, gt->n * sizeof(*order));
	qsort(order, gt->n, sizeof(*order), cmp_seq);
	for (size_t i = 0; i < gt->n; i++) {
		struct ag_node *n = order[i];
		struct ag_node_state *st = state_of(gt, n);

		st->needed = st->capture;
		atomic_store_explicit(&st->deps, 0, memory_order_relaxed);
		for (int k = 0; k < n->num_next && !st->needed; k++) {
			struct ag_node *c = n->next[k].node;

			st->needed = c && state_of(gt, c)->needed &&
				     !(c->ops == &ag__accumulate_ops &&
				       !state_of(gt, c)->capture);
		}
	}
	ag__mfree(order);
	for (size_t i = 0; i < gt->n; i++) {
		struct ag_node *n = gt->nodes[i];

		if (!state_of(gt, n)->needed)
			continue;
		for (int k = 0; k < n->num_next; k++) {
			struct ag_node *c = n->next[k].node;

			if (c && state_of(gt, c)->needed)
				atomic_fetch_add_explicit(
					&state_of(gt, c)->deps, 1,
					memory_order_relaxed);
		}
	}
	return 0;
}

static void node_task_run(struct ag_task *t);

/* Drops the kept gradients of a node that will not run (errors). */
static void contribs_free(struct ag_node_state *st)
{
	struct ag_contribs *c = st->contribs;

	if (!c)
		return;
	for (int k = 0; k < c->n; k++)
		ag_tensor_put(c->v[k].grad);
	ag__free(c->v);
	ag__mfree(c);
	st->contribs = NULL;
}

/* Keeps g for slot until the node is ready; takes over g. */
static int contrib_add(struct ag_node_state *st, uint64_t key, int slot,
		       struct ag_tensor *g)
{
	struct ag_contribs *c = st->contribs;

	if (!c) {
		c = ag__calloc(1, sizeof(*c));
		if (!c) {
			ag_tensor_put(g);
			return -AG_ENOMEM;
		}
		st->contribs = c;
	}
	if ((size_t)c->n == c->cap &&
	    grow((void **)&c->v, &c->cap, sizeof(*c->v))) {
		ag_tensor_put(g);
		return -AG_ENOMEM;
	}
	c->v[c->n++] = (struct ag_grad_contrib){ key, slot, g };
	return 0;
}

static int cmp_contrib(const void *a, const void *b)
{
	const struct ag_grad_contrib *x = a, *y = b;

	return x->key < y->key ? -1 : x->key > y->key;
}

/* Sums the kept gradients in key order: the same bits for any schedule. */
static int contrib_flush(struct ag_node_state *st)
{
	struct ag_contribs *c = st->contribs;
	int rc = 0;

	qsort(c->v, c->n, sizeof(*c->v), cmp_contrib);
	for (int k = 0; k < c->n; k++) {
		if (!rc)
			rc = ag__grad_sum_into(&st->inbuf[c->v[k].slot],
					       c->v[k].grad);
		else
			ag_tensor_put(c->v[k].grad);
	}
	c->n = 0; /* the sums took the references */
	contribs_free(st);
	return rc;
}

/* Hands a ready node on: run it next on this thread, or to the pool. */
static void schedule(struct ag_graph_task *gt, struct ag_node_state *st,
		     struct ag_node **next)
{
	if (next && !*next) {
		*next = gt->nodes[st->idx];
		return;
	}
	ag__task_init(&st->task, node_task_run);
	ag__group_submit(&gt->group, &st->task);
}

static bool has_nonfinite(struct ag_tensor *t)
{
	for (int64_t i = 0; i < t->numel; i++)
		if (!isfinite(ag__get(t, i)))
			return true;
	return false;
}

static int check_grad(struct ag_node *n, int i, struct ag_tensor *g,
		      const struct ag_input_meta *want)
{
	struct ag__shape_str a, b;

	if (g->dtype == want->dtype && g->ndim == want->ndim &&
	    ag__shape_eq(g->ndim, g->shape, want->shape))
		return 0;
	return ag__err(
		AG_ESHAPE,
		"%s returned an invalid gradient at index %d: got %s %s but expected %s %s",
		n->ops->name, i, ag_dtype_name(g->dtype), ag__shape_of(&a, g),
		ag_dtype_name(want->dtype),
		ag__shape_fmt(&b, want->ndim, want->shape));
}

static int run_hooks(struct ag_node *n, struct ag_tensor **grads);

/*
 * Prefetch distances, in nodes of the run order: first the node itself,
 * then (closer) the fields it points to, which need the node's line to
 * have arrived, then (closest) its first saved tensor's storage, which
 * needs those.  Each step of the chain waits on one miss of the last.
 */
#define AHEAD_NODE 24
#define AHEAD_FIELDS 16
#define AHEAD_SAVED 8

/*
 * Nodes run in about the order the count pass claimed them, and a long
 * graph is out of cache by now: load the nodes a little ahead of this one
 * in three steps, each reading what the one before brought in.
 */
AG_PREFETCH_FN prefetch_ahead(struct ag_graph_task *gt, uint32_t idx)
{
	struct ag_node *m;

	if (idx + AHEAD_NODE < gt->n) {
		m = gt->nodes[idx + AHEAD_NODE];
		ag__prefetch_span(m, sizeof(*m), 0);
	}
	if (idx + AHEAD_FIELDS < gt->n) {
		m = gt->nodes[idx + AHEAD_FIELDS];
		__builtin_prefetch(state_at(gt, idx + AHEAD_FIELDS), 1);
		__builtin_prefetch(m->next);
		__builtin_prefetch(m->in_meta);
		__builtin_prefetch(m->saved);
	}
	/* the slot may be being released by whoever runs m: atomic peeks */
	if (idx + AHEAD_SAVED < gt->n) {
		m = gt->nodes[idx + AHEAD_SAVED];
		if (m->num_saved &&
		    __atomic_load_n(&m->saved[0].compact, __ATOMIC_RELAXED)) {
			const char *sp = (const char *)__atomic_load_n(
				&m->saved[0].storage, __ATOMIC_RELAXED);

			/* the header, and a small tensor's data after it */
			__builtin_prefetch(sp);
			__builtin_prefetch(sp + AG_CACHE_LINE);
		}
	}
}

static int run_node(struct ag_graph_task *gt, struct ag_node *n,
		    struct ag_node **next)
{
	struct ag_node_state *st = state_of(gt, n);
	struct ag_tensor *small[8], **out = small;
	bool acc = n->ops == &ag__accumulate_ops;
	bool last;
	int rc = 0;

	if (!acc && atomic_load_explicit(&n->released, memory_order_acquire))
		return ag__err_freed(n);
	if (atomic_load_explicit(&n->hooks, memory_order_acquire)) {
		rc = run_hooks(n, st->inbuf);
		if (rc)
			return rc;
	}
	if (st->capture) {
		for (int i = 0; i < gt->ncaps; i++)
			if (gt->caps[i].node == n)
				gt->caps[i].grad = ag_tensor_get(
					st->inbuf[gt->caps[i].slot]);
	}
	if (gt->prune && acc)
		return 0; /* ag_grad never touches .grad */
	prefetch_ahead(gt, st->idx);
	/*
	 * The children were last touched when the dependencies were counted
	 * and are out of cache by now: start their loads while apply runs.
	 */
	for (int i = 0; i < n->num_next && i < 4; i++) {
		struct ag_node *c = n->next[i].node;

		if (c)
			__builtin_prefetch(&c->in_meta);
	}
	if (n->num_next > 8) {
		out = ag__calloc(n->num_next, sizeof(*out));
		if (!out)
			return -AG_ENOMEM;
	}
	memset(out, 0, sizeof(*out) * n->num_next);
	if (ag__trace_on()) {
		uint64_t t0 = ag__trace_now();

		rc = n->ops->apply(n, st->inbuf, out);
		ag__trace_slice(n->ops->name, t0, ag__trace_now());
	} else {
		rc = n->ops->apply(n, st->inbuf, out);
	}
	if (!acc && !gt->retain) {
		atomic_store_explicit(&n->released, true, memory_order_release);
		ag__node_release(n);
	}
	for (int i = 0; i < n->num_next && !rc; i++) {
		struct ag_node *c = n->next[i].node;
		struct ag_node_state *cs;

		if (!out[i])
			continue;
		rc = c ? check_grad(n, i, out[i],
				    &c->in_meta[n->next[i].input_nr]) :
			 0;
		if (!rc && ag__mode.anomaly && has_nonfinite(out[i]))
			rc = ag__err(
				AG_ENAN,
				"Function '%s' returned nan or inf values in its %dth output; the forward op that made it was %s",
				n->ops->name, i,
				n->fwd_op ? n->fwd_op : "unknown");
		if (rc || !c || !(cs = state_of(gt, c)) || !cs->needed)
			continue;
		/*
		 * The last sender to a slot is alone with it: every other
		 * sender has counted down (acquire: their sums are visible)
		 * and the node runs only after this one counts down too.
		 */
		last = atomic_load_explicit(&cs->deps, memory_order_acquire) ==
		       1;
		while (!last && atomic_flag_test_and_set_explicit(
					&cs->lock, memory_order_acquire))
			; /* held for one sum; contention is two branches */
		if (gt->deterministic)
			rc = contrib_add(cs, (n->seq << 16) | (uint64_t)i,
					 n->next[i].input_nr, out[i]);
		else
			rc = ag__grad_sum_into(&cs->inbuf[n->next[i].input_nr],
					       out[i]);
		if (!last)
			atomic_flag_clear_explicit(&cs->lock,
						   memory_order_release);
		out[i] = NULL;
	}
	for (int i = 0; i < n->num_next; i++) {
		struct ag_node *c = n->next[i].node;
		struct ag_node_state *cs;

		ag_tensor_put(out[i]);
		if (rc || !c || !(cs = state_of(gt, c)) || !cs->needed)
			continue;
		/* the last sender needs no locked decrement (see above) */
		if (atomic_load_explicit(&cs->deps, memory_order_acquire) == 1)
			atomic_store_explicit(&cs->deps, 0,
					      memory_order_relaxed);
		else if (atomic_fetch_sub_explicit(&cs->deps, 1,
						   memory_order_acq_rel) != 1)
			continue;
		if (cs->contribs)
			rc = contrib_flush(cs);
		if (rc)
			continue;
		/*
		 * A leaf with post-accumulate hooks runs at once, as torch
		 * runs AccumulateGrad first: its hooks start work that
		 * overlaps the rest of the backward (a data-parallel
		 * all-reduce), and queued behind this chain it would run
		 * only when the chain ends.  It has no next nodes.
		 */
		if (next && c->ops == &ag__accumulate_ops &&
		    atomic_load_explicit(&c->hooks, memory_order_acquire))
			rc = run_node(gt, c, NULL);
		else
			schedule(gt, cs, next);
	}
	if (out != small)
		ag__mfree(out);
	for (int k = 0; k < n->num_inputs; k++) {
		ag_tensor_put(st->inbuf[k]);
		st->inbuf[k] = NULL;
	}
	if (!rc)
		unclaim(gt, n, st);
	return rc;
}

static int check_hook_grad(struct ag_node *n, int slot, struct ag_tensor *r)
{
	const struct ag_input_meta *want = &n->in_meta[slot];
	struct ag__shape_str a, b;

	if (r->dtype == want->dtype && r->ndim == want->ndim &&
	    ag__shape_eq(r->ndim, r->shape, want->shape))
		return 0;
	return ag__err(
		AG_ESHAPE,
		"a tensor hook on %s (gradient slot %d) returned an invalid gradient: got %s %s but expected %s %s",
		n->ops->name, slot, ag_dtype_name(r->dtype),
		ag__shape_of(&a, r), ag_dtype_name(want->dtype),
		ag__shape_fmt(&b, want->ndim, want->shape));
}

/*
 * retain_grad: .grad = g the first time, .grad + g after that, as torch
 * accumulates a retained gradient across backward calls.
 */
static int retain_grad(struct ag_grad_cell *c, struct ag_tensor *g)
{
	struct ag_tensor *old, *r;

	pthread_mutex_lock(&c->lock);
	if (c->orphan) { /* the tensor is gone */
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	old = c->grad;
	if (!old)
		r = ag__mode.grad ? ag_tensor_get(g) : ag__contiguous_copy(g);
	else
		r = ag__grad_add(old, g);
	if (r) {
		c->grad = r;
		ag_tensor_put(old);
	}
	pthread_mutex_unlock(&c->lock);
	return r ? 0 : -ag_errcode();
}

/*
 * A hook returned NULL with an error it set: fail with its code and its
 * message, saying which hook.  fail() carries it to the thread that called
 * backward, from whichever thread ran the hook.
 */
static int hook_failed(struct ag_node *n, int slot)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "%s", ag_errmsg());
	return ag__err(ag_errcode(),
		       "a tensor hook on %s (gradient slot %d) failed: %s",
		       n->ops->name, slot, msg);
}

static int run_hooks(struct ag_node *n, struct ag_tensor **grads)
{
	struct ag_hook_list *l =
		atomic_load_explicit(&n->hooks, memory_order_acquire);
	struct ag_hook *h;
	unsigned seq;
	int rc = 0;

	pthread_mutex_lock(&l->lock);
	for (h = l->head; h && !rc; h = h->next) {
		struct ag_tensor *g = grads[h->slot], *r;

		if (h->removed || h->post_fn || !g)
			continue;
		if (!h->fn) {
			rc = retain_grad(h->cell, g);
			continue;
		}
		seq = ag__err_seq();
		r = h->fn(g, h->arg);
		/*
		 * NULL keeps the gradient, unless the hook set an error (with
		 * ag_set_error, or a library call in it failed) and did not
		 * clear it: then it failed.  An error from before the hook is
		 * not its own: the sequence number tells them apart.
		 */
		if (!r && ag__err_seq() != seq && ag_errcode())
			rc = hook_failed(n, h->slot);
		if (!r)
			continue;
		rc = check_hook_grad(n, h->slot, r);
		if (rc) {
			ag_tensor_put(r);
			break;
		}
		ag_tensor_put(g);
		grads[h->slot] = r;
	}
	pthread_mutex_unlock(&l->lock);
	return rc;
}

/* Validates a root and builds its seed gradient (a new reference). */
static int root_grad(const char *fn, struct ag_tensor *root,
		     struct ag_tensor *grad, int i, struct ag_tensor **out)
{
	struct ag__shape_str a, b;
	struct ag_tensor *g;

	if (!grad) {
		if (root->numel != 1)
			return ag__err(
				AG_ESCALAR,
				"%s: grad can be implicitly created only for scalar outputs; root %d has shape %s, pass a gradient of that shape",
				fn, i, ag__shape_of(&a, root));
		g = ag__tensor_new(fn, root->dtype, root->ndim, root->shape);
		if (!g)
			return ag__err_last();
		if (root->dtype == AG_F32)
			*(float *)g->storage->data = 1.0f;
		else
			*(double *)g->storage->data = 1.0;
		*out = g;
		return 0;
	}
	if (grad->ndim != root->ndim ||
	    !ag__shape_eq(root->ndim, grad->shape, root->shape))
		return ag__err(
			AG_ESHAPE,
			"%s: mismatch in shape: grad_output[%d] has %s %s and output[%d] has %s %s",
			fn, i, ag_dtype_name(grad->dtype),
			ag__shape_of(&a, grad), i, ag_dtype_name(root->dtype),
			ag__shape_of(&b, root));
	if (grad->dtype != root->dtype)
		return ag__err(
			AG_EDTYPE,
			"%s: mismatch in dtype: grad_output[%d] has a dtype of %s and output[%d] has a dtype of %s",
			fn, i, ag_dtype_name(grad->dtype), i,
			ag_dtype_name(root->dtype));
	*out = ag_tensor_get(grad);
	return 0;
}

static void fail(struct ag_graph_task *gt, int rc)
{
	int expected = 0;

	if (atomic_compare_exchange_strong_explicit(&gt->err, &expected, -rc,
						    memory_order_acq_rel,
						    memory_order_acquire))
		snprintf(gt->errmsg, sizeof(gt->errmsg), "%s", ag_errmsg());
}

/*
 * Runs n, then every node that became ready on the way, with the graph
 * task's modes installed and restored after.
 */
static void run_from(struct ag_graph_task *gt, struct ag_node *n)
{
	struct ag_tls_mode saved = ag__mode;
	struct ag_scope *scope = ag__scope_suspend();
	struct ag_graph_task *outer = cur_task;

	ag__mode = gt->mode;
	cur_task = gt;
	while (n) {
		struct ag_node *next = NULL;
		int rc;

		if (atomic_load_explicit(&gt->err, memory_order_acquire))
			break; /* cancelled: task_cleanup frees the buffers */
		rc = run_node(gt, n, &next);
		if (rc)
			fail(gt, rc);
		n = next;
	}
	cur_task = outer;
	ag__mode = saved;
	ag__scope_resume(scope);
}

/* A pool task: one ready node, and what it leads to (run_from). */
static void node_task_run(struct ag_task *t)
{
	struct ag_node_state *st =
		ag_container_of(t, struct ag_node_state, task);
	struct ag_graph_task *gt =
		ag_container_of(t->group, struct ag_graph_task, group);

	run_from(gt, gt->nodes[st->idx]);
}

static void cb_lock(struct ag_graph_task *gt)
{
	while (atomic_exchange_explicit(&gt->cb_busy, true,
					memory_order_acquire))
		;
}

static void cb_unlock(struct ag_graph_task *gt)
{
	atomic_store_explicit(&gt->cb_busy, false, memory_order_release);
}

int ag_queue_callback(ag_backward_callback_fn fn, void *arg)
{
	struct ag_graph_task *gt = cur_task;
	int rc;

	if (!fn)
		return ag__err(AG_EINVAL, "ag_queue_callback: fn is NULL");
	if (!gt)
		return ag__err(
			AG_EINVAL,
			"ag_queue_callback: no backward is running on this thread; call it from a hook, a custom function's backward or a backward callback");
	cb_lock(gt);
	rc = ag__array_grow((void **)&gt->cbs, &gt->cbs_cap,
			    (size_t)gt->ncbs + 1, sizeof(*gt->cbs));
	if (!rc)
		gt->cbs[gt->ncbs++] = (struct callback){ fn, arg };
	cb_unlock(gt);
	return rc ? ag__err(AG_ENOMEM, "ag_queue_callback: out of memory") : 0;
}

/*
 * After every node ran, on the calling thread: in order, including those
 * queued by a callback, until one fails.
 */
static int run_callbacks(struct ag_graph_task *gt)
{
	struct ag_graph_task *outer = cur_task;
	struct callback cb;
	char msg[512];
	unsigned seq;
	int rc = 0;

	cur_task = gt;
	for (int i = 0; !rc; i++) {
		cb_lock(gt);
		if (i >= gt->ncbs) {
			cb_unlock(gt);
			break;
		}
		cb = gt->cbs[i];
		cb_unlock(gt);
		seq = ag__err_seq();
		if (!cb.fn(cb.arg))
			continue;
		/* failed without saying why: an older error is not its own */
		if (ag__err_seq() == seq || !ag_errcode())
			ag__err(AG_EINVAL,
				"returned non-zero with no error set");
		snprintf(msg, sizeof(msg), "%s", ag_errmsg());
		rc = ag__err(ag_errcode(), "a backward callback failed: %s",
			     msg);
	}
	cur_task = outer;
	return rc;
}

static int wait_graph(struct ag_graph_task *gt)
{
	int err;

	ag__group_wait(&gt->group);
	err = atomic_load_explicit(&gt->err, memory_order_acquire);
	if (err)
		return ag__err(err, "%s", gt->errmsg);
	return 0;
}

/*
 * The core of ag_backward_many and ag_grad.  Roots' grad_fns are counted
 * first, then the root gradients are summed into their slots.
 */
static int run_backward(struct ag_graph_task *gt, const char *fn,
			struct ag_tensor *const *roots,
			struct ag_tensor *const *grads, int n)
{
	struct ag_node **rn = ag__calloc(n, sizeof(*rn));
	struct ag_node *first = NULL;
	struct ag_scope *scope;
	int rc = 0;

	if (!rn)
		return -AG_ENOMEM; /* ag__calloc set the error */
	ag__pool_enter(); /* no resize until wait_graph() has returned */
	ag__group_init(&gt->group);
	atomic_init(&gt->err, 0);
	gt->mode = (struct ag_tls_mode){ .grad = gt->create,
					 .anomaly = ag__mode.anomaly };
	for (int i = 0; i < n && !rc; i++) {
		struct ag_edge e;

		if (!roots[i]) {
			rc = ag__err_null(fn, "roots[i]");
			break;
		}
		if (!ag__requires_grad(roots[i])) {
			rc = ag__err(
				AG_ENOGRAD,
				"%s: element %d of tensors does not require grad and does not have a grad_fn",
				fn, i);
			break;
		}
		e = ag__grad_edge(roots[i]);
		if (!e.node)
			rc = ag__err_last();
		rn[i] = e.node;
	}
	if (!rc)
		rc = count_deps(gt, rn, n);
	for (int i = 0; i < gt->ncaps && !rc; i++) {
		struct ag_node_state *st = state_of(gt, gt->caps[i].node);

		if (st)
			st->capture = true;
		else if (!gt->allow_unused) /* fail before running anything */
			rc = ag__err(
				AG_EINVAL,
				"ag_grad: input %d appears to not have been used in the graph; set allow_unused if this is the desired behavior",
				i);
	}
	if (!rc && gt->prune)
		rc = prune(gt);
	scope = ag__scope_suspend();
	for (int i = 0; i < n && !rc; i++) {
		struct ag_edge e = ag__grad_edge(roots[i]);
		struct ag_node_state *st = state_of(gt, e.node);
		struct ag_tensor *g = NULL;

		rc = root_grad(fn, roots[i], grads ? grads[i] : NULL, i, &g);
		if (!rc && st->needed)
			rc = ag__grad_sum_into(&st->inbuf[e.input_nr], g);
		else
			ag_tensor_put(g);
	}
	/*
	 * Pick the ready roots before starting any: once one runs, a root
	 * reachable from it may reach zero and run on that thread.
	 */
	for (int i = 0; i < n && !rc; i++) {
		struct ag_node_state *st = state_of(gt, rn[i]);

		if (st->needed && !st->queued &&
		    atomic_load_explicit(&st->deps, memory_order_relaxed) == 0)
			st->queued = true;
		else
			rn[i] = NULL;
	}
	/*
	 * The caller runs the first ready root itself, rather than leave it
	 * on its deque for a woken worker to steal: the graph was just built
	 * on this thread and is in its caches.
	 */
	for (int i = 0; i < n && !rc; i++) {
		if (!rn[i])
			continue;
		if (!first)
			first = rn[i];
		else
			schedule(gt, state_of(gt, rn[i]), NULL);
	}
	if (first)
		run_from(gt, first);
	if (!rc)
		rc = wait_graph(gt);
	ag__pool_leave();
	if (!rc)
		rc = run_callbacks(gt);
	ag__scope_resume(scope);
	ag__mfree(rn);
	return rc;
}

/* AG_DETERMINISTIC=1 in the environment: read once. */
static bool env_deterministic(void)
{
	static atomic_int cached = -1;
	int v = atomic_load_explicit(&cached, memory_order_relaxed);

	if (v < 0) {
		v = ag__env_flag("AG_DETERMINISTIC");
		atomic_store_explicit(&cached, v, memory_order_relaxed);
	}
	return v;
}

int ag_backward_many(struct ag_tensor *const *roots,
		     struct ag_tensor *const *grads, int n,
		     const struct ag_backward_opts *o)
{
	struct ag_graph_task gt = { 0 };
	int rc;

	if (!roots || n <= 0)
		return ag__err(
			AG_EINVAL,
			"ag_backward_many: need at least one root, got %d",
			roots ? n : 0);
	gt.retain = o && (o->retain_graph || o->create_graph);
	gt.create = o && o->create_graph;
	gt.deterministic = (o && o->deterministic) || env_deterministic();
	rc = run_backward(&gt, "ag_backward", roots, grads, n);
	task_cleanup(&gt);
	return rc;
}

int ag_backward(struct ag_tensor *root, struct ag_tensor *grad,
		const struct ag_backward_opts *o)
{
	if (!root)
		return ag__err_null("ag_backward", "root");
	return ag_backward_many(&root, grad ? &grad : NULL, 1, o);
}

int ag_grad(struct ag_tensor *const *outputs,
	    struct ag_tensor *const *grad_outputs, int nout,
	    struct ag_tensor *const *inputs, int nin, struct ag_tensor **grads,
	    const struct ag_grad_opts *o)
{
	struct ag_graph_task gt = { 0 };
	int rc = 0;

	if (!outputs || nout <= 0 || !inputs || nin <= 0 || !grads)
		return ag__err(
			AG_EINVAL,
			"ag_grad: need outputs, inputs and a grads array (nout %d, nin %d)",
			nout, nin);
	for (int i = 0; i < nin; i++)
		grads[i] = NULL;
	gt.retain = o && (o->retain_graph || o->create_graph);
	gt.create = o && o->create_graph;
	gt.prune = true;
	gt.deterministic = (o && o->deterministic) || env_deterministic();
	gt.allow_unused = o && o->allow_unused;
	gt.caps = ag__calloc(nin, sizeof(*gt.caps));
	if (!gt.caps)
		return -AG_ENOMEM;
	gt.ncaps = nin;
	for (int i = 0; i < nin && !rc; i++) {
		struct ag_edge e;

		if (!inputs[i]) {
			rc = ag__err_null("ag_grad", "inputs[i]");
			break;
		}
		if (!ag__requires_grad(inputs[i])) {
			rc = ag__err(
				AG_ENOGRAD,
				"ag_grad: input %d does not require grad; every differentiated tensor must",
				i);
			break;
		}
		e = ag__grad_edge(inputs[i]);
		if (!e.node) {
			rc = ag__err_last();
			break;
		}
		gt.caps[i].node = e.node;
		gt.caps[i].slot = e.input_nr;
	}
	if (!rc)
		rc = run_backward(&gt, "ag_grad", outputs, grad_outputs, nout);
	for (int i = 0; i < nin && !rc; i++) {
		if (gt.caps[i].grad || (o && o->allow_unused))
			continue;
		rc = ag__err(
			AG_EINVAL,
			"ag_grad: input %d appears to not have been used in the graph; set allow_unused if this is the desired behavior",
			i);
	}
	if (!rc) {
		for (int i = 0; i < nin; i++) {
			grads[i] = ag__scope_add(gt.caps[i].grad);
			gt.caps[i].grad = NULL;
		}
	}
	task_cleanup(&gt);
	return rc;
}
