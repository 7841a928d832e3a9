// SPDX-License-Identifier: MIT
/*
 * One ISA's kernels.  The build compiles this file three times, with
 * AG_KISA = 0 (generic), 2 (AVX2 + FMA) or 3 (AVX-512 F/BW/DQ/VL) and the
 * matching -m flags, into three static libraries; each defines one table
 * ag_k_isa_<name>.  Nothing else in the file differs between ISAs, so a
 * kernel is written once.
 */
#include "vec.h"
#include "isa.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#define T float
#define V(x) vf_##x
#define W VF_W
#define F(x) x##_f32
#include "kern_tmpl.h"
#undef T
#undef V
#undef W
#undef F

#define T double
#define V(x) vd_##x
#define W VD_W
#define F(x) x##_f64
#include "kern_tmpl.h"
#undef T
#undef V
#undef W
#undef F

#include "kern_ops.h"

#define T float
#define V(x) vf_##x
#define W VF_W
#define F(x) x##_f32
#include "kern_optim.h"
#undef T
#undef V
#undef W
#undef F

#define T double
#define V(x) vd_##x
#define W VD_W
#define F(x) x##_f64
#include "kern_optim.h"
#undef T
#undef V
#undef W
#undef F

#define AG_K_ISA_ENTRIES(S)                                                 \
	.unary_##S = unary_##S, .unary_bwd_##S = unary_bwd_##S,             \
	.binary_##S = binary_##S, .binary_bwd_##S = binary_bwd_##S,         \
	.sum_##S = sum_##S, .dot_##S = dot_##S, .axpy_##S = axpy_##S,       \
	.max_##S = max_##S, .logsumexp_##S = logsumexp_##S,                 \
	.softmax_##S = softmax_##S, .log_softmax_##S = log_softmax_##S,     \
	.softmax_bwd_##S = softmax_bwd_##S,                                 \
	.log_softmax_bwd_##S = log_softmax_bwd_##S, .var_##S = var_##S,     \
	.maxpool2_##S = maxpool2_##S, .maxpool2_bwd_##S = maxpool2_bwd_##S, \
	.bn_affine_##S = bn_affine_##S, .bn_dx_##S = bn_dx_##S,             \
	.bn_sums_##S = bn_sums_##S, .sgd_##S = sgd_##S, .adam_##S = adam_##S

#define STR_(x) #x
#define STR(x) STR_(x)

const struct ag_k_isa CAT(ag_k_isa_, AG_KISA_NAME) = {
	.name = STR(AG_KISA_NAME),
	AG_K_ISA_ENTRIES(f32),
	AG_K_ISA_ENTRIES(f64),
	.dropout_bits = dropout_bits,
};
