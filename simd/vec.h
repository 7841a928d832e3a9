/* SPDX-License-Identifier: MIT */
#ifndef AG_SIMD_VEC_H
#define AG_SIMD_VEC_H

/*
 * The thin vector layer.  kernels.c is compiled once per ISA with
 * AG_KISA set to one of the values below and its own -m flags; this header
 * then maps a fixed set of names onto that ISA, for f32 (vf_*) and f64
 * (vd_*):
 *
 *   vf_t, vf_m, VF_W      vector, mask, lanes
 *   load/loadn/store/storen   (the _n forms touch only the first n lanes,
 *                              so a tail never reads or writes past the end)
 *   stream (non-temporal store to an aligned vector), sfence
 *   set1 add sub mul div fma sqrt rint (to nearest even) floor abs neg copysign
 *   scale2(p, k) = p 2^k for integral k
 *   lt le gt ge eq isnan
 *   and/or sel(m, a, b) = m ? a : b, qbit(q, b): bit b of integral q
 *   exp expm1 log log1p sin cos tan tanh erf erfc atan pow   (SLEEF u10;
 *   erfc is SLEEF's u15, the most accurate it has)
 *   hsum -> double (horizontal sum), hmax
 *
 * and vw_* for f32 data in f64 lanes (VW_W of them, a vd_t): loadf and
 * loadfn widen, storef and storefn round back to f32 (to nearest).
 *
 * The generic path uses one-lane "vectors" and SLEEF's scalar functions,
 * so the same kernel source serves it unchanged.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <sleef.h>

#define AG_KISA_GENERIC 0
#define AG_KISA_AVX2 2
#define AG_KISA_AVX512 3

#ifndef AG_KISA
#error "AG_KISA must be set by the build"
#endif

#if AG_KISA == AG_KISA_AVX512
#include <immintrin.h>
#define AG_KISA_NAME avx512
#define VF_W 16
#define VD_W 8
typedef __m512 vf_t;
typedef __mmask16 vf_m;
typedef __m512d vd_t;
typedef __mmask8 vd_m;

static inline __mmask16 vf_tailmask(int64_t n)
{
	return (__mmask16)((1u << n) - 1u);
}

static inline __mmask8 vd_tailmask(int64_t n)
{
	return (__mmask8)((1u << n) - 1u);
}

#define vf_load(p) _mm512_loadu_ps(p)
#define vf_loadn(p, n) _mm512_maskz_loadu_ps(vf_tailmask(n), p)
#define vf_store(p, v) _mm512_storeu_ps(p, v)
#define vf_storen(p, v, n) _mm512_mask_storeu_ps(p, vf_tailmask(n), v)
/* streaming (non-temporal) store, p aligned to the vector; weakly ordered,
 * so a kernel that streams ends with sfence */
#define vf_stream(p, v) _mm512_stream_ps(p, v)
#define vf_sfence() _mm_sfence()
#define vf_set1(s) _mm512_set1_ps(s)
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_sub(a, b) _mm512_sub_ps(a, b)
#define vf_mul(a, b) _mm512_mul_ps(a, b)
#define vf_div(a, b) _mm512_div_ps(a, b)
#define vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_sqrt(a) _mm512_sqrt_ps(a)
/* p 2^k, k integral (vscalef: exact, NaN passes) */
#define vf_scale2(p, k) _mm512_scalef_ps(p, k)
#define vf_rint(a) \
	_mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vf_floor(a) \
	_mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define vf_abs(a) _mm512_abs_ps(a)
#define vf_neg(a) _mm512_xor_ps(a, _mm512_set1_ps(-0.0f))
#define vf_copysign(m, s)                                        \
	_mm512_or_ps(_mm512_andnot_ps(_mm512_set1_ps(-0.0f), m), \
		     _mm512_and_ps(_mm512_set1_ps(-0.0f), s))
#define vf_lt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ)
#define vf_le(a, b) _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ)
#define vf_gt(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)
#define vf_ge(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ)
#define vf_eq(a, b) _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ)
#define vf_isnan(a) _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q)
#define vf_and(m1, m2) ((__mmask16)((m1) & (m2)))
#define vf_or(m1, m2) ((__mmask16)((m1) | (m2)))
#define vf_sel(m, a, b) _mm512_mask_blend_ps(m, b, a)
/* lanes whose integral value q has bit b set (|q| < 2^31) */
#define vf_qbit(q, b) \
	_mm512_test_epi32_mask(_mm512_cvtps_epi32(q), _mm512_set1_epi32(b))
#define vf_exp(a) Sleef_expf16_u10avx512f(a)
#define vf_expm1(a) Sleef_expm1f16_u10avx512f(a)
#define vf_log(a) Sleef_logf16_u10avx512f(a)
#define vf_log1p(a) Sleef_log1pf16_u10avx512f(a)
#define vf_sin(a) Sleef_sinf16_u10avx512f(a)
#define vf_cos(a) Sleef_cosf16_u10avx512f(a)
#define vf_tan(a) Sleef_tanf16_u10avx512f(a)
#define vf_tanh(a) Sleef_tanhf16_u10avx512f(a)
#define vf_erf(a) Sleef_erff16_u10avx512f(a)
#define vf_erfc(a) Sleef_erfcf16_u15avx512f(a)
#define vf_atan(a) Sleef_atanf16_u10avx512f(a)
#define vf_pow(a, b) Sleef_powf16_u10avx512f(a, b)

#define vd_load(p) _mm512_loadu_pd(p)
#define vd_loadn(p, n) _mm512_maskz_loadu_pd(vd_tailmask(n), p)
#define vd_store(p, v) _mm512_storeu_pd(p, v)
#define vd_storen(p, v, n) _mm512_mask_storeu_pd(p, vd_tailmask(n), v)
#define vd_stream(p, v) _mm512_stream_pd(p, v)
#define vd_sfence() _mm_sfence()
#define vd_set1(s) _mm512_set1_pd(s)
#define vd_add(a, b) _mm512_add_pd(a, b)
#define vd_sub(a, b) _mm512_sub_pd(a, b)
#define vd_mul(a, b) _mm512_mul_pd(a, b)
#define vd_div(a, b) _mm512_div_pd(a, b)
#define vd_fma(a, b, c) _mm512_fmadd_pd(a, b, c)
#define vd_sqrt(a) _mm512_sqrt_pd(a)
#define vd_scale2(p, k) _mm512_scalef_pd(p, k)
#define vd_rint(a) \
	_mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vd_floor(a) \
	_mm512_roundscale_pd(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define vd_abs(a) _mm512_abs_pd(a)
#define vd_neg(a) _mm512_xor_pd(a, _mm512_set1_pd(-0.0))
#define vd_copysign(m, s)                                       \
	_mm512_or_pd(_mm512_andnot_pd(_mm512_set1_pd(-0.0), m), \
		     _mm512_and_pd(_mm512_set1_pd(-0.0), s))
#define vd_lt(a, b) _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ)
#define vd_le(a, b) _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ)
#define vd_gt(a, b) _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ)
#define vd_ge(a, b) _mm512_cmp_pd_mask(a, b, _CMP_GE_OQ)
#define vd_eq(a, b) _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ)
#define vd_isnan(a) _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q)
#define vd_and(m1, m2) ((__mmask8)((m1) & (m2)))
#define vd_or(m1, m2) ((__mmask8)((m1) | (m2)))
#define vd_sel(m, a, b) _mm512_mask_blend_pd(m, b, a)
#define vd_qbit(q, b) \
	_mm512_test_epi64_mask(_mm512_cvtpd_epi64(q), _mm512_set1_epi64(b))
#define vd_exp(a) Sleef_expd8_u10avx512f(a)
#define vd_expm1(a) Sleef_expm1d8_u10avx512f(a)
#define vd_log(a) Sleef_logd8_u10avx512f(a)
#define vd_log1p(a) Sleef_log1pd8_u10avx512f(a)
#define vd_sin(a) Sleef_sind8_u10avx512f(a)
#define vd_cos(a) Sleef_cosd8_u10avx512f(a)
#define vd_tan(a) Sleef_tand8_u10avx512f(a)
#define vd_tanh(a) Sleef_tanhd8_u10avx512f(a)
#define vd_erf(a) Sleef_erfd8_u10avx512f(a)
#define vd_erfc(a) Sleef_erfcd8_u15avx512f(a)
#define vd_atan(a) Sleef_atand8_u10avx512f(a)
#define vd_pow(a, b) Sleef_powd8_u10avx512f(a, b)

/* f32 data summed in f64 lanes: half a float vector widened. */
#define VW_W 8
typedef __m512d vw_t;
#define vw_zero() _mm512_setzero_pd()
#define vw_loadf(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
#define vw_loadfn(p, n) \
	_mm512_cvtps_pd(_mm256_maskz_loadu_ps(vd_tailmask(n), p))
#define vw_storef(p, v) _mm256_storeu_ps(p, _mm512_cvtpd_ps(v))
#define vw_storefn(p, v, n) \
	_mm256_mask_storeu_ps(p, vd_tailmask(n), _mm512_cvtpd_ps(v))
#define vw_add(a, b) _mm512_add_pd(a, b)

static inline double vw_hsum(__m512d v)
{
	return _mm512_reduce_add_pd(v);
}

static inline double vd_hsum(__m512d v)
{
	return _mm512_reduce_add_pd(v);
}

static inline double vf_hsum(__m512 v)
{
	return _mm512_reduce_add_pd(
		       _mm512_cvtps_pd(_mm512_castps512_ps256(v))) +
	       _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm256_castpd_ps(
		       _mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

static inline float vf_hmax(__m512 v)
{
	return _mm512_reduce_max_ps(v);
}

static inline double vd_hmax(__m512d v)
{
	return _mm512_reduce_max_pd(v);
}

static inline bool vf_any(__mmask16 m)
{
	return m != 0;
}

static inline bool vd_any(__mmask8 m)
{
	return m != 0;
}

#elif AG_KISA == AG_KISA_AVX2
#include <immintrin.h>
#define AG_KISA_NAME avx2
#define VF_W 8
#define VD_W 4
typedef __m256 vf_t;
typedef __m256 vf_m;
typedef __m256d vd_t;
typedef __m256d vd_m;

/* Lane i of the mask is all ones when i < n. */
static inline __m256i vf_tailmask(int64_t n)
{
	return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
				  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256i vd_tailmask(int64_t n)
{
	return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n),
				  _mm256_setr_epi64x(0, 1, 2, 3));
}

#define vf_load(p) _mm256_loadu_ps(p)
#define vf_loadn(p, n) _mm256_maskload_ps(p, vf_tailmask(n))
#define vf_store(p, v) _mm256_storeu_ps(p, v)
#define vf_storen(p, v, n) _mm256_maskstore_ps(p, vf_tailmask(n), v)
#define vf_stream(p, v) _mm256_stream_ps(p, v)
#define vf_sfence() _mm_sfence()
#define vf_set1(s) _mm256_set1_ps(s)
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_sub(a, b) _mm256_sub_ps(a, b)
#define vf_mul(a, b) _mm256_mul_ps(a, b)
#define vf_div(a, b) _mm256_div_ps(a, b)
#define vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_sqrt(a) _mm256_sqrt_ps(a)
/* p 2^k for integral k with p 2^k normal (k added to the exponent field);
 * a NaN k converts to INT_MIN, whose shifted value is 0: NaN p passes */
static inline __m256 vf_scale2(__m256 p, __m256 k)
{
	__m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23);

	return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}
#define vf_rint(a) \
	_mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vf_floor(a) _mm256_floor_ps(a)
#define vf_abs(a) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a)
#define vf_neg(a) _mm256_xor_ps(a, _mm256_set1_ps(-0.0f))
#define vf_copysign(m, s)                                        \
	_mm256_or_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), m), \
		     _mm256_and_ps(_mm256_set1_ps(-0.0f), s))
#define vf_lt(a, b) _mm256_cmp_ps(a, b, _CMP_LT_OQ)
#define vf_le(a, b) _mm256_cmp_ps(a, b, _CMP_LE_OQ)
#define vf_gt(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
#define vf_ge(a, b) _mm256_cmp_ps(a, b, _CMP_GE_OQ)
#define vf_eq(a, b) _mm256_cmp_ps(a, b, _CMP_EQ_OQ)
#define vf_isnan(a) _mm256_cmp_ps(a, a, _CMP_UNORD_Q)
#define vf_and(m1, m2) _mm256_and_ps(m1, m2)
#define vf_or(m1, m2) _mm256_or_ps(m1, m2)
#define vf_sel(m, a, b) _mm256_blendv_ps(b, a, m)
#define vf_qbit(q, b)                                                          \
	_mm256_castsi256_ps(_mm256_cmpeq_epi32(                                \
		_mm256_and_si256(_mm256_cvtps_epi32(q), _mm256_set1_epi32(b)), \
		_mm256_set1_epi32(b)))
#define vf_exp(a) Sleef_expf8_u10avx2(a)
#define vf_expm1(a) Sleef_expm1f8_u10avx2(a)
#define vf_log(a) Sleef_logf8_u10avx2(a)
#define vf_log1p(a) Sleef_log1pf8_u10avx2(a)
#define vf_sin(a) Sleef_sinf8_u10avx2(a)
#define vf_cos(a) Sleef_cosf8_u10avx2(a)
#define vf_tan(a) Sleef_tanf8_u10avx2(a)
#define vf_tanh(a) Sleef_tanhf8_u10avx2(a)
#define vf_erf(a) Sleef_erff8_u10avx2(a)
#define vf_erfc(a) Sleef_erfcf8_u15avx2(a)
#define vf_atan(a) Sleef_atanf8_u10avx2(a)
#define vf_pow(a, b) Sleef_powf8_u10avx2(a, b)

#define vd_load(p) _mm256_loadu_pd(p)
#define vd_loadn(p, n) _mm256_maskload_pd(p, vd_tailmask(n))
#define vd_store(p, v) _mm256_storeu_pd(p, v)
#define vd_storen(p, v, n) _mm256_maskstore_pd(p, vd_tailmask(n), v)
#define vd_stream(p, v) _mm256_stream_pd(p, v)
#define vd_sfence() _mm_sfence()
#define vd_set1(s) _mm256_set1_pd(s)
#define vd_add(a, b) _mm256_add_pd(a, b)
#define vd_sub(a, b) _mm256_sub_pd(a, b)
#define vd_mul(a, b) _mm256_mul_pd(a, b)
#define vd_div(a, b) _mm256_div_pd(a, b)
#define vd_fma(a, b, c) _mm256_fmadd_pd(a, b, c)
#define vd_sqrt(a) _mm256_sqrt_pd(a)
static inline __m256d vd_scale2(__m256d p, __m256d k)
{
	__m256i e = _mm256_slli_epi64(
		_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(k)), 52);

	return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), e));
}
#define vd_rint(a) \
	_mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define vd_floor(a) _mm256_floor_pd(a)
#define vd_abs(a) _mm256_andnot_pd(_mm256_set1_pd(-0.0), a)
#define vd_neg(a) _mm256_xor_pd(a, _mm256_set1_pd(-0.0))
#define vd_copysign(m, s)                                       \
	_mm256_or_pd(_mm256_andnot_pd(_mm256_set1_pd(-0.0), m), \
		     _mm256_and_pd(_mm256_set1_pd(-0.0), s))
#define vd_lt(a, b) _mm256_cmp_pd(a, b, _CMP_LT_OQ)
#define vd_le(a, b) _mm256_cmp_pd(a, b, _CMP_LE_OQ)
#define vd_gt(a, b) _mm256_cmp_pd(a, b, _CMP_GT_OQ)
#define vd_ge(a, b) _mm256_cmp_pd(a, b, _CMP_GE_OQ)
#define vd_eq(a, b) _mm256_cmp_pd(a, b, _CMP_EQ_OQ)
#define vd_isnan(a) _mm256_cmp_pd(a, a, _CMP_UNORD_Q)
#define vd_and(m1, m2) _mm256_and_pd(m1, m2)
#define vd_or(m1, m2) _mm256_or_pd(m1, m2)
#define vd_sel(m, a, b) _mm256_blendv_pd(b, a, m)
/* AVX2 has no double -> int64 conversion; q - 2 floor(q / 2) etc. */
static inline __m256d vd_qbit(__m256d q, int b)
{
	__m256d h = _mm256_floor_pd(_mm256_div_pd(q, _mm256_set1_pd(b)));
	__m256d f = _mm256_floor_pd(_mm256_mul_pd(h, _mm256_set1_pd(0.5)));

	return _mm256_cmp_pd(_mm256_mul_pd(f, _mm256_set1_pd(2)), h,
			     _CMP_NEQ_OQ);
}
#define vd_exp(a) Sleef_expd4_u10avx2(a)
#define vd_expm1(a) Sleef_expm1d4_u10avx2(a)
#define vd_log(a) Sleef_logd4_u10avx2(a)
#define vd_log1p(a) Sleef_log1pd4_u10avx2(a)
#define vd_sin(a) Sleef_sind4_u10avx2(a)
#define vd_cos(a) Sleef_cosd4_u10avx2(a)
#define vd_tan(a) Sleef_tand4_u10avx2(a)
#define vd_tanh(a) Sleef_tanhd4_u10avx2(a)
#define vd_erf(a) Sleef_erfd4_u10avx2(a)
#define vd_erfc(a) Sleef_erfcd4_u15avx2(a)
#define vd_atan(a) Sleef_atand4_u10avx2(a)
#define vd_pow(a, b) Sleef_powd4_u10avx2(a, b)

#define VW_W 4
typedef __m256d vw_t;
#define vw_zero() _mm256_setzero_pd()
#define vw_loadf(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
#define vw_loadfn(p, n) _mm256_cvtps_pd(_mm_maskload_ps(p, vw_tailmask(n)))
#define vw_storef(p, v) _mm_storeu_ps(p, _mm256_cvtpd_ps(v))
#define vw_storefn(p, v, n) \
	_mm_maskstore_ps(p, vw_tailmask(n), _mm256_cvtpd_ps(v))
#define vw_add(a, b) _mm256_add_pd(a, b)

/* Lane i of the 4-lane f32 mask is all ones when i < n. */
static inline __m128i vw_tailmask(int64_t n)
{
	return _mm_cmpgt_epi32(_mm_set1_epi32((int)n),
			       _mm_setr_epi32(0, 1, 2, 3));
}

static inline double vd_hsum(__m256d v)
{
	__m128d s = _mm_add_pd(_mm256_castpd256_pd128(v),
			       _mm256_extractf128_pd(v, 1));

	return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

static inline double vw_hsum(__m256d v)
{
	return vd_hsum(v);
}

static inline double vf_hsum(__m256 v)
{
	return vd_hsum(_mm256_cvtps_pd(_mm256_castps256_ps128(v))) +
	       vd_hsum(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

static inline float vf_hmax(__m256 v)
{
	float t[8];
	float m;
	int i;

	_mm256_storeu_ps(t, v);
	m = t[0];
	for (i = 1; i < 8; i++)
		m = t[i] > m ? t[i] : m;
	return m;
}

static inline double vd_hmax(__m256d v)
{
	double t[4];
	double m;
	int i;

	_mm256_storeu_pd(t, v);
	m = t[0];
	for (i = 1; i < 4; i++)
		m = t[i] > m ? t[i] : m;
	return m;
}

static inline bool vf_any(__m256 m)
{
	return _mm256_movemask_ps(m) != 0;
}

static inline bool vd_any(__m256d m)
{
	return _mm256_movemask_pd(m) != 0;
}

#elif AG_KISA == AG_KISA_GENERIC
#define AG_KISA_NAME generic
#define VF_W 1
#define VD_W 1
typedef float vf_t;
typedef bool vf_m;
typedef double vd_t;
typedef bool vd_m;

#define vf_load(p) (*(p))
#define vf_loadn(p, n) (*(p))
#define vf_store(p, v) (*(p) = (v))
#define vf_storen(p, v, n) (*(p) = (v))
#define vf_stream(p, v) (*(p) = (v))
#define vf_sfence() ((void)0)
#define vf_set1(s) ((float)(s))
#define vf_add(a, b) ((a) + (b))
#define vf_sub(a, b) ((a) - (b))
#define vf_mul(a, b) ((a) * (b))
#define vf_div(a, b) ((a) / (b))
/* fused, as on the vector paths, so generic gives the same results (glibc
 * picks the hardware instruction when the CPU has one) */
#define vf_fma(a, b, c) fmaf(a, b, c)
#define vf_sqrt(a) sqrtf(a)
/* the guard keeps the conversion defined; NaN k gives NaN */
#define vf_scale2(p, k) (fabsf(k) < 256 ? ldexpf(p, (int)(k)) : (p) * (k))
#define vf_rint(a) nearbyintf(a)
#define vf_floor(a) floorf(a)
#define vf_abs(a) fabsf(a)
#define vf_neg(a) (-(a))
#define vf_copysign(m, s) copysignf(m, s)
#define vf_lt(a, b) ((a) < (b))
#define vf_le(a, b) ((a) <= (b))
#define vf_gt(a, b) ((a) > (b))
#define vf_ge(a, b) ((a) >= (b))
#define vf_eq(a, b) ((a) == (b))
#define vf_isnan(a) isnan(a)
#define vf_and(m1, m2) ((m1) && (m2))
#define vf_or(m1, m2) ((m1) || (m2))
#define vf_sel(m, a, b) ((m) ? (a) : (b))
/* out-of-range lanes (huge, inf, NaN) are never used; the guard only keeps
 * the conversion defined */
#define vf_qbit(q, b) (fabsf(q) < 0x1p30f && (((int32_t)(q)) & (b)) != 0)
#define vf_exp(a) Sleef_expf_u10(a)
#define vf_expm1(a) Sleef_expm1f_u10(a)
#define vf_log(a) Sleef_logf_u10(a)
#define vf_log1p(a) Sleef_log1pf_u10(a)
#define vf_sin(a) Sleef_sinf_u10(a)
#define vf_cos(a) Sleef_cosf_u10(a)
#define vf_tan(a) Sleef_tanf_u10(a)
#define vf_tanh(a) Sleef_tanhf_u10(a)
#define vf_erf(a) Sleef_erff_u10(a)
#define vf_erfc(a) Sleef_erfcf_u15(a)
#define vf_atan(a) Sleef_atanf_u10(a)
#define vf_pow(a, b) Sleef_powf_u10(a, b)

#define vd_load(p) (*(p))
#define vd_loadn(p, n) (*(p))
#define vd_store(p, v) (*(p) = (v))
#define vd_storen(p, v, n) (*(p) = (v))
#define vd_stream(p, v) (*(p) = (v))
#define vd_sfence() ((void)0)
#define vd_set1(s) ((double)(s))
#define vd_add(a, b) ((a) + (b))
#define vd_sub(a, b) ((a) - (b))
#define vd_mul(a, b) ((a) * (b))
#define vd_div(a, b) ((a) / (b))
#define vd_fma(a, b, c) fma(a, b, c)
#define vd_sqrt(a) sqrt(a)
#define vd_scale2(p, k) (fabs(k) < 4096 ? ldexp(p, (int)(k)) : (p) * (k))
#define vd_rint(a) nearbyint(a)
#define vd_floor(a) floor(a)
#define vd_abs(a) fabs(a)
#define vd_neg(a) (-(a))
#define vd_copysign(m, s) copysign(m, s)
#define vd_lt(a, b) ((a) < (b))
#define vd_le(a, b) ((a) <= (b))
#define vd_gt(a, b) ((a) > (b))
#define vd_ge(a, b) ((a) >= (b))
#define vd_eq(a, b) ((a) == (b))
#define vd_isnan(a) isnan(a)
#define vd_and(m1, m2) ((m1) && (m2))
#define vd_or(m1, m2) ((m1) || (m2))
#define vd_sel(m, a, b) ((m) ? (a) : (b))
#define vd_qbit(q, b) (fabs(q) < 0x1p62 && (((int64_t)(q)) & (b)) != 0)
#define vd_exp(a) Sleef_exp_u10(a)
#define vd_expm1(a) Sleef_expm1_u10(a)
#define vd_log(a) Sleef_log_u10(a)
#define vd_log1p(a) Sleef_log1p_u10(a)
#define vd_sin(a) Sleef_sin_u10(a)
#define vd_cos(a) Sleef_cos_u10(a)
#define vd_tan(a) Sleef_tan_u10(a)
#define vd_tanh(a) Sleef_tanh_u10(a)
#define vd_erf(a) Sleef_erf_u10(a)
#define vd_erfc(a) Sleef_erfc_u15(a)
#define vd_atan(a) Sleef_atan_u10(a)
#define vd_pow(a, b) Sleef_pow_u10(a, b)

#define VW_W 1
typedef double vw_t;
#define vw_zero() 0.0
#define vw_loadf(p) ((double)*(p))
#define vw_loadfn(p, n) ((void)(n), (double)*(p))
#define vw_storef(p, v) (*(p) = (float)(v))
#define vw_storefn(p, v, n) ((void)(n), *(p) = (float)(v))
#define vw_add(a, b) ((a) + (b))
#define vw_hsum(v) (v)
#define vd_hsum(v) (v)
#define vf_hsum(v) ((double)(v))
#define vf_hmax(v) (v)
#define vd_hmax(v) (v)
#define vf_any(m) (m)
#define vd_any(m) (m)

#else
#error "unknown AG_KISA"
#endif

#endif /* AG_SIMD_VEC_H */
