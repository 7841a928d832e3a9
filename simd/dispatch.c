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

/*
 * One definition per dtype of the elementwise entry points and their
 * parallel split.  The pieces of a split are independent spans, so a
 * stride-0 (reducing) gradient output is never split.
 */
#define AG_K_DISPATCH(T, S)                                                    \
	struct unary_args_##S {                                                \
		enum ag_k_unary op;                                            \
		const T *x;                                                    \
		int64_t incx;                                                  \
		T *y;                                                          \
		int64_t incy;                                                  \
		const struct ag_k_params *p;                                   \
		const struct ag_k_isa *k;                                      \
	};                                                                     \
                                                                               \
	static void unary_part_##S(int64_t b, int64_t e, void *arg)            \
	{                                                                      \
		struct unary_args_##S *u = arg;                                \
                                                                               \
		u->k->unary_##S(u->op, e - b, u->x + b * u->incx, u->incx,     \
				u->y + b * u->incy, u->incy, u->p);            \
	}                                                                      \
                                                                               \
	void ag_k_unary_##S(enum ag_k_unary op, int64_t n, const T *x,         \
			    int64_t incx, T *y, int64_t incy,                  \
			    const struct ag_k_params *p)                       \
	{                                                                      \
		const struct ag_k_isa *k = ag_k_isa_current();                 \
		ag_k_parallel_for_fn pf = ag_k_get_parallel_for();             \
		int64_t grain = unary_grain(op);                               \
                                                                               \
		if (pf && n >= 2 * grain) {                                    \
			struct unary_args_##S u = {                            \
				op, x, incx, y, incy, p, k                     \
			};                                                     \
                                                                               \
			pf(n, grain, unary_part_##S, &u);                      \
			return;                                                \
		}                                                              \
		k->unary_##S(op, n, x, incx, y, incy, p);                      \
	}                                                                      \
                                                                               \
	struct unary_bwd_args_##S {                                            \
		enum ag_k_unary op;                                            \
		const T *g, *x, *y;                                            \
		int64_t incg, incx, incy;                                      \
		T *gx;                                                         \
		int64_t incgx;                                                 \
		const struct ag_k_params *p;                                   \
		const struct ag_k_isa *k;                                      \
	};                                                                     \
                                                                               \
	static void unary_bwd_part_##S(int64_t b, int64_t e, void *arg)        \
	{                                                                      \
		struct unary_bwd_args_##S *u = arg;                            \
                                                                               \
		u->k->unary_bwd_##S(u->op, e - b, u->g + b * u->incg, u->incg, \
				    u->x ? u->x + b * u->incx : NULL, u->incx, \
				    u->y ? u->y + b * u->incy : NULL, u->incy, \
				    u->gx + b * u->incgx, u->incgx, u->p);     \
	}                                                                      \
                                                                               \
	void ag_k_unary_bwd_##S(enum ag_k_unary op, int64_t n, const T *g,     \
				int64_t incg, const T *x, int64_t incx,        \
				const T *y, int64_t incy, T *gx,               \
				int64_t incgx, const struct ag_k_params *p)    \
	{                                                                      \
		const struct ag_k_isa *k = ag_k_isa_current();                 \
		ag_k_parallel_for_fn pf = ag_k_get_parallel_for();             \
		int64_t grain = unary_grain(op);                               \
                                                                               \
		if (pf && n >= 2 * grain && incgx != 0) {                      \
			struct unary_bwd_args_##S u = { op,    g,    x,	   y,  \
							incg,  incx, incy, gx, \
							incgx, p,    k };      \
                                                                               \
			pf(n, grain, unary_bwd_part_##S, &u);                  \
			return;                                                \
		}                                                              \
		k->unary_bwd_##S(op, n, g, incg, x, incx, y, incy, gx, incgx,  \
				 p);                                           \
	}                                                                      \
                                                                               \
	struct binary_args_##S {                                               \
		enum ag_k_binary op;                                           \
		const T *a, *b;                                                \
		int64_t inca, incb;                                            \
		T *y;                                                          \
		int64_t incy;                                                  \
		const struct ag_k_isa *k;                                      \
	};                                                                     \
                                                                               \
	static void binary_part_##S(int64_t b, int64_t e, void *arg)           \
	{                                                                      \
		struct binary_args_##S *u = arg;                               \
                                                                               \
		u->k->binary_##S(u->op, e - b, u->a + b * u->inca, u->inca,    \
				 u->b + b * u->incb, u->incb,                  \
				 u->y + b * u->incy, u->incy);                 \
	}                                                                      \
                                                                               \
	void ag_k_binary_##S(enum ag_k_binary op, int64_t n, const T *a,       \
			     int64_t inca, const T *b, int64_t incb, T *y,     \
			     int64_t incy)                                     \
	{                                                                      \
		const struct ag_k_isa *k = ag_k_isa_current();                 \
		ag_k_parallel_for_fn pf = ag_k_get_parallel_for();             \
		int64_t grain = binary_grain(op);                              \
                                                                               \
		if (pf && n >= 2 * grain) {                                    \
			struct binary_args_##S u = { op,   a, b,    inca,      \
						     incb, y, incy, k };       \
                                                                               \
			pf(n, grain, binary_part_##S, &u);                     \
			return;                                                \
		}                                                              \
		k->binary_##S(op, n, a, inca, b, incb, y, incy);               \
	}                                                                      \
                                                                               \
	struct binary_bwd_args_##S {                                           \
		enum ag_k_binary op;                                           \
		const T *g, *a, *b;                                            \
		int64_t incg, inca, incb;                                      \
		T *ga, *gb;                                                    \
		int64_t incga, incgb;                                          \
		const struct ag_k_isa *k;                                      \
	};                                                                     \
                                                                               \
	static void binary_bwd_part_##S(int64_t b, int64_t e, void *arg)       \
	{                                                                      \
		struct binary_bwd_args_##S *u = arg;                           \
                                                                               \
		u->k->binary_bwd_##S(u->op, e - b, u->g + b * u->incg,         \
				     u->incg, u->a + b * u->inca, u->inca,     \
				     u->b + b * u->incb, u->incb,              \
				     u->ga ? u->ga + b * u->incga : NULL,      \
				     u->incga,                                 \
				     u->gb ? u->gb + b * u->incgb : NULL,      \
				     u->incgb);                                \
	}                                                                      \
                                                                               \
	void ag_k_binary_bwd_##S(enum ag_k_binary op, int64_t n, const T *g,   \
				 int64_t incg, const T *a, int64_t inca,       \
				 const T *b, int64_t incb, T *ga,              \
				 int64_t incga, T *gb, int64_t incgb)          \
	{                                                                      \
		const struct ag_k_isa *k = ag_k_isa_current();                 \
		ag_k_parallel_for_fn pf = ag_k_get_parallel_for();             \
		int64_t grain = binary_grain(op);                              \
                                                                               \
		if (pf && n >= 2 * grain && (!ga || incga != 0) &&             \
		    (!gb || incgb != 0)) {                                     \
			struct binary_bwd_args_##S u = {                       \
				op,   g,  a,  b,     incg,  inca,              \
				incb, ga, gb, incga, incgb, k                  \
			};                                                     \
                                                                               \
			pf(n, grain, binary_bwd_part_##S, &u);                 \
			return;                                                \
		}                                                              \
		k->binary_bwd_##S(op, n, g, incg, a, inca, b, incb, ga, incga, \
				  gb, incgb);                                  \
	}                                                                      \
                                                                               \
	double ag_k_sum_##S(int64_t n, const T *x, int64_t incx)               \
	{                                                                      \
		return ag_k_isa_current()->sum_##S(n, x, incx);                \
	}                                                                      \
                                                                               \
	double ag_k_dot_##S(int64_t n, const T *a, int64_t inca, const T *b,   \
			    int64_t incb)                                      \
	{                                                                      \
		return ag_k_isa_current()->dot_##S(n, a, inca, b, incb);       \
	}                                                                      \
                                                                               \
	void ag_k_axpy_##S(int64_t n, T alpha, const T *x, int64_t incx, T *y, \
			   int64_t incy)                                       \
	{                                                                      \
		ag_k_isa_current()->axpy_##S(n, alpha, x, incx, y, incy);      \
	}                                                                      \
                                                                               \
	/* y + 1 * x under one fma rounds once, exactly as y + x */            \
	void ag_k_acc_##S(int64_t n, const T *x, int64_t incx, T *y,           \
			  int64_t incy)                                        \
	{                                                                      \
		ag_k_isa_current()->axpy_##S(n, 1, x, incx, y, incy);          \
	}                                                                      \
                                                                               \
	void ag_k_fill_##S(int64_t n, T v, T *y, int64_t incy)                 \
	{                                                                      \
		int64_t i;                                                     \
                                                                               \
		if (incy == 1) {                                               \
			for (i = 0; i < n; i++)                                \
				y[i] = v;                                      \
			return;                                                \
		}                                                              \
		for (i = 0; i < n; i++)                                        \
			y[i * incy] = v;                                       \
	}                                                                      \
                                                                               \
	double ag_k_max_##S(int64_t n, const T *x, int64_t incx,               \
			    int64_t *argmax)                                   \
	{                                                                      \
		return ag_k_isa_current()->max_##S(n, x, incx, argmax);        \
	}                                                                      \
                                                                               \
	double ag_k_logsumexp_##S(int64_t n, const T *x, int64_t incx)         \
	{                                                                      \
		return ag_k_isa_current()->logsumexp_##S(n, x, incx);          \
	}                                                                      \
                                                                               \
	void ag_k_softmax_##S(int64_t n, const T *x, int64_t incx, T *y,       \
			      int64_t incy)                                    \
	{                                                                      \
		ag_k_isa_current()->softmax_##S(n, x, incx, y, incy);          \
	}                                                                      \
                                                                               \
	void ag_k_log_softmax_##S(int64_t n, const T *x, int64_t incx, T *y,   \
				  int64_t incy)                                \
	{                                                                      \
		ag_k_isa_current()->log_softmax_##S(n, x, incx, y, incy);      \
	}                                                                      \
                                                                               \
	void ag_k_softmax_bwd_##S(int64_t n, const T *g, int64_t incg,         \
				  const T *y, int64_t incy, T *gx,             \
				  int64_t incgx)                               \
	{                                                                      \
		ag_k_isa_current()->softmax_bwd_##S(n, g, incg, y, incy, gx,   \
						    incgx);                    \
	}                                                                      \
                                                                               \
	void ag_k_log_softmax_bwd_##S(int64_t n, const T *g, int64_t incg,     \
				      const T *y, int64_t incy, T *gx,         \
				      int64_t incgx)                           \
	{                                                                      \
		ag_k_isa_current()->log_softmax_bwd_##S(n, g, incg, y, incy,   \
							gx, incgx);            \
	}                                                                      \
                                                                               \
	double ag_k_var_##S(int64_t n, const T *x, int64_t incx,               \
			    int64_t correction, double *mean)                  \
	{                                                                      \
		return ag_k_isa_current()->var_##S(n, x, incx, correction,     \
						   mean);                      \
	}

AG_K_DISPATCH(float, f32)
AG_K_DISPATCH(double, f64)
