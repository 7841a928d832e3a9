/* SPDX-License-Identifier: MIT */
#ifndef AG_OPS_H
#define AG_OPS_H

#include <ag/tensor.h>

/*
 * Differentiable operations.  Each returns a new reference, or NULL with the
 * error set.  Two tensor operands broadcast like NumPy and must have the same
 * dtype.  An op is recorded into the backward graph when grad mode is on and
 * an input requires grad.
 */

/* binary */
AG_API struct ag_tensor *ag_add(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_sub(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_mul(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_div(struct ag_tensor *a, struct ag_tensor *b);
/*
 * Elementwise larger / smaller; NaN in either gives NaN.  At ties each side
 * gets half the gradient, as torch 1.13.
 */
AG_API struct ag_tensor *ag_maximum(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_minimum(struct ag_tensor *a, struct ag_tensor *b);
/*
 * a to the power b.  As torch 1.13 at a zero base: a's gradient
 * b * a^(b-1) is 0 where b == 0, and b's gradient a^b * log(a) is 0 where
 * a == 0 and b >= 0 (NaN for a negative base, as log).
 */
AG_API struct ag_tensor *ag_pow(struct ag_tensor *a, struct ag_tensor *b);

/* with a scalar */
AG_API struct ag_tensor *ag_add_scalar(struct ag_tensor *a, double s);
AG_API struct ag_tensor *ag_mul_scalar(struct ag_tensor *a, double s);
AG_API struct ag_tensor *ag_pow_scalar(struct ag_tensor *a, double s);
AG_API struct ag_tensor *ag_rsub_scalar(struct ag_tensor *a,
					double s); /* s - a */

/* unary */
AG_API struct ag_tensor *ag_neg(struct ag_tensor *a);
AG_API struct ag_tensor *ag_exp(struct ag_tensor *a);
AG_API struct ag_tensor *ag_log(struct ag_tensor *a);
AG_API struct ag_tensor *ag_tanh(struct ag_tensor *a);
AG_API struct ag_tensor *ag_sin(struct ag_tensor *a);
AG_API struct ag_tensor *ag_cos(struct ag_tensor *a);
AG_API struct ag_tensor *ag_sigmoid(struct ag_tensor *a);
AG_API struct ag_tensor *ag_relu(struct ag_tensor *a);
AG_API struct ag_tensor *ag_abs(struct ag_tensor *a); /* gradient 0 at 0 */
AG_API struct ag_tensor *ag_expm1(struct ag_tensor *a);
AG_API struct ag_tensor *ag_log1p(struct ag_tensor *a);
AG_API struct ag_tensor *ag_sqrt(struct ag_tensor *a);
AG_API struct ag_tensor *ag_rsqrt(struct ag_tensor *a);
AG_API struct ag_tensor *ag_square(struct ag_tensor *a);
AG_API struct ag_tensor *ag_reciprocal(struct ag_tensor *a);
AG_API struct ag_tensor *ag_tan(struct ag_tensor *a);
AG_API struct ag_tensor *ag_gelu(struct ag_tensor *a); /* exact (erf) form */
AG_API struct ag_tensor *ag_silu(struct ag_tensor *a);
/* log(1 + exp(a)); a itself past 20, as torch's default threshold */
AG_API struct ag_tensor *ag_softplus(struct ag_tensor *a);
AG_API struct ag_tensor *ag_erf(struct ag_tensor *a);
AG_API struct ag_tensor *ag_atan(struct ag_tensor *a);
/*
 * Limits a to [lo, hi]; hi wins when lo > hi, as torch.  The gradient
 * passes where lo <= a <= hi.  NaN bounds are refused.
 */
AG_API struct ag_tensor *ag_clamp(struct ag_tensor *a, double lo, double hi);
/* a where a > 0, else slope * a; slope must be finite */
AG_API struct ag_tensor *ag_leaky_relu(struct ag_tensor *a, double slope);

/* reductions */
AG_API struct ag_tensor *ag_sum(struct ag_tensor *a);
AG_API struct ag_tensor *ag_mean(struct ag_tensor *a);
AG_API struct ag_tensor *ag_mean_dim(struct ag_tensor *a, int dim,
				     bool keepdim);
AG_API struct ag_tensor *ag_sum_dim(struct ag_tensor *a, int dim, bool keepdim);
/* log(sum(exp(a))) along dim, shifted by the lane's max; -inf if empty */
AG_API struct ag_tensor *ag_logsumexp(struct ag_tensor *a, int dim,
				      bool keepdim);
/*
 * The largest value along dim (NaN if the lane has one, as torch); the
 * gradient goes to the first maximum.  An empty dim is refused.
 */
AG_API struct ag_tensor *ag_max_dim(struct ag_tensor *a, int dim, bool keepdim);
/* Variance along dim, over n - 1 when unbiased (NaN when n - 1 = 0) */
AG_API struct ag_tensor *ag_var_dim(struct ag_tensor *a, int dim, bool unbiased,
				    bool keepdim);
/* exp(a) / sum(exp(a)) along dim, and its log, computed stably */
AG_API struct ag_tensor *ag_softmax(struct ag_tensor *a, int dim);
AG_API struct ag_tensor *ag_log_softmax(struct ag_tensor *a, int dim);

/*
 * Shape.  These return views sharing a's storage (ag_reshape copies only
 * when the strides do not allow a view).  Negative dims count from the end.
 * A -1 in ag_reshape's shape is inferred.
 */
AG_API struct ag_tensor *ag_reshape(struct ag_tensor *a, int ndim,
				    const int64_t *shape);
AG_API struct ag_tensor *ag_transpose(struct ag_tensor *a, int d0, int d1);
AG_API struct ag_tensor *ag_permute(struct ag_tensor *a, const int *dims);
AG_API struct ag_tensor *ag_slice(struct ag_tensor *a, int dim, int64_t start,
				  int64_t end, int64_t step);
AG_API struct ag_tensor *ag_expand(struct ag_tensor *a, int ndim,
				   const int64_t *shape);
AG_API struct ag_tensor *ag_unsqueeze(struct ag_tensor *a, int dim);
AG_API struct ag_tensor *ag_squeeze(struct ag_tensor *a, int dim);

/* joining, indexing and selection */
/*
 * Indices are AG_I64 tensors; an index outside [0, size) (negative ones
 * too) is AG_EINVAL naming the index and the bound.  These return new
 * tensors, never views.
 */
/*
 * The n tensors (one dtype) joined along dim: they must agree in every
 * other dim.  As torch 1.13, a 1-d tensor of shape [0] is skipped whatever
 * the others' dims; the result of only such tensors is [0].
 */
AG_API struct ag_tensor *ag_cat(struct ag_tensor *const *ts, int n, int dim);
/*
 * The n tensors (one shape and dtype) stacked along a new dim: the cat of
 * them unsqueezed at dim, which its grad_fn (CatBackward) shows.
 */
AG_API struct ag_tensor *ag_stack(struct ag_tensor *const *ts, int n, int dim);
/*
 * The slices of a at the positions idx (0-d or 1-d) along dim: a's shape
 * with dim of idx's length.  A 0-d a takes one index (0) and stays 0-d.
 * Its backward sums repeated indices in index order, whatever the thread
 * count.
 */
AG_API struct ag_tensor *ag_index_select(struct ag_tensor *a, int dim,
					 struct ag_tensor *idx);
/*
 * out[i][j][k] = a[idx[i][j][k]][j][k] for dim 0 (likewise for other
 * dims): idx has a's number of dims, and no dim other than dim larger
 * than a's.  The result has idx's shape.
 */
AG_API struct ag_tensor *ag_gather(struct ag_tensor *a, int dim,
				   struct ag_tensor *idx);
/*
 * A copy of a with src added at the positions idx names along dim:
 * out[idx[i][j][k]][j][k] += src[i][j][k] for dim 0, ag_gather's adjoint.
 * idx is no larger than src in any dim, nor than a in dims other than
 * dim (as torch); with src requiring grad, src must have idx's shape.
 * Duplicate positions sum in idx's row-major order.  Differentiable in a
 * and src.
 */
AG_API struct ag_tensor *ag_scatter_add(struct ag_tensor *a, int dim,
					struct ag_tensor *idx,
					struct ag_tensor *src);
/*
 * Rows of the 2-d weight [num, dim] at the indices idx (any shape): the
 * result has shape idx.shape + [dim].  It is ag_index_select's rows
 * reshaped, and so is its backward: the gradients of repeated indices sum
 * in idx's row-major order, whatever the thread count.
 */
AG_API struct ag_tensor *ag_embedding(struct ag_tensor *weight,
				      struct ag_tensor *idx);
/*
 * a where cond is nonzero (NaN included), else b; a and b of one dtype,
 * cond of any, the three broadcast together.  The gradient goes to a where cond, to b elsewhere.
 */
AG_API struct ag_tensor *ag_where(struct ag_tensor *cond, struct ag_tensor *a,
				  struct ag_tensor *b);
/*
 * Index (AG_I64) of the first maximum along dim; a NaN counts as the
 * maximum, as torch.  An empty dim is refused.  Not differentiable.
 */
AG_API struct ag_tensor *ag_argmax(struct ag_tensor *a, int dim, bool keepdim);
/*
 * a converted to dtype.  Differentiable between f32 and f64; a conversion
 * to or from AG_I64 is not (its result does not require grad).  Floats go
 * to i64 rounded toward zero; NaN and values out of i64's range give
 * INT64_MIN.  The same dtype returns a new reference to a itself.
 */
AG_API struct ag_tensor *ag_to(struct ag_tensor *a, enum ag_dtype dtype);
/*
 * a == b, a < b, a > b elementwise (same dtype, broadcast), as 1 or 0 in
 * that dtype.  Not recorded: the result never requires grad.
 */
AG_API struct ag_tensor *ag_eq(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_lt(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_gt(struct ag_tensor *a, struct ag_tensor *b);

/* linear algebra */
AG_API struct ag_tensor *ag_matmul(struct ag_tensor *a, struct ag_tensor *b);

/* in place: return 0 or -AG_E*, bump the version, obey the leaf rule */
AG_API int ag_add_(struct ag_tensor *self, struct ag_tensor *other);
AG_API int ag_sub_(struct ag_tensor *self, struct ag_tensor *other);
AG_API int ag_mul_(struct ag_tensor *self, struct ag_tensor *other);
AG_API int ag_div_(struct ag_tensor *self, struct ag_tensor *other);
AG_API int ag_add_scalar_(struct ag_tensor *self, double s);
AG_API int ag_mul_scalar_(struct ag_tensor *self, double s);
AG_API int ag_zero_(struct ag_tensor *self);
AG_API int ag_fill_(struct ag_tensor *self, double v);
AG_API int ag_copy_(struct ag_tensor *self, struct ag_tensor *src);
AG_API int ag_relu_(struct ag_tensor *self);

#endif /* AG_OPS_H */
