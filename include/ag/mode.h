/* SPDX-License-Identifier: MIT */
#ifndef AG_MODE_H
#define AG_MODE_H

#include <stdbool.h>
#include <ag/export.h>

/*
 * Grad mode and inference mode, kept per thread.  A new thread starts with
 * grad mode on and inference mode off.  The enter functions return the state
 * they replaced; ag_mode_exit() restores it, so pairs nest.
 *
 * Inference mode implies no-grad; tensors created in it are inference
 * tensors (ag_tensor_is_inference()) with no version counter.
 */
struct ag_mode {
	bool grad;
	int inference;
};

AG_API bool ag_is_grad_enabled(void);
AG_API bool ag_set_grad_enabled(bool on); /* returns the previous setting */
AG_API struct ag_mode ag_no_grad_enter(void);
AG_API struct ag_mode ag_enable_grad_enter(void);
AG_API struct ag_mode ag_inference_mode_enter(void);
AG_API void ag_mode_exit(struct ag_mode prev);
AG_API bool ag_is_inference_mode_enabled(void);

static inline void ag__mode_guard_exit(struct ag_mode *m)
{
	ag_mode_exit(*m);
}

#define AG__CONCAT2(a, b) a##b
#define AG__CONCAT(a, b) AG__CONCAT2(a, b)
#define AG__MODE_GUARD(enter)                                           \
	struct ag_mode AG__CONCAT(ag__mode_guard_, __LINE__)            \
		__attribute__((cleanup(ag__mode_guard_exit), unused)) = \
			enter()

/*
 * Block guards: the mode set here is restored on every exit from the
 * enclosing block (return, break, goto out of it).  Do not jump *into* the
 * block past a guard; build with -Werror=jump-misses-init to be told.
 */
#define AG_NO_GRAD_SCOPE() AG__MODE_GUARD(ag_no_grad_enter)
#define AG_ENABLE_GRAD_SCOPE() AG__MODE_GUARD(ag_enable_grad_enter)
#define AG_INFERENCE_MODE_SCOPE() AG__MODE_GUARD(ag_inference_mode_enter)

#endif /* AG_MODE_H */
