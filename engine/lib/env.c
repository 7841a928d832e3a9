// SPDX-License-Identifier: MIT
#include "env.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *ag__env_str(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

bool ag__env_int(const char *name, long long lo, long long hi, long long *out)
{
	const char *v = ag__env_str(name);
	char *end;
	long long x;

	if (!v)
		return false;
	errno = 0;
	x = strtoll(v, &end, 10);
	if (errno || *end || x < lo)
		return false;
	*out = x > hi ? hi : x;
	return true;
}

bool ag__env_flag(const char *name)
{
	const char *v = ag__env_str(name);

	return v && strcmp(v, "0") != 0;
}
