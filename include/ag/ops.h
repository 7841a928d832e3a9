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
/*
 * x w^T + b for x [*, in], w [out, in], b [out] (or one element, or NULL):
 * [*, out].  One node; forward and backward are GEMMs that read transposed
 * operands in place.
 */
AG_API struct ag_tensor *ag_linear(struct ag_tensor *x, struct ag_tensor *w,
				   struct ag_tensor *b);
/*
 * Packs w (f32 [out, in]) once for ag_linear's forward, for serving: each
 * product of more than one row then reads this one copy, laid out for the
 * GEMM kernels, instead of packing w again per call (oneDNN builds).
 * Returns 1 when packed, 0 when there is nothing to pack here (f64, a
 * layout other than a plain or transposed matrix, a build or AG_GEMM=blas
 * without oneDNN; ag_linear is then unchanged), else -AG_EINVAL (NULL,
 * not 2-D, an inference tensor, which has no version counter).  The pack
 * is used while w's version is the one it was made at: an in-place op, an
 * optimiser step or a load makes ag_linear read w unpacked again (call
 * this again to repack); a write through ag_tensor_data() must be followed
 * by ag_tensor_bump_version(), as for saved tensors.  Call it while no
 * other thread uses w; it is freed with w.  Results may differ from the
 * unpacked product in the last bits (another summation order).
 */
AG_API int ag_linear_prepack(struct ag_tensor *w);

/* nn functional */
/*
 * Zeroes each element of a with probability p and scales the rest by
 * 1 / (1 - p), while training; p = 0 or !training returns a itself (a new
 * reference).  p outside [0, 1] is AG_EINVAL.  The mask is a function of one
 * draw from g (NULL: this thread's default generator, see ag_manual_seed)
 * and of each element's row-major index, so it does not depend on the
 * thread count.  It is kept as one bit per element for backward.
 */
AG_API struct ag_tensor *ag_dropout(struct ag_tensor *a, double p,
				    bool training, struct ag_generator *g);
/*
 * Batch normalisation over channel dim 1 of x [N, C, ...] (x [N, C],
 * [N, C, L], [N, C, H, W], ...).  running_mean, running_var, weight and
 * bias are [C] or NULL.  Training normalises with the batch's biased
 * variance (it needs more than one value per channel) and, where given,
 * updates the running stats in place, unrecorded, with the unbiased one:
 * running = (1 - momentum) running + momentum batch (a version bump).  Eval
 * normalises with the running stats, which it then requires.  x, weight and
 * bias get gradients; the running stats never do.
 */
AG_API struct ag_tensor *ag_batch_norm(struct ag_tensor *x,
				       struct ag_tensor *running_mean,
				       struct ag_tensor *running_var,
				       struct ag_tensor *weight,
				       struct ag_tensor *bias, bool training,
				       double momentum, double eps);

/*
 * Losses, as torch.nn.functional's.  The _ex variants take options; NULL,
 * or a zeroed struct, means torch's defaults: every field's zero value is
 * its default.
 */
enum ag_reduction {
	AG_REDUCTION_MEAN, /* default */
	AG_REDUCTION_SUM,
	AG_REDUCTION_NONE, /* one loss per element (row for class losses) */
};

struct ag_loss_opts {
	enum ag_reduction reduction;
	/*
	 * Cross-entropy and NLL: [C] class weights; a weighted mean divides
	 * by the sum of the weights of the targets that are not ignored.
	 * BCE: a weight per element, broadcast to the input.  No gradient.
	 */
	struct ag_tensor *weight;
	/* BCE: weight of the positive term, broadcast to the input */
	struct ag_tensor *pos_weight;
	/* cross-entropy: in [0, 1], torch 1.13's formula */
	double label_smoothing;
	/*
	 * Cross-entropy and NLL: rows whose target is ignore_index add
	 * nothing, to the loss or to a mean's divisor.  Only read when
	 * has_ignore_index is set; otherwise it is torch's -100.
	 */
	bool has_ignore_index;
	int64_t ignore_index;
};

/* mean((a - b)^2); a and b broadcast.  Takes only opts' reduction. */
AG_API struct ag_tensor *ag_mse_loss(struct ag_tensor *a, struct ag_tensor *b);
AG_API struct ag_tensor *ag_mse_loss_ex(struct ag_tensor *a,
					struct ag_tensor *b,
					const struct ag_loss_opts *o);
/*
 * log_softmax then NLL, as one node, over logits [N, C] or [N, C, d...]
 * (targets i64 [N] or [N, d...]; also logits [C] with a 0-d target), stable
 * for any finite logits.  A target outside [0, C) that is not ignore_index
 * is AG_EINVAL naming its row (its row-major index in targets).
 */
AG_API struct ag_tensor *ag_cross_entropy(struct ag_tensor *logits,
					  struct ag_tensor *targets);
AG_API struct ag_tensor *ag_cross_entropy_ex(struct ag_tensor *logits,
					     struct ag_tensor *targets,
					     const struct ag_loss_opts *o);
/* -logp[target] per row, shapes as ag_cross_entropy; no label smoothing */
AG_API struct ag_tensor *ag_nll_loss(struct ag_tensor *logp,
				     struct ag_tensor *targets);
AG_API struct ag_tensor *ag_nll_loss_ex(struct ag_tensor *logp,
					struct ag_tensor *targets,
					const struct ag_loss_opts *o);
/*
 * Binary cross-entropy on logits x with targets t of x's shape, in the
 * stable form max(x, 0) - x t + log1p(exp(-|x|)); with pos_weight pw,
 * (1 - t) x + (1 + (pw - 1) t) log(1 + exp(-x)).  x and t get gradients.
 */
AG_API struct ag_tensor *ag_bce_with_logits(struct ag_tensor *logits,
					    struct ag_tensor *targets);
AG_API struct ag_tensor *ag_bce_with_logits_ex(struct ag_tensor *logits,
					       struct ag_tensor *targets,
					       const struct ag_loss_opts *o);

/* convolution and pooling */
/*
 * 2-D convolution (cross-correlation) as torch's conv2d: x [N, Cin, H, W]
 * (or unbatched [Cin, H, W]), weight [Cout, Cin / groups, kH, kW], bias
 * [Cout] or NULL; the result is [N, Cout, OH, OW] (unbatched: [Cout, OH,
 * OW]) with OH = (H + 2 padding[0] - dilation[0] (kH - 1) - 1) / stride[0]
 * + 1, and OW alike from index 1.  o NULL means stride 1, padding 0,
 * dilation 1, groups 1; a 0 in stride, dilation or groups also means 1, so
 * a designated initialiser names only what differs.  Differentiable in x,
 * weight and bias to any order.  Refused: negative options (AG_EINVAL),
 * channels that groups does not divide, a kernel larger than the padded
 * input (AG_ESHAPE).
 */
struct ag_conv2d_opts {
	int64_t stride[2], padding[2], dilation[2];
	int64_t groups;
};
AG_API struct ag_tensor *ag_conv2d(struct ag_tensor *x, struct ag_tensor *w,
				   struct ag_tensor *b,
				   const struct ag_conv2d_opts *o);
/*
 * 2-D pooling over the last two dims of x [N, C, H, W] or [C, H, W], as
 * torch's max_pool2d and avg_pool2d with ceil_mode false: windows of
 * kernel[0] x kernel[1] (height, width), moved by stride (NULL, or a 0
 * entry: the kernel size), over x padded by padding (NULL: 0) on each
 * side, which must be at most half the kernel.  OH = (H + 2 padding[0] -
 * kernel[0]) / stride[0] + 1 must be positive.  Max pool gives NaN where a
 * window holds one and sends the gradient to the window's first maximum
 * (its last NaN).  Avg pool divides by kernel[0] * kernel[1], padding
 * included (count_include_pad).
 */
AG_API struct ag_tensor *ag_max_pool2d(struct ag_tensor *x,
				       const int64_t kernel[2],
				       const int64_t stride[2],
				       const int64_t padding[2]);
AG_API struct ag_tensor *ag_avg_pool2d(struct ag_tensor *x,
				       const int64_t kernel[2],
				       const int64_t stride[2],
				       const int64_t padding[2]);
/*
 * Mean over out_h x out_w windows that tile x's last two dims, as torch's
 * adaptive_avg_pool2d: output row i averages input rows floor(i H / out_h)
 * to ceil((i + 1) H / out_h) - 1, columns alike.
 */
AG_API struct ag_tensor *ag_adaptive_avg_pool2d(struct ag_tensor *x,
						int64_t out_h, int64_t out_w);

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
