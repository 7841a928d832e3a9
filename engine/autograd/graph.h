/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_GRAPH_H
#define AG_ENGINE_GRAPH_H

/*
 * The backward graph.  A recorded op allocates a node embedded in an
 * op-specific struct (found with container_of), with edges to the nodes
 * that produced its inputs.  References point one way only, from outputs
 * towards leaves:
 *
 *   non-leaf tensor --grad_fn--> node --next--> node ... --> AccumulateGrad
 *   leaf tensor --grad_acc--> AccumulateGrad --cell--> grad cell <-- leaf
 *
 * The leaf's .grad lives in a small refcounted cell that both the leaf and
 * its AccumulateGrad hold, so the graph never points back at a tensor and
 * freeing is a plain refcount walk (iterative, see node_put).
 */
#include <pthread.h>

#include "../pool/pool.h"

#include <ag/autograd.h>

#include "../internal.h"

/*
 * Who writes each field of the structs below, and when (a tag at the start
 * of a field's comment, as kernel/workqueue.c does):
 *
 *   I: set while the op is recorded (or the struct is made) by one
 *      thread; read-only once the node is published as a grad_fn.
 *   A: atomic; any thread, with the order the code's comment gives.
 *   L: under the lock the struct names (the node state's spin flag, the
 *      grad cell's or the hook list's mutex).
 *   C: the count pass of a backward: only the thread that called
 *      ag_backward/ag_grad, before any node of the task runs.
 *   R: the one thread running the node (it won the node when its deps
 *      reached 0; the release that dropped them orders the writes before).
 *   T: the thread that called ag_backward/ag_grad, before the count pass
 *      or after the task's group has finished.
 */

struct ag_node;
struct ag_graph_task;

struct ag_edge {
	struct ag_node *node; /* I: NULL: that input needs no gradient */
	int input_nr; /* I */
};

/* What a gradient slot must look like (an output of the forward op). */
struct ag_input_meta {
	enum ag_dtype dtype;
	int ndim;
	int64_t shape[AG_MAX_DIMS];
};

/*
 * .grad of a leaf or a tensor that retains grad.  When the tensor dies its
 * cell is orphaned: the gradient is dropped and nothing is stored into it
 * any more.  Nobody can read it then, and a gradient built with
 * create_graph may lead back to the node that holds the cell: keeping it
 * would be a reference cycle.
 */
struct ag_grad_cell {
	atomic_long refcount; /* A */
	pthread_mutex_t lock;
	struct ag_tensor *grad; /* L */
	bool orphan; /* L */
};

struct ag_grad_cell *ag__cell_new(void);
void ag__cell_get(struct ag_grad_cell *c);
void ag__cell_put(struct ag_grad_cell *c);

/*
 * A tensor kept for backward.  For an op's own output (is_output) the node
 * keeps a plain alias sharing storage, never the tensor itself: the output
 * owns the node, so owning the output back would be a cycle.
 */
struct ag_saved {
	/*
	 * compact: an output that is all of its storage, dense, is kept as
	 * the storage alone; its dtype and shape are in_meta[output_nr].
	 * Unpacking makes the tensor.  That spares a tensor header per saved
	 * output between forward and backward.
	 */
	union {
		struct ag_tensor *t;
		struct ag_storage *storage; /* compact */
	};
	uint64_t version;
	bool is_output;
	bool defined;
	bool compact;
	int output_nr;
	const char *producer; /* name of the node whose output t is, or NULL */
};

/*
 * Pre-hooks on a gradient slot: user tensor hooks and retain_grad.  The
 * node's list owns one reference; a user hook's handle owns a second one,
 * dropped by ag_hook_remove(), so removing stays safe after the graph is
 * gone (hooks.c).
 */
struct ag_hook {
	struct ag_hook *next;
	struct ag_node *node; /* borrowed: the node the hook hangs on */
	int slot;
	ag_tensor_hook_fn fn; /* NULL: retain_grad into cell (unless post) */
	/* post-accumulate-grad hook: runs after the leaf's .grad was summed */
	ag_post_accumulate_grad_hook_fn post_fn;
	void *arg;
	struct ag_grad_cell *cell;
	atomic_bool removed;
	atomic_int refs;
};

/* A gradient sent to a slot, kept until the node is ready (deterministic). */
struct ag_grad_contrib {
	uint64_t key; /* sender's sequence number and edge: a fixed order */
	int slot;
	struct ag_tensor *grad;
};

/*
 * A node's hooks, allocated with the first one: most nodes never have any,
 * and every byte of a node counts against the cache in a long backward.
 * The lock is recursive, so a hook may register another hook on the node
 * that is running it.
 */
struct ag_hook_list {
	pthread_mutex_t lock;
	struct ag_hook *head; /* L: appended under lock */
};

/* Drops the node's references to its hooks (node_free). */
void ag__hooks_free(struct ag_node *n);
/*
 * Runs the post-accumulate-grad hooks of AccumulateGrad node n on the
 * leaf's .grad (borrowed); 0 or -AG_E* with the error set.
 */
int ag__run_post_hooks(struct ag_node *n, struct ag_tensor *grad);

/* Gradients kept per slot until the node is ready (deterministic mode). */
struct ag_contribs {
	struct ag_grad_contrib *v;
	int n;
	size_t cap;
};

/*
 * A node's state in one backward, one cache line: the count pass writes
 * these as a dense array and the run pass reads them in about that order.
 */
struct ag_node_state {
	struct ag_task task; /* C: runs the node on the pool */
	atomic_int deps; /* C counts up, then A: senders count down */
	uint32_t idx; /* C: the node is task->nodes[idx] */
	struct ag_contribs *contribs; /* L: deterministic mode, first use */
	struct ag_tensor **inbuf; /* C: num_inputs; &inbuf_one when 1 */
	struct ag_tensor *inbuf_one; /* L while senders sum, then R */
	atomic_flag lock; /* guards inbuf while gradients are summed */
	bool needed; /* C */
	bool capture; /* C: ag_grad reads a gradient slot here */
	bool queued; /* T: a ready root, started once */
	bool done; /* R: ran and handed back: cleanup skips it */
} __attribute__((aligned(AG_CACHE_LINE)));

struct ag_node_ops {
	const char *name;
	/*
	 * grads[num_inputs] in (NULL where no gradient arrived: treat as
	 * zero), out[num_next] to fill with new references (NULL: none).
	 * Returns 0 or -AG_E* with the error set.  Runs with grad mode on
	 * when the backward creates a graph.
	 */
	int (*apply)(struct ag_node *n, struct ag_tensor **grads,
		     struct ag_tensor **out);
	/* Drops op-specific state beyond the saved tensors; may be NULL. */
	void (*release)(struct ag_node *n);
	/*
	 * Drops op-specific resources the container points to; may be NULL.
	 * The container itself is freed by the core.
	 */
	void (*destroy)(struct ag_node *n);
	/* Names of the saved slots, in order, for ag_node_saved(). */
	const char *const *saved_names;
};

/*
 * Kept small (96 bytes): a long graph is walked twice per backward, and
 * the bytes it spans decide the cost per node.  Rarely used parts (hooks,
 * deterministic sums) hang off pointers, and the state of a running
 * backward lives with its graph task.
 */
struct ag_node {
	const struct ag_node_ops *ops; /* I */
	atomic_int refcount; /* A */
	uint32_t idx; /* C of the claiming task: its state there; see task */
	uint64_t seq; /* I */
	uint16_t mem_off; /* I: offset of the node in its container */
	atomic_bool released; /* A: saved tensors freed (R, or a user) */
	int num_inputs; /* I */
	int num_next; /* I */
	int num_saved; /* I */
	const char *fwd_op; /* I: the forward op that recorded it */
	struct ag_edge *next; /* I: num_next */
	union {
		struct ag_input_meta *in_meta; /* I: num_inputs */
		struct ag_node *reap_next; /* once dead: the free list */
	};
	struct ag_saved *saved; /* I: num_saved, inside the container */
	/* A: set once with the first hook, so the engine may peek */
	struct ag_hook_list *_Atomic hooks;
	/*
	 * The graph task that claimed the node keeps its state at index idx
	 * of a dense array: no lookup per edge.  A second task running over
	 * the same node at the same time finds its own index in a table.
	 */
	struct ag_graph_task *_Atomic task; /* A: claimed by CAS */
	/*
	 * The block of the node this thread recorded AG_HINT_DIST nodes
	 * before this one.  Backward reaches nodes in about the reverse of
	 * their recording order, so counting dependencies prefetches the
	 * hint: a walk that otherwise waits on one miss per node, wherever
	 * the allocator placed the blocks.  Only ever prefetched, never read:
	 * that node may be gone.
	 */
	const void *hint;
};

#define AG_HINT_DIST 16

/* what a long graph's footprint was measured with (docs/engine.md) */
_Static_assert(sizeof(void *) != 8 || sizeof(struct ag_node) <= 96,
	       "struct ag_node grew past 96 bytes");
_Static_assert(sizeof(struct ag_node_state) == 64,
	       "struct ag_node_state is one cache line");

/*
 * Allocates a container of `size` bytes whose struct ag_node is at offset
 * node_off, with room for the edge and input-meta arrays, and initialises
 * the node.  Saved slots live inside the container: pass their address.
 */
struct ag_node *ag__node_alloc(const struct ag_node_ops *ops, size_t size,
			       size_t node_off, int num_inputs, int num_next,
			       struct ag_saved *saved, int num_saved);
void ag__node_get(struct ag_node *n);
void ag__node_put(struct ag_node *n);

/* A leaf's AccumulateGrad node, summing into cell (accumulate.c). */
struct ag_node *ag__accumulate_new(struct ag_tensor *t, struct ag_grad_cell *c);
extern const struct ag_node_ops ag__accumulate_ops;

/*
 * Inside a node's apply: whether the engine will use the gradient for its
 * next edge i (false for an edge to nothing, and in ag_grad for one that
 * leads to no requested input, e.g. a weight when only the input's
 * gradient is asked for).  An op may skip computing an unwanted one
 * (torch's should_compute_output); true outside the engine.
 */
bool ag__grad_wanted(const struct ag_node *n, int i);

/* ---- summing gradients (grad_sum.c) ---- */

/* dst += src, same dtype and shape; dst exclusively owned, not recorded. */
void ag__acc_into(struct ag_tensor *dst, struct ag_tensor *src);
/*
 * a + b of one dtype and shape as a new tensor; through the recorded
 * ag_add when grad mode is on (create_graph), so the sum is differentiable.
 */
struct ag_tensor *ag__grad_add(struct ag_tensor *a, struct ag_tensor *b);
/*
 * *slot += g, taking over the reference to g.  In place when nothing else
 * can see the slot's tensor and no graph is being built.
 */
int ag__grad_sum_into(struct ag_tensor **slot, struct ag_tensor *g);

/* ---- autograd state of a tensor ---- */

struct ag_autograd_meta *ag__meta(struct ag_tensor *t); /* creates */
/* The tensor's grad cell (.grad), created on first use; NULL on OOM. */
struct ag_grad_cell *ag__meta_cell(struct ag_autograd_meta *m);

/* The node and input number a gradient for t flows to; node NULL if none. */
struct ag_edge ag__grad_edge(struct ag_tensor *t);

/* ---- recording (record.c) ---- */

/* True when an op over these inputs must be recorded. */
bool ag__should_record(struct ag_tensor *const *in, int n);
/*
 * Connects node n: edges to the inputs' gradient edges and n as grad_fn of
 * the outputs (output i gets output_nr i).  Takes over the caller's
 * reference to n.  Returns 0 or -AG_E*.
 */
int ag__record(struct ag_node *n, struct ag_tensor *const *in, int nin,
	       struct ag_tensor *const *out, int nout, const char *fwd_op);
/* Saves t (an input, or output `out_nr` of n if is_output). */
int ag__save(struct ag_node *n, int slot, struct ag_tensor *t, bool is_output,
	     int out_nr);
/*
 * Unpacks saved slot `slot` of n: checks it was not released nor modified
 * in place.  Returns a new reference; for a saved output under grad mode,
 * one whose grad_fn is n, so double backward flows through n.
 */
struct ag_tensor *ag__unpack(struct ag_node *n, int slot);
/*
 * The dense data of saved slot `slot`, with ag__unpack's checks but no
 * tensor made: 0 and *data set, 1 when the slot is not one dense span (or
 * not defined), or -AG_E* with the error set.
 */
int ag__saved_span(struct ag_node *n, int slot, const void **data);
/* Frees every saved tensor of n (after it ran without retain_graph). */
void ag__node_release(struct ag_node *n);
/* AG_EFREED with PyTorch's retain_graph explanation. */
int ag__err_freed(const struct ag_node *n);

/* ---- engine ---- */

uint64_t ag__next_seq(void);

#endif /* AG_ENGINE_GRAPH_H */
