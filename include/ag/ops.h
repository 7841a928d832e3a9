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

/* linear algebra */
AG_API struct ag_tensor *ag_matmul(struct ag_tensor *a, struct ag_tensor *b);

/*
 * In place: return 0 or -AG_E*, bump the version, obey the leaf rule.
 * As torch, AG_EINVAL when self is expanded (a stride 0 on a dim of size
 * > 1; fill and zero excepted) or when a source shares some but not all
 * of self's memory (a.add_(a) and disjoint parts of one storage are fine;
 * the overlap is decided exactly, also for interleaved strided views).
 */
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
