// SPDX-License-Identifier: MIT
/* The library's own version, for programs to compare with their headers'. */
#include <pthread.h>
#include <stdio.h>

#include <ag/version.h>

#include "simd.h"

const char *ag_version(void)
{
	return AG_VERSION_STRING;
}

unsigned ag_version_hex(void)
{
	return AG_VERSION_HEX;
}

static char config[160];
static pthread_once_t config_once = PTHREAD_ONCE_INIT;

static void config_fill(void)
{
	snprintf(config, sizeof(config),
		 "libag %s; isa %s; gemm f32 %s, f64 %s", AG_VERSION_STRING,
		 ag_k_isa_name(), ag_k_gemm_f32_name(), ag_k_blas_name());
}

const char *ag_build_config(void)
{
	pthread_once(&config_once, config_fill);
	return config;
}
