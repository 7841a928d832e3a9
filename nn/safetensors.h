/* SPDX-License-Identifier: MIT */
#ifndef AG_NN_SAFETENSORS_H
#define AG_NN_SAFETENSORS_H

#include <stddef.h>

#include <ag/checkpoint.h>
#include <ag/error.h>

/*
 * ag_safetensors_open() over bytes already in memory (the fuzz target's
 * entry); buf is copied.  what names the source in error messages.
 */
struct ag_safetensors *ag__safetensors_open_mem(const void *buf, size_t n,
						const char *what);

/*
 * Fault injection, for tests only.  ag_safetensors_save() counts its
 * fallible steps (its own allocations, not jansson's; mkstemp, fchmod,
 * each write, fsync, close, rename, the directory's open and fsync); after
 * ag__safetensors_fail_at(n) with n > 0 the n-th step from then fails as
 * if the system had refused it (ENOMEM for an allocation, EIO otherwise),
 * once.  n <= 0: only counts.  ag__safetensors_steps(): the steps counted
 * since.  Saves on other threads count too.
 */
void ag__safetensors_fail_at(long n);
long ag__safetensors_steps(void);

#endif /* AG_NN_SAFETENSORS_H */
