/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_H
#define AG_NN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <ag/export.h>
#include <ag/tensor.h>
#include <ag/ops.h>

/*
 * Modules, as torch.nn's.
 *
 * A module is a struct ag_module embedded in the implementation's own
 * struct (container_of), driven by an ops table: forward, and an optional
 * destroy that frees what the implementation allocated beyond the module
 * itself (destroy must free the enclosing struct; without destroy the
 * module is freed with free(), so it must have been malloc'ed as is).
 *
 * Modules are reference counted: a constructor returns one reference,
 * ag_module_get() takes another, ag_module_put() drops one; the last put
 * releases the parameters, buffers and children and calls destroy.
 * ag_module_add_child() and ag_sequential_new() take over the caller's
 * reference to the child (on failure too: the child is put).
 *
 * Parameters, buffers and children are kept by name in registration order;
 * the named lists walk them as torch's state_dict does: the module's own
 * parameters, then its buffers, then each child's, prefixed "child.".
 *
 * The fields are the library's; use the functions.
 */
struct ag_module;

struct ag_module_ops {
	const char *name; /* "Linear" */
	struct ag_tensor *(*forward)(struct ag_module *m, struct ag_tensor *x);
	void (*destroy)(struct ag_module *m); /* optional */
	/*
	 * Optional: prepares the module's own parameters for serving
	 * (ag_module_prepack; Linear packs its weight with
	 * ag_linear_prepack).  Returns how many tensors it packed, or a
	 * negative AG_E* code.
	 */
	int (*prepack)(struct ag_module *m);
};

struct ag_module_entry {
	char *name;
	struct ag_tensor *t; /* owned reference; NULL for a None parameter */
};

struct ag_module_child {
	char *name;
	struct ag_module *m; /* owned reference */
};

struct ag_module_flat {
	int n, cap;
	const char **names; /* owned strings */
	struct ag_tensor **tensors; /* borrowed */
	bool valid;
};

struct ag_module {
	const struct ag_module_ops *ops;
	long refs;
	bool training;
	int n_params, n_buffers, n_children;
	struct ag_module_entry *params, *buffers;
	struct ag_module_child *children;
	/* caches behind the borrowed arrays of the listing functions */
	struct ag_module_flat flat_params, flat_buffers;
};

/* registration, for implementations of modules */
/* Sets up m (zeroed first), in training mode, with one reference. */
AG_API void ag_module_init(struct ag_module *m,
			   const struct ag_module_ops *ops);
/*
 * Registers a parameter (the module takes its own reference; t NULL is
 * a missing optional parameter, skipped by the listings) or a buffer.
 * Names are unique within a module and contain no '.': AG_EINVAL.
 */
AG_API int ag_module_add_parameter(struct ag_module *m, const char *name,
				   struct ag_tensor *t);
AG_API int ag_module_add_buffer(struct ag_module *m, const char *name,
				struct ag_tensor *t);
/* Takes over the caller's reference to child, even on failure. */
AG_API int ag_module_add_child(struct ag_module *m, const char *name,
			       struct ag_module *child);
/* Borrowed lookups of m's own entries by name; NULL if none. */
AG_API struct ag_tensor *ag_module_get_parameter(struct ag_module *m,
						 const char *name);
AG_API struct ag_tensor *ag_module_get_buffer(struct ag_module *m,
					      const char *name);
AG_API struct ag_module *ag_module_get_child(struct ag_module *m,
					     const char *name);
/* Replaces a registered parameter or buffer (takes its own reference). */
AG_API int ag_module_set_parameter(struct ag_module *m, const char *name,
				   struct ag_tensor *t);
AG_API int ag_module_set_buffer(struct ag_module *m, const char *name,
				struct ag_tensor *t);

/* use */
AG_API const char *ag_module_name(const struct ag_module *m); /* ops->name */
AG_API struct ag_module *ag_module_get(struct ag_module *m); /* returns m */
AG_API void ag_module_put(struct ag_module *m); /* NULL is fine */
/*
 * NULL with the error set on failure; x NULL keeps the earlier error.
 * Threads: many threads may run ag_module_forward on one module at once
 * (a service's request threads) as long as nothing changes it meanwhile:
 * in eval mode a forward only reads parameters and buffers, with or
 * without grad mode (tests/tsan/tsan_serve.c).  In training mode
 * BatchNorm updates its running stats in place, so one thread at a time;
 * ag_module_train/eval, loads, set_parameter and optimiser steps must
 * not run while another thread runs a forward.
 */
AG_API struct ag_tensor *ag_module_forward(struct ag_module *m,
					   struct ag_tensor *x);
AG_API void ag_module_train(struct ag_module *m, bool on); /* recursive */
AG_API void ag_module_eval(struct ag_module *m); /* ag_module_train(m, false) */
AG_API bool ag_module_is_training(const struct ag_module *m);
/* Sets requires_grad of every parameter, recursively. */
AG_API void ag_module_requires_grad(struct ag_module *m, bool on);
/*
 * Calls every module's ops->prepack, recursively: for a service, once
 * after loading and ag_module_eval(), before the request threads start.
 * Built-in Linear layers pack their weights (ag_linear_prepack, in
 * ag/ops.h: what the pack is and when it is used).  Returns the number of
 * tensors packed (0 where the build packs nothing), or a negative AG_E*
 * code with the error set; a parameter changed later (a training step, a
 * load) is read unpacked until the next call.
 */
AG_API int ag_module_prepack(struct ag_module *m);
/*
 * All parameters, recursively, in named_parameters' order: a borrowed
 * array, valid as the named lists' below.
 */
AG_API int ag_module_parameters(struct ag_module *m, struct ag_tensor ***params,
				int *n);
/* Drops every parameter's .grad (torch's set_to_none=True). */
AG_API void ag_module_zero_grad(struct ag_module *m);
/*
 * Named parameters and named buffers, recursively, in torch's order and
 * names (named_parameters(), named_buffers(): "0.weight",
 * "3.running_mean", "3.num_batches_tracked").  Borrowed arrays owned by m,
 * rebuilt by each call: valid until the next call of the same function
 * (ag_module_parameters shares named_parameters' arrays) on m, or until m
 * or one of its children changes.
 */
AG_API int ag_module_named_parameters(struct ag_module *m,
				      const char *const **names,
				      struct ag_tensor *const **tensors,
				      int *n);
AG_API int ag_module_named_buffers(struct ag_module *m,
				   const char *const **names,
				   struct ag_tensor *const **tensors, int *n);

/*
 * A leaf that requires grad sharing t's data (t detached): a new reference.
 */
AG_API struct ag_tensor *ag_parameter(struct ag_tensor *t);

/*
 * Built-in modules.  Parameters are f32, initialised as torch 1.13's from
 * g (required: a seed fixes a model): Linear and Conv2d weights and biases
 * uniform in +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5)), BatchNorm
 * weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked an
 * i64 0-d 0; Embedding weight normal(0, 1).
 */
AG_API struct ag_module *ag_linear_new(int64_t in, int64_t out, bool bias,
				       struct ag_generator *g);
/* o as ag_conv2d's (NULL: stride 1, padding 0, dilation 1, groups 1) */
AG_API struct ag_module *ag_conv2d_new(int64_t in, int64_t out, int64_t kh,
				       int64_t kw,
				       const struct ag_conv2d_opts *o,
				       bool bias, struct ag_generator *g);
/* stride NULL or 0: the kernel; padding NULL: 0 */
AG_API struct ag_module *ag_maxpool2d_new(const int64_t kernel[2],
					  const int64_t stride[2],
					  const int64_t padding[2]);
AG_API struct ag_module *ag_avgpool2d_new(const int64_t kernel[2],
					  const int64_t stride[2],
					  const int64_t padding[2]);
AG_API struct ag_module *ag_adaptive_avgpool2d_new(int64_t out_h,
						   int64_t out_w);
/* flattens dims start_dim..end_dim (negative from the end), torch: 1, -1 */
AG_API struct ag_module *ag_flatten_new(int start_dim, int end_dim);
/* g NULL: the thread's default generator (ag_manual_seed) */
AG_API struct ag_module *ag_dropout_new(double p, struct ag_generator *g);
/* torch's defaults: eps 1e-5, momentum 0.1; affine, tracking stats */
AG_API struct ag_module *ag_batchnorm1d_new(int64_t features, double eps,
					    double momentum);
AG_API struct ag_module *ag_batchnorm2d_new(int64_t channels, double eps,
					    double momentum);
/*
 * The function every BatchNorm1d and BatchNorm2d module in m's tree (m and
 * its children, recursively) normalises with, given ag_batch_norm's
 * arguments (the module's buffers, parameters, mode, momentum and eps);
 * NULL: ag_batch_norm, the default.  libag-dist's ag_dist_sync_batchnorm()
 * sets ag_dist_batch_norm.  The modules keep their names, parameters and
 * buffers.  Returns the number of BatchNorm modules set, or -AG_EINVAL for
 * m NULL (keeping an earlier error).
 */
typedef struct ag_tensor *(*ag_batch_norm_fn)(
	struct ag_tensor *x, struct ag_tensor *running_mean,
	struct ag_tensor *running_var, struct ag_tensor *weight,
	struct ag_tensor *bias, bool training, double momentum, double eps);
AG_API int ag_module_set_batch_norm_fn(struct ag_module *m,
				       ag_batch_norm_fn fn);
AG_API struct ag_module *ag_relu_new(void);
AG_API struct ag_module *ag_leaky_relu_new(double slope);
AG_API struct ag_module *ag_gelu_new(void);
AG_API struct ag_module *ag_tanh_new(void);
AG_API struct ag_module *ag_sigmoid_new(void);
/* input: i64 indices; output [*, dim] */
AG_API struct ag_module *ag_embedding_new(int64_t num, int64_t dim,
					  struct ag_generator *g);
/*
 * Runs mods in order; children named "0", "1", ...  Takes over the
 * caller's references to mods, on failure too.
 */
AG_API struct ag_module *ag_sequential_new(struct ag_module *const *mods,
					   int n);

#endif /* AG_NN_H */
