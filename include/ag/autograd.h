/* SPDX-License-Identifier: MIT */
#ifndef AG_AUTOGRAD_H
#define AG_AUTOGRAD_H

#include <stdio.h>
#include <ag/tensor.h>

/*
 * Backward.
 *
 * ag_backward() sums d(root)/d(leaf) * grad into the .grad of every leaf
 * that requires grad and is reachable from root.  grad may be NULL only for
 * a one-element root (an implicit 1).  Unless retain_graph, the saved
 * tensors of every node that ran are freed: a second backward through them
 * fails with AG_EFREED.  With create_graph the backward itself is recorded,
 * so the gradients can be differentiated again.
 */
struct ag_backward_opts {
	bool retain_graph;
	bool create_graph;
	/*
	 * Sum the gradients arriving at each node in a fixed order, so the
	 * engine's sums are bitwise identical for any number of threads
	 * (also on with AG_DETERMINISTIC=1).  Costs a sort per fan-in node.
	 * It does not reach into the ops: a GEMM large enough to be split
	 * over the pool (ag_linear, ag_matmul) gives the BLAS other shapes
	 * on another thread count, and its results differ in the last bits.
	 * Runs on the same thread count and the same GEMM path
	 * (ag_build_config(); AG_GEMM) are bitwise reproducible.
	 */
	bool deterministic;
};
AG_API int ag_backward(struct ag_tensor *root, struct ag_tensor *grad,
		       const struct ag_backward_opts *o);
AG_API int ag_backward_many(struct ag_tensor *const *roots,
			    struct ag_tensor *const *grads, int n,
			    const struct ag_backward_opts *o);

/*
 * The gradients of outputs with respect to inputs, returned in grads[nin]
 * (new references), without touching any .grad.  Only nodes on a path from
 * the outputs to the inputs run.  An input the outputs do not depend on is
 * an error unless allow_unused, when its gradient is NULL.
 */
struct ag_grad_opts {
	bool retain_graph;
	bool create_graph;
	bool allow_unused;
	bool deterministic; /* as in struct ag_backward_opts */
};
AG_API int ag_grad(struct ag_tensor *const *outputs,
		   struct ag_tensor *const *grad_outputs, int nout,
		   struct ag_tensor *const *inputs, int nin,
		   struct ag_tensor **grads, const struct ag_grad_opts *o);

/* Introspection.  Nodes are borrowed from the tensors that lead to them. */
struct ag_node;
AG_API const char *ag_node_name(const struct ag_node *n);
AG_API int ag_node_num_next(const struct ag_node *n);
AG_API struct ag_node *ag_node_next(const struct ag_node *n, int i,
				    int *input_nr);
/* A saved tensor by name ("self", "other", "result"); new reference. */
AG_API struct ag_tensor *ag_node_saved(struct ag_node *n, const char *name);
AG_API int ag_node_saved_names(const struct ag_node *n,
			       const char *const **names);

/*
 * Tensor hooks run on the gradient of t when it is computed, before it is
 * used; a hook may return a replacement (a new reference) or NULL to keep
 * the gradient.  To fail, a hook sets an error (ag_set_error(), or a
 * library call in it failed and set one) and returns NULL: the backward
 * then fails with that code, the message prefixed "a tensor hook on
 * <node> (gradient slot <i>) failed: ", on the thread that called it,
 * whichever pool thread ran the hook.  A hook that handled an error itself
 * calls ag_clear_error() before returning NULL; an error set before the
 * hook ran is not taken for its own.  After a failed backward nothing is
 * leaked, and each leaf's .grad is either untouched or has its whole sum
 * added (its accumulation runs only once every gradient for it arrived,
 * so a leaf the failed hook's gradient leads to is never reached).
 * Without retain_graph the nodes that ran have freed their buffers
 * (AG_EFREED on a second backward); with it the graph can run again.
 * Hooks may run on a pool thread.  On a leaf they run before accumulation
 * into .grad.  Hooks of one tensor run in registration order; t must
 * require grad (else NULL, AG_EINVAL).  The hook hangs on the graph, not
 * on t: on a non-leaf it stays as long as t's grad_fn, on a leaf as long
 * as the leaf.
 *
 * The returned handle is released by ag_hook_remove(), which must be called
 * exactly once per handle: it stops the hook (if the graph still exists)
 * and frees the handle.  It is safe at any time: during a backward, from
 * another thread or from inside a hook, and after the tensor and its graph
 * are gone.  A handle never removed keeps a few bytes alive.
 *
 * ag_tensor_retain_grad() (ag/tensor.h) makes a non-leaf keep its gradient
 * in .grad after backward, accumulated across backward calls like a
 * leaf's; it is a no-op on a leaf and AG_EINVAL on a tensor that does not
 * require grad.
 */
typedef struct ag_tensor *(*ag_tensor_hook_fn)(struct ag_tensor *grad,
					       void *arg);
struct ag_hook;
AG_API struct ag_hook *ag_tensor_register_hook(struct ag_tensor *t,
					       ag_tensor_hook_fn fn, void *arg);
AG_API void ag_hook_remove(struct ag_hook *h);

/*
 * A post-accumulate-grad hook (torch's register_post_accumulate_grad_hook)
 * runs after a backward summed a gradient into the .grad of leaf t, with
 * that .grad (borrowed; the hook may read it or change it in place, not
 * replace it).  It runs on whichever pool thread accumulated, once per
 * backward that reaches t (never from ag_grad, which leaves .grad alone),
 * after t's tensor hooks.  It returns 0, or fails as a tensor hook does:
 * it sets an error and returns non-zero, and the backward fails with that
 * code, the message prefixed "a post-accumulate-grad hook on
 * AccumulateGrad failed: ".  t must be a leaf that requires grad (else
 * NULL, AG_EINVAL).  The handle is a struct ag_hook: removed with
 * ag_hook_remove(), with the same rules and the same safety.
 */
typedef int (*ag_post_accumulate_grad_hook_fn)(struct ag_tensor *grad,
					       void *arg);
AG_API struct ag_hook *ag_tensor_register_post_accumulate_grad_hook(
	struct ag_tensor *t, ag_post_accumulate_grad_hook_fn fn, void *arg);

/*
 * Queues fn(arg) to run when the backward that is running now finishes
 * (torch's Variable._execution_engine.queue_callback): call it from a
 * hook, a custom function's backward or another callback.  The callbacks
 * run in the order queued, on the thread that called ag_backward (or
 * ag_grad), after every node ran and before it returns, so a callback may
 * wait for work the hooks started and write .grad.  A callback queued by
 * a callback runs too.  One returns 0, or sets an error and returns
 * non-zero: the backward then fails with it, and the callbacks after it
 * do not run.  When the backward fails before they run, none run: a user
 * who must release arg keeps it somewhere it can be found.  Outside a
 * backward this is -AG_EINVAL; -AG_ENOMEM when it cannot queue.
 */
typedef int (*ag_backward_callback_fn)(void *arg);
AG_API int ag_queue_callback(ag_backward_callback_fn fn, void *arg);

/* Anomaly mode, per thread: a NaN/Inf gradient fails with AG_ENAN. */
AG_API void ag_set_detect_anomaly(bool on);
AG_API bool ag_is_anomaly_enabled(void);

/*
 * Gradient checks against central finite differences in f64.  f computes
 * one output from nin inputs (inputs that require grad are checked; they
 * must be f64, else AG_EDTYPE, and may be non-contiguous but not expanded).
 * f is called with grad mode on, several times, and must be deterministic;
 * the inputs are perturbed in place and restored.  Options NULL: PyTorch's
 * defaults eps 1e-6, atol 1e-5, rtol 1e-3; an element passes when
 * |analytical - numerical| <= atol + rtol * |numerical|.  Returns 0, or
 * -AG_EINVAL with a message naming the input, the element and both values
 * when they disagree:
 *   "ag_gradcheck: Jacobian mismatch for output 0 with respect to input 1,
 *    element 3: numerical 0.5, analytical 0.25 (output element 3; ...)"
 * An error from f is returned as is.
 *
 * ag_gradgradcheck checks the first derivatives the same way, as torch
 * does: the function (inputs, v) -> d(sum(f(inputs) * v))/d(inputs) built
 * with create_graph, where v is a fixed pseudo-random grad_output (uniform
 * in [-1, 1)) that is checked as one more input (index nin).  "output k"
 * in its message is the k-th input that requires grad and is used.  Before
 * that it runs ag_gradcheck's check with the analytical Jacobian taken
 * under create_graph: double backward differentiates the derivative as
 * computed that way, which need not be the path a plain backward takes.
 */
typedef int (*ag_fn)(struct ag_tensor *const *in, int nin,
		     struct ag_tensor **out, void *arg);
struct ag_gradcheck_opts {
	double eps, atol, rtol;
};
AG_API int ag_gradcheck(ag_fn f, void *arg, struct ag_tensor *const *in,
			int nin, const struct ag_gradcheck_opts *o);
AG_API int ag_gradgradcheck(ag_fn f, void *arg, struct ag_tensor *const *in,
			    int nin, const struct ag_gradcheck_opts *o);

/*
 * Writes the backward graph reachable from root in Graphviz dot: one box
 * per node labelled with its name (AccumulateGrad also with the leaf's
 * dtype and shape), an edge to each next node (labelled with the input
 * number when that node takes several).  For a leaf, its AccumulateGrad.
 * AG_ENOGRAD if root does not require grad, AG_EIO on a write error.
 */
AG_API int ag_graph_dot(struct ag_tensor *root, FILE *out);

#endif /* AG_AUTOGRAD_H */
