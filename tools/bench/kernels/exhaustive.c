// SPDX-License-Identifier: MIT
/*
 * exhaustive: the f32 kernels libag computes with its own formulas (sin,
 * cos, tanh) checked on every float in a range, on every ISA path this CPU
 * runs, against libm's double functions (< 1 ULP of f64, i.e. 2^-29 ULP of
 * f32).  Takes minutes; not a test.
 *
 *   ./build/tools/exhaustive [limit [sin|cos|tanh]]
 *	limit for sin and cos, default 8192 (tanh: every float); naming a
 *	function checks only it, on the best path only
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

#define CHUNK 4096

static double ulp_err(float got, double ref)
{
	int e;

	if (isnan(ref) || isnan(got))
		return isnan(ref) && isnan(got) ? 0 : INFINITY;
	if (isinf(ref) || isinf(got))
		return ref == got ? 0 : INFINITY;
	if (ref == 0)
		return got == 0 ? 0 : INFINITY;
	frexp(ref, &e);
	e -= 24;
	if (e < -149)
		e = -149;
	return fabs((double)got - ref) / ldexp(1, e);
}

static void run(const struct ag_k_isa *t, const char *name, enum ag_k_unary op,
		double (*ref)(double), float limit)
{
	static float x[CHUNK], y[CHUNK];
	double worst = 0;
	float wx = 0;
	uint64_t b, n = 0;
	int sign, i;

	for (sign = 0; sign < 2; sign++) {
		for (b = 0; b < 0x7f800000u; b += CHUNK) {
			int len = 0;

			for (i = 0; i < CHUNK; i++) {
				uint32_t u = (uint32_t)(b + i) | (uint32_t)sign
									 << 31;
				float f;

				memcpy(&f, &u, sizeof(f));
				if (fabsf(f) <= limit)
					x[len++] = f;
			}
			if (!len)
				break;
			t->unary_f32(op, len, x, 1, y, 1, NULL);
			for (i = 0; i < len; i++) {
				double e = ulp_err(y[i], ref(x[i]));

				if (e > worst) {
					worst = e;
					wx = x[i];
				}
			}
			n += len;
		}
	}
	printf("%-7s %-5s |x| <= %g: max %.4f ULP at x = %a (%llu floats)\n",
	       t->name, name, limit, worst, wx, (unsigned long long)n);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static const char *const isas[] = { "avx512", "avx2", "generic" };
	float limit = argc > 1 ? strtof(argv[1], NULL) : 8192;
	const char *only = argc > 2 ? argv[2] : NULL;
	int k;

	for (k = 0; k < 3; k++) {
		const struct ag_k_isa *t = ag_k_isa_by_name(isas[k]);

		if (!t)
			continue;
		if (!only || !strcmp(only, "sin"))
			run(t, "sin", AG_K_SIN, sin, limit);
		if (!only || !strcmp(only, "cos"))
			run(t, "cos", AG_K_COS, cos, limit);
		if (!only || !strcmp(only, "tanh"))
			run(t, "tanh", AG_K_TANH, tanh, 3.4e38f);
		if (only)
			break;
	}
	return 0;
}
