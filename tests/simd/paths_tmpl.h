/* SPDX-License-Identifier: MIT */
/*
 * Body of test_paths.c for one element type: T, S (suffix), ULPB (ULP
 * distance of two T), EPS.  Included twice; no include guard on purpose.
 */

#define FN(x) CAT(x, S)

/* bitwise equal, or both NaN */
static bool FN(same)(T a, T b)
{
	return (isnan(a) && isnan(b)) || memcmp(&a, &b, sizeof(T)) == 0;
}

/* within tol ULP, or within tol eps scale absolutely (derivatives that
 * cross zero by cancellation have no meaningful relative error there) */
static bool FN(close)(T a, T b, double tol, double scale)
{
	if (tol == 0)
		return FN(same)(a, b) || (a == b);
	if (isnan(a) || isnan(b))
		return isnan(a) && isnan(b);
	if (ULPB(a, b) <= tol)
		return true;
	return fabs((double)a - (double)b) <= tol * EPS * scale;
}

/* A span of n elements at stride s inside a buffer with canaries around
 * it: returns the base pointer (element i at base + i * s). */
struct FN(span) {
	T *buf;
	int64_t len;
	T *base;
};

static const T FN(canary) = (T)-12345.678;

static void FN(span_new)(struct FN(span) * sp, int64_t n, int64_t s)
{
	int64_t a = s < 0 ? -s : s;
	int64_t used = s == 0 ? 1 : (n - 1) * a + 1;
	int64_t i;

	sp->len = used + 2 * 16;
	sp->buf = malloc(sp->len * sizeof(T));
	cr_assert(sp->buf);
	for (i = 0; i < sp->len; i++)
		sp->buf[i] = FN(canary);
	sp->base = sp->buf + 16 + (s < 0 ? used - 1 : 0);
}

static void FN(span_check)(const struct FN(span) * sp, int64_t n, int64_t s,
			   const char *what)
{
	int64_t a = s < 0 ? -s : s;
	int64_t used = s == 0 ? 1 : (n - 1) * a + 1;
	int64_t i;

	for (i = 0; i < sp->len; i++) {
		int64_t off = i - 16;
		bool inside = off >= 0 && off < used &&
			      (a == 0 || off % a == 0);

		if (!inside)
			cr_assert(
				FN(same)(sp->buf[i], FN(canary)),
				"%s: wrote outside its span (n=%lld stride=%lld)",
				what, (long long)n, (long long)s);
	}
}

static void FN(put)(struct FN(span) * sp, int64_t s, const T *v, int64_t n)
{
	int64_t i;

	for (i = 0; i < n; i++)
		sp->base[i * s] = v[s == 0 ? 0 : i];
}

static T FN(get)(const struct FN(span) * sp, int64_t s, int64_t i)
{
	return sp->base[i * s];
}

static void FN(span_free)(struct FN(span) * sp)
{
	free(sp->buf);
}

static void FN(fill_x)(struct rng *r, T *x, int64_t n, enum ag_k_unary op)
{
	int64_t i;

	for (i = 0; i < n; i++) {
		double v = rng_range(r, -3, 3);

		if (op == AG_K_LOG || op == AG_K_SQRT || op == AG_K_RSQRT ||
		    op == AG_K_POW_SCALAR)
			v = rng_range(r, 0.05, 4);
		if (op == AG_K_LOG1P)
			v = rng_range(r, -0.9, 4);
		if (i % 97 == 5)
			v = 0; /* relu/clamp/abs kinks and ties */
		if (i % 101 == 7)
			v = NAN;
		x[i] = (T)v;
	}
}

static void FN(unary_case_)(const struct ag_k_isa *t, enum ag_k_unary op,
			    const struct ag_k_params *p, int64_t n,
			    struct rng *r)
{
	const struct ag_k_isa *gen = test_isa(0);
	double tol = unary_tol(op, sizeof(T) == 4);
	double btol = unary_bwd_tol(op);
	T *x = malloc(n * sizeof(T)), *yg = malloc(n * sizeof(T));
	T *yc = malloc(n * sizeof(T)), *g = malloc(n * sizeof(T));
	T *gg = malloc(n * sizeof(T)), *gc = malloc(n * sizeof(T));
	static const int64_t sx[] = { 1, 2, -1, 3, 0 };
	static const int64_t sy[] = { 1, -2, 2, 1, 3 };
	int64_t i;
	size_t k;

	cr_assert(x && yg && yc && g && gg && gc);
	FN(fill_x)(r, x, n, op);
	for (i = 0; i < n; i++)
		g[i] = (T)rng_range(r, -2, 2);

	/* this path against generic, contiguous */
	gen->FN(unary_)(op, n, x, 1, yg, 1, p);
	t->FN(unary_)(op, n, x, 1, yc, 1, p);
	for (i = 0; i < n; i++)
		cr_assert(FN(close)(yc[i], yg[i], tol, 1),
			  "%s op %d n=%lld [%lld] x=%a: %a vs generic %a",
			  t->name, op, (long long)n, (long long)i, (double)x[i],
			  (double)yc[i], (double)yg[i]);
	gen->FN(unary_bwd_)(op, n, g, 1, x, 1, yg, 1, gg, 1, p);
	t->FN(unary_bwd_)(op, n, g, 1, x, 1, yg, 1, gc, 1, p);
	for (i = 0; i < n; i++)
		cr_assert(FN(close)(gc[i], gg[i], btol, 4),
			  "%s bwd op %d n=%lld [%lld] x=%a: %a vs generic %a",
			  t->name, op, (long long)n, (long long)i, (double)x[i],
			  (double)gc[i], (double)gg[i]);

	/* strided and broadcast spans give the contiguous results exactly */
	for (k = 0; k < sizeof(sx) / sizeof(sx[0]); k++) {
		struct FN(span) X, Y, G, YO, GX;
		T y0, gx0;

		FN(span_new)(&X, n, sx[k]);
		FN(span_new)(&Y, n, sy[k]);
		FN(put)(&X, sx[k], x, n);
		t->FN(unary_)(op, n, X.base, sx[k], Y.base, sy[k], p);
		FN(span_check)(&Y, n, sy[k], "unary");
		t->FN(unary_)(op, 1, x, 1, &y0, 1, p);
		for (i = 0; i < n; i++)
			cr_assert(FN(same)(FN(get)(&Y, sy[k], i),
					   sx[k] ? yc[i] : y0),
				  "%s op %d n=%lld strides %lld/%lld [%lld]",
				  t->name, op, (long long)n, (long long)sx[k],
				  (long long)sy[k], (long long)i);

		/* backward: g strided like y, x and y like x, out like y */
		FN(span_new)(&G, n, sy[k]);
		FN(span_new)(&YO, n, sx[k]);
		FN(span_new)(&GX, n, sy[k]);
		FN(put)(&G, sy[k], g, n);
		FN(put)(&YO, sx[k], yg, n);
		t->FN(unary_bwd_)(op, n, G.base, sy[k], X.base, sx[k], YO.base,
				  sx[k], GX.base, sy[k], p);
		FN(span_check)(&GX, n, sy[k], "unary_bwd");
		for (i = 0; i < n; i++) {
			if (sx[k] == 0) {
				t->FN(unary_bwd_)(op, 1, g + i, 1, x, 1, yg, 1,
						  &gx0, 1, p);
			} else {
				gx0 = gc[i];
			}
			cr_assert(
				FN(same)(FN(get)(&GX, sy[k], i), gx0),
				"%s bwd op %d n=%lld strides %lld/%lld [%lld]: %a vs %a",
				t->name, op, (long long)n, (long long)sx[k],
				(long long)sy[k], (long long)i,
				(double)FN(get)(&GX, sy[k], i), (double)gx0);
		}
		FN(span_free)(&X);
		FN(span_free)(&Y);
		FN(span_free)(&G);
		FN(span_free)(&YO);
		FN(span_free)(&GX);
	}

	/* a stride-0 gradient output adds the sum of the span to itself */
	{
		double want = 0, mag = 3;
		T acc = 3;

		for (i = 0; i < n; i++) {
			/* NaN and inf make the whole sum non-finite */
			want += gc[i];
			mag += fabs((double)gc[i]);
		}
		/* summed from 0 first: 3 + tiny terms one by one would
		 * round each of them away */
		want += 3;
		t->FN(unary_bwd_)(op, n, g, 1, x, 1, yg, 1, &acc, 0, p);
		cr_assert(!isfinite(mag) ? !isfinite(acc) :
					   fabs(acc - want) <= 4 * EPS * mag,
			  "%s bwd op %d reduce n=%lld: %a vs %a", t->name, op,
			  (long long)n, (double)acc, want);
	}

	/* in place: y = f(y), g = g * f'(x) over g itself */
	memcpy(yc, x, n * sizeof(T));
	t->FN(unary_)(op, n, yc, 1, yc, 1, p);
	t->FN(unary_)(op, n, x, 1, gg, 1, p);
	for (i = 0; i < n; i++)
		cr_assert(FN(same)(yc[i], gg[i]), "in-place op %d", op);
	free(x);
	free(yg);
	free(yc);
	free(g);
	free(gg);
	free(gc);
}

static void FN(fill_ab)(struct rng *r, T *a, T *b, int64_t n,
			enum ag_k_binary op)
{
	int64_t i;

	for (i = 0; i < n; i++) {
		a[i] = (T)rng_range(r, op == AG_K_POW ? 0.05 : -3, 3);
		b[i] = (T)rng_range(r, -3, 3);
		if (op == AG_K_DIV && fabs((double)b[i]) < 0.05)
			b[i] = (T)0.5;
		if (i % 13 == 3)
			b[i] = a[i]; /* maximum/minimum ties */
		if (i % 89 == 11)
			a[i] = (T)NAN;
		if (op == AG_K_POW && i % 31 == 4)
			a[i] = 0; /* pow's special gradient cases */
		if (op == AG_K_POW && i % 37 == 4)
			b[i] = 0;
	}
}

static void FN(binary_case_)(const struct ag_k_isa *t, enum ag_k_binary op,
			     int64_t n, struct rng *r)
{
	const struct ag_k_isa *gen = test_isa(0);
	double tol = op == AG_K_POW ? 2 : 0;
	double btol = op == AG_K_POW ? 8 : 0;
	T *a = malloc(n * sizeof(T)), *b = malloc(n * sizeof(T));
	T *g = malloc(n * sizeof(T)), *yg = malloc(n * sizeof(T));
	T *yc = malloc(n * sizeof(T));
	T *gag = malloc(n * sizeof(T)), *gbg = malloc(n * sizeof(T));
	T *gac = malloc(n * sizeof(T)), *gbc = malloc(n * sizeof(T));
	static const int64_t sa[] = { 1, 0, 2, -1, 1 };
	static const int64_t sb[] = { 0, 1, -3, 2, 1 };
	static const int64_t so[] = { 1, 2, 1, -1, 3 };
	int64_t i;
	size_t k;

	cr_assert(a && b && g && yg && yc && gag && gbg && gac && gbc);
	FN(fill_ab)(r, a, b, n, op);
	for (i = 0; i < n; i++)
		g[i] = (T)rng_range(r, -2, 2);
	gen->FN(binary_)(op, n, a, 1, b, 1, yg, 1);
	t->FN(binary_)(op, n, a, 1, b, 1, yc, 1);
	for (i = 0; i < n; i++)
		cr_assert(FN(close)(yc[i], yg[i], tol, 1),
			  "%s binary %d [%lld]: %a vs %a", t->name, op,
			  (long long)i, (double)yc[i], (double)yg[i]);
	gen->FN(binary_bwd_)(op, n, g, 1, a, 1, b, 1, gag, 1, gbg, 1);
	t->FN(binary_bwd_)(op, n, g, 1, a, 1, b, 1, gac, 1, gbc, 1);
	for (i = 0; i < n; i++) {
		cr_assert(FN(close)(gac[i], gag[i], btol, 4),
			  "%s binary bwd %d ga [%lld] a=%a b=%a: %a vs %a",
			  t->name, op, (long long)i, (double)a[i], (double)b[i],
			  (double)gac[i], (double)gag[i]);
		cr_assert(FN(close)(gbc[i], gbg[i], btol, 4),
			  "%s binary bwd %d gb [%lld] a=%a b=%a: %a vs %a",
			  t->name, op, (long long)i, (double)a[i], (double)b[i],
			  (double)gbc[i], (double)gbg[i]);
	}

	for (k = 0; k < sizeof(sa) / sizeof(sa[0]); k++) {
		struct FN(span) A, B, Y, G, GA, GB;
		T *ea = malloc(n * sizeof(T)), *eb = malloc(n * sizeof(T));
		T *ey = malloc(n * sizeof(T)), *ega = malloc(n * sizeof(T));
		T *egb = malloc(n * sizeof(T));
		double sga = 0, sgb = 0, mga = 1, mgb = 1;
		T ra = 0, rb = 0;

		cr_assert(ea && eb && ey && ega && egb);
		/* the expected values: broadcast made explicit, contiguous */
		for (i = 0; i < n; i++) {
			ea[i] = sa[k] ? a[i] : a[0];
			eb[i] = sb[k] ? b[i] : b[0];
		}
		t->FN(binary_)(op, n, ea, 1, eb, 1, ey, 1);
		t->FN(binary_bwd_)(op, n, g, 1, ea, 1, eb, 1, ega, 1, egb, 1);
		FN(span_new)(&A, n, sa[k]);
		FN(span_new)(&B, n, sb[k]);
		FN(span_new)(&Y, n, so[k]);
		FN(span_new)(&G, n, so[k]);
		FN(put)(&A, sa[k], a, n);
		FN(put)(&B, sb[k], b, n);
		FN(put)(&G, so[k], g, n);
		t->FN(binary_)(op, n, A.base, sa[k], B.base, sb[k], Y.base,
			       so[k]);
		FN(span_check)(&Y, n, so[k], "binary");
		for (i = 0; i < n; i++)
			cr_assert(FN(same)(FN(get)(&Y, so[k], i), ey[i]),
				  "%s binary %d strides %lld/%lld/%lld [%lld]",
				  t->name, op, (long long)sa[k],
				  (long long)sb[k], (long long)so[k],
				  (long long)i);

		/* gradients: a broadcast operand's gradient is reduced into
		 * its single element in the same pass */
		FN(span_new)(&GA, n, sa[k]);
		FN(span_new)(&GB, n, sb[k]);
		if (sa[k] == 0)
			GA.base[0] = 0;
		if (sb[k] == 0)
			GB.base[0] = 0;
		t->FN(binary_bwd_)(op, n, G.base, so[k], A.base, sa[k], B.base,
				   sb[k], GA.base, sa[k], GB.base, sb[k]);
		FN(span_check)(&GA, n, sa[k], "binary_bwd a");
		FN(span_check)(&GB, n, sb[k], "binary_bwd b");
		for (i = 0; i < n; i++) {
			if (sa[k])
				cr_assert(FN(same)(FN(get)(&GA, sa[k], i),
						   ega[i]),
					  "%s binary bwd %d ga strided [%lld]",
					  t->name, op, (long long)i);
			if (sb[k])
				cr_assert(FN(same)(FN(get)(&GB, sb[k], i),
						   egb[i]),
					  "%s binary bwd %d gb strided [%lld]",
					  t->name, op, (long long)i);
			sga += ega[i];
			sgb += egb[i];
			mga += fabs((double)ega[i]);
			mgb += fabs((double)egb[i]);
		}
		ra = GA.base[0];
		rb = GB.base[0];
		if (sa[k] == 0)
			cr_assert(!isfinite(mga) ?
					  !isfinite(ra) :
					  fabs(ra - sga) <= 4 * EPS * mga,
				  "%s binary bwd %d reduced ga %a vs %a",
				  t->name, op, (double)ra, sga);
		if (sb[k] == 0)
			cr_assert(!isfinite(mgb) ?
					  !isfinite(rb) :
					  fabs(rb - sgb) <= 4 * EPS * mgb,
				  "%s binary bwd %d reduced gb %a vs %a",
				  t->name, op, (double)rb, sgb);

		/* only one gradient asked for */
		t->FN(binary_bwd_)(op, n, g, 1, ea, 1, eb, 1, NULL, 1, ey, 1);
		for (i = 0; i < n; i++)
			cr_assert(FN(same)(ey[i], egb[i]), "gb alone");
		/* ga over g itself */
		memcpy(ey, g, n * sizeof(T));
		t->FN(binary_bwd_)(op, n, ey, 1, ea, 1, eb, 1, ey, 1, NULL, 1);
		for (i = 0; i < n; i++)
			cr_assert(FN(same)(ey[i], ega[i]), "ga in place");
		FN(span_free)(&A);
		FN(span_free)(&B);
		FN(span_free)(&Y);
		FN(span_free)(&G);
		FN(span_free)(&GA);
		FN(span_free)(&GB);
		free(ea);
		free(eb);
		free(ey);
		free(ega);
		free(egb);
	}
	free(a);
	free(b);
	free(g);
	free(yg);
	free(yc);
	free(gag);
	free(gbg);
	free(gac);
	free(gbc);
}

/*
 * Long contiguous outputs, where the binary kernels switch to streaming
 * stores after a masked head up to the vector alignment: every head
 * length (output offset from a 64-byte boundary), ordinary and in place
 * (y == a), bit for bit against generic, and nothing written around the
 * output.  n elements take well over the streaming threshold.
 */
static void FN(binary_stream_case_)(const struct ag_k_isa *t,
				    enum ag_k_binary op, int64_t n, int64_t off,
				    struct rng *r)
{
	const struct ag_k_isa *gen = test_isa(0);
	int64_t pad = 64 / (int64_t)sizeof(T), len = n + 2 * pad, i;
	T *a = malloc(n * sizeof(T)), *b = malloc(n * sizeof(T));
	T *yg = malloc(n * sizeof(T));
	/* C11: the size must be a multiple of the alignment */
	T *buf = aligned_alloc(64, (len * sizeof(T) + 63) & ~(size_t)63);
	T *y = buf + pad + off;

	cr_assert(a && b && yg && buf);
	FN(fill_ab)(r, a, b, n, op);
	gen->FN(binary_)(op, n, a, 1, b, 1, yg, 1);
	for (int pass = 0; pass < 2; pass++) {
		for (i = 0; i < len; i++)
			buf[i] = FN(canary);
		if (pass) { /* in place: y is a */
			memcpy(y, a, n * sizeof(T));
			t->FN(binary_)(op, n, y, 1, b, 1, y, 1);
		} else {
			t->FN(binary_)(op, n, a, 1, b, 1, y, 1);
		}
		for (i = 0; i < len; i++) {
			int64_t k = i - pad - off;

			if (k >= 0 && k < n)
				cr_assert(
					FN(same)(buf[i], yg[k]),
					"%s binary %d n=%lld off=%lld%s [%lld]: %a vs %a",
					t->name, op, (long long)n,
					(long long)off, pass ? " in place" : "",
					(long long)k, (double)buf[i],
					(double)yg[k]);
			else
				cr_assert(
					FN(same)(buf[i], FN(canary)),
					"%s binary %d n=%lld off=%lld: wrote outside the output at %lld",
					t->name, op, (long long)n,
					(long long)off, (long long)k);
		}
	}
	free(a);
	free(b);
	free(yg);
	free(buf);
}

#undef FN
