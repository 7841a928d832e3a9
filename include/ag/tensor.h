/* SPDX-License-Identifier: MIT */
#ifndef AG_TENSOR_H
#define AG_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <ag/export.h>

/*
 * Tensors.
 *
 * struct ag_tensor is opaque and reference counted.  Every tensor pointer the
 * library returns is a new reference the caller owns and releases with
 * ag_tensor_put(); ag_tensor_get() takes another.  Data lives in a separate,
 * reference-counted storage, so views share it; its data is 64-byte aligned
 * when it is 64 bytes or more, else aligned to its size rounded up to a
 * power of two, at least 16 (views start at any element).  Shapes have at
 * most AG_MAX_DIMS dims; strides count elements.
 */
enum ag_dtype { AG_F32, AG_F64, AG_I64 };
#define AG_MAX_DIMS 8

struct ag_tensor;
struct ag_node;

/*
 * A seedable generator.  Algorithm (fixed, so every platform gives the same
 * numbers for a seed): the seed is expanded by SplitMix64 into the 256-bit
 * state of xoshiro256**.  ag_rand takes the top 53 bits (f64) or 24 bits
 * (f32) of one output as a uniform in [0, 1).  ag_randn uses Box-Muller on
 * two f64 uniforms u1, u2: sqrt(-2 log(1 - u1)) * cos(2 pi u2), one normal
 * per pair, rounded to the dtype.  A generator is not locked: use one per
 * thread or lock it yourself.
 */
struct ag_generator;
AG_API struct ag_generator *ag_generator_new(uint64_t seed);
AG_API void ag_generator_free(struct ag_generator *g);
AG_API uint64_t ag_generator_next(struct ag_generator *g); /* raw 64 bits */
/*
 * The generator's whole state, the four xoshiro256** words, for
 * checkpoints that resume a run exactly (torch's get_state/set_state):
 * a generator given a state it had draws what it drew from there.  Both
 * return 0, or -AG_EINVAL for a NULL argument; set refuses the all-zero
 * state, which xoshiro never leaves, and then leaves g unchanged.
 */
#define AG_GENERATOR_STATE_WORDS 4
AG_API int ag_generator_get_state(const struct ag_generator *g,
				  uint64_t st[AG_GENERATOR_STATE_WORDS]);
AG_API int ag_generator_set_state(struct ag_generator *g,
				  const uint64_t st[AG_GENERATOR_STATE_WORDS]);
/*
 * Reseeds the default generator of every thread (each starts from this seed
 * on its next use), which ops given a NULL generator draw from (ag_dropout).
 * Before any call, the seed is 67280421310721, as torch's default.
 */
AG_API void ag_manual_seed(uint64_t seed);
/*
 * The calling thread's default generator, what a NULL generator means: to
 * save and restore its state with ag_generator_get/set_state.  Owned by
 * the thread (never free it); ag_manual_seed() restarts it from the seed
 * on the thread's next use of it.
 */
AG_API struct ag_generator *ag_default_generator(void);

/* Creation.  shape may be NULL when ndim is 0. */
AG_API struct ag_tensor *ag_empty(enum ag_dtype dt, int ndim,
				  const int64_t *shape);
AG_API struct ag_tensor *ag_zeros(enum ag_dtype dt, int ndim,
				  const int64_t *shape);
AG_API struct ag_tensor *ag_ones(enum ag_dtype dt, int ndim,
				 const int64_t *shape);
AG_API struct ag_tensor *ag_full(enum ag_dtype dt, int ndim,
				 const int64_t *shape, double v);
AG_API struct ag_tensor *ag_scalar(enum ag_dtype dt, double v); /* 0-d */
/* [start, end) by step, like torch.arange; step may be negative, not 0. */
AG_API struct ag_tensor *ag_arange(enum ag_dtype dt, double start, double end,
				   double step);
AG_API struct ag_tensor *ag_rand(struct ag_generator *g, enum ag_dtype dt,
				 int ndim, const int64_t *shape);
AG_API struct ag_tensor *ag_randn(struct ag_generator *g, enum ag_dtype dt,
				  int ndim, const int64_t *shape);
/* Copies numel elements of dt from data (dense, row-major). */
AG_API struct ag_tensor *ag_from_data(enum ag_dtype dt, int ndim,
				      const int64_t *shape, const void *data);
/*
 * Wraps user memory without a copy.  data must hold numel elements of dt,
 * dense and row-major, aligned to the element size.  When the last tensor
 * using it is freed, free_fn(data, arg) is called exactly once (free_fn may
 * be NULL).  If ag_from_blob fails it returns NULL and does not call
 * free_fn: the memory is still the caller's.
 */
AG_API struct ag_tensor *ag_from_blob(enum ag_dtype dt, int ndim,
				      const int64_t *shape, void *data,
				      void (*free_fn)(void *data, void *arg),
				      void *arg);

AG_API struct ag_tensor *ag_tensor_get(struct ag_tensor *t); /* returns t */
AG_API void ag_tensor_put(struct ag_tensor *t); /* NULL is fine */

AG_API int ag_tensor_ndim(const struct ag_tensor *t);
AG_API const int64_t *ag_tensor_shape(const struct ag_tensor *t);
AG_API const int64_t *ag_tensor_strides(const struct ag_tensor *t);
AG_API int64_t ag_tensor_numel(const struct ag_tensor *t);
AG_API enum ag_dtype ag_tensor_dtype(const struct ag_tensor *t);
AG_API size_t ag_dtype_size(enum ag_dtype dt);
AG_API const char *ag_dtype_name(enum ag_dtype dt); /* "f32" */
AG_API bool ag_tensor_is_contiguous(const struct ag_tensor *t);
/* First element; writing it is the caller's business (no version bump). */
AG_API void *ag_tensor_data(struct ag_tensor *t);
/* Any layout -> dense row-major; nbytes must equal numel * element size. */
AG_API int ag_tensor_copy_to(const struct ag_tensor *t, void *dst,
			     size_t nbytes);
/* One-element tensors; NAN and an error otherwise (also for an i64 value
 * that a double cannot hold exactly). */
AG_API double ag_tensor_item(const struct ag_tensor *t);
/* One-element AG_I64 tensors; 0 and AG_EDTYPE for other dtypes. */
AG_API int64_t ag_tensor_item_i64(const struct ag_tensor *t);
/* PyTorch's layout; tensors over 1000 elements are summarised with "...". */
AG_API int ag_tensor_print(const struct ag_tensor *t, FILE *f);
AG_API int ag_tensor_set_name(struct ag_tensor *t, const char *name);
AG_API const char *ag_tensor_name(const struct ag_tensor *t);

AG_API bool ag_tensor_requires_grad(const struct ag_tensor *t);
AG_API int ag_tensor_set_requires_grad(struct ag_tensor *t, bool on);
AG_API bool ag_tensor_is_leaf(const struct ag_tensor *t);
/*
 * .grad as a new reference (NULL, no error, if none): put it, unless a
 * scope is open, which then owns it like every returned tensor -- do not
 * put it as well.  It shares storage with .grad: a later backward that
 * accumulates in place changes what it reads.
 */
AG_API struct ag_tensor *ag_tensor_grad(struct ag_tensor *t);
AG_API int ag_tensor_zero_grad(struct ag_tensor *t); /* drops .grad */
/*
 * t.grad = g as in torch: .grad becomes g itself (a new reference; a later
 * backward accumulates into it in place).  g must have t's dtype and shape
 * (else AG_ESHAPE); NULL is ag_tensor_zero_grad().
 */
AG_API int ag_tensor_set_grad(struct ag_tensor *t, struct ag_tensor *g);
AG_API int ag_tensor_retain_grad(struct ag_tensor *t);
AG_API struct ag_node *ag_tensor_grad_fn(struct ag_tensor *t); /* borrowed */
AG_API uint64_t ag_tensor_version(const struct ag_tensor *t);
/*
 * Counts a write made through ag_tensor_data() (or another view's data),
 * as torch.autograd.graph.increment_version does: a backward that saved
 * this storage then fails with AG_EVERSION instead of reading the new
 * values.  One atomic add; no data is touched.  0, or -AG_EINVAL for
 * NULL.  A no-op for an inference tensor, which has no version.
 */
AG_API int ag_tensor_bump_version(struct ag_tensor *t);
AG_API bool ag_tensor_is_inference(const struct ag_tensor *t);
AG_API struct ag_tensor *ag_detach(struct ag_tensor *t);
AG_API struct ag_tensor *ag_clone(struct ag_tensor *t);
AG_API struct ag_tensor *ag_contiguous(struct ag_tensor *t);
/* Same shape and values (dtypes may differ; NaN is not equal to NaN). */
AG_API bool ag_equal(const struct ag_tensor *a, const struct ag_tensor *b);
/* |a - b| <= atol + rtol * |b| elementwise, with broadcasting of b to a. */
AG_API bool ag_allclose(const struct ag_tensor *a, const struct ag_tensor *b,
			double rtol, double atol);

/*
 * Scopes, an autorelease pool per thread.  While a scope is open, every
 * tensor reference the library returns on this thread is also recorded in
 * the innermost scope, and ag_scope_end() puts those references.  A tensor
 * wanted beyond the scope is kept with ag_tensor_get(), whose reference is
 * not recorded.  Scopes nest; ending one that is not the innermost open
 * scope of this thread fails with AG_EINVAL and changes nothing.
 */
struct ag_scope;
AG_API struct ag_scope *ag_scope_begin(void);
AG_API void ag_scope_end(struct ag_scope *s);
/*
 * For library code that keeps or puts the references it gets -- a module's
 * forward, an optimiser keeping state, a custom op built from other ops:
 * ag_scope_suspend() hides the thread's scopes until ag_scope_resume(),
 * so what such code gets is its own to put, whether or not its caller had
 * a scope open; ag_scope_adopt(t) then hands the one result to the
 * caller's innermost scope, if any (returns t).  ag_module_forward() does
 * this around every module's forward.
 */
AG_API struct ag_scope *ag_scope_suspend(void);
AG_API void ag_scope_resume(struct ag_scope *s);
AG_API struct ag_tensor *ag_scope_adopt(struct ag_tensor *t);

#endif /* AG_TENSOR_H */
