/* SPDX-License-Identifier: MIT */
/*
 * Reductions: sum, dot, axpy, max, logsumexp, softmax and its
 * derivative, variance.
 * Part of kern_tmpl.h, included from there with its T, V, W and F;
 * no include guard on purpose.
 */

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

#ifndef KR_WIDE
#define KR_WIDE
/* VD_W elements as f64 lanes (VW_W == VD_W) */
static inline vd_t kr_wide_f32(const float *p)
{
	return vw_loadf(p);
}

static inline vd_t kr_wide_f64(const double *p)
{
	return vd_load(p);
}
#endif

/*
 * sum((x - mu)^2) over n contiguous elements, in f64 so f32 data loses
 * nothing to the subtraction; two vectors of partial sums, as one chain
 * of dependent additions ran at the adder's latency.
 */
static double F(sqdev_c)(int64_t n, const T *x, double mu)
{
	vd_t m = vd_set1(mu), a0 = vd_set1(0), a1 = vd_set1(0), d;
	double c = 0;
	int64_t j = 0;

	for (; j + 2 * VD_W <= n; j += 2 * VD_W) {
		d = vd_sub(F(kr_wide)(x + j), m);
		a0 = vd_add(a0, vd_mul(d, d));
		d = vd_sub(F(kr_wide)(x + j + VD_W), m);
		a1 = vd_add(a1, vd_mul(d, d));
	}
	for (; j < n; j++) {
		double e = (double)x[j] - mu;

		c += e * e;
	}
	return vd_hsum(vd_add(a0, a1)) + c;
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

		ss += F(sqdev_c)(len, xc, mu);
	}
	dof = n - correction;
	return ss / (double)(dof > 0 ? dof : 0);
}
