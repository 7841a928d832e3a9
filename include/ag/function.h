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
 * 0 or a negative AG_E* code (set an error message with it).
 */
struct ag_ctx;
struct ag_function_ops {
	const char *name;
	int (*forward)(struct ag_ctx *ctx, struct ag_tensor *const *in,
		       int nin, struct ag_tensor **out, int nout);
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

#endif /* AG_FUNCTION_H */
