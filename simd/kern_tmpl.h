/* SPDX-License-Identifier: MIT */
/*
 * The kernels, written once over the vector layer in vec.h.  kernels.c
 * includes this file twice, with
 *   T     the element type (float, double)
 *   V(x)  the vector layer's name for x at that type (vf_x, vd_x)
 *   W     lanes per vector
 *   F(x)  x with the type suffix (x_f32, x_f64)
 * No include guard on purpose.
 *
 * Every public kernel takes spans (base, stride).  The work is done by a
 * contiguous kernel ("_c") that runs whole vectors and one masked tail.
 * Spans that are not contiguous go through small on-stack chunks: strided
 * inputs are gathered, a broadcast input (stride 0) fills its chunk once,
 * strided outputs are scattered back.  A gradient output with stride 0 is a
 * broadcast operand's gradient: the span's contributions are summed
 * (pairwise, in f64) and added to that one element.
 */

#define VT V(t)

/* Elements per on-stack chunk: small enough for L1, large enough that the
 * per-chunk overhead vanishes. */
#define CH 512

/* exp(-|x|) never overflows, so the far negative tail keeps its relative
 * accuracy (1 / (1 + exp(-x)) would give 0 there). */
static inline VT F(v_sigmoid)(VT v)
{
	VT one = V(set1)(1);
	VT e = V(exp)(V(neg)(V(abs)(v)));

	return V(div)(V(sel)(V(ge)(v, V(set1)(0)), one, e), V(add)(one, e));
}

/* x * sigmoid(x) with one rounding fewer: x / (1 + e) or x e / (1 + e) */
static inline VT F(v_silu)(VT v)
{
	VT e = V(exp)(V(neg)(V(abs)(v)));

	return V(div)(V(sel)(V(ge)(v, V(set1)(0)), v, V(mul)(v, e)),
		      V(add)(V(set1)(1), e));
}

/* SLEEF's f64 exp returns inf for the last few x below log(DBL_MAX)
 * (709.782712893384 gives inf, not 1.7976931348622e308); exp(x - 1) e is
 * within 2 ULP there (x - 1 is exact). */
static inline VT F(v_exp)(VT v)
{
	VT r = V(exp)(v);
	V(m) m;

	if (sizeof(T) == 4)
		return r;
	m = V(gt)(v, V(set1)(709.78));
	if (V(any)(m))
		r = V(sel)(m,
			   V(mul)(V(exp)(V(sub)(v, V(set1)(1))),
				  V(set1)(2.71828182845904523536)),
			   r);
	return r;
}

/* SLEEF's log1p overflows to inf above about 1e38 (f32) / 1e307 (f64);
 * there log1p(x) and log(x) are the same number. */
static inline VT F(v_log1p)(VT v)
{
	VT big = V(set1)(sizeof(T) == 4 ? 0x1p100 : 0x1p1000);
	VT r = V(log1p)(v);
	V(m) m = V(gt)(v, big);

	if (V(any)(m))
		r = V(sel)(m, V(log)(v), r);
	return r;
}

/*
 * Phi(x) = 0.5 erfc(-x / sqrt 2): no cancellation for negative x, where
 * torch's 0.5 (1 + erf(x / sqrt 2)) loses everything.  erfc's condition
 * number grows like 2 z^2, so the rounding of u = x / sqrt 2 alone would
 * cost ~10 ULP near x = -3; the rounding error u_lo (exact with an fma) is
 * folded back in to first order with d log erfc(z) / dz ~ -(z + sqrt(z^2 +
 * 4 / pi)), an approximation within 5%, which is plenty for a correction.
 */
static inline VT F(v_phi)(VT v)
{
	const T c_hi = (T)0.70710678118654752440084436210484903L;
	const T c_lo =
		(T)(0.70710678118654752440084436210484903L - (long double)c_hi);
	VT u = V(mul)(v, V(set1)(c_hi));
	VT u_lo = V(fma)(v, V(set1)(c_lo), V(fma)(v, V(set1)(c_hi), V(neg)(u)));
	/* |u| <= 30 keeps u^2 finite and u_lo a number (inf - inf is NaN);
	 * erfc is 0 or 2 well before that */
	V(m) far = V(gt)(V(abs)(u), V(set1)(30));
	VT uc = V(sel)(far, V(copysign)(V(set1)(30), u), u);
	VT r = V(sub)(V(sqrt)(V(fma)(uc, uc, V(set1)(1.27323954473516268615))),
		      uc);
	VT e = V(erfc)(V(neg)(u));

	u_lo = V(sel)(far, V(set1)(0), u_lo);
	return V(mul)(V(mul)(V(set1)(0.5), e), V(fma)(u_lo, r, V(set1)(1)));
}

/*
 * e^t for 0 <= t <= 20 (or NaN), f32, inline: SLEEF's exp is a call into
 * libsleef, and around a call every vector register the caller keeps live
 * is spilled (the SysV ABI saves none of them), which cost tanh more than
 * the exp itself.  k = rint(t / ln 2), r = t - k ln 2 in [-ln2/2, ln2/2]
 * with ln 2 = l1 + l2 in floats: t - k l1 is exact in one fma (t and k l1
 * lie on a common grid of 2^-25 here and |r| < 0.5), - k l2 rounds once.
 * e^r by its Taylor series to r^7 (truncation < 6e-9), then times 2^k,
 * exact.  Within 0.7 ULP; only tanh uses it, so no range checks.
 */
static inline VT F(v_exp_0_20)(VT t)
{
	VT k = V(rint)(V(mul)(t, V(set1)(1.44269502162933349609375)));
	VT r = V(fma)(V(neg)(k), V(set1)(0.693147182464599609375), t);
	VT p;

	r = V(fma)(V(neg)(k), V(set1)(-1.904654212125933636e-09), r);
	p = V(set1)(1.0 / 5040);
	p = V(fma)(p, r, V(set1)(1.0 / 720));
	p = V(fma)(p, r, V(set1)(1.0 / 120));
	p = V(fma)(p, r, V(set1)(1.0 / 24));
	p = V(fma)(p, r, V(set1)(1.0 / 6));
	p = V(fma)(p, r, V(set1)(0.5));
	p = V(fma)(p, r, V(set1)(1));
	p = V(fma)(p, r, V(set1)(1));
	return V(scale2)(p, k);
}

/*
 * f32 tanh, about 5x cheaper than SLEEF's tanhf_u10 (expm1 is the slow
 * part of that, so (expm1(2x) / (expm1(2x) + 2) does not help), within 2
 * ULP:
 *   |x| <  0.5: x + x^3 p(x^2), p of degree 4 fitted to (tanh x - x) / x^3
 *               on [0, 0.25] (interpolation at Chebyshev nodes, then
 *               rounded to floats; adds < 0.07 ULP to the final rounding).
 *   |x| >= 0.5: (e - 1) / (e + 1), e = exp(2 |x|) (v_exp_0_20): e - 1 is
 *               exact for 2^0.5 <= e < 2^24 and exp's error reaches the
 *               quotient damped by 2e / (e^2 - 1) <= 0.85;
 *   |x| >= 4:   1 - 2 / (e + 1), since e - 1 rounds once e >= 2^24 and
 *               2 / (e + 1) < 7e-4 contributes almost nothing.
 * |x| is capped where tanh is 1 in f32 so e stays finite; NaN passes
 * (compares are false).  The division stays a division: a 14-bit
 * reciprocal with a residual correction measured slower on Zen 4.  f64
 * keeps SLEEF's tanh_u10.
 */
static inline VT F(v_tanh)(VT v)
{
	VT one = V(set1)(1);
	VT a, x2, p, e, big;
	V(m) mid;

	if (sizeof(T) == 8)
		return V(tanh)(v);
	a = V(abs)(v);
	a = V(sel)(V(gt)(a, V(set1)(10)), V(set1)(10), a);
	e = F(v_exp_0_20)(V(add)(a, a));
	/* one division serves both: (e - 1) / (e + 1) or 2 / (e + 1) */
	mid = V(lt)(a, V(set1)(4));
	big = V(div)(V(sel)(mid, V(sub)(e, one), V(set1)(2)), V(add)(e, one));
	big = V(sel)(mid, big, V(sub)(one, big));
	x2 = V(mul)(v, v);
	p = V(set1)(-0.006942941807210445);
	p = V(fma)(p, x2, V(set1)(0.021470682695508003));
	p = V(fma)(p, x2, V(set1)(-0.05393346771597862));
	p = V(fma)(p, x2, V(set1)(0.1333322525024414));
	p = V(fma)(p, x2, V(set1)(-0.3333333134651184));
	p = V(fma)(V(mul)(v, x2), p, v);
	return V(sel)(V(lt)(a, V(set1)(0.5)), p, V(copysign)(big, v));
}

/*
 * f32 sin and cos, about 2x cheaper than SLEEF's u10 and within 2 ULP
 * (checked for every float with |x| <= 8192 by
 * tools/bench/kernels/exhaustive.c; docs/simd.md has the figures).  Larger |x|, inf and NaN take SLEEF.
 *   q = rint(x 2/pi), r = x - q pi/2 in [-pi/4, pi/4], and by q mod 4
 *   sin x = sin r, cos r, -sin r, -cos r (cos: q + 1).
 * pi/2 is split in three floats c1 + c2 + c3 (Cody-Waite).  For |x| <=
 * 8192, q c1 and x lie on a common grid of 2^-23 (or |x| < 1 and q is 0
 * or +-1 on 2^-24), so r1 = x - q c1 is exact in one fma; r = r1 - q c2
 * rounds once, relative to r itself, however much r1 and q c2 cancel near
 * a multiple of pi/2; r_lo = -q c3 enters the polynomials to first order.
 * Polynomials fitted at Chebyshev nodes on r^2 in [0, (pi/4)^2] and
 * rounded to floats: sin r = r + r^3 ps(r^2), ps of degree 2 (adds < 0.14
 * ULP), cos r = 1 + r^2 pc(r^2), pc of degree 3 (< 0.02 ULP); one term
 * fewer each than the Taylor series to r^9 and r^10 they replace.
 * Lanes past 8192 come out wrong here; v_sinf_far says which they are.
 */
static inline VT F(v_sinf_core)(VT v, bool cosine)
{
	const VT one = V(set1)(1);
	const VT c2 = V(set1)(-4.371138828673793e-08);
	VT q, mq, r1, r, rl, s, ps, pc, sn, cs, res;
	V(m) odd, neg;

	q = V(rint)(V(mul)(v, V(set1)(0.63661977236758134308)));
	mq = V(neg)(q);
	r1 = V(fma)(mq, V(set1)(1.5707963705062866), v);
	r = V(fma)(mq, c2, r1);
	rl = V(mul)(mq, V(set1)(-1.7151245100058819e-15));
	s = V(mul)(r, r);
	ps = V(set1)(-0.00019587890710681677);
	ps = V(fma)(ps, s, V(set1)(0.008332747966051102));
	ps = V(fma)(ps, s, V(set1)(-0.166666641831398));
	/* sin(r + rl) ~ r + r^3 ps + rl (1 - r^2 / 2) */
	sn = V(add)(r, V(fma)(V(mul)(r, s), ps,
			      V(mul)(rl, V(fma)(s, V(set1)(-0.5), one))));
	pc = V(set1)(2.4463788577122614e-05);
	pc = V(fma)(pc, s, V(set1)(-0.0013887588866055012));
	pc = V(fma)(pc, s, V(set1)(0.04166664928197861));
	pc = V(fma)(pc, s, V(set1)(-0.5));
	/* cos(r + rl) ~ 1 + r^2 pc - rl r */
	cs = V(add)(one, V(fma)(s, pc, V(neg)(V(mul)(rl, r))));
	if (cosine)
		q = V(add)(q, one);
	/* q mod 4: odd picks cos, 2 and 3 negate (|q| <= 5216) */
	odd = V(qbit)(q, 1);
	neg = V(qbit)(q, 2);
	res = V(sel)(odd, cs, sn);
	res = V(sel)(neg, V(neg)(res), res);
	if (!cosine) /* sin(-0) = -0; tiny x are their own sine */
		res = V(sel)(V(lt)(V(abs)(v), V(set1)(0x1p-12)), v, res);
	return res;
}

/* Lanes v_sinf_core leaves to SLEEF: |x| > 8192 (inf included; NaN
 * lanes come out NaN from the core already). */
static inline V(m) F(v_sinf_far)(VT v)
{
	return V(gt)(V(abs)(v), V(set1)(8192));
}

static inline VT F(v_sinf_fast)(VT v, bool cosine)
{
	VT res = F(v_sinf_core)(v, cosine);
	V(m) far = F(v_sinf_far)(v);

	if (V(any)(far))
		res = V(sel)(far, cosine ? V(cos)(v) : V(sin)(v), res);
	return res;
}

static inline VT F(v_sin)(VT v)
{
	if (sizeof(T) == 4)
		return F(v_sinf_fast)(v, false);
	return V(sin)(v);
}

static inline VT F(v_cos)(VT v)
{
	if (sizeof(T) == 4)
		return F(v_sinf_fast)(v, true);
	return V(cos)(v);
}

static inline VT F(v_softplus)(VT v)
{
	return V(sel)(V(gt)(v, V(set1)(20)), v, V(log1p)(V(exp)(v)));
}

static inline VT F(v_relu)(VT v)
{
	/* NaN compares false and passes through, as torch's relu does. */
	return V(sel)(V(le)(v, V(set1)(0)), V(set1)(0), v);
}

static inline VT F(v_clamp)(VT v, VT lo, VT hi)
{
	/* min(max(x, lo), hi) keeping NaN; lo > hi gives hi, as torch. */
	VT t = V(sel)(V(lt)(v, lo), lo, v);

	return V(sel)(V(gt)(t, hi), hi, t);
}

static inline VT F(v_max)(VT a, VT b)
{
	return V(sel)(V(isnan)(a), a, V(sel)(V(gt)(a, b), a, b));
}

static inline VT F(v_min)(VT a, VT b)
{
	return V(sel)(V(isnan)(a), a, V(sel)(V(lt)(a, b), a, b));
}

/* Contiguous loops: whole vectors, then one masked tail. */
#define LOOP1(n, EXPR)                                     \
	do {                                               \
		int64_t i_ = 0;                            \
		for (; i_ + W <= (n); i_ += W) {           \
			VT v = V(load)(x + i_);            \
			V(store)(y + i_, (EXPR));          \
		}                                          \
		if (i_ < (n)) {                            \
			VT v = V(loadn)(x + i_, (n)-i_);   \
			V(storen)(y + i_, (EXPR), (n)-i_); \
		}                                          \
	} while (0)

#ifndef AG_K_POW_KIND
#define AG_K_POW_KIND
enum pow_kind {
	POW_GEN,
	POW_0,
	POW_1,
	POW_2,
	POW_3,
	POW_H,
	POW_M1,
	POW_M2,
	POW_MH
};
#endif

static enum pow_kind F(pow_kind)(double e)
{
	/* The exponents torch special-cases, so results match it. */
	if (e == 0)
		return POW_0;
	if (e == 1)
		return POW_1;
	if (e == 2)
		return POW_2;
	if (e == 3)
		return POW_3;
	if (e == 0.5)
		return POW_H;
	if (e == -1)
		return POW_M1;
	if (e == -2)
		return POW_M2;
	if (e == -0.5)
		return POW_MH;
	return POW_GEN;
}

static void F(pow_c)(int64_t n, const T *x, T *y, T e)
{
	VT one = V(set1)(1);
	VT ve = V(set1)(e);

	switch (F(pow_kind)(e)) {
	case POW_0:
		LOOP1(n, (v = one));
		break;
	case POW_1:
		LOOP1(n, v);
		break;
	case POW_2:
		LOOP1(n, V(mul)(v, v));
		break;
	case POW_3:
		LOOP1(n, V(mul)(V(mul)(v, v), v));
		break;
	case POW_H:
		LOOP1(n, V(sqrt)(v));
		break;
	case POW_M1:
		LOOP1(n, V(div)(one, v));
		break;
	case POW_M2:
		LOOP1(n, V(div)(one, V(mul)(v, v)));
		break;
	case POW_MH:
		LOOP1(n, V(div)(one, V(sqrt)(v)));
		break;
	default:
		LOOP1(n, V(pow)(v, ve));
		break;
	}
}

/*
 * sin and cos forward.  A call in the loop (SLEEF, for the rare |x| >
 * 8192) costs every vector even when not taken: no vector register
 * survives a call, so the compiler reloads or spills what the loop keeps
 * in them (7 % of the f32 kernel in L1).  So the loop only notes whether
 * any lane was far, and a second pass redoes those vectors from x.  In
 * place (y == x) the input is gone by then: there each vector is fixed
 * as it goes.
 */
static void F(sincos_c)(int64_t n, const T *x, T *y, bool cosine)
{
	V(m) far = V(lt)(V(set1)(0), V(set1)(0));
	int64_t i;

	if (sizeof(T) == 8 || x == y) {
		LOOP1(n, cosine ? F(v_cos)(v) : F(v_sin)(v));
		return;
	}
	LOOP1(n,
	      (far = V(or)(far, F(v_sinf_far)(v)), F(v_sinf_core)(v, cosine)));
	if (!V(any)(far))
		return;
	for (i = 0; i < n; i += W) {
		int64_t len = n - i < W ? n - i : W;
		VT v = V(loadn)(x + i, len);
		V(m) m = F(v_sinf_far)(v);
		VT r;

		(void)len; /* the generic loadn ignores it */
		if (!V(any)(m))
			continue;
		r = V(sel)(m, cosine ? V(cos)(v) : V(sin)(v),
			   V(loadn)(y + i, len));
		V(storen)(y + i, r, len);
	}
}

static void F(unary_c)(enum ag_k_unary op, int64_t n, const T *x, T *y, T p0,
		       T p1)
{
	VT one = V(set1)(1);
	VT vp0 = V(set1)(p0);
	VT vp1 = V(set1)(p1);

	switch (op) {
	case AG_K_NEG:
		LOOP1(n, V(neg)(v));
		break;
	case AG_K_ABS:
		LOOP1(n, V(abs)(v));
		break;
	case AG_K_EXP:
		LOOP1(n, F(v_exp)(v));
		break;
	case AG_K_EXPM1:
		LOOP1(n, V(expm1)(v));
		break;
	case AG_K_LOG:
		LOOP1(n, V(log)(v));
		break;
	case AG_K_LOG1P:
		LOOP1(n, F(v_log1p)(v));
		break;
	case AG_K_SQRT:
		LOOP1(n, V(sqrt)(v));
		break;
	case AG_K_RSQRT:
		LOOP1(n, V(div)(one, V(sqrt)(v)));
		break;
	case AG_K_SQUARE:
		LOOP1(n, V(mul)(v, v));
		break;
	case AG_K_RECIPROCAL:
		LOOP1(n, V(div)(one, v));
		break;
	case AG_K_SIN:
	case AG_K_COS:
		F(sincos_c)(n, x, y, op == AG_K_COS);
		break;
	case AG_K_TAN:
		LOOP1(n, V(tan)(v));
		break;
	case AG_K_TANH:
		LOOP1(n, F(v_tanh)(v));
		break;
	case AG_K_SIGMOID:
		LOOP1(n, F(v_sigmoid)(v));
		break;
	case AG_K_RELU:
		LOOP1(n, F(v_relu)(v));
		break;
	case AG_K_GELU:
		LOOP1(n, V(mul)(v, F(v_phi)(v)));
		break;
	case AG_K_SILU:
		LOOP1(n, F(v_silu)(v));
		break;
	case AG_K_SOFTPLUS:
		LOOP1(n, F(v_softplus)(v));
		break;
	case AG_K_ERF:
		LOOP1(n, V(erf)(v));
		break;
	case AG_K_ATAN:
		LOOP1(n, V(atan)(v));
		break;
	case AG_K_CLAMP:
		LOOP1(n, F(v_clamp)(v, vp0, vp1));
		break;
	case AG_K_LEAKY_RELU:
		LOOP1(n, V(sel)(V(gt)(v, V(set1)(0)), v, V(mul)(v, vp0)));
		break;
	case AG_K_POW_SCALAR:
		F(pow_c)(n, x, y, p0);
		break;
	case AG_K_ADD_SCALAR:
		LOOP1(n, V(add)(v, vp0));
		break;
	case AG_K_MUL_SCALAR:
		LOOP1(n, V(mul)(v, vp0));
		break;
	case AG_K_RSUB_SCALAR:
		LOOP1(n, V(sub)(vp0, v));
		break;
	case AG_K_UNARY_COUNT:
		break;
	}
}

/* Pairwise sums.  A block of up to SUM_BLK elements is summed in four
 * vector accumulators (f32 widened to f64 lanes first); blocks are combined
 * by halving, so the error is O((SUM_BLK / (4 W) + log2 n) u sum |x|). */
#define SUM_BLK 256

static double F(sum_block)(int64_t n, const T *x)
{
	vw_t a0 = vw_zero(), a1 = vw_zero(), a2 = vw_zero(), a3 = vw_zero();
	double s;
	int64_t i = 0;

#if W == 1 || VW_W == W
	/* f64, or one-lane generic: the elements are the wide lanes. */
	for (; i + 4 * VW_W <= n; i += 4 * VW_W) {
		a0 = vw_add(a0, (vw_t)V(load)(x + i));
		a1 = vw_add(a1, (vw_t)V(load)(x + i + VW_W));
		a2 = vw_add(a2, (vw_t)V(load)(x + i + 2 * VW_W));
		a3 = vw_add(a3, (vw_t)V(load)(x + i + 3 * VW_W));
	}
#else
	for (; i + 4 * VW_W <= n; i += 4 * VW_W) {
		a0 = vw_add(a0, vw_loadf((const float *)x + i));
		a1 = vw_add(a1, vw_loadf((const float *)x + i + VW_W));
		a2 = vw_add(a2, vw_loadf((const float *)x + i + 2 * VW_W));
		a3 = vw_add(a3, vw_loadf((const float *)x + i + 3 * VW_W));
	}
#endif
	s = vw_hsum(vw_add(vw_add(a0, a1), vw_add(a2, a3)));
	for (; i < n; i++)
		s += (double)x[i];
	return s;
}

static double F(sum_c)(int64_t n, const T *x)
{
	int64_t h;

	if (n <= SUM_BLK)
		return F(sum_block)(n, x);
	/* Split at a block boundary so every leaf but the last is full. */
	h = ((n / SUM_BLK + 1) / 2) * SUM_BLK;
	return F(sum_c)(h, x) + F(sum_c)(n - h, x + h);
}

/* Chunked operands. */
struct F(src) {
	const T *p;
	int64_t inc;
	T *buf;
};

static void F(src_init)(struct F(src) * s, const T *p, int64_t inc, T *buf,
			int64_t n)
{
	int64_t j;

	s->p = p;
	s->inc = inc;
	s->buf = buf;
	if (p && inc == 0) {
		T v = p[0];

		for (j = 0; j < n && j < CH; j++)
			buf[j] = v;
	}
}

static const T *F(src_get)(const struct F(src) * s, int64_t i, int64_t len)
{
	const T *p;
	int64_t j;

	if (!s->p)
		return NULL;
	if (s->inc == 1)
		return s->p + i;
	if (s->inc == 0)
		return s->buf;
	p = s->p + i * s->inc;
	for (j = 0; j < len; j++)
		s->buf[j] = p[j * s->inc];
	return s->buf;
}

struct F(dst) {
	T *p;
	int64_t inc;
	T *buf;
	bool reduce;
	double acc;
};

static void F(dst_init)(struct F(dst) * d, T *p, int64_t inc, T *buf,
			bool reduce)
{
	d->p = p;
	d->inc = inc;
	d->buf = buf;
	d->reduce = reduce && inc == 0 && p;
	d->acc = 0;
}

static T *F(dst_get)(const struct F(dst) * d, int64_t i)
{
	if (!d->p)
		return NULL;
	return d->inc == 1 ? d->p + i : d->buf;
}

static void F(dst_put)(struct F(dst) * d, int64_t i, int64_t len)
{
	T *p;
	int64_t j;

	if (!d->p || d->inc == 1)
		return;
	if (d->reduce) {
		d->acc += F(sum_c)(len, d->buf);
		return;
	}
	p = d->p + i * d->inc;
	for (j = 0; j < len; j++)
		p[j * d->inc] = d->buf[j];
}

static void F(dst_done)(struct F(dst) * d)
{
	if (d->reduce)
		d->p[0] += (T)d->acc;
}

#define CHLEN(i, n) ((n) - (i) < CH ? (n) - (i) : CH)

static void F(unary)(enum ag_k_unary op, int64_t n, const T *x, int64_t incx,
		     T *y, int64_t incy, const struct ag_k_params *p)
{
	_Alignas(64) T bx[CH];
	_Alignas(64) T by[CH];
	T p0 = p ? (T)p->p0 : 0;
	T p1 = p ? (T)p->p1 : 0;
	struct F(src) sx;
	struct F(dst) dy;
	int64_t i;

	if (n <= 0)
		return;
	if (incx == 1 && incy == 1) {
		F(unary_c)(op, n, x, y, p0, p1);
		return;
	}
	if (incx == 0) {
		/* One value for the whole span. */
		F(unary_c)(op, 1, x, by, p0, p1);
		for (i = 0; i < n; i++)
			y[i * incy] = by[0];
		return;
	}
	F(src_init)(&sx, x, incx, bx, n);
	F(dst_init)(&dy, y, incy, by, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(unary_c)
		(op, len, F(src_get)(&sx, i, len), F(dst_get)(&dy, i), p0, p1);
		F(dst_put)(&dy, i, len);
	}
}

/* Derivative loops: g always, x or y as the op needs. */
#define LOOPB(n, LX, LY, EXPR)                             \
	do {                                               \
		int64_t i_ = 0;                            \
		for (; i_ + W <= (n); i_ += W) {           \
			VT gv = V(load)(g + i_);           \
			VT xv = gv, yv = gv;               \
			if (LX)                            \
				xv = V(load)(x + i_);      \
			if (LY)                            \
				yv = V(load)(y + i_);      \
			(void)xv;                          \
			(void)yv;                          \
			V(store)(gx + i_, (EXPR));         \
		}                                          \
		if (i_ < (n)) {                            \
			int64_t r_ = (n)-i_;               \
			VT gv = V(loadn)(g + i_, r_);      \
			(void)r_;                          \
			VT xv = gv, yv = gv;               \
			if (LX)                            \
				xv = V(loadn)(x + i_, r_); \
			if (LY)                            \
				yv = V(loadn)(y + i_, r_); \
			(void)xv;                          \
			(void)yv;                          \
			V(storen)(gx + i_, (EXPR), r_);    \
		}                                          \
	} while (0)

#define LOOPG(n, EXPR) LOOPB(n, 0, 0, EXPR)
#define LOOPX(n, EXPR) LOOPB(n, 1, 0, EXPR)
#define LOOPY(n, EXPR) LOOPB(n, 0, 1, EXPR)

static void F(pow_bwd_c)(int64_t n, const T *g, const T *x, T *gx, T e)
{
	VT ve = V(set1)(e);
	VT vem1 = V(set1)(e - 1);
	VT two = V(set1)(2);
	VT three = V(set1)(3);
	VT hf = V(set1)(0.5);
	const T *y = NULL; /* LOOPX names it; never read */

	/* torch: exponent 0 gives zeros; else g * e * x^(e-1), with the
	 * power computed as the forward special cases would. */
	switch (F(pow_kind)(e)) {
	case POW_0:
		LOOPG(n, V(set1)(0));
		break;
	case POW_1:
		LOOPG(n, gv);
		break;
	case POW_2:
		LOOPX(n, V(mul)(gv, V(mul)(two, xv)));
		break;
	case POW_3:
		LOOPX(n, V(mul)(gv, V(mul)(three, V(mul)(xv, xv))));
		break;
	case POW_H:
		LOOPX(n, V(mul)(gv, V(mul)(hf, V(pow)(xv, V(set1)(-0.5)))));
		break;
	default:
		LOOPX(n, V(mul)(gv, V(mul)(ve, V(pow)(xv, vem1))));
		break;
	}
}

static void F(unary_bwd_c)(enum ag_k_unary op, int64_t n, const T *g,
			   const T *x, const T *y, T *gx, T p0, T p1)
{
	VT zero = V(set1)(0);
	VT one = V(set1)(1);
	VT two = V(set1)(2);
	VT vp0 = V(set1)(p0);
	VT vp1 = V(set1)(p1);

	switch (op) {
	case AG_K_NEG:
		LOOPG(n, V(neg)(gv));
		break;
	case AG_K_ABS:
		/* sign(x), 0 at 0 and NaN, as torch's sgn for reals */
		LOOPX(n, V(sel)(V(gt)(xv, zero), gv,
				V(sel)(V(lt)(xv, zero), V(neg)(gv), zero)));
		break;
	case AG_K_EXP:
		LOOPY(n, V(mul)(gv, yv));
		break;
	case AG_K_EXPM1:
		LOOPY(n, V(mul)(gv, V(add)(yv, one)));
		break;
	case AG_K_LOG:
		LOOPX(n, V(div)(gv, xv));
		break;
	case AG_K_LOG1P:
		LOOPX(n, V(div)(gv, V(add)(xv, one)));
		break;
	case AG_K_SQRT:
		LOOPY(n, V(div)(gv, V(mul)(two, yv)));
		break;
	case AG_K_RSQRT:
		/* torch: -0.5 * g * y^3 */
		LOOPY(n, V(mul)(V(mul)(V(set1)(-0.5), gv),
				V(mul)(V(mul)(yv, yv), yv)));
		break;
	case AG_K_SQUARE:
		LOOPX(n, V(mul)(gv, V(mul)(two, xv)));
		break;
	case AG_K_RECIPROCAL:
		LOOPY(n, V(mul)(V(neg)(gv), V(mul)(yv, yv)));
		break;
	case AG_K_SIN:
		LOOPX(n, V(mul)(gv, F(v_cos)(xv)));
		break;
	case AG_K_COS:
		LOOPX(n, V(mul)(gv, V(neg)(F(v_sin)(xv))));
		break;
	case AG_K_TAN:
		LOOPY(n, V(mul)(gv, V(fma)(yv, yv, one)));
		break;
	case AG_K_TANH:
		LOOPY(n, V(mul)(gv, V(sub)(one, V(mul)(yv, yv))));
		break;
	case AG_K_SIGMOID:
		LOOPY(n, V(mul)(gv, V(mul)(yv, V(sub)(one, yv))));
		break;
	case AG_K_RELU:
		/* torch: result <= 0 ? 0 : g, so NaN passes the gradient */
		LOOPY(n, V(sel)(V(le)(yv, zero), zero, gv));
		break;
	case AG_K_GELU:
		/* Phi(x) + x phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi) */
		LOOPX(n,
		      V(mul)(gv,
			     V(fma)(V(mul)(xv, V(set1)(0.39894228040143267794)),
				    V(exp)(V(mul)(V(mul)(xv, xv),
						  V(set1)(-0.5))),
				    F(v_phi)(xv))));
		break;
	case AG_K_SILU:
		/* torch: g * s * (1 + x * (1 - s)) */
		LOOPX(n,
		      V(mul)(V(mul)(gv, F(v_sigmoid)(xv)),
			     V(fma)(xv, V(sub)(one, F(v_sigmoid)(xv)), one)));
		break;
	case AG_K_SOFTPLUS:
		/* torch: x > 20 ? g : g * z / (z + 1), z = exp(x) */
		LOOPX(n, V(sel)(V(gt)(xv, V(set1)(20)), gv,
				V(mul)(gv, V(div)(V(exp)(xv),
						  V(add)(V(exp)(xv), one)))));
		break;
	case AG_K_ERF:
		/* 2 / sqrt(pi) exp(-x^2) */
		LOOPX(n, V(mul)(V(mul)(gv, V(set1)(1.12837916709551257390)),
				V(exp)(V(neg)(V(mul)(xv, xv)))));
		break;
	case AG_K_ATAN:
		LOOPX(n, V(div)(gv, V(fma)(xv, xv, one)));
		break;
	case AG_K_CLAMP:
		/* torch 1.13: the gradient passes where lo <= x <= hi */
		LOOPX(n,
		      V(sel)(V(and)(V(ge)(xv, vp0), V(le)(xv, vp1)), gv, zero));
		break;
	case AG_K_LEAKY_RELU:
		LOOPX(n, V(sel)(V(gt)(xv, zero), gv, V(mul)(gv, vp0)));
		break;
	case AG_K_POW_SCALAR:
		F(pow_bwd_c)(n, g, x, gx, p0);
		break;
	case AG_K_ADD_SCALAR:
		LOOPG(n, gv);
		break;
	case AG_K_MUL_SCALAR:
		LOOPG(n, V(mul)(gv, vp0));
		break;
	case AG_K_RSUB_SCALAR:
		LOOPG(n, V(neg)(gv));
		break;
	case AG_K_UNARY_COUNT:
		break;
	}
}

static void F(unary_bwd)(enum ag_k_unary op, int64_t n, const T *g,
			 int64_t incg, const T *x, int64_t incx, const T *y,
			 int64_t incy, T *gx, int64_t incgx,
			 const struct ag_k_params *p)
{
	_Alignas(64) T bg[CH];
	_Alignas(64) T bx[CH];
	_Alignas(64) T by[CH];
	_Alignas(64) T bo[CH];
	T p0 = p ? (T)p->p0 : 0;
	T p1 = p ? (T)p->p1 : 0;
	unsigned needs = ag_k_unary_bwd_needs(op);
	struct F(src) sg, sx, sy;
	struct F(dst) dgx;
	int64_t i;

	if (n <= 0)
		return;
	if (!(needs & AG_K_NEEDS_X))
		x = NULL;
	if (!(needs & AG_K_NEEDS_Y))
		y = NULL;
	if (incg == 1 && (!x || incx == 1) && (!y || incy == 1) && incgx == 1) {
		F(unary_bwd_c)(op, n, g, x, y, gx, p0, p1);
		return;
	}
	F(src_init)(&sg, g, incg, bg, n);
	F(src_init)(&sx, x, incx, bx, n);
	F(src_init)(&sy, y, incy, by, n);
	F(dst_init)(&dgx, gx, incgx, bo, true);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(unary_bwd_c)
		(op, len, F(src_get)(&sg, i, len), F(src_get)(&sx, i, len),
		 F(src_get)(&sy, i, len), F(dst_get)(&dgx, i), p0, p1);
		F(dst_put)(&dgx, i, len);
	}
	F(dst_done)(&dgx);
}

/*
 * Binary outputs of at least AG_K_NT_MIN bytes are written with streaming
 * (non-temporal) stores.  An ordinary store to a line that is not cached
 * first reads it (read for ownership), so x * w over buffers far larger
 * than the caches moves four streams for three; streaming stores skip
 * that read.  But the output then is not in cache for the op that reads
 * it next, which costs more than it saves for outputs the caches could
 * have kept: with x * w followed by a sum of the product (one thread,
 * AVX-512, Zen 4) streaming lost at 1 MiB, tied at 2 MiB and won from
 * 4 MiB (mul alone: 40 against 27 GB/s at 16 MiB).  The unary kernels
 * keep ordinary stores: streaming measured slower for every one tried
 * (exp, sin, tanh, neg; 2^22 elements, inputs and outputs hot or cold).
 * A part of a split kernel is judged by its own length.
 */
#ifndef AG_K_NT_MIN
#define AG_K_NT_MIN (4 << 20)
#endif

/* -1: ordinary stores; else the elements before y + h is vector-aligned
 * (0 .. W - 1), which LOOP2 writes with one masked store first. */
static inline int64_t F(nt_head)(const T *y, int64_t n)
{
	const uintptr_t al = W * sizeof(T);
	uintptr_t a = (uintptr_t)y;

	if (W == 1 || n < (int64_t)(AG_K_NT_MIN / sizeof(T)) || a % sizeof(T))
		return -1;
	return (int64_t)(((al - a % al) % al) / sizeof(T));
}

/* Two loops rather than a branch per vector: the branch cost the L1-sized
 * products ~10 %. */
#define LOOP2(n, EXPR)                                     \
	do {                                               \
		int64_t i_ = 0, h_ = F(nt_head)(y, (n));   \
		if (h_ > 0) {                              \
			VT av = V(loadn)(a, h_);           \
			VT bv = V(loadn)(b, h_);           \
			V(storen)(y, (EXPR), h_);          \
			i_ = h_;                           \
		}                                          \
		if (h_ >= 0) {                             \
			for (; i_ + W <= (n); i_ += W) {   \
				VT av = V(load)(a + i_);   \
				VT bv = V(load)(b + i_);   \
				V(stream)(y + i_, (EXPR)); \
			}                                  \
		} else {                                   \
			for (; i_ + W <= (n); i_ += W) {   \
				VT av = V(load)(a + i_);   \
				VT bv = V(load)(b + i_);   \
				V(store)(y + i_, (EXPR));  \
			}                                  \
		}                                          \
		if (i_ < (n)) {                            \
			VT av = V(loadn)(a + i_, (n)-i_);  \
			VT bv = V(loadn)(b + i_, (n)-i_);  \
			V(storen)(y + i_, (EXPR), (n)-i_); \
		}                                          \
		if (h_ >= 0)                               \
			V(sfence)();                       \
	} while (0)

static void F(binary_c)(enum ag_k_binary op, int64_t n, const T *a, const T *b,
			T *y)
{
	switch (op) {
	case AG_K_ADD:
		LOOP2(n, V(add)(av, bv));
		break;
	case AG_K_SUB:
		LOOP2(n, V(sub)(av, bv));
		break;
	case AG_K_MUL:
		LOOP2(n, V(mul)(av, bv));
		break;
	case AG_K_DIV:
		LOOP2(n, V(div)(av, bv));
		break;
	case AG_K_POW:
		LOOP2(n, V(pow)(av, bv));
		break;
	case AG_K_MAXIMUM:
		LOOP2(n, F(v_max)(av, bv));
		break;
	case AG_K_MINIMUM:
		LOOP2(n, F(v_min)(av, bv));
		break;
	case AG_K_BINARY_COUNT:
		break;
	}
}

static void F(binary)(enum ag_k_binary op, int64_t n, const T *a, int64_t inca,
		      const T *b, int64_t incb, T *y, int64_t incy)
{
	_Alignas(64) T ba[CH];
	_Alignas(64) T bb[CH];
	_Alignas(64) T by[CH];
	struct F(src) sa, sb;
	struct F(dst) dy;
	int64_t i;

	if (n <= 0)
		return;
	if (inca == 1 && incb == 1 && incy == 1) {
		F(binary_c)(op, n, a, b, y);
		return;
	}
	F(src_init)(&sa, a, inca, ba, n);
	F(src_init)(&sb, b, incb, bb, n);
	F(dst_init)(&dy, y, incy, by, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(binary_c)
		(op, len, F(src_get)(&sa, i, len), F(src_get)(&sb, i, len),
		 F(dst_get)(&dy, i));
		F(dst_put)(&dy, i, len);
	}
}

/*
 * Both gradients in one pass; each output is written only if asked for.
 * Everything is loaded before anything is stored, so ga or gb may alias g.
 */
#define LOOP2B(n, EA, EB)                                     \
	do {                                                  \
		int64_t i_ = 0;                               \
		for (; i_ + W <= (n); i_ += W) {              \
			VT gv = V(load)(g + i_);              \
			VT av = V(load)(a + i_);              \
			VT bv = V(load)(b + i_);              \
			(void)av;                             \
			(void)bv;                             \
			if (ga)                               \
				V(store)(ga + i_, (EA));      \
			if (gb)                               \
				V(store)(gb + i_, (EB));      \
		}                                             \
		if (i_ < (n)) {                               \
			int64_t r_ = (n)-i_;                  \
			VT gv = V(loadn)(g + i_, r_);         \
			VT av = V(loadn)(a + i_, r_);         \
			VT bv = V(loadn)(b + i_, r_);         \
			(void)r_;                             \
			(void)av;                             \
			(void)bv;                             \
			if (ga)                               \
				V(storen)(ga + i_, (EA), r_); \
			if (gb)                               \
				V(storen)(gb + i_, (EB), r_); \
		}                                             \
	} while (0)

static inline VT F(v_half_if_eq)(VT gv, VT av, VT bv)
{
	return V(sel)(V(eq)(av, bv), V(mul)(gv, V(set1)(0.5)), gv);
}

static void F(binary_bwd_c)(enum ag_k_binary op, int64_t n, const T *g,
			    const T *a, const T *b, T *ga, T *gb)
{
	VT zero = V(set1)(0);
	VT one = V(set1)(1);

	switch (op) {
	case AG_K_ADD:
		LOOP2B(n, gv, gv);
		break;
	case AG_K_SUB:
		LOOP2B(n, gv, V(neg)(gv));
		break;
	case AG_K_MUL:
		LOOP2B(n, V(mul)(gv, bv), V(mul)(gv, av));
		break;
	case AG_K_DIV:
		/* torch: g / b and -g * ((a / b) / b) */
		LOOP2B(n, V(div)(gv, bv),
		       V(mul)(V(neg)(gv), V(div)(V(div)(av, bv), bv)));
		break;
	case AG_K_POW:
		/* torch: b == 0 ? 0 : g b a^(b-1);
		 * a == 0 && b >= 0 ? 0 : g a^b log(a) */
		LOOP2B(n,
		       V(sel)(V(eq)(bv, zero), zero,
			      V(mul)(gv,
				     V(mul)(bv, V(pow)(av, V(sub)(bv, one))))),
		       V(sel)(V(and)(V(eq)(av, zero), V(ge)(bv, zero)), zero,
			      V(mul)(gv, V(mul)(V(pow)(av, bv), V(log)(av)))));
		break;
	case AG_K_MAXIMUM:
		/* torch 1.13: ties split the gradient in halves */
		LOOP2B(n,
		       V(sel)(V(lt)(av, bv), zero, F(v_half_if_eq)(gv, av, bv)),
		       V(sel)(V(gt)(av, bv), zero,
			      F(v_half_if_eq)(gv, av, bv)));
		break;
	case AG_K_MINIMUM:
		LOOP2B(n,
		       V(sel)(V(gt)(av, bv), zero, F(v_half_if_eq)(gv, av, bv)),
		       V(sel)(V(lt)(av, bv), zero,
			      F(v_half_if_eq)(gv, av, bv)));
		break;
	case AG_K_BINARY_COUNT:
		break;
	}
}

static void F(binary_bwd)(enum ag_k_binary op, int64_t n, const T *g,
			  int64_t incg, const T *a, int64_t inca, const T *b,
			  int64_t incb, T *ga, int64_t incga, T *gb,
			  int64_t incgb)
{
	_Alignas(64) T bg[CH];
	_Alignas(64) T ba[CH];
	_Alignas(64) T bb[CH];
	_Alignas(64) T boa[CH];
	_Alignas(64) T bob[CH];
	struct F(src) sg, sa, sb;
	struct F(dst) dga, dgb;
	int64_t i;

	if (n <= 0 || (!ga && !gb))
		return;
	if (incg == 1 && inca == 1 && incb == 1 && (!ga || incga == 1) &&
	    (!gb || incgb == 1)) {
		F(binary_bwd_c)(op, n, g, a, b, ga, gb);
		return;
	}
	F(src_init)(&sg, g, incg, bg, n);
	F(src_init)(&sa, a, inca, ba, n);
	F(src_init)(&sb, b, incb, bb, n);
	F(dst_init)(&dga, ga, incga, boa, true);
	F(dst_init)(&dgb, gb, incgb, bob, true);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(binary_bwd_c)
		(op, len, F(src_get)(&sg, i, len), F(src_get)(&sa, i, len),
		 F(src_get)(&sb, i, len), F(dst_get)(&dga, i),
		 F(dst_get)(&dgb, i));
		F(dst_put)(&dga, i, len);
		F(dst_put)(&dgb, i, len);
	}
	F(dst_done)(&dga);
	F(dst_done)(&dgb);
}

static double F(sum)(int64_t n, const T *x, int64_t incx)
{
	_Alignas(64) T bx[CH];
	int64_t h, j;

	if (n <= 0)
		return 0;
	if (incx == 1)
		return F(sum_c)(n, x);
	if (incx == 0)
		return (double)n * (double)x[0];
	if (n <= CH) {
		for (j = 0; j < n; j++)
			bx[j] = x[j * incx];
		return F(sum_c)(n, bx);
	}
	h = ((n / CH + 1) / 2) * CH;
	return F(sum)(h, x, incx) + F(sum)(n - h, x + h * incx, incx);
}

/* Elementwise product chunk by chunk, each chunk summed pairwise. */
static double F(dot)(int64_t n, const T *a, int64_t inca, const T *b,
		     int64_t incb)
{
	_Alignas(64) T ba[CH];
	_Alignas(64) T bb[CH];
	_Alignas(64) T bp[CH];
	struct F(src) sa, sb;
	double s = 0;
	int64_t i;

	if (n <= 0)
		return 0;
	F(src_init)(&sa, a, inca, ba, n);
	F(src_init)(&sb, b, incb, bb, n);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);

		F(binary_c)
		(AG_K_MUL, len, F(src_get)(&sa, i, len),
		 F(src_get)(&sb, i, len), bp);
		s += F(sum_c)(len, bp);
	}
	return s;
}

/* y += alpha x */
static void F(axpy)(int64_t n, T alpha, const T *x, int64_t incx, T *y,
		    int64_t incy)
{
	int64_t i;

	if (n <= 0)
		return;
	if (incx == 1 && incy == 1) {
		VT va = V(set1)(alpha);

		/* LOOP1 reads x and writes y; here y is also read. */
		for (i = 0; i + W <= n; i += W)
			V(store)
		(y + i, V(fma)(va, V(load)(x + i), V(load)(y + i)));
		if (i < n)
			V(storen)
		(y + i,
		 V(fma)(va, V(loadn)(x + i, n - i), V(loadn)(y + i, n - i)),
		 n - i);
		return;
	}
	for (i = 0; i < n; i++)
		y[i * incy] += alpha * x[i * incx];
}

/* NaN-propagating max; argmax is the first maximum (or first NaN). */
static double F(max)(int64_t n, const T *x, int64_t incx, int64_t *argmax)
{
	T m;
	int64_t i, k = 0;

	if (n <= 0) {
		if (argmax)
			*argmax = -1;
		return NAN;
	}
	if (incx == 1 && n >= 2 * W) {
		/* vector pass for the value, then the first index holding it */
		VT vm = V(load)(x);
		V(m) seen = V(isnan)(vm);

		for (i = W; i + W <= n; i += W) {
			VT v = V(load)(x + i);

			seen = V(or)(seen, V(isnan)(v));
			vm = V(sel)(V(gt)(v, vm), v, vm);
		}
		m = V(hmax)(vm);
		for (; i < n; i++)
			m = x[i] > m || isnan(x[i]) ? x[i] : m;
		if (!V(any)(seen) && !isnan(m)) {
			for (k = 0; k < n && !(x[k] == m); k++)
				;
			if (argmax)
				*argmax = k;
			return x[k];
		}
		/* a NaN somewhere: the scalar scan finds the first one */
	}
	m = x[0];
	for (i = 1; i < n && !isnan(m); i++) {
		T v = x[i * incx];

		if (v > m || isnan(v)) {
			m = v;
			k = i;
		}
	}
	if (argmax)
		*argmax = k;
	return m;
}

/* Subtract the max, exponentiate chunk by chunk, sum pairwise. */
static double F(sumexp_shift)(int64_t n, const T *x, int64_t incx, T m)
{
	_Alignas(64) T bx[CH];
	_Alignas(64) T be[CH];
	struct F(src) sx;
	double s = 0;
	int64_t i;

	F(src_init)(&sx, x, incx, bx, n);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);
		const T *xc = F(src_get)(&sx, i, len);

		F(unary_c)(AG_K_ADD_SCALAR, len, xc, be, -m, 0);
		F(unary_c)(AG_K_EXP, len, be, be, 0, 0);
		s += F(sum_c)(len, be);
	}
	return s;
}

static double F(logsumexp)(int64_t n, const T *x, int64_t incx)
{
	T m;

	if (n <= 0)
		return -INFINITY;
	m = (T)F(max)(n, x, incx, NULL);
	/* all -inf, any +inf, or NaN: the shift would make NaN */
	if (isinf(m) || isnan(m))
		return m;
	return (double)m + log(F(sumexp_shift)(n, x, incx, m));
}

static void F(softmax)(int64_t n, const T *x, int64_t incx, T *y, int64_t incy)
{
	_Alignas(64) T bx[CH];
	_Alignas(64) T by[CH];
	struct F(src) sx;
	struct F(dst) dy;
	double s = 0;
	T m, r;
	int64_t i;

	if (n <= 0)
		return;
	m = (T)F(max)(n, x, incx, NULL);
	F(src_init)(&sx, x, incx, bx, n);
	F(dst_init)(&dy, y, incy, by, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);
		T *yc = F(dst_get)(&dy, i);

		F(unary_c)
		(AG_K_ADD_SCALAR, len, F(src_get)(&sx, i, len), yc, -m, 0);
		F(unary_c)(AG_K_EXP, len, yc, yc, 0, 0);
		s += F(sum_c)(len, yc);
		F(dst_put)(&dy, i, len);
	}
	/* one rounding of 1/s in f64, then one multiply: <= 1 ulp + 1/2 */
	r = (T)(1.0 / s);
	F(unary)
	(AG_K_MUL_SCALAR, n, y, incy, y, incy,
	 &(struct ag_k_params){ .p0 = r });
}

static void F(log_softmax)(int64_t n, const T *x, int64_t incx, T *y,
			   int64_t incy)
{
	double lse;
	T m;

	if (n <= 0)
		return;
	m = (T)F(max)(n, x, incx, NULL);
	lse = (double)m + log(F(sumexp_shift)(n, x, incx, m));
	if (isinf(m))
		lse = m;
	/* x - lse; with an infinite max this is NaN or -inf, as torch */
	F(unary)
	(AG_K_ADD_SCALAR, n, x, incx, y, incy,
	 &(struct ag_k_params){ .p0 = -lse });
}

/* gx = y * (g - sum(g * y)) */
static void F(softmax_bwd)(int64_t n, const T *g, int64_t incg, const T *y,
			   int64_t incy, T *gx, int64_t incgx)
{
	_Alignas(64) T bg[CH];
	_Alignas(64) T by[CH];
	_Alignas(64) T bo[CH];
	struct F(src) sg, sy;
	struct F(dst) dgx;
	T d;
	int64_t i;

	if (n <= 0)
		return;
	d = (T)F(dot)(n, g, incg, y, incy);
	F(src_init)(&sg, g, incg, bg, n);
	F(src_init)(&sy, y, incy, by, n);
	F(dst_init)(&dgx, gx, incgx, bo, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);
		const T *gc = F(src_get)(&sg, i, len);
		const T *yc = F(src_get)(&sy, i, len);
		T *oc = F(dst_get)(&dgx, i);
		int64_t j;

		for (j = 0; j < len; j++)
			oc[j] = yc[j] * (gc[j] - d);
		F(dst_put)(&dgx, i, len);
	}
}

/* gx = g - exp(y) * sum(g) */
static void F(log_softmax_bwd)(int64_t n, const T *g, int64_t incg, const T *y,
			       int64_t incy, T *gx, int64_t incgx)
{
	_Alignas(64) T bg[CH];
	_Alignas(64) T by[CH];
	_Alignas(64) T be[CH];
	_Alignas(64) T bo[CH];
	struct F(src) sg, sy;
	struct F(dst) dgx;
	T s;
	int64_t i;

	if (n <= 0)
		return;
	s = (T)F(sum)(n, g, incg);
	F(src_init)(&sg, g, incg, bg, n);
	F(src_init)(&sy, y, incy, by, n);
	F(dst_init)(&dgx, gx, incgx, bo, false);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);
		const T *gc = F(src_get)(&sg, i, len);
		const T *yc = F(src_get)(&sy, i, len);
		T *oc = F(dst_get)(&dgx, i);
		int64_t j;

		F(unary_c)(AG_K_EXP, len, yc, be, 0, 0);
		for (j = 0; j < len; j++)
			oc[j] = gc[j] - be[j] * s;
		F(dst_put)(&dgx, i, len);
	}
}

/* Two-pass variance: sum((x - mean)^2) / max(0, n - correction). */
static double F(var)(int64_t n, const T *x, int64_t incx, int64_t correction,
		     double *mean)
{
	_Alignas(64) T bx[CH];
	struct F(src) sx;
	double mu, ss = 0;
	int64_t i, dof;

	if (n <= 0) {
		if (mean)
			*mean = NAN;
		return NAN;
	}
	mu = F(sum)(n, x, incx) / (double)n;
	if (mean)
		*mean = mu;
	F(src_init)(&sx, x, incx, bx, n);
	for (i = 0; i < n; i += CH) {
		int64_t len = CHLEN(i, n);
		const T *xc = F(src_get)(&sx, i, len);
		double c = 0;
		int64_t j;

		/* in f64 so f32 data loses nothing to the subtraction */
		for (j = 0; j < len; j++) {
			double d = (double)xc[j] - mu;

			c += d * d;
		}
		ss += c;
	}
	dof = n - correction;
	return ss / (double)(dof > 0 ? dof : 0);
}

#undef VT
#undef CH
#undef SUM_BLK
#undef CHLEN
#undef LOOP1
#undef LOOPB
#undef LOOPG
#undef LOOPX
#undef LOOPY
#undef LOOP2
#undef LOOP2B
