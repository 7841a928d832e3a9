// SPDX-License-Identifier: MIT
#include <criterion/criterion.h>
#include <stdio.h>

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
