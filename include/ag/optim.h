/* SPDX-License-Identifier: MIT */
#ifndef AG_OPTIM_H
#define AG_OPTIM_H

#include <stdbool.h>
#include <ag/export.h>
#include <ag/tensor.h>

/*
 * Optimisers, with torch 1.13's update formulas (single-tensor forms).
 *
 * An optimiser keeps its own references to the parameters (f32 or f64,
 * contiguous leaves).  ag_optim_step() updates each parameter that has a
 * .grad in place, under no-grad, in one loop over its data, and bumps its
 * version as an in-place op does; parameters without a .grad are skipped
 * (their state does not advance).  Parameter groups have their own lr and
 * weight decay; the first group is the one given to the constructor.
 */
struct ag_optim;

struct ag_sgd_opts {
	double lr, momentum, dampening, weight_decay;
	bool nesterov; /* needs momentum > 0 and dampening 0 */
};
struct ag_adam_opts {
	double lr, beta1, beta2, eps, weight_decay;
	bool amsgrad;
};

AG_API struct ag_optim *ag_sgd_new(struct ag_tensor *const *params, int n,
				   double lr, double momentum,
				   double weight_decay);
AG_API struct ag_optim *ag_sgd_new_ex(struct ag_tensor *const *params, int n,
				      const struct ag_sgd_opts *o);
/* torch's defaults: lr 1e-3, betas 0.9 0.999, eps 1e-8, weight_decay 0 */
AG_API struct ag_optim *ag_adam_new(struct ag_tensor *const *params, int n,
				    double lr, double beta1, double beta2,
				    double eps, double weight_decay);
AG_API struct ag_optim *ag_adam_new_ex(struct ag_tensor *const *params, int n,
				       const struct ag_adam_opts *o);
/* decoupled weight decay (torch's default 1e-2): p *= 1 - lr wd first */
AG_API struct ag_optim *ag_adamw_new(struct ag_tensor *const *params, int n,
				     double lr, double beta1, double beta2,
				     double eps, double weight_decay);
AG_API struct ag_optim *ag_adamw_new_ex(struct ag_tensor *const *params, int n,
					const struct ag_adam_opts *o);

/* A new group with its own lr and weight decay; returns its index. */
AG_API int ag_optim_add_param_group(struct ag_optim *o,
				    struct ag_tensor *const *params, int n,
				    double lr, double weight_decay);
AG_API int ag_optim_step(struct ag_optim *o);
AG_API void ag_optim_zero_grad(struct ag_optim *o); /* drops the .grads */
AG_API void ag_optim_free(struct ag_optim *o); /* NULL is fine */
/* every group's lr; get returns group 0's */
AG_API void ag_optim_set_lr(struct ag_optim *o, double lr);
AG_API double ag_optim_get_lr(const struct ag_optim *o);
AG_API int ag_optim_group_set_lr(struct ag_optim *o, int group, double lr);
AG_API double ag_optim_group_get_lr(const struct ag_optim *o, int group);

/*
 * One parameter's update on its own, in place, as ag_optim_step() runs it
 * (the optimisers above are built on these), for code that keeps its own
 * state: torch 1.13's single-tensor formulas in p's dtype, one fused pass
 * over the data.  Every tensor given must be dense, with p's dtype (f32 or
 * f64) and element count, and distinct from the others.  p's version is
 * bumped, as by an in-place op; a leaf p that requires grad is refused
 * while grad mode is on (AG_ELEAF), as in-place ops refuse it.
 */
struct ag_sgd_update {
	double lr, momentum, dampening, weight_decay;
	bool nesterov;
	bool first; /* buf is set to this step's update (torch's first step) */
};
/* buf: the momentum buffer, NULL without momentum */
AG_API int ag_sgd_update_(struct ag_tensor *p, struct ag_tensor *grad,
			  struct ag_tensor *buf, const struct ag_sgd_update *u);

struct ag_adam_update {
	double lr, beta1, beta2, eps, weight_decay;
	double step; /* this update's number, 1 for the first */
	bool decoupled; /* AdamW's weight decay */
};
/* max_exp_avg_sq: NULL without amsgrad */
AG_API int ag_adam_update_(struct ag_tensor *p, struct ag_tensor *grad,
			   struct ag_tensor *exp_avg,
			   struct ag_tensor *exp_avg_sq,
			   struct ag_tensor *max_exp_avg_sq,
			   const struct ag_adam_update *u);

/*
 * The state as named tensors, as torch's state_dict: "state.<i>.<key>"
 * with i the parameter's index over all groups in order and key
 * momentum_buffer (SGD), step (f32 0-d, as torch), exp_avg, exp_avg_sq,
 * max_exp_avg_sq (Adam, AdamW).  Borrowed arrays, valid until the next
 * step, load or free.  Parameters with no state yet are not listed.
 */
AG_API int ag_optim_state(struct ag_optim *o, const char *const **names,
			  struct ag_tensor *const **tensors, int *n);
/*
 * Restores state saved by ag_optim_state (values are copied).  Every name
 * must be one this optimiser can hold, with the parameter's shape and
 * dtype (step: 0-d, any floating dtype); all are checked before anything
 * changes (AG_EINVAL, AG_ESHAPE, AG_EDTYPE).
 */
AG_API int ag_optim_load_state(struct ag_optim *o, const char *const *names,
			       struct ag_tensor *const *tensors, int n);

/*
 * Learning-rate schedulers, as torch's StepLR and CosineAnnealingLR
 * (closed forms): they set every group's lr from its initial lr at
 * construction.  ag_scheduler_step() advances one epoch.
 */
struct ag_lr_scheduler;
AG_API struct ag_lr_scheduler *ag_step_lr_new(struct ag_optim *o, int step_size,
					      double gamma);
AG_API struct ag_lr_scheduler *ag_cosine_lr_new(struct ag_optim *o, int t_max,
						double eta_min);
AG_API int ag_scheduler_step(struct ag_lr_scheduler *s);
AG_API void ag_scheduler_free(struct ag_lr_scheduler *s);
/*
 * The scheduler's progress as named tensors, as torch's state_dict (the
 * kind, t_max and so on come from the constructor): "scheduler.last_epoch"
 * (i64 0-d, the steps taken), "scheduler.base_lrs" and "scheduler.last_lr"
 * (f64 [groups], each group's lr at construction and now).  The names
 * differ from ag_optim_state's, so both can go into one safetensors file.
 * Borrowed, valid until the next call, load or free.
 */
AG_API int ag_scheduler_state(struct ag_lr_scheduler *s,
			      const char *const **names,
			      struct ag_tensor *const **tensors, int *n);
/*
 * Restores ag_scheduler_state's three entries (copied; all needed, all
 * checked before anything changes) into a scheduler built as the saved one
 * was, and sets every group's lr of its optimiser to last_lr.  Training
 * resumed from the module, ag_optim_load_state and this continues bitwise
 * as if it had never stopped; the steps are not replayed.
 */
AG_API int ag_scheduler_load_state(struct ag_lr_scheduler *s,
				   const char *const *names,
				   struct ag_tensor *const *tensors, int n);

/*
 * Scales the .grads of params in place so that their joint norm of order
 * norm_type (INFINITY for the max) is at most max_norm, as torch's
 * clip_grad_norm_ (factor max_norm / (total + 1e-6), clamped to 1).
 * Returns the total norm before clipping, or a negative AG_E* code.
 */
AG_API double ag_clip_grad_norm(struct ag_tensor *const *params, int n,
				double max_norm, double norm_type);

#endif /* AG_OPTIM_H */
