/* SPDX-License-Identifier: MIT */
#ifndef AG_ENGINE_OPS_H
#define AG_ENGINE_OPS_H

/*
 * Shared pieces of the differentiable ops: argument checks, broadcasting,
 * elementwise drivers that feed simd/ kernels row by row, and reduction of
 * a broadcast gradient back to an input's shape.
 */
#include <ag/ops.h>

#include "../autograd/graph.h"
#include "simd.h"

/*
 * For an op given a NULL tensor argument: keeps an earlier error (see
 * error.h) and returns NULL, so the check reads
 * `if (!a) return ag__null_arg(fn, "a");` with its return in plain sight.
 */
static inline struct ag_tensor *ag__null_arg(const char *fn, const char *arg)
{
	ag__err_null(fn, arg);
	return NULL;
}

int ag__check_float(const char *fn, const struct ag_tensor *t);
int ag__check_same_dtype(const char *fn, const struct ag_tensor *a,
			 const struct ag_tensor *b);
/* Normalises a possibly negative dim for ndim dims (ndim 0 accepts 0/-1). */
int ag__wrap_dim(const char *fn, int dim, int ndim, int *out);
int ag__broadcast_shape(const char *fn, const struct ag_tensor *a,
			const struct ag_tensor *b, int *ndim, int64_t *shape);
/* Strides that read t as if it had (ndim, shape): stride 0 on broadcast dims. */
void ag__broadcast_strides(const struct ag_tensor *t, int ndim,
			   const int64_t *shape, int64_t *strides);

/*
 * simd/'s derivative kernels for a tensor dtype (f32 or f64); pointers are
 * to elements, increments in elements.  The binary one takes dense spans.
 */
void ag__k_unary_bwd(enum ag_dtype dt, enum ag_k_unary op, int64_t n,
		     const void *g, int64_t ig, const void *x, int64_t ix,
		     const void *y, int64_t iy, void *gx, int64_t igx,
		     const struct ag_k_params *p);
void ag__k_binary_bwd(enum ag_dtype dt, enum ag_k_binary op, int64_t n,
		      const void *g, const void *a, const void *b, void *ga,
		      void *gb);

/* Plain elementwise kernels (no recording); results are contiguous. */
struct ag_tensor *ag__unary_fwd(const char *fn, enum ag_k_unary op,
				const struct ag_k_params *p,
				struct ag_tensor *a);
struct ag_tensor *ag__binary_fwd(const char *fn, enum ag_k_binary op,
				 struct ag_tensor *a, struct ag_tensor *b);
/* dst op= src in place (src broadcast to dst), no recording, no bump. */
void ag__binary_into(enum ag_k_binary op, struct ag_tensor *dst,
		     struct ag_tensor *src);
void ag__unary_into(enum ag_k_unary op, const struct ag_k_params *p,
		    struct ag_tensor *dst);
/*
 * gx = g * f'(x, y) with the fused kernel; contiguous result.  Takes *gp
 * over (and sets it NULL) when it is exclusive and writes gx into it.
 */
struct ag_tensor *ag__unary_bwd(enum ag_k_unary op, const struct ag_k_params *p,
				struct ag_tensor **gp, struct ag_tensor *x,
				struct ag_tensor *y);

/*
 * Calls fn(ctx, off) for the start of every lane along dim (the elements
 * that differ only in dim) of up to four tensors of shape (ndim, shape),
 * each with its own strides; off[k] is in elements of t[k].
 */
void ag__for_lanes(int ndim, const int64_t *shape, int dim, int nt,
		   struct ag_tensor *const *t,
		   void (*fn)(void *ctx, const int64_t *off), void *ctx);

/* Length and stride of t's lanes along dim (a 0-d tensor is one lane). */
static inline int64_t ag__lane_len(const struct ag_tensor *t, int dim)
{
	return t->ndim ? t->shape[dim] : 1;
}

static inline int64_t ag__lane_inc(const struct ag_tensor *t, int dim)
{
	return t->ndim ? t->strides[dim] : 1;
}

/* A new tensor of x's shape with dim of size 1: one element per lane. */
struct ag_tensor *ag__lanes_out(const char *fn, struct ag_tensor *x, int dim);
/*
 * The result of a reduction along dim from its ag__lanes_out tensor, which
 * it takes over: itself with keepdim (or for 0-d), else the same values
 * without dim.  NULL with the error set.
 */
struct ag_tensor *ag__lanes_result(struct ag_tensor *kept, int dim,
				   bool keepdim);

/* Sums a broadcast gradient down to (ndim, shape); differentiable. */
struct ag_tensor *ag__sum_to(struct ag_tensor *g, int ndim,
			     const int64_t *shape);

/* 0 where x <= 0, else 1 (NaN too), as a plain (unrecorded) tensor. */
struct ag_tensor *ag__positive_mask(struct ag_tensor *x);

/*
 * Finishing an op: with rec true, records node n (already holding its
 * saved tensors) for inputs in[nin] and the single output out.  On error
 * puts out and returns NULL.  Passes the result through the scope.
 */
struct ag_tensor *ag__finish(struct ag_tensor *out, struct ag_node *n,
			     struct ag_tensor *const *in, int nin,
			     const char *fwd_op);

/*
 * The checks shared by every op_: inference, the leaf rule, and for a
 * read-modify-write (rmw; not a fill) no expanded (stride-0) dims.
 */
int ag__inplace_check(const char *fn, struct ag_tensor *self, bool rmw);

#endif /* AG_ENGINE_OPS_H */
