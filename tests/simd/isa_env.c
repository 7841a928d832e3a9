// SPDX-License-Identifier: MIT
/*
 * Run by meson with AG_ISA set: the forced path must be taken when this
 * CPU and build have it, otherwise the best available one (with a warning
 * on stderr), and the kernels must work either way.  Exit status 0 = pass.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

int main(void)
{
	const char *want = getenv("AG_ISA");
	const char *got = ag_k_isa_name();
	const char *best = ag_k_isa_by_name("avx512") ? "avx512" :
			   ag_k_isa_by_name("avx2")   ? "avx2" :
							"generic";
	const char *expect = want && ag_k_isa_by_name(want) ? want : best;
	float x[3] = { 0, 1, 2 }, y[3];

	ag_k_unary_f32(AG_K_EXP, 3, x, 1, y, 1, NULL);
	if (strcmp(got, expect) || y[0] != 1) {
		printf("AG_ISA=%s: got %s, expected %s\n", want ? want : "",
		       got, expect);
		return 1;
	}
	printf("AG_ISA=%s: %s\n", want ? want : "", got);
	return 0;
}
