// SPDX-License-Identifier: MIT
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include <ag/ag.h>

Test(version, library_matches_headers)
{
	char want[32];

	snprintf(want, sizeof(want), "%d.%d.%d", AG_VERSION_MAJOR,
		 AG_VERSION_MINOR, AG_VERSION_PATCH);
	cr_expect_str_eq(ag_version(), want);
	cr_expect_str_eq(AG_VERSION_STRING, want);
	cr_expect_eq(ag_version_hex(), (unsigned)AG_VERSION_HEX);
	cr_expect_eq(AG_VERSION_HEX, (AG_VERSION_MAJOR << 16) |
					     (AG_VERSION_MINOR << 8) |
					     AG_VERSION_PATCH);
}

Test(version, ag_h_declares_every_public_header)
{
	/* each of these comes from a different header, through ag/ag.h */
	cr_expect_gt(ag_get_num_threads(), 0);
	cr_expect_eq(ag_trace_stop(), -AG_EINVAL); /* none running */
	cr_expect_not_null(ag_version());
}

/*
 * The configuration names the version and the paths the kernels take: the
 * ISA libag dispatches to and the GEMMs, each one of the names simd/ uses.
 */
Test(version, build_config_names_the_kernels)
{
	const char *c = ag_build_config();
	char want[64];

	snprintf(want, sizeof(want), "libag %s; isa ", AG_VERSION_STRING);
	cr_assert_not_null(c);
	cr_expect_eq(strncmp(c, want, strlen(want)), 0, "%s", c);
	cr_expect(strstr(c, "isa avx512;") || strstr(c, "isa avx2;") ||
			  strstr(c, "isa generic;") || strstr(c, "isa neon;"),
		  "%s", c);
	cr_expect(
		strstr(c, "; gemm f32 onednn, f64 ") ||
			strstr(c, "; gemm f32 openblas, f64 openblas") ||
			strstr(c, "; gemm f32 blis, f64 blis") ||
			strstr(c, "; gemm f32 cblas, f64 cblas") ||
			strstr(c,
			       "; gemm f32 reference loops, f64 reference loops"),
		"%s", c);
	cr_expect_eq(ag_build_config(), c, "one string for the process");
}
