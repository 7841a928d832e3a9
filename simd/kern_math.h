/* SPDX-License-Identifier: MIT */
/*
 * Element math: one vector of lanes in, one out (SLEEF plus the fixes
 * each function's comment measures).
 * Part of kern_tmpl.h, included from there with its T, V, W and F;
 * no include guard on purpose.
 */

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
