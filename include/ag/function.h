/* SPDX-License-Identifier: MIT */
#ifndef AG_FUNCTION_H
#define AG_FUNCTION_H

#include <ag/tensor.h>

/*
 * Custom functions, as torch.autograd.Function.
 *
 * forward runs with grad mode off; it fills out[nout] with new references
 * and may save tensors for backward.  backward gets the gradients of the
 * outputs (never NULL: missing ones are zeros) and fills grad_in[nin] with
 * new references or NULL for inputs that need no gradient.  Either returns
 * 0 or a negative AG_E* code (set an error message with it:
 * return ag_set_error(AG_EINVAL, "...")).
 *
 * ag_function_apply() records the call when grad mode is on and an input
 * requires grad: the outputs get a node named name + "Backward" as grad_fn
 * ("LegendrePolynomialBackward"; name NULL means "CustomFunction").  On
 * failure every out[] is NULL and nothing is leaked.  Tensors that forward
 * and backward make are not recorded in the caller's scope.  Details:
 *  - An output that is an input not marked dirty (or appears twice) is
 *    returned as a new alias of the same storage, so the input keeps its
 *    history.  Integer (i64) outputs are never differentiable.
 *  - A gradient returned for an input must have the input's dtype and
 *    shape (else AG_ESHAPE); one for an input that needs none is dropped.
 *  - backward may call ag_backward()/ag_grad() re-entrantly (enter grad
 *    mode to record inside it: backward runs with grad mode on only under
 *    create_graph).  It may run on a pool thread.
 *  - Function names are kept for the life of the process, one copy per
 *    distinct name.
 *
 * The ctx calls:
 *  - ag_ctx_save_for_backward, ag_ctx_mark_dirty,
 *    ag_ctx_mark_non_differentiable and ag_ctx_set_data only from forward
 *    (else AG_EINVAL).  A
 *    second save_for_backward replaces the first; NULL entries are kept.
 *    Saving an output creates no reference cycle.
 *  - ag_ctx_saved_tensors only from backward, on the thread backward was
 *    called on; the array and its tensors are borrowed until backward
 *    returns.  AG_EVERSION if one was modified in place since forward,
 *    AG_EFREED once the graph was freed (no retain_graph).
 *  - ag_ctx_mark_dirty: t, an input, was modified in place by forward.
 *    Bumps its version; AG_ELEAF for a leaf that requires grad while grad
 *    mode is on.  forward must return it as an output, which then has the
 *    function as its grad_fn (its history is rebased).
 *  - ag_ctx_mark_non_differentiable: that output gets no grad_fn and does
 *    not require grad; its gradient in backward is zeros.
 *  - ag_ctx_needs_input_grad: input i requires grad and the call was
 *    recorded (valid in forward and backward).
 */
struct ag_ctx;
struct ag_function_ops {
	const char *name;
	int (*forward)(struct ag_ctx *ctx, struct ag_tensor *const *in, int nin,
		       struct ag_tensor **out, int nout);
	int (*backward)(struct ag_ctx *ctx, struct ag_tensor *const *grad_out,
			int nout, struct ag_tensor **grad_in, int nin);
};
AG_API int ag_function_apply(const struct ag_function_ops *f,
			     struct ag_tensor *const *in, int nin,
			     struct ag_tensor **out, int nout, void *arg);
AG_API int ag_ctx_save_for_backward(struct ag_ctx *ctx,
				    struct ag_tensor *const *ts, int n);
/* Version-checked; the array and its tensors are borrowed. */
AG_API int ag_ctx_saved_tensors(struct ag_ctx *ctx, struct ag_tensor ***ts,
				int *n);
AG_API bool ag_ctx_needs_input_grad(const struct ag_ctx *ctx, int i);
AG_API int ag_ctx_mark_dirty(struct ag_ctx *ctx, struct ag_tensor *t);
AG_API int ag_ctx_mark_non_differentiable(struct ag_ctx *ctx,
					  struct ag_tensor *t);
AG_API void *ag_ctx_arg(struct ag_ctx *ctx);
/*
 * Per-call state for backward that is not a tensor (PyTorch's
 * ctx.attr = value), set from forward: free_fn (may be NULL) frees it with
 * the node, or as apply returns when the call is not recorded or fails.
 * Setting it again frees the previous data.
 */
AG_API int ag_ctx_set_data(struct ag_ctx *ctx, void *data,
			   void (*free_fn)(void *data));
AG_API void *ag_ctx_data(struct ag_ctx *ctx);

#endif /* AG_FUNCTION_H */
