// SPDX-License-Identifier: MIT
/* The library's own version, for programs to compare with their headers'. */
#include <ag/version.h>

const char *ag_version(void)
{
	return AG_VERSION_STRING;
}

unsigned ag_version_hex(void)
{
	return AG_VERSION_HEX;
}
