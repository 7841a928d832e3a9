// SPDX-License-Identifier: MIT
/*
 * The public ag_k_* entry points: pick the ISA table once, then call
 * through it.  Large elementwise spans are split over libag's pool once the
 * engine registers it with ag_k_set_parallel_for().
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

static const struct ag_k_isa *ag_k_ops;
static pthread_once_t ag_k_once = PTHREAD_ONCE_INIT;

static bool cpu_has(const char *name)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_cpu_init();
	if (!strcmp(name, "avx2"))
		return __builtin_cpu_supports("avx2") &&
		       __builtin_cpu_supports("fma");
	if (!strcmp(name, "avx512"))
		return __builtin_cpu_supports("avx512f") &&
		       __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512dq") &&
		       __builtin_cpu_supports("avx512vl");
#endif
	return !strcmp(name, "generic");
}

const struct ag_k_isa *ag_k_isa_by_name(const char *name)
{
	if (!name)
		return NULL;
	if (!strcmp(name, "generic"))
		return &ag_k_isa_generic;
#ifdef AG_K_HAVE_AVX512
	if (!strcmp(name, "avx512") && cpu_has("avx512"))
		return &ag_k_isa_avx512;
#endif
#ifdef AG_K_HAVE_AVX2
	if (!strcmp(name, "avx2") && cpu_has("avx2"))
		return &ag_k_isa_avx2;
#endif
	return NULL;
}

static void ag_k_choose(void)
{
	static const char *const order[] = { "avx512", "avx2", "generic" };
	const struct ag_k_isa *k = NULL;
	const char *want = getenv("AG_ISA");
	size_t i;

	if (want && *want) {
		k = ag_k_isa_by_name(want);
		/* A forced path this CPU or build lacks must not crash the
		 * program: say so and take the best one available. */
		if (!k)
			fprintf(stderr,
				"libag: AG_ISA=%s is not available on this CPU or build; using the best available path\n",
				want);
	}
	for (i = 0; !k && i < sizeof(order) / sizeof(order[0]); i++)
		k = ag_k_isa_by_name(order[i]);
	__atomic_store_n(&ag_k_ops, k, __ATOMIC_RELEASE);
}

const struct ag_k_isa *ag_k_isa_current(void)
{
	const struct ag_k_isa *k = __atomic_load_n(&ag_k_ops, __ATOMIC_ACQUIRE);

	if (__builtin_expect(k != NULL, 1))
		return k;
	pthread_once(&ag_k_once, ag_k_choose);
	return __atomic_load_n(&ag_k_ops, __ATOMIC_ACQUIRE);
}

const char *ag_k_isa_name(void)
{
	return ag_k_isa_current()->name;
}

/*
 * Intra-op parallelism hook.  simd/ must not depend on the engine, so the
 * engine hands its ag_parallel_for() over once its pool exists.  Spans
 * shorter than the grain run inline.
 */
static ag_k_parallel_for_fn ag_k_pfor;

void ag_k_set_parallel_for(ag_k_parallel_for_fn fn)
{
	__atomic_store_n(&ag_k_pfor, fn, __ATOMIC_RELEASE);
}

ag_k_parallel_for_fn ag_k_get_parallel_for(void)
{
	return __atomic_load_n(&ag_k_pfor, __ATOMIC_ACQUIRE);
}

/* Splitting pays only when each part is large; see docs/simd.md. */
#define AG_K_PAR_GRAIN_CHEAP (1 << 16)
#define AG_K_PAR_GRAIN_TRANSC (1 << 13)

static bool unary_is_cheap(enum ag_k_unary op)
{
	switch (op) {
	case AG_K_NEG:
	case AG_K_ABS:
	case AG_K_SQUARE:
	case AG_K_RELU:
	case AG_K_CLAMP:
	case AG_K_LEAKY_RELU:
	case AG_K_ADD_SCALAR:
	case AG_K_MUL_SCALAR:
	case AG_K_RSUB_SCALAR:
	case AG_K_RECIPROCAL:
	case AG_K_SQRT:
	case AG_K_RSQRT:
		return true;
	default:
		return false;
	}
}

static int64_t unary_grain(enum ag_k_unary op)
{
	return unary_is_cheap(op) ? AG_K_PAR_GRAIN_CHEAP :
				    AG_K_PAR_GRAIN_TRANSC;
}

static int64_t binary_grain(enum ag_k_binary op)
{
	return op == AG_K_POW ? AG_K_PAR_GRAIN_TRANSC : AG_K_PAR_GRAIN_CHEAP;
}

unsigned ag_k_unary_bwd_needs(enum ag_k_unary op)
{
	switch (op) {
	case AG_K_NEG:
	case AG_K_ADD_SCALAR:
	case AG_K_MUL_SCALAR:
	case AG_K_RSUB_SCALAR:
		return 0;
	case AG_K_EXP:
	case AG_K_EXPM1:
	case AG_K_SQRT:
	case AG_K_RSQRT:
	case AG_K_RECIPROCAL:
	case AG_K_TAN:
	case AG_K_TANH:
	case AG_K_SIGMOID:
	case AG_K_RELU:
		return AG_K_NEEDS_Y;
	default:
		return AG_K_NEEDS_X;
	}
}

#define T float
#define F(x) x##_f32
#include "dispatch_tmpl.h"
#undef T
#undef F

#define T double
#define F(x) x##_f64
#include "dispatch_tmpl.h"
#undef T
#undef F

/* ---- kern_ops.h: single ops, one call per plane or run, never split ---- */

#define AG_K_OPS_ENTRIES(T, S)                                                 \
	void ag_k_maxpool2_##S(int64_t oh, int64_t ow, const T *x,             \
			       int64_t ldx, int64_t w, T *y, int64_t *idx)     \
	{                                                                      \
		ag_k_isa_current()->maxpool2_##S(oh, ow, x, ldx, w, y, idx);   \
	}                                                                      \
                                                                               \
	void ag_k_maxpool2_bwd_##S(int64_t h, int64_t w, const T *g,           \
				   const int64_t *idx, T *dx)                  \
	{                                                                      \
		ag_k_isa_current()->maxpool2_bwd_##S(h, w, g, idx, dx);        \
	}                                                                      \
                                                                               \
	void ag_k_bn_affine_##S(int64_t runs, int64_t len, int64_t ld,         \
				const T *x, T *y, T a, T b)                    \
	{                                                                      \
		ag_k_isa_current()->bn_affine_##S(runs, len, ld, x, y, a, b);  \
	}                                                                      \
                                                                               \
	void ag_k_bn_dx_##S(int64_t runs, int64_t len, int64_t ld, const T *g, \
			    const T *x, T *dx, double m, double A, double B,   \
			    double C)                                          \
	{                                                                      \
		ag_k_isa_current()->bn_dx_##S(runs, len, ld, g, x, dx, m, A,   \
					      B, C);                           \
	}                                                                      \
                                                                               \
	void ag_k_bn_sums_##S(int64_t runs, int64_t len, int64_t ld,           \
			      const T *g, const T *x, double m, double *sg,    \
			      double *sgx)                                     \
	{                                                                      \
		ag_k_isa_current()->bn_sums_##S(runs, len, ld, g, x, m, sg,    \
						sgx);                          \
	}                                                                      \
                                                                               \
	void ag_k_sgd_##S(int64_t n, T *p, const T *g, T *buf,                 \
			  const struct ag_k_sgd *a)                            \
	{                                                                      \
		ag_k_isa_current()->sgd_##S(n, p, g, buf, a);                  \
	}                                                                      \
                                                                               \
	void ag_k_adam_##S(int64_t n, T *p, const T *g, T *m, T *v, T *vmax,   \
			   const struct ag_k_adam *a)                          \
	{                                                                      \
		ag_k_isa_current()->adam_##S(n, p, g, m, v, vmax, a);          \
	}

AG_K_OPS_ENTRIES(float, f32)
AG_K_OPS_ENTRIES(double, f64)

void ag_k_dropout_bits(uint64_t key, int64_t first, int64_t n, uint64_t below,
		       uint64_t *bits)
{
	ag_k_isa_current()->dropout_bits(key, first, n, below, bits);
}
